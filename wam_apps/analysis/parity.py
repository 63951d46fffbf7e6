"""Sim–real parity from two bags: stream distributions side by side, and an open-loop replay of the
real bag's observations through a policy backend against the commands the robot recorded.

- :func:`stream_stats`: per camera (resolution, encoding, rate, per-channel mean/std, luma
  histogram, frozen frames), per joint (range, mean, velocity from consecutive stamps), per topic
  rate, command period and obs→command latency (via :mod:`.episodes`).
- :func:`open_loop`: for each recorded episode and step (a joint-state pair, the ``/perturbed``
  ones when recorded: what the policy saw), an :class:`Observation` with that step's state, the
  newest frame of each camera stamped at or before it and the instruction; the backend
  (``wam_policy_node.backends``, any registered type) infers a chunk every ``replan`` steps (0:
  when the chunk runs out) and each step's action is compared with the command recorded for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wam_common import aloha, topics as T
from wam_common.bag.reader import Bag, decode, image, json_event, string
from wam_common.imageio import to_rgb

_LUMA = np.array([0.299, 0.587, 0.114])


def _rate(stamps: list[int]) -> float | None:
    if len(stamps) < 2:
        return None
    span = (max(stamps) - min(stamps)) / 1e9
    return (len(stamps) - 1) / span if span > 0 else None


def stream_stats(path: str | Path, max_frames: int = 300) -> dict:
    """Distributions of one bag (cameras, joints, topic rates, timing)."""
    from wam_apps.analysis.episodes import _stats, analyze_bag

    cams: dict[str, dict] = {}
    joints: dict[str, list] = {}
    rates: dict[str, list[int]] = {}
    with Bag(path) as bag:
        have = bag.topics
        cam_topics = {T.camera_topic(c): c for c in T.CAMERAS + T.OPTIONAL_CAMERAS if T.camera_topic(c) in have}
        js_topics = {T.joint_state_topic(a): a for a in T.ARMS if T.joint_state_topic(a) in have}
        counts = bag.counts()
        seen_frames: dict[str, int] = {}
        for m in bag.messages():
            rates.setdefault(m.topic, []).append(m.log_ns)
            if m.topic in cam_topics:
                cam = cam_topics[m.topic]
                c = cams.setdefault(cam, {"sums": [], "stds": [], "hist": np.zeros(32), "frozen": 0, "prev": None,
                                          "shape": None, "encoding": None, "bad": 0})
                n = seen_frames.get(cam, 0)
                seen_frames[cam] = n + 1
                stride = max(1, counts.get(m.topic, 1) // max_frames)
                if n % stride:
                    continue
                try:
                    img = image(m)
                    rgb = to_rgb(img).astype(np.float32)
                except Exception:  # noqa: BLE001
                    c["bad"] += 1
                    continue
                c["shape"], c["encoding"] = list(rgb.shape), img.encoding
                c["sums"].append(rgb.reshape(-1, 3).mean(0))
                c["stds"].append(rgb.reshape(-1, 3).std(0))
                luma = rgb @ _LUMA
                c["hist"] += np.histogram(luma, bins=32, range=(0, 256))[0]
                small = luma[::8, ::8]
                if c["prev"] is not None and c["prev"].shape == small.shape and np.array_equal(c["prev"], small):
                    c["frozen"] += 1
                c["prev"] = small
            elif m.topic in js_topics:
                try:
                    js = decode(m, bag.reader)
                    arm7 = aloha.arm_state_from_joint_state(list(js.name), list(js.position))
                except Exception:  # noqa: BLE001
                    continue
                stamp = js.header.stamp.sec * 1_000_000_000 + js.header.stamp.nanosec
                joints.setdefault(js_topics[m.topic], []).append((stamp, arm7))
    out_cams = {}
    for cam, c in cams.items():
        means = np.array(c["sums"]) if c["sums"] else np.zeros((0, 3))
        out_cams[cam] = {"frames": seen_frames.get(cam, 0), "shape": c["shape"], "encoding": c["encoding"],
                         "rate_hz": _rate(rates.get(T.camera_topic(cam), [])),
                         "mean_rgb": means.mean(0).tolist() if len(means) else None,
                         "std_rgb": np.array(c["stds"]).mean(0).tolist() if c["stds"] else None,
                         "luma_hist": (c["hist"] / max(1.0, c["hist"].sum())).tolist(),
                         "frozen_fraction": c["frozen"] / max(1, len(c["sums"]) - 1), "undecodable": c["bad"]}
    out_joints = {}
    for arm, series in joints.items():
        series.sort(key=lambda x: x[0])
        st = np.array([s for _, s in series])
        t = np.array([s for s, _ in series]) / 1e9
        dt = np.diff(t)
        ok = dt > 0
        vel = np.diff(st, axis=0)[ok] / dt[ok, None] if len(st) > 1 else np.zeros((0, 7))
        for j, name in enumerate(T.JOINTS_PER_ARM):
            col = st[:, j]
            v = np.abs(vel[:, j]) if len(vel) else np.zeros(0)
            out_joints[f"{arm}_{name}"] = {"min": float(col.min()), "max": float(col.max()), "mean": float(col.mean()),
                                           "std": float(col.std()), "speed_mean": float(v.mean()) if v.size else None,
                                           "speed_p99": float(np.percentile(v, 99)) if v.size else None}
    eps = analyze_bag(path)
    lat = [v for e in eps for v in e._latencies]
    per = [v for e in eps for v in e._periods]
    inf = [v for e in eps for v in e._infer]
    return {"bag": str(path), "cameras": out_cams, "joints": out_joints,
            "rates_hz": {t: _rate(v) for t, v in sorted(rates.items())},
            "counts": dict(sorted(counts.items())),
            "timing": {"command_period_ms": _stats(per), "latency_ms": _stats(lat), "infer_ms": _stats(inf)},
            "episodes": len(eps), "successes": sum(1 for e in eps if e.success),
            "_latencies": lat, "_periods": per}


@dataclass
class OpenLoopEpisode:
    episode: int
    steps: int = 0
    inferences: int = 0
    errors: list = field(default_factory=list, repr=False)  # (step, 14) abs error
    predicted: list = field(default_factory=list, repr=False)
    recorded: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        e = np.array(self.errors) if self.errors else np.zeros((0, T.STATE_DIM))
        arm = e[:, np.r_[0:6, 7:13]] if len(e) else e
        grip = e[:, [6, 13]] if len(e) else e
        return {"episode": self.episode, "steps": self.steps, "inferences": self.inferences,
                "joint_mae_rad": float(arm.mean()) if arm.size else None,
                "joint_rmse_rad": float(np.sqrt((arm ** 2).mean())) if arm.size else None,
                "joint_max_rad": float(arm.max()) if arm.size else None,
                "gripper_mae": float(grip.mean()) if grip.size else None,
                "per_joint_mae": e.mean(0).tolist() if len(e) else None}


def open_loop(real_bag: str | Path, backend_type: str, backend_cfg: dict | None = None,
              replan: int = 0, max_steps: int = 0, perturbed: bool | None = None,
              observation: dict | None = None) -> list[OpenLoopEpisode]:
    """Replay ``real_bag``'s observations through a backend; errors against its recorded commands."""
    from wam_policy_node.backends import Observation, make_backend
    from wam_policy_node.observation import ObservationMap

    backend = make_backend(backend_type, backend_cfg or {})
    omap = ObservationMap.from_config(observation or {})
    out: list[OpenLoopEpisode] = []
    try:
        with Bag(real_bag) as bag:
            have = bag.topics
            if perturbed is None:
                perturbed = all(T.perturbed(T.joint_state_topic(a)) in have for a in T.ARMS)
            pre = T.perturbed if perturbed else (lambda t: t)
            cam_topics = {pre(T.camera_topic(c)): c for c in omap.cameras}
            js_topics = {pre(T.joint_state_topic(a)): a for a in T.ARMS}
            instr_topic = pre(T.INSTRUCTION)
            wanted = [T.EPISODE, T.COMMAND, T.PRIVILEGED_STATE, instr_topic, *cam_topics, *js_topics]
            frames: dict[str, np.ndarray] = {}
            stamps: dict[str, int] = {}
            pending: dict[int, dict] = {}
            cur: OpenLoopEpisode | None = None
            prompt, priv = "", None
            step = 0
            chunk, chunk_start = None, 0
            waiting = None
            started = False
            for m in bag.messages([t for t in wanted if t in have]):
                if m.topic == T.EPISODE:
                    ev = json_event(m) or {}
                    if ev.get("event") == "start":
                        started = True
                        cur = OpenLoopEpisode(int(ev.get("episode", len(out))))
                        out.append(cur)
                        prompt = str(ev.get("instruction") or prompt)
                        backend.reset(ev)
                        step, chunk, waiting, pending = 0, None, None, {}
                    elif ev.get("event") in ("end", "done"):
                        cur = None
                elif m.topic == instr_topic:
                    prompt = string(m)
                elif m.topic == T.PRIVILEGED_STATE:
                    priv = json_event(m)
                elif m.topic in cam_topics:
                    try:
                        img = image(m)
                    except Exception:  # noqa: BLE001
                        continue
                    frames[cam_topics[m.topic]] = np.array(to_rgb(img))
                    stamps[cam_topics[m.topic]] = img.stamp.ns
                elif m.topic in js_topics and (cur is not None or not started):
                    if cur is None:  # a robot bag without EPISODE events: all of it is one episode
                        started = True
                        cur = OpenLoopEpisode(0)
                        out.append(cur)
                        backend.reset(None)
                    try:
                        pair = aloha.pair_arm_states(pending, js_topics[m.topic], decode(m, bag.reader))
                    except Exception:  # noqa: BLE001
                        continue
                    if pair is not None:
                        waiting = pair
                elif m.topic == T.COMMAND and cur is not None and waiting is not None:
                    if max_steps and step >= max_steps:
                        continue
                    try:
                        rec = np.asarray(decode(m, bag.reader).data, dtype=float)
                    except Exception:  # noqa: BLE001
                        continue
                    stamp, state = waiting
                    waiting = None
                    horizon = len(chunk) if chunk is not None else 0
                    if chunk is None or step - chunk_start >= (replan or horizon) or step - chunk_start >= horizon:
                        if backend.needs_images and not all(c in frames for c in omap.cameras):
                            step += 1
                            continue
                        obs = Observation(stamp_ns=stamp, images=omap.images(frames) if backend.needs_images else {},
                                          state=state, prompt=prompt, privileged=priv, step=step,
                                          image_stamps=dict(stamps))
                        chunk = backend.infer(obs).actions
                        chunk_start = step
                        cur.inferences += 1
                    pred = chunk[step - chunk_start]
                    if rec.shape == pred.shape:
                        cur.errors.append(np.abs(pred - rec))
                        cur.predicted.append(pred)
                        cur.recorded.append(rec)
                        cur.steps += 1
                    step += 1
    finally:
        backend.close()
    return [e for e in out if e.steps]
