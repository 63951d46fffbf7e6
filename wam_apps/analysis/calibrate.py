"""Recorded episodes for calibration: a bag's command stream and joint states, aligned by step.

:func:`recordings_from_bag` reads every episode of one bag (an EPISODE ``start`` event to its
``end``) into a :class:`sim_bridge.calibration.Recording`:

- ``measured[k]``: the 14-dim joint state the sim/robot published at step k (both arms of one
  header stamp, the raw ``/follower_{arm}/joint_states`` topics; a lockstep resend of a step — the
  same stamp again — is read once). Step k is ``(stamp − start stamp) / DT``;
- ``commands[k]``: the command applied at step k. A lockstep command names the stamp it answers
  (``aloha.command_answers``): it is that step's (the first answer counts, as the sim applies it);
  an unlabelled command (realtime) is the newest one logged before step k+1's joint states; a step
  with none holds the previous one, as the sim does (NaN row).

The episode's ``task`` and ``seed`` (start event) let the replay reset the same layout and pose.
Bad input is a ValueError naming the bag and episode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wam_common import aloha, imageio, topics as T
from wam_common.bag.reader import Bag, decode, image, json_event

DT_NS = int(round(T.DT * 1e9))
MIN_STEPS = 20


class _Episode:
    def __init__(self, name: str, ev: dict):
        self.name, self.ev = name, ev
        self.start = int(ev.get("stamp_ns", 0))
        self.states: dict[int, np.ndarray] = {}      # step → 14
        self.state_log: dict[int, int] = {}          # step → log ns of the pair
        self.pending: dict[int, dict] = {}           # stamp → arm → 7 (aloha.pair_arm_states)
        self.labelled: dict[int, np.ndarray] = {}    # step → first command answering it
        self.unlabelled: list[tuple[int, np.ndarray]] = []  # (log ns, command)
        self.end: dict | None = None
        self.bad_commands = 0
        self.frames: dict[int, np.ndarray] = {}      # step → camera frame (recordings_from_bag's camera)


def has_camera(path: str | Path, camera: str = "cam_high") -> bool:
    """Whether the bag recorded ``camera``'s raw image topic (what the camera fit needs)."""
    with Bag(Path(path)) as bag:
        return T.camera_topic(camera) in bag.topics


def recordings_from_bag(path: str | Path, max_steps: int = 0, camera: str | None = None) -> list:
    """Every usable episode of one bag as a Recording (``max_steps`` > 0: only each episode's first
    ``max_steps`` steps; ``camera``: also that camera's frames, by the step their stamp names — a
    ValueError when the bag did not record it)."""
    from sim_bridge.calibration import Recording

    path = Path(path)
    with Bag(path) as bag:
        have = bag.topics
        cam_topic = T.camera_topic(camera) if camera else None
        if cam_topic and cam_topic not in have:
            raise ValueError(f"{path}: no {camera} images ({cam_topic}) in the bag — the camera fit needs bags "
                             f"recorded with {camera} rendered (e.g. --suite parity_cameras); --camera off fits the "
                             f"dynamics alone")
        states = {T.joint_state_topic(a): a for a in T.ARMS}
        missing = [t for t in (T.EPISODE, T.COMMAND, *states) if t not in have]
        if missing:
            what = {T.EPISODE: "episode events (task, seed)", T.COMMAND: "commands"}
            raise ValueError(f"{path}: no {', '.join(what.get(t, 'joint states ' + t) for t in missing)} in the bag "
                             f"(calibration replays the recorded commands from each episode's seed)")
        episodes: list[_Episode] = []
        cur: _Episode | None = None
        for m in bag.messages([T.EPISODE, T.COMMAND, *states, *([cam_topic] if cam_topic else [])]):
            if m.topic == T.EPISODE:
                ev = json_event(m)
                if not ev:
                    continue
                if ev.get("event") == "start":
                    cur = _Episode(f"{path.name} episode {ev.get('episode', len(episodes))}", ev)
                    episodes.append(cur)
                elif ev.get("event") == "end" and cur is not None:
                    cur.end, cur = ev, None
                continue
            if cur is None:
                continue
            try:
                msg = decode(m)
            except Exception as exc:  # noqa: BLE001 - a message the bag's own type cannot decode
                raise ValueError(f"{cur.name}: cannot decode a {m.topic} message ({exc})") from None
            if m.topic == cam_topic:
                try:
                    img = image(m)
                    arr = imageio.to_rgb(img)
                except Exception as exc:  # noqa: BLE001 - a frame the image codec cannot read
                    raise ValueError(f"{cur.name}: cannot decode a {camera} image ({exc})") from None
                k, rem = divmod(img.stamp.ns - cur.start, DT_NS)
                if not rem and k >= 0 and k not in cur.frames:
                    cur.frames[k] = np.array(arr)
                continue
            if m.topic in states:
                try:
                    pair = aloha.pair_arm_states(cur.pending, states[m.topic], msg)
                except ValueError as exc:
                    raise ValueError(f"{cur.name}: bad joint state on {m.topic}: {exc}") from None
                if pair is None:
                    continue
                stamp, state = pair
                k, rem = divmod(stamp - cur.start, DT_NS)
                if rem or k < 0 or k in cur.states:
                    continue  # another episode's, or a lockstep resend of a step already read
                cur.states[k], cur.state_log[k] = state, m.log_ns
                continue
            data = np.asarray(msg.data, dtype=float)
            if data.shape != (T.STATE_DIM,) or not np.all(np.isfinite(data)):
                cur.bad_commands += 1  # the sim rejects these and holds the last command
                continue
            ans = aloha.command_answers(msg.layout)
            if ans is not None:
                k, rem = divmod(ans - cur.start, DT_NS)
                if not rem and k >= 0 and k not in cur.labelled:
                    cur.labelled[k] = data
            else:
                cur.unlabelled.append((m.log_ns, data))
    if not episodes:
        raise ValueError(f"{path}: no episode start events (/sim/episode) — calibration needs each episode's task "
                         f"and seed")
    out = []
    for ep in episodes:
        out.append(_recording(ep, max_steps, Recording))
    return out


def _recording(ep: _Episode, max_steps: int, Recording):
    ev = ep.ev
    task, seed = ev.get("task"), ev.get("seed")
    if not task or not isinstance(seed, int):
        raise ValueError(f"{ep.name}: the start event lacks the task or seed")
    if ev.get("physical"):
        raise ValueError(f"{ep.name}: recorded with physical perturbation {ev['physical']}; calibrate from clean "
                         f"episodes (the replay must start from the same scene)")
    if ev.get("backend", "mujoco") != "mujoco":
        raise ValueError(f"{ep.name}: recorded with the {ev['backend']} backend; calibration replays in MuJoCo")
    if not ep.states:
        raise ValueError(f"{ep.name}: no joint states (both arms of one stamp) in the episode")
    n = 0
    while n in ep.states:
        n += 1
    if ep.end is not None and isinstance(ep.end.get("steps"), int):
        n = min(n, ep.end["steps"])
    if max_steps:
        n = min(n, int(max_steps))
    if n < MIN_STEPS:
        raise ValueError(f"{ep.name}: only {n} consecutive steps of joint states from step 0 (need ≥ {MIN_STEPS})")
    cmds = np.full((n, T.STATE_DIM), np.nan)
    if ep.labelled:
        for k, c in ep.labelled.items():
            if k < n:
                cmds[k] = c
    elif ep.unlabelled:
        logs = np.array([t for t, _ in ep.unlabelled])
        for k in range(n):
            nxt = ep.state_log.get(k + 1)
            i = int(np.searchsorted(logs, nxt, side="left")) - 1 if nxt is not None else len(logs) - 1
            if i >= 0:
                cmds[k] = ep.unlabelled[i][1]
    else:
        raise ValueError(f"{ep.name}: no commands in the episode")
    if not np.isfinite(cmds[:, 0]).any():
        raise ValueError(f"{ep.name}: no command applied in its first {n} steps")
    return Recording(ep.name, str(task), int(seed), cmds, np.stack([ep.states[k] for k in range(n)]),
                     frames={k: f for k, f in ep.frames.items() if k < n})
