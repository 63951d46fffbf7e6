"""``wam-policy collect``: scripted-expert demonstrations → a LeRobotDataset (v3).

Two sources, one dataset layout (that of ``export-lerobot``: ``observation.images.<cam>``,
``observation.state`` / ``action`` 14-dim ``[left 6, left gripper 0..1, right 6, right gripper
0..1]``, the task prompt per frame, fps 50):

- ``--via sim`` — straight from the sim core (``sim_bridge.env.SimEnv`` + ``sim_bridge.experts``),
  no ROS, episodes in parallel worker processes. A step is exactly what the graph shows the
  policy: the state at step k, the camera frames rendered at the newest step ``j <= k`` with
  ``j % camera_every == 0`` (cameras are held in between, as sim_bridge publishes them), and the
  expert's command for step k.
- ``--via graph`` — the real graph (sim_bridge → perturbation_node → wam_policy_node with the
  ``expert`` backend, recorder on), one graph per run of seeds (``wam-policy eval``'s runner), then
  the bags are exported with ``export-lerobot`` (raw topics, so the same frames as ``--via sim``).

Written with LeRobot's own ``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` /
``finalize``. Cameras are stored as videos by default (LeRobot's usual layout; training decodes one
frame per sample); ``--images`` stores PNG frames in the parquet files instead — but LeRobot 0.6.1
then decodes the images of every row an ACT sample's 100-step action query touches, which makes
training data-bound. Failed expert episodes are skipped unless ``--keep-failed``.

    wam-policy collect --task transfer_cube --episodes 50 --out runs/datasets/transfer_cube --workers 8
    wam-policy collect --via graph --episodes 4 --out runs/datasets/tc_graph --workers 2
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wam_common import topics as T
from wam_common.config import ConfigError

DEFAULT_CAMERAS = ("cam_high",)


@dataclass
class Demo:
    task: str
    seed: int
    prompt: str
    success: bool
    states: np.ndarray  # (n, 14) float32
    actions: np.ndarray  # (n, 14) float32
    images: dict[str, np.ndarray] = field(default_factory=dict)  # cam → (n, H, W, 3) uint8 (held frames repeated)


# ---------------------------------------------------------------------------- sim source
_WORKER: dict = {}


def _worker_env(task: str):
    from sim_bridge.env import SimEnv
    from sim_bridge.experts import make_expert

    if task not in _WORKER:
        _WORKER[task] = (SimEnv(task), make_expert(task))
    return _WORKER[task]


def sim_episode(task: str, seed: int, cameras=DEFAULT_CAMERAS, height: int = 240, width: int = 320,
                camera_every: int = 5, max_steps: int = 0) -> Demo:
    """One expert episode in the sim core: per step (state, held camera frames, expert command)."""
    env, expert = _worker_env(task)
    env.reset(seed)
    steps = int(max_steps) or env.max_steps
    expert.reset(env.privileged(0, 0, 0, 0) | {"max_steps": steps})
    states = np.empty((steps, T.STATE_DIM), np.float32)
    actions = np.empty((steps, T.STATE_DIM), np.float32)
    images = {c: np.empty((steps, height, width, 3), np.uint8) for c in cameras}
    succeeded = False
    for k in range(steps):
        states[k] = env.qpos14()
        for c in cameras:
            images[c][k] = env.render(c, height, width) if k % camera_every == 0 else images[c][k - 1]
        a = expert.actions(k, 1)[0]
        actions[k] = a
        env.step(a)
        succeeded = succeeded or env.success
    return Demo(task, int(seed), env.task.prompt, bool(succeeded), states, actions, images)


def _sim_job(args: tuple) -> Demo:
    return sim_episode(*args)


def collect_sim(tasks: list[str], episodes: int, seed: int, cameras, height: int, width: int, camera_every: int,
                workers: int = 1, max_steps: int = 0):
    """Yield Demos (per task, in seed order), computed by ``workers`` processes."""
    jobs = [(t, seed + i, tuple(cameras), height, width, camera_every, max_steps) for t in tasks for i in range(episodes)]
    if workers <= 1:
        for j in jobs:
            yield _sim_job(j)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_sim_job, jobs, chunksize=1)


def _shard_job(a: tuple) -> dict | None:
    """One worker: its episodes → its own LeRobotDataset shard (PNG encoding is the slow part)."""
    jobs, root, fps, cameras, height, width, video, keep_failed, quiet = a

    def report(d: Demo, kept: bool):
        if not quiet:
            print(f"[collect] {d.task} seed {d.seed}: {'ok' if d.success else 'expert failed'}"
                  f"{'' if kept else ' (skipped)'}", flush=True)

    try:
        return write_dataset((_sim_job(j) for j in jobs), Path(root), fps, cameras, height, width, video,
                             repo_id=f"local/{Path(root).name}", keep_failed=keep_failed, on_episode=report)
    except RuntimeError as exc:  # every episode of this shard failed
        return {"episodes": 0, "skipped_failed": len(jobs), "error": str(exc)}


def collect_sim_sharded(tasks, episodes, seed, cameras, height, width, camera_every, workers, out: Path,
                        video=False, keep_failed=False, max_steps=0, repo_id=None, quiet=False) -> dict:
    """``workers`` processes each write a shard (contiguous seeds); LeRobot's ``aggregate_datasets``
    joins them, in seed order, into ``out``."""
    import multiprocessing as mp

    from lerobot.datasets.aggregate import aggregate_datasets

    jobs = [(t, seed + i, tuple(cameras), height, width, camera_every, max_steps) for t in tasks for i in range(episodes)]
    n = max(1, min(workers, len(jobs)))
    bounds = np.linspace(0, len(jobs), n + 1).round().astype(int)
    shard_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}_shards_", dir=str(out.parent)))
    try:
        args = [(jobs[bounds[i]:bounds[i + 1]], str(shard_dir / f"shard_{i:03d}"), int(round(1 / T.DT)), tuple(cameras),
                 height, width, video, keep_failed, quiet) for i in range(n)]
        with mp.get_context("spawn").Pool(n) as pool:
            infos = pool.map(_shard_job, args, chunksize=1)
        shards = [a[1] for a, inf in zip(args, infos) if inf and inf.get("episodes")]
        if not shards:
            raise RuntimeError(f"no successful expert episode to write ({len(jobs)} failed)")
        rid = repo_id or f"local/{out.name}"
        # one file per shard (no repacking: concatenating parquet files of embedded images is slow)
        aggregate_datasets([f"local/{Path(r).name}" for r in shards], rid, roots=[Path(r) for r in shards],
                           aggr_root=out, concatenate_data=False, concatenate_videos=False)
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)
    per_task: dict[str, int] = {}
    for inf in infos:
        for k, v in (inf.get("per_task") or {}).items():
            per_task[k] = per_task.get(k, 0) + v
    return {"out": str(out), "repo_id": rid, "episodes": sum(i.get("episodes", 0) for i in infos),
            "skipped_failed": sum(i.get("skipped_failed", 0) for i in infos),
            "frames": sum(i.get("frames", 0) for i in infos), "fps": int(round(1 / T.DT)), "per_task": per_task,
            "cameras": list(cameras), "image_shape": [height, width, 3], "storage": "video" if video else "image",
            "shards": len(shards)}


# ---------------------------------------------------------------------------- graph source
def collect_graph_bags(tasks: list[str], episodes: int, seed: int, cameras, height: int, width: int,
                       camera_every: int, workers: int, work_dir: Path, episodes_per_graph: int = 5) -> list[str]:
    """Run the expert through the real graph (recorder on); return the bag paths."""
    from wam_apps.evaluation.runner import Job, contiguous_runs, run_jobs

    sim = {"sim_bridge": {"render": {"width": int(width), "height": int(height), "camera_every": int(camera_every),
                                     "cameras": list(cameras)}}}
    jobs = []
    for t in tasks:
        for run in contiguous_runs([seed + i for i in range(episodes)], max(1, episodes_per_graph)):
            jobs.append(Job("expert", {"backend": {"type": "expert"}}, "clean", "clean", 0, sim, t, run,
                            clock="lockstep", bags="keep", out_dir=str(work_dir)))
    results = run_jobs(jobs, str(work_dir), workers=workers)
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError("; ".join(errors))
    bags = sorted({r["bag"] for res in results for r in res.rows if r.get("bag")})
    if not bags:
        raise RuntimeError(f"the graph recorded no bags under {work_dir}")
    return bags


# ---------------------------------------------------------------------------- dataset
def features(cameras, height: int, width: int, video: bool) -> dict:
    from wam_apps.export_lerobot import features as export_features

    feats = export_features((height, width, 3), cameras)
    if not video:
        for c in cameras:
            feats[f"observation.images.{c}"]["dtype"] = "image"
    return feats


def write_dataset(demos, out: Path, fps: int, cameras, height: int, width: int, video: bool = False,
                  repo_id: str | None = None, keep_failed: bool = False, writer_threads: int = 4,
                  on_episode=None) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset.create(repo_id=repo_id or f"local/{out.name}", fps=fps,
                               features=features(cameras, height, width, video), root=out, robot_type="aloha",
                               use_videos=video, image_writer_threads=0 if video else int(writer_threads))
    kept = skipped = frames = 0
    per_task: dict[str, int] = {}
    try:
        for d in demos:
            if not d.success and not keep_failed:
                skipped += 1
                if on_episode:
                    on_episode(d, False)
                continue
            for k in range(len(d.states)):
                frame = {f"observation.images.{c}": d.images[c][k] for c in cameras}
                frame["observation.state"] = d.states[k]
                frame["action"] = d.actions[k]
                frame["task"] = d.prompt
                ds.add_frame(frame)
            ds.save_episode(parallel_encoding=False) if video else ds.save_episode()
            kept += 1
            frames += len(d.states)
            per_task[d.task] = per_task.get(d.task, 0) + 1
            if on_episode:
                on_episode(d, True)
    finally:
        ds.finalize()
    if kept == 0:
        raise RuntimeError(f"no successful expert episode to write ({skipped} failed)")
    return {"out": str(out), "repo_id": ds.repo_id, "episodes": kept, "skipped_failed": skipped,
            "frames": frames, "fps": fps, "per_task": per_task, "cameras": list(cameras),
            "image_shape": [height, width, 3], "storage": "video" if video else "image"}


def collect(via: str, tasks: list[str], episodes: int, out: str | Path, seed: int = 0, cameras=DEFAULT_CAMERAS,
            height: int = 240, width: int = 320, camera_every: int = 5, workers: int = 1, video: bool = True,
            repo_id: str | None = None, keep_failed: bool = False, overwrite: bool = False, max_steps: int = 0,
            quiet: bool = False, bags_dir: str | Path | None = None) -> dict:
    from sim_bridge.tasks import TASKS
    from sim_bridge.experts import PLANS

    out = Path(out)
    unknown = [t for t in tasks if t not in TASKS or t not in PLANS]
    if unknown:
        raise ConfigError(f"--task: no scripted expert for '{unknown[0]}' (have: {', '.join(sorted(PLANS))})")
    cams = tuple(cameras)
    bad = [c for c in cams if c not in T.CAMERAS + T.OPTIONAL_CAMERAS]
    if bad or not cams:
        raise ConfigError(f"--cameras: unknown camera '{bad[0] if bad else ''}' (known: {', '.join(T.CAMERAS)})")
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    if min(height, width) < 16 or camera_every < 1:
        raise ConfigError("--height/--width must be >= 16 and --camera-every >= 1")
    if via not in ("sim", "graph"):
        raise ConfigError(f"--via must be 'sim' or 'graph', got '{via}'")
    if out.exists():
        if not overwrite:
            raise ConfigError(f"output '{out}' exists (use --overwrite)")
        shutil.rmtree(out)
    t0 = time.monotonic()
    n_total = len(tasks) * episodes

    def report(d: Demo, kept: bool):
        report.n += 1
        if not quiet:
            print(f"[collect] {report.n}/{n_total} {d.task} seed {d.seed}: "
                  f"{'ok' if d.success else 'expert failed'}{'' if kept else ' (skipped)'} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
    report.n = 0

    if via == "sim" and workers > 1:
        out.parent.mkdir(parents=True, exist_ok=True)
        info = collect_sim_sharded(tasks, episodes, seed, cams, height, width, camera_every, workers, out, video,
                                   keep_failed, max_steps, repo_id, quiet)
    elif via == "sim":
        demos = collect_sim(tasks, episodes, seed, cams, height, width, camera_every, 1, max_steps)
        info = write_dataset(demos, out, int(round(1 / T.DT)), cams, height, width, video, repo_id, keep_failed,
                             on_episode=report)
    else:
        from wam_apps.export_lerobot import export

        work = Path(bags_dir) if bags_dir else Path(tempfile.mkdtemp(
            prefix="wam_collect_", dir=str(out.parent) if out.parent.exists() else None))
        try:
            bags = collect_graph_bags(tasks, episodes, seed, cams, height, width, camera_every, workers, work)
            info = export(bags, out, repo_id=repo_id, success_only=not keep_failed, cameras=cams)
            info["storage"] = "video"  # export-lerobot's layout (videos) whatever --video says
        finally:
            if not bags_dir:
                shutil.rmtree(work, ignore_errors=True)
    info.update({"via": via, "tasks": list(tasks), "seed": seed, "camera_every": camera_every,
                 "seconds": round(time.monotonic() - t0, 1)})
    (out / "meta" / "wam_collect.json").write_text(json.dumps(info, indent=1))
    return info


def add_arguments(p) -> None:
    p.add_argument("--via", choices=["sim", "graph"], default="sim",
                   help="sim: the sim core in worker processes (no ROS); graph: the real graph + recorder + export")
    p.add_argument("--task", default="transfer_cube", help="sim task(s), comma-separated (default transfer_cube)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task (default 50)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0; eval suites start at 100000)")
    p.add_argument("--out", required=True, help="dataset folder (LeRobotDataset root)")
    p.add_argument("--repo-id", default=None, help="dataset repo id (default local/<out name>)")
    p.add_argument("--cameras", default=",".join(DEFAULT_CAMERAS), help="comma-separated cameras (default cam_high)")
    p.add_argument("--height", type=int, default=240, help="image height (default 240, as config/aloha_sim.yaml)")
    p.add_argument("--width", type=int, default=320, help="image width (default 320)")
    p.add_argument("--camera-every", type=int, default=5, help="cameras render every n-th step (default 5)")
    p.add_argument("--max-steps", type=int, default=0, help="steps per episode (0 = the task's)")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)),
                   help="parallel worker processes (sim) / graphs (graph)")
    p.add_argument("--images", action="store_true", help="store PNG frames instead of videos (--via sim)")
    p.add_argument("--keep-failed", action="store_true", help="also write episodes where the expert failed")
    p.add_argument("--bags-dir", default=None, help="--via graph: keep the recorded bags (and logs) here")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    cams = [c.strip() for c in args.cameras.split(",") if c.strip()]
    try:
        info = collect(args.via, tasks, args.episodes, args.out, args.seed, cams, args.height, args.width,
                       args.camera_every, args.workers, not args.images, args.repo_id, args.keep_failed, args.overwrite,
                       args.max_steps, bags_dir=args.bags_dir)
    except RuntimeError as exc:
        print(f"wam-policy collect: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1))
    return 0
