"""Scripted-expert success rate per sim task over N seeds (pure core: SimEnv + make_expert, no ROS).

Prints one JSON object: per task the success rate, the failing seeds, mean success step and
the mean planning / rollout wall time. ``--physical light:3`` measures under a perturbation.

    .venv/bin/python bench/sim_experts.py --seeds 50 [--tasks transfer_cube,insertion] [--physical light:3]
                                          [--backend sapien]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from sim_bridge.env import SimEnv  # noqa: E402
from sim_bridge.experts import make_expert  # noqa: E402
from sim_bridge.tasks import TASKS  # noqa: E402


def run_task(task: str, seeds: range, physical: str | None, backend: str = "mujoco") -> dict:
    env = SimEnv(task, physical, backend=backend, render=False)
    expert = make_expert(task)
    fails, steps, plan_s, roll_s = [], [], [], []
    for seed in seeds:
        env.reset(seed)
        t0 = time.perf_counter()
        expert.reset(env.privileged(0, 0, 0, 0))
        t1 = time.perf_counter()
        k_succ = None
        for k in range(env.max_steps):
            env.step(expert.actions(k, 1)[0])
            if env.success:
                k_succ = k + 1
                break
        roll_s.append(time.perf_counter() - t1)
        plan_s.append(t1 - t0)
        if k_succ is None:
            fails.append(seed)
        else:
            steps.append(k_succ)
    env.close()
    n = len(seeds)
    return {"episodes": n, "successes": n - len(fails), "success_rate": round((n - len(fails)) / n, 4),
            "failed_seeds": fails, "mean_success_step": round(float(np.mean(steps)), 1) if steps else None,
            "plan_s_mean": round(float(np.mean(plan_s)), 3), "rollout_s_mean": round(float(np.mean(roll_s)), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--physical", default="")
    ap.add_argument("--backend", default="mujoco", choices=["mujoco", "sapien"])
    args = ap.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    out = {"bench": "sim_experts", "backend": args.backend, "physical": args.physical or "none",
           "seeds": [seeds.start, seeds.stop - 1],
           "tasks": {t: run_task(t, seeds, args.physical or None, args.backend) for t in args.tasks.split(",")}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
