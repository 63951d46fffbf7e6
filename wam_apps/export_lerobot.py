"""``wam-policy export-lerobot BAG… OUT``: recorded episodes → a LeRobotDataset (v3 layout).

Written through LeRobot's own API (``LeRobotDataset.create`` / ``add_frame`` / ``save_episode``
/ ``finalize``), so demos recorded through the graph train a LeRobot policy directly. Features
follow LeRobot's real-ALOHA datasets: ``observation.images.<cam>`` (videos, H×W×3),
``observation.state`` and ``action`` (14 float32, ``[left 6, left gripper, right 6, right
gripper]``, grippers normalised 0..1), the task string per frame.

One frame per control step: a step is a joint-state pair (both arms, same stamp; the raw
topics by default, ``--perturbed`` for what the policy saw), its action is the next COMMAND,
its images the newest frame of each camera stamped at or before the step (cameras publish
every ``camera_every`` steps). A lockstep step the sim resent (the same joint-state stamp again)
and the policy's re-answer to it stay one frame; a COMMAND labelled as answering another stamp
(``aloha.command_answers``: a late re-answer) is no step's action, as the sim drops it too.
An episode keeps only steps stamped within its start and end events' ``stamp_ns``: a step
written out of order across a boundary is left out rather than given to the wrong episode.
The task string is the episode's instruction (start event or
``/instruction``), else its task name. fps = 50 / ``--stride``. A bag without EPISODE events (a
robot run) is one episode of unknown outcome (left out by ``--success-only``).
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wam_common import aloha, topics as T
from wam_common.config import ConfigError
from wam_common.imageio import to_rgb

STATE_NAMES = [f"{arm}_{j}" for arm in T.ARMS for j in T.JOINTS_PER_ARM]


@dataclass
class _Step:
    stamp: int
    state: np.ndarray
    images: dict
    action: np.ndarray | None = None


@dataclass
class _Episode:
    index: int
    task: str
    success: bool | None = None
    steps: list = field(default_factory=list)
    start_ns: int = 0  # the start event's stamp: earlier steps are the previous episode's


def read_episodes(bag_paths, cameras=T.CAMERAS, perturbed: bool = False) -> list[_Episode]:
    """Step-aligned episodes from bags (state, action, images, task)."""
    from wam_common.bag.reader import Bag, decode, image, json_event, string

    pre = T.perturbed if perturbed else (lambda t: t)
    cam_topics = {pre(T.camera_topic(c)): c for c in cameras}
    js_topics = {pre(T.joint_state_topic(a)): a for a in T.ARMS}
    instr_topic = pre(T.INSTRUCTION)
    out: list[_Episode] = []
    for path in bag_paths:
        with Bag(path) as bag:
            have = bag.topics
            missing = [t for t in list(cam_topics) + list(js_topics) + [T.COMMAND] if t not in have]
            if missing:
                raise ConfigError(f"bag '{path}' lacks topic(s) {', '.join(missing)} needed for export")
            latest: dict[str, tuple[int, np.ndarray]] = {}
            pending: dict[int, dict] = {}
            cur: _Episode | None = None
            implicit = False  # no EPISODE events at all (a robot run): the whole bag is one episode
            waiting: _Step | None = None
            instruction = ""
            topics = list(cam_topics) + list(js_topics) + [T.COMMAND] + \
                [t for t in (T.EPISODE, instr_topic) if t in have]
            started = False
            for m in bag.messages(topics):
                if m.topic == T.EPISODE:
                    ev = json_event(m) or {}
                    if ev.get("event") == "start":
                        started = True
                        cur = _Episode(int(ev.get("episode", len(out))),
                                       str(ev.get("instruction") or instruction or ev.get("task") or "task"),
                                       start_ns=_stamp(ev))
                        waiting, pending = None, {}
                    elif ev.get("event") == "end" and cur is not None:
                        cur.success = bool(ev.get("success"))
                        end_ns = _stamp(ev)
                        if end_ns:  # steps of the next episode written before this event
                            cur.steps = [s for s in cur.steps if s.stamp < end_ns]
                        out.append(cur)
                        cur = None
                elif m.topic == instr_topic:
                    instruction = string(m)
                elif m.topic in cam_topics:
                    try:
                        img = image(m)
                        latest[cam_topics[m.topic]] = (img.stamp.ns, np.array(to_rgb(img)))
                    except Exception:  # noqa: BLE001 - a bad frame is skipped
                        continue
                elif m.topic in js_topics and (cur is not None or not started):
                    if cur is None:
                        started = implicit = True
                        cur = _Episode(len(out), instruction or "task")
                    try:
                        pair = aloha.pair_arm_states(pending, js_topics[m.topic], decode(m))
                    except Exception:  # noqa: BLE001
                        continue
                    if pair is not None:
                        stamp, state = pair
                        if stamp < cur.start_ns or (cur.steps and stamp <= cur.steps[-1].stamp):
                            continue  # the previous episode's (written late), or a resent step
                        if not all(c in latest and latest[c][0] <= stamp for c in cameras):
                            continue  # no frame of some camera yet
                        waiting = _Step(stamp, state, {c: latest[c][1] for c in cameras})
                elif m.topic == T.COMMAND and cur is not None and waiting is not None:
                    try:
                        cmd = decode(m)
                        act = np.asarray(cmd.data, dtype=float)
                    except Exception:  # noqa: BLE001
                        continue
                    answers = aloha.command_answers(cmd.layout)
                    if answers is not None and answers != waiting.stamp:
                        continue  # answers an earlier step (a re-answer that crossed the sim's resend)
                    if act.shape != (T.STATE_DIM,) or not np.all(np.isfinite(act)):
                        continue
                    waiting.action = act
                    cur.steps.append(waiting)
                    waiting = None
            if implicit and cur is not None:
                if instruction and cur.task == "task":
                    cur.task = instruction
                out.append(cur)
    return out


def _stamp(ev: dict) -> int:
    """An EPISODE event's ``stamp_ns`` (the clock of the joint-state stamps), 0 when absent."""
    t = ev.get("stamp_ns")
    return t if isinstance(t, int) and not isinstance(t, bool) else 0


def features(shape: tuple[int, int, int], cameras=T.CAMERAS) -> dict:
    feats = {f"observation.images.{c}": {"dtype": "video", "shape": tuple(shape), "names": ["height", "width", "channels"]}
             for c in cameras}
    feats["observation.state"] = {"dtype": "float32", "shape": (T.STATE_DIM,), "names": STATE_NAMES}
    feats["action"] = {"dtype": "float32", "shape": (T.STATE_DIM,), "names": STATE_NAMES}
    return feats


def export(bag_paths, out: str | Path, repo_id: str | None = None, stride: int = 1, success_only: bool = False,
           perturbed: bool = False, cameras=T.CAMERAS, overwrite: bool = False, min_steps: int = 2) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise ConfigError(f"output '{out}' exists (use --overwrite)")
        shutil.rmtree(out)
    if stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {stride}")
    eps = read_episodes(bag_paths, cameras, perturbed)
    kept = [e for e in eps if len(e.steps[::stride]) >= min_steps and (e.success or not success_only)]
    if not kept:
        raise ConfigError(f"no exportable episodes in {', '.join(map(str, bag_paths))} "
                          f"({len(eps)} complete episode(s), success_only={success_only})")
    fps = int(round(1.0 / (T.DT * stride)))
    shape = kept[0].steps[0].images[cameras[0]].shape
    if shape[1] < 32:  # SVT-AV1 (LeRobot's default video codec) dies with SIGFPE below ~26 px wide
        raise ConfigError(f"camera images are {shape[1]} px wide; LeRobot's video encoder needs at least 32")
    ds = LeRobotDataset.create(repo_id=repo_id or f"local/{out.name}", fps=fps, features=features(shape, cameras),
                               root=out, robot_type="aloha", use_videos=True)
    frames = 0
    try:
        for ep in kept:
            for st in ep.steps[::stride]:
                frame = {f"observation.images.{c}": st.images[c] for c in cameras}
                frame["observation.state"] = st.state.astype(np.float32)
                frame["action"] = st.action.astype(np.float32)
                frame["task"] = ep.task
                ds.add_frame(frame)
                frames += 1
            ds.save_episode(parallel_encoding=False)
    finally:
        ds.finalize()
    return {"out": str(out), "repo_id": ds.repo_id, "episodes": len(kept), "frames": frames, "fps": fps,
            "skipped": len(eps) - len(kept), "cameras": list(cameras), "image_shape": list(shape)}


def add_arguments(p) -> None:
    p.add_argument("bags", nargs="+", metavar="BAG", help="bags (rosbag2 directories or .mcap files)")
    p.add_argument("out", metavar="OUT", help="output folder (the dataset root; must not exist)")
    p.add_argument("--repo-id", default=None, help="dataset repo id (default local/<OUT name>)")
    p.add_argument("--stride", type=int, default=1, help="keep every n-th step (fps = 50/n)")
    p.add_argument("--success-only", action="store_true", help="export successful episodes only")
    p.add_argument("--perturbed", action="store_true", help="use the /perturbed topics (what the policy saw)")
    p.add_argument("--cameras", default=",".join(T.CAMERAS), help="comma-separated camera names")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    import json

    bags, out = args.bags, args.out
    for b in bags:
        if not Path(b).exists():
            raise ConfigError(f"bag '{b}' does not exist")
    cams = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    from wam_common.bag.reader import BagReadError

    try:
        info = export(bags, out, args.repo_id, args.stride, args.success_only, args.perturbed, cams, args.overwrite)
    except BagReadError as exc:
        print(f"wam-policy export-lerobot: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1))
    return 0
