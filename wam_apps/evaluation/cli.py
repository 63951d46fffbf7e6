"""``wam-policy eval``: a robustness table for one or more policies over a perturbation suite.

    wam-policy eval --policy expert --suite smoke --task transfer_cube --episodes 2
    wam-policy eval --policy expert --policy act_sim --suite paper --workers 2
    wam-policy eval ... --ray local          # or --ray auto / --ray HOST:PORT for a Ray cluster
    wam-policy eval --policy act_sim --workers 4 --serve   # ONE model (in this process) for all workers
    wam-policy eval --suite parity --policy expert_noise_025 --world cousin   # the same episodes, another world

Results go to ``--out`` (default ``runs/eval/<suite>_<task>``): ``episodes.jsonl`` (one row per
episode, written as it ends: rerunning the same command resumes, finished episodes are not
rerun), ``results.{md,csv,json,png}``, and the bags under ``bags/`` (``--bags none`` drops them).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import threading
from pathlib import Path

from wam_common.config import ConfigError, deep_merge
from wam_common.progress import Progress
from wam_apps.evaluation.results import ResultStore, episode_key
from wam_apps.evaluation.runner import Job, contiguous_runs, run_jobs
from wam_apps.evaluation.suites import load_suite, strategy_overrides
from wam_common.policies import load_policy_config
from wam_apps.evaluation.table import latency_markdown, latency_view, markdown, write_all


def add_arguments(p) -> None:
    p.add_argument("--policy", action="append", default=None, metavar="CONFIG",
                   help="policy config (config/policies/<name>.yaml or a path); repeat to compare (default: expert)")
    p.add_argument("--suite", default="smoke", help="suite (config/suites/<name>.yaml or a path; default: smoke)")
    p.add_argument("--task", default=None, help="sim task (default: the suite's)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per configuration (default: the suite's)")
    p.add_argument("--seed", type=int, default=None, help="first seed (default: the suite's)")
    p.add_argument("--world", default="nominal",
                   help="the sim world (config/worlds/<name>.yaml or a path; default nominal): run the same episodes "
                        "in --world cousin for a parity study (wam-policy parity-study)")
    p.add_argument("--strategy", action="append", default=None, metavar="LABEL",
                   help="cross each policy with this runtime strategy: a label of the suite's 'strategies' or "
                        "sync / temporal_ensemble / rtc; repeat for several (default: the suite's strategies, if any); "
                        "rows become <policy>+<label>")
    p.add_argument("--configuration", action="append", default=None, metavar="NAME",
                   help="run only these configurations of the suite (repeat; default: all)")
    p.add_argument("--clock", choices=["lockstep", "realtime"], default="lockstep",
                   help="lockstep: deterministic; realtime: the policy's true latency is in the loop")
    p.add_argument("--realtime", action="store_const", const="realtime", dest="clock", help="same as --clock realtime")
    p.add_argument("--workers", type=int, default=1, help="parallel graphs on this machine (each its own ROS_DOMAIN_ID)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run jobs as Ray tasks: 'local' (a local cluster), 'auto', or HOST:PORT")
    p.add_argument("--serve", action="store_true",
                   help="load each policy once, in a policy server in this process (wam-policy serve), and point "
                        "every worker's wam_policy_node at it (openpi backend) instead of loading it per graph")
    p.add_argument("--serve-host", default="127.0.0.1", metavar="ADDRESS",
                   help="--serve: address the server listens on and workers connect to (with --ray on other "
                        "machines: this machine's address as they reach it)")
    p.add_argument("--serve-batch", type=int, default=1, metavar="N",
                   help="--serve: batch up to N workers' requests into one forward (1 = off; the outcomes stay the "
                        "same, the commands equal within float tolerance, not bitwise: wam-policy serve --batch-max-size)")
    p.add_argument("--episodes-per-graph", type=int, default=5,
                   help="seeds run by one graph start (start-up is amortised; default 5)")
    p.add_argument("--bags", choices=["keep", "none"], default="keep", help="keep every episode's bag, or none")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/<suite>_<task>)")
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("--robot", action="store_true",
                   help="real robot: the graph is already up (ros2 launch); prompt the operator between episodes "
                        "and record their success labels (stream-level and operator-set configurations only)")
    p.add_argument("--max-duration-s", type=float, default=120.0, help="--robot: an episode longer than this times out")


def plan(args) -> tuple[list[Job], list[tuple], Path, str]:
    suite = load_suite(args.suite)
    task = args.task or suite.task
    episodes = args.episodes if args.episodes is not None else suite.episodes
    seed0 = args.seed if args.seed is not None else suite.seed
    if episodes < 1:
        raise ConfigError(f"--episodes must be ≥ 1, got {episodes}")
    confs = suite.configurations
    only = getattr(args, "configuration", None)
    if only:
        unknown = sorted(set(only) - {c.name for c in confs})
        if unknown:
            raise ConfigError(f"--configuration: suite '{suite.name}' has no configuration '{unknown[0]}' (has: "
                              f"{', '.join(c.name for c in confs)})")
        confs = [c for c in confs if c.name in only]
    policies = [load_policy_config(p) for p in (args.policy or ["expert"])]
    crossed = strategy_overrides(suite, getattr(args, "strategy", None))
    if crossed:
        policies = [(f"{n}+{label}", deep_merge(pov, {"runtime": rov})) for n, pov in policies
                    for label, rov in crossed.items()]
    names = [n for n, _ in policies]
    if len(set(names)) != len(names):
        raise ConfigError(f"--policy: two policies share the name '{sorted(n for n in names if names.count(n) > 1)[0]}'")
    from sim_bridge.world import load_world

    world = load_world(args.world)  # a bad world config fails here, before any graph starts
    suffix = "" if world.name == "nominal" else f"_{world.name}"
    out = Path(args.out or f"runs/eval/{suite.name}_{task}{suffix}")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    _check_world(out, args.world, world.name)
    store = ResultStore(out)
    done = store.done()
    wanted: list[tuple] = []
    jobs: list[Job] = []
    for pname, pov in policies:
        for conf in confs:
            seeds = [seed0 + j for j in range(episodes)]
            wanted += [(pname, conf.name, task, s) for s in seeds]
            todo = [s for s in seeds if (pname, conf.name, task, s) not in done]
            for run in contiguous_runs(todo, max(1, args.episodes_per_graph)):
                jobs.append(Job(pname, pov, conf.name, conf.dimension, conf.level, conf.sim, task, run,
                                clock=args.clock, bags=args.bags, out_dir=str(out), world=str(args.world),
                                value=conf.value))
    (out / "manifest.json").write_text(json.dumps({
        "suite": suite.name, "task": task, "episodes": episodes, "seed": seed0, "clock": args.clock,
        "world": world.name, "world_config": world.to_dict()["world"],
        "policies": dict(policies), "configurations": [c.name for c in confs],
        "command": " ".join(["wam-policy", "eval"] + sys.argv[2:]) if sys.argv[1:2] == ["eval"] else None,
    }, indent=1))
    return jobs, wanted, out, suite.name


def _check_world(out: Path, spec: str, name: str) -> None:
    """Resuming into a folder that holds another world's episodes would mix the worlds: refuse."""
    store = ResultStore(out)
    other = sorted({r.get("world", "nominal") for r in store.rows()} - {name})
    if other:
        raise ConfigError(f"--out {out} holds episodes of world '{other[0]}', not '{name}' (--world {spec}): "
                          f"use another --out, or --fresh")


def run_on_robot(args) -> int:
    from wam_apps.evaluation.robot import run_robot

    if args.policy and len(args.policy) > 1:
        raise ConfigError("--robot evaluates the one policy the robot's graph runs: give one --policy (a label)")
    suite = load_suite(args.suite)
    task = args.task or "aloha_real"
    episodes = args.episodes if args.episodes is not None else suite.episodes
    seed0 = args.seed if args.seed is not None else suite.seed
    policy = (args.policy or ["robot_policy"])[0]
    out = Path(args.out or f"runs/eval/{suite.name}_{task}")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    store = ResultStore(out)
    run_robot(suite, policy, task, episodes, seed0, store, max_duration_s=args.max_duration_s)
    table = write_all(store.rows(), out, title=f"{suite.name} · {task} (robot)")
    print(markdown(table))
    print(f"[eval] results: {out}/results.md (.csv .json .png), episodes: {out}/episodes.jsonl")
    return 0


@contextlib.contextmanager
def served(jobs: list[Job], host: str, batch: int = 1):
    """``--serve``: one policy server per policy with jobs to run (the model loaded once, here); yields the
    jobs with their wam_policy_node pointed at it. Lockstep stays deterministic: requests from all
    workers run one at a time, each connection with its own episode state (wam_policy_node/server.py)."""
    from wam_policy_node.server import for_node, served_overrides

    servers = {}
    try:
        for j in jobs:
            if j.policy not in servers:
                print(f"[eval] --serve: loading {j.policy} into a policy server", flush=True)
                servers[j.policy] = for_node(j.policy, j.policy_overrides, host=host, port=0,
                                             batch={"max_size": batch}).start()
                print(f"[eval] --serve: {j.policy} on ws://{host}:{servers[j.policy].port}", flush=True)
        yield [dataclasses.replace(j, policy_overrides=served_overrides(
            j.policy_overrides, servers[j.policy], lockstep=j.clock == "lockstep")) for j in jobs]
    finally:
        for name, srv in servers.items():
            if srv.batches:
                print(f"[eval] --serve: {name} batch sizes (size: forwards): {dict(sorted(srv.batches.items()))}",
                      flush=True)
            srv.close()


def run(args) -> int:
    if args.robot:
        return run_on_robot(args)
    if args.serve_batch != 1 and not args.serve:
        raise ConfigError(f"--serve-batch {args.serve_batch} batches requests in the policy server: add --serve")
    jobs, wanted, out, suite_name = plan(args)
    with served(jobs, args.serve_host, args.serve_batch) if args.serve else contextlib.nullcontext(jobs) as jobs:
        return _run(args, jobs, wanted, out, suite_name)


def _run(args, jobs: list[Job], wanted: list[tuple], out: Path, suite_name: str) -> int:
    store = ResultStore(out)
    wanted_set = set(wanted)
    base = len(store.done() & wanted_set)
    print(f"[eval] {len(wanted)} episodes ({base} already done, resuming), {len(jobs)} graph runs, "
          f"workers={args.workers}{' on Ray ' + args.ray if args.ray else ''}, out={out}", flush=True)
    bar = Progress(len(wanted), "eval", "episodes", base=base)
    stop = threading.Event()

    def progress():
        while not stop.wait(1.0):
            bar.update(len(store.done() & wanted_set))

    t = threading.Thread(target=progress, daemon=True)
    t.start()
    errors: list[str] = []
    try:
        results = run_jobs(jobs, str(out), workers=args.workers, ray_address=args.ray)
        errors = [r.error for r in results if r.error]
    finally:
        stop.set()
        t.join()
        bar.close(len(store.done() & wanted_set))
    rows = [r for r in store.rows() if episode_key(r) in wanted_set]
    table = write_all(rows, out, title=f"{suite_name} · {args.task or ''}".strip(" ·"))
    print(markdown(table))
    view = latency_view(rows)
    if view:
        print(latency_markdown(view))
    print(f"[eval] results: {out}/results.md (.csv .json .png){', latency.md (.json .png)' if view else ''}, "
          f"episodes: {out}/episodes.jsonl")
    missing = len(wanted_set) - len(rows)
    if errors or missing:
        for e in errors:
            print(f"[eval] error: {e}", file=sys.stderr)
        print(f"[eval] {missing} episode(s) missing; run the same command again to resume", file=sys.stderr)
        return 1
    return 0
