"""Closed-loop success of a policy config in the sim core, without ROS (a quick check, not the eval).

The same pieces as the graph in lockstep, called directly: ``sim_bridge.env.SimEnv`` (cameras
rendered every ``camera_every`` steps and held in between, as sim_bridge publishes them),
``wam_policy_node``'s ObservationMap → backend → ChunkRuntime → SafetyFilter
(``PolicyController.step_lockstep``), episodes ending at the first success or the time limit. No
perturbation node and no DDS, so it runs anywhere the backend runs (the GPU machine, where the
dataset and checkpoint are made); the numbers that count come from ``wam-policy eval``.

    python -m wam_apps.training.rollout --policy act_sim --episodes 20 --seed 100000 --workers 4
    python -m wam_apps.training.rollout --policy act_sim --set runtime.strategy=temporal_ensemble
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from wam_common import topics as T
from wam_common.config import ConfigError, deep_merge

T0_NS = 1_000_000_000

_STATE: dict = {}


def _parse_set(items: list[str]) -> dict:
    import yaml

    out: dict = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--set '{it}': expected key.path=value")
        key, val = it.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


def build(policy_overrides: dict):
    """(observation map, controller) from a policy config's ``wam_policy_node`` overrides."""
    from wam_policy_node import backends, observation, runtime, safety
    from wam_policy_node.controller import PolicyController

    cfg = policy_overrides
    obs_map = observation.ObservationMap.from_config(cfg.get("observation") or {})
    b = dict(cfg.get("backend") or {})
    btype = b.get("type", "expert")
    backend = backends.make_backend(btype, b.get(btype) or {})
    rt = runtime.ChunkRuntime.from_config(cfg.get("runtime") or {})
    sf = safety.SafetyFilter(deep_merge(safety.DEFAULTS, cfg.get("safety") or {}))
    ctl = PolicyController(backend, rt, sf, realtime=False, horizon_hint=50)
    return obs_map, ctl


def episode(task: str, seed: int, policy_overrides: dict, height: int = 240, width: int = 320,
            camera_every: int = 5, max_steps: int = 0) -> dict:
    from sim_bridge.env import SimEnv

    key = json.dumps(policy_overrides, sort_keys=True, default=str)
    if _STATE.get("key") != (key, task):
        _STATE.update(key=(key, task), built=build(policy_overrides), env=SimEnv(task))
    obs_map, ctl = _STATE["built"]
    env = _STATE["env"]
    from wam_policy_node.backends import Observation

    env.reset(seed)
    steps = int(max_steps) or env.max_steps
    ctl.reset_episode({"episode": 0, "seed": seed, "task": task})
    frames: dict[str, np.ndarray] = {}
    holds = 0
    t_inf = []
    success = False
    k = 0
    for k in range(steps):
        t_ns = T0_NS + k * int(round(T.DT * 1e9))
        if k % camera_every == 0:
            frames = {c: env.render(c, height, width) for c in obs_map.cameras}
        priv = env.privileged(0, k, t_ns, T0_NS) if ctl.backend.needs_privileged else None
        obs = Observation(t_ns, obs_map.images(frames), env.qpos14(), env.task.prompt, privileged=priv, step=k)
        cmd, st = ctl.step_lockstep(t_ns, obs)
        if st.get("inferred") and st.get("infer_ms"):
            t_inf.append(float(st["infer_ms"]))
        if cmd is None or st.get("hold"):
            holds += 1
        env.step(cmd if cmd is not None else env.qpos14())
        if env.success:
            success = True
            break
    return {"task": task, "seed": int(seed), "success": success, "steps": k + 1, "max_reward": int(env.best_reward),
            "holds": holds, "inferences": len(t_inf), "infer_ms_mean": float(np.mean(t_inf)) if t_inf else None}


def _job(a):
    return episode(*a)


def rollouts(task: str, seeds: list[int], policy_overrides: dict, workers: int = 1, **kw):
    jobs = [(task, s, policy_overrides, kw.get("height", 240), kw.get("width", 320), kw.get("camera_every", 5),
             kw.get("max_steps", 0)) for s in seeds]
    if workers <= 1:
        for j in jobs:
            yield _job(j)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_job, jobs)


def main(argv=None) -> int:
    from wam_common.policies import load_policy_config

    p = argparse.ArgumentParser(prog="python -m wam_apps.training.rollout", description=__doc__.split("\n")[0])
    p.add_argument("--policy", default="act_sim", help="policy config (config/policies/<name>.yaml or a path)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override inside wam_policy_node (e.g. runtime.strategy=sync)")
    p.add_argument("--task", default="transfer_cube")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=100000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--camera-every", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--json", default=None, help="write the summary and rows here")
    args = p.parse_args(argv)
    try:
        name, ov = load_policy_config(args.policy)
        ov = deep_merge(ov, _parse_set(args.set))
        t0 = time.monotonic()
        rows = []
        for r in rollouts(args.task, [args.seed + i for i in range(args.episodes)], ov, args.workers,
                          height=args.height, width=args.width, camera_every=args.camera_every,
                          max_steps=args.max_steps):
            rows.append(r)
            print(f"[rollout] seed {r['seed']}: {'success' if r['success'] else 'fail'} "
                  f"(reward {r['max_reward']}, {r['steps']} steps)", flush=True)
    except ConfigError as exc:
        print(f"rollout: config error: {exc}", file=sys.stderr)
        return 2
    n = len(rows)
    summary = {"policy": name, "overrides": _parse_set(args.set), "task": args.task, "episodes": n,
               "seed": args.seed, "successes": sum(r["success"] for r in rows),
               "success_rate": sum(r["success"] for r in rows) / max(1, n),
               "seconds": round(time.monotonic() - t0, 1)}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": sorted(rows, key=lambda r: r["seed"])}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
