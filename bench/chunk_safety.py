"""Cost of the whole-chunk safety check (wam_policy_node.chunk_check) per 50-step chunk, on this CPU.

Prints one JSON object: for real expert chunks (the sim's scripted plans, 50 actions each, every 10th
step of the episodes, as the rtc runtime asks for them), a smooth synthetic chunk and a chunk whose
path ends in the table, the time of ``ChunkChecker.check`` (dynamics + collisions of every action)
and of the seam test: min / median / p90 over the repeats, and the parts (dynamics, one action's
forward kinematics + collision). No subsampling: ``collision_stride`` 1 (every action checked); for
comparison the expert chunks with ``collision_stride`` 2 too.

    .venv/bin/python bench/chunk_safety.py [--repeats 200] [--seeds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from wam_policy_node.chunk_check import ChunkChecker, Verdict  # noqa: E402

HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


def expert_chunks(seeds: int, horizon: int = 50) -> list[np.ndarray]:
    from sim_bridge.env import SimEnv
    from sim_bridge.experts import make_expert

    out = []
    for task in ("transfer_cube", "insertion", "lift_beam"):
        env = SimEnv(task, render=False)
        ex = make_expert(task)
        for seed in range(seeds):
            env.reset(seed)
            ex.reset(env.privileged(0, 0, 0, 0))
            out += [ex.actions(k, horizon) for k in range(0, env.max_steps - horizon, 10)]
        env.close()
    return out


def timed(fn, items, repeats: int) -> dict:
    ts = []
    for r in range(repeats):
        for it in items:
            t0 = time.perf_counter()
            fn(it)
            ts.append(time.perf_counter() - t0)
    ms = np.array(ts) * 1e3
    return {"n": len(ms), "min_ms": round(float(ms.min()), 4), "median_ms": round(float(np.median(ms)), 4),
            "p90_ms": round(float(np.percentile(ms, 90)), 4), "max_ms": round(float(ms.max()), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200, help="repeats of the synthetic chunks")
    ap.add_argument("--seeds", type=int, default=2, help="expert episodes per task")
    args = ap.parse_args(argv)
    chk = ChunkChecker()
    assert chk.stride == 1
    smooth = HOME + 0.2 * np.sin(np.linspace(0, np.pi, 50))[:, None] * (np.arange(14) % 7 != 6)
    dive = HOME.copy()
    dive[1], dive[2] = 0.9, 0.3  # left shoulder forward, elbow open: the gripper goes through the table
    colliding = np.linspace(HOME, dive, 50)
    assert chk.check(smooth).first() is None and chk.check(colliding).first() is not None
    experts = expert_chunks(args.seeds)
    verdicts = [chk.check(a) for a in experts]
    out = {
        "bench": "chunk_safety", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2), "collision_stride": chk.stride,
        "chunk_steps": 50,
        "expert_chunks": {"chunks": len(experts), "failing": sum(v.first() is not None for v in verdicts),
                          **timed(chk.check, experts, 3)},
        "smooth": timed(chk.check, [smooth], args.repeats),
        "colliding_at_the_end": {"first_bad": chk.check(colliding).first(), **timed(chk.check, [colliding],
                                                                                     args.repeats)},
        "expert_chunks_stride_2": timed(ChunkChecker({"collision_stride": 2}).check, experts, 3),
        "parts": {
            "dynamics": timed(lambda a: chk._dynamics(a, Verdict(np.zeros(len(a), np.int8))), [smooth],
                              args.repeats),
            "seam": timed(lambda a: chk.seam(a[0], HOME), [smooth], args.repeats),
            "one_action_fk_collision": timed(chk.collisions, list(smooth), max(1, args.repeats // 10)),
        },
    }
    out["target_ms"] = 1.0
    out["median_within_target"] = out["expert_chunks"]["median_ms"] <= 1.0
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
