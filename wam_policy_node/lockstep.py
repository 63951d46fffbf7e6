"""The policy node's inputs and its lockstep step assembly, without ROS (clock injected).

:class:`Inputs` keeps what the node received, by stamp, in both clock modes: joint states per arm,
frames per camera, privileged states, EPISODE start events and the episode in use.

:class:`Lockstep` answers each sim step (a joint-state pair's stamp ``t``) exactly once. It says what
the node should do: :class:`Wait` for the step's privileged state, episode or frames; :class:`Ready`
with the step's observation (after ``wait_s`` also without what did not come, and why); or
:class:`Resend` the command of a step the sim resent ``reanswer_after_s`` after our answer (it
lost it). A newer step abandons an older pending one.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from wam_common.topics import ARMS, DT

from .backends import Observation
from .observation import ObservationMap, state14


def episode_key(ev: dict | None) -> tuple | None:
    """What tells one episode start from another (a repeated start event is the same episode)."""
    return (ev.get("episode"), ev.get("stamp_ns"), ev.get("seed")) if ev else None


def step_index(t: int, priv: dict | None, ev: dict | None) -> int | None:
    """The episode step at stamp ``t``: the privileged state's ``step``, else counted in ``DT`` from the
    episode's start stamp; None when neither is known."""
    if priv is not None and "step" in priv:
        return int(priv["step"])
    if ev is not None and ev.get("stamp_ns") is not None:
        return round((t - int(ev["stamp_ns"])) / (DT * 1e9))
    return None


class Inputs:
    """The node's received inputs by stamp (the node's data callback group guards them)."""

    JS_KEPT = 16  # joint states kept per arm
    FRAMES_KEPT = 8  # frames kept per camera
    PRIV_KEPT = 8  # privileged states kept

    def __init__(self, cams: list[str], camera_every: int = 1):
        self.cams = list(cams)
        self.js: dict[str, OrderedDict[int, np.ndarray]] = {a: OrderedDict() for a in ARMS}  # stamp → arm7
        self.frames: dict[str, deque] = {c: deque(maxlen=self.FRAMES_KEPT) for c in self.cams}  # (stamp, rgb)
        self.priv: OrderedDict[int, dict] = OrderedDict()  # stamp → privileged state
        self.latest_priv: dict | None = None
        self.starts: dict = {}  # episode index → start event
        self.latest_start: dict | None = None
        self.prompt: str | None = None  # from INSTRUCTION; else the episode's instruction
        self.default_camera_every = max(1, int(camera_every))
        self.camera_every = self.default_camera_every  # of the episode in use
        self.episode_key: tuple | None = None  # of the episode in use

    def add_joint_state(self, arm: str, t: int, arm7: np.ndarray) -> bool:
        """Keep one arm's state at ``t``; True when the other arm has one at ``t`` too (a lockstep pair)."""
        q = self.js[arm]
        q[t] = arm7
        while len(q) > self.JS_KEPT:
            q.popitem(last=False)
        return t in self.js["right" if arm == "left" else "left"]

    def add_frame(self, cam: str, t: int, rgb: np.ndarray) -> None:
        self.frames[cam].append((t, rgb))

    def add_privileged(self, priv: dict) -> None:
        """Keep a step's privileged state; TypeError or ValueError when its ``stamp_ns`` is not an integer."""
        t = int(priv.get("stamp_ns"))
        self.latest_priv = priv
        self.priv[t] = priv
        while len(self.priv) > self.PRIV_KEPT:
            self.priv.popitem(last=False)

    def add_start(self, ev: dict) -> None:
        """Keep an EPISODE start event."""
        self.starts[ev.get("episode")] = ev
        self.latest_start = ev

    def switch_episode(self, ev: dict | None) -> bool:
        """Make ``ev`` the episode in use; False when it already is (the node resets on True)."""
        key = episode_key(ev)
        if key == self.episode_key:
            return False
        self.episode_key = key
        if ev:
            self.camera_every = max(1, int(ev.get("camera_every") or self.default_camera_every))
        return True

    def episode_for(self, t: int, priv: dict | None) -> tuple[dict | None, bool]:
        """(start event of the episode of step ``t`` or None, whether it is known): the episode the step's
        privileged state names (not known before its start event came), else the latest start at or
        before ``t``."""
        if priv is not None and "episode" in priv:
            ev = self.starts.get(priv["episode"])
            if ev is not None and (priv.get("episode_start_ns") in (None, ev.get("stamp_ns"))):
                return ev, True
            return self.latest_start, False
        cands = [e for e in self.starts.values() if int(e.get("stamp_ns", 0)) <= t]
        return (max(cands, key=lambda e: int(e.get("stamp_ns", 0))) if cands else None), True

    def prompt_for(self, ev: dict | None) -> str:
        if self.prompt is not None:
            return self.prompt
        return str((ev or {}).get("instruction", ""))

    def state(self, t: int) -> np.ndarray:
        """The 14-dim state of the joint-state pair at ``t``."""
        return state14(self.js["left"][t], self.js["right"][t])

    def stale_cameras(self, now_ns: int, stale_ns: int) -> list[str]:
        """The cameras without a frame in the last ``stale_ns`` while the joint states are fresh (none
        when the joint states are stale or absent too: then it is they that are missing)."""
        js_new = min((next(reversed(q)) for q in self.js.values() if q), default=None)
        if js_new is None or now_ns - js_new > stale_ns:
            return []
        return [c for c in self.cams if not self.frames[c] or now_ns - self.frames[c][-1][0] > stale_ns]


@dataclass(frozen=True)
class Wait:
    """Nothing to send now: the pending step awaits its inputs (or none is pending)."""

    abandoned: int | None = None  # an older pending step this one replaced (the node says so)


@dataclass(frozen=True)
class Ready:
    """Answer the step ``obs.stamp_ns`` with ``obs``; ``missing`` says why it lacks inputs (the hold)."""

    obs: Observation
    missing: str | None = None  # "missing_camera" after wait_s without a frame
    lacking: list[str] = field(default_factory=list)  # the cameras without one
    abandoned: int | None = None  # as Wait's


@dataclass(frozen=True)
class Resend:
    """Publish the command answering step ``t`` again: the sim resent the step."""

    t: int
    cmd: np.ndarray


class Lockstep:
    """The pending-step decisions of lockstep mode, over :class:`Inputs`.

    ``should_infer(t)`` says whether a new chunk starts at ``t`` (then the step's frames are needed);
    ``privileged_published()`` whether anyone publishes privileged states; ``on_episode(ev)`` is
    called when a step starts a new episode, before the step's frames are chosen (the node resets
    its runtime there); ``now`` is a monotonic clock in seconds.
    """

    ANSWERS_KEPT = 8

    def __init__(self, inputs: Inputs, obs_map: ObservationMap, *, needs_images: bool, needs_privileged: bool,
                 streams: bool, should_infer: Callable[[int], bool], privileged_published: Callable[[], bool],
                 on_episode: Callable[[dict], None], wait_s: float, reanswer_after_s: float,
                 now: Callable[[], float] = time.monotonic):
        self.inputs, self.obs_map = inputs, obs_map
        self.needs_images, self.needs_privileged, self.streams = needs_images, needs_privileged, streams
        self.should_infer, self.privileged_published, self.on_episode = should_infer, privileged_published, on_episode
        self.wait_s, self.reanswer_after_s = float(wait_s), float(reanswer_after_s)
        self.now = now
        self.pending: int | None = None  # stamp of the step awaiting its answer
        self.pending_since = 0.0
        self._answers: OrderedDict[int, tuple[np.ndarray, float]] = OrderedDict()  # stamp → (command, when sent)

    def pair(self, t: int) -> Wait | Ready | Resend:
        """The joint-state pair of step ``t`` arrived (perhaps again)."""
        if t in self._answers:
            cmd, when = self._answers[t]
            if (self.reanswer_after_s > 0 and t == next(reversed(self._answers))
                    and self.now() - when > self.reanswer_after_s):
                self._answers[t] = (cmd, self.now())
                return Resend(t, cmd)
            return Wait()  # a resend that crossed our answer
        abandoned = self.pending if self.pending not in (None, t) else None
        if self.pending != t:
            self.pending, self.pending_since = t, self.now()
        got = self.poll()
        return replace(got, abandoned=abandoned) if abandoned is not None else got

    def poll(self) -> Wait | Ready:
        """Decide on the pending step: wait for its inputs (at most ``wait_s``), or build its observation."""
        t = self.pending
        if t is None:
            return Wait()
        inp = self.inputs
        timed_out = self.now() - self.pending_since > self.wait_s
        priv = inp.priv.get(t)
        if priv is None and not timed_out and (
                self.needs_privileged or inp.latest_priv is not None or self.privileged_published()):
            return Wait()  # the sim publishes the step's privileged state (episode, step): wait for it
        ev, known = inp.episode_for(t, priv)
        if not known and not timed_out:
            return Wait()
        if ev is not None and inp.switch_episode(ev):
            self.on_episode(ev)
        step = step_index(t, priv, ev)
        missing, frames, stamps = None, {}, {}
        # the frames of this step: for a new chunk, or for a backend that observes every step
        if self.needs_images and (self.streams or self.should_infer(t)):
            exact = step is not None and step % inp.camera_every == 0  # a step the sim renders
            for cam in inp.cams:
                hit = [(s, f) for s, f in inp.frames[cam] if (s == t if exact else s <= t)]
                if hit:
                    stamps[cam], frames[cam] = hit[-1]
            if len(frames) < len(inp.cams):
                if not timed_out:
                    return Wait()
                missing = "missing_camera"
        self.pending = None
        obs = Observation(stamp_ns=t, images=self.obs_map.images(frames) if frames and not missing else {},
                          state=inp.state(t), prompt=inp.prompt_for(ev), privileged=priv, step=step,
                          image_stamps=stamps)
        return Ready(obs, missing, [c for c in inp.cams if c not in frames] if missing else [])

    def answered(self, t: int, cmd: np.ndarray) -> None:
        """The node published ``cmd`` for step ``t`` (kept to answer a resend of it)."""
        self._answers[t] = (cmd, self.now())
        while len(self._answers) > self.ANSWERS_KEPT:
            self._answers.popitem(last=False)
