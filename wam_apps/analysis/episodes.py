"""Per-episode metrics from recorded bags (pure Python over :mod:`wam_common.bag.reader`).

An episode is the span between an EPISODE ``start`` and its ``end`` event (log time). Within it:

- outcome: ``success``/``reason``/``steps`` of the end event (``incomplete`` without one);
- command period: gaps between consecutive COMMAND receptions (wall ms), ``stalls`` = gaps over
  1.5 control periods (as the eval table counts them);
- obs→command latency (log times, i.e. publish stamps by default): from the newest complete
  joint-state pair (both arms, same stamp) as the sim/robot published it to the next COMMAND
  (``latency_ms``, end to end, through the perturbation hop), and from the ``/perturbed`` pair
  the policy reads (``policy_latency_ms``); also the sim's own figure from the end event
  (``sim_latency_ms``);
- inference: ``infer_ms`` of POLICY_STATUS entries with ``inferred``;
- holds: POLICY_STATUS ``hold`` reasons (steps and onsets) and DIAGNOSTICS WARN/ERROR statuses;
- smoothness: RMS jerk of the commanded arm joints (third difference / DT³), the mean step size
  inside chunks and at chunk boundaries (POLICY_STATUS ``chunk_id`` changes) and their ratio;
- perturbation label (dimension, level): recorder ``labels`` → ACTIVE_PERTURBATION
  ``dimension``/``level`` → the start event's ``physical`` → Clean.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from wam_common import aloha, topics as T
from wam_common.bag.reader import Bag, BagMessage, decode, json_event

DIMENSIONS = ("Camera", "Robot", "Language", "Light", "Background", "Noise", "Layout")
CLEAN = "Clean"
ARM_IDX = np.r_[0:6, 7:13]  # the 12 arm joints of a 14-dim command (grippers excluded from jerk)
_ALIASES = {"camera": "Camera", "cam": "Camera", "view": "Camera", "robot": "Robot", "init": "Robot",
            "joint": "Robot", "language": "Language", "instruction": "Language", "prompt": "Language",
            "light": "Light", "lighting": "Light", "background": "Background", "texture": "Background",
            "table": "Background", "noise": "Noise", "blur": "Noise", "fog": "Noise", "layout": "Layout",
            "object": "Layout", "position": "Layout", "distractor": "Layout"}


def dimension_of(name) -> str | None:
    """A study dimension from a label or op/physical perturbation name (case-insensitive)."""
    if not isinstance(name, str) or not name:
        return None
    for d in DIMENSIONS + (CLEAN,):
        if name.lower() == d.lower():
            return d
    low = name.lower()
    for key, d in _ALIASES.items():
        if key in low:
            return d
    return None


def _stats(values, pcts=(50, 90, 99)) -> dict:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if a.size == 0:
        return {"n": 0}
    out = {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
           "max": float(a.max())}
    for p in pcts:
        out[f"p{p}"] = float(np.percentile(a, p))
    return out


@dataclass
class Episode:
    bag: str
    episode: int
    task: str = ""
    seed: int | None = None
    policy: str = "policy"
    dimension: str = CLEAN
    level: int = 0
    success: bool | None = None
    reason: str = "incomplete"
    steps: int | None = None
    duration_s: float | None = None
    start_ns: int = 0
    end_ns: int | None = None
    commands: int = 0  # distinct commands: a lockstep re-answer of an already answered step is not one
    resent_commands: int = 0  # lockstep re-answers (same answered stamp as the previous command)
    command_period_ms: dict = field(default_factory=dict)
    stalls: int | None = 0  # None in lockstep: the sim waits for commands, wall-clock gaps mean nothing
    clock: str = ""
    latency_ms: dict = field(default_factory=dict)  # sim/robot joint states published → command published
    policy_latency_ms: dict = field(default_factory=dict)  # /perturbed joint states → command (the policy node)
    sim_latency_ms: dict = field(default_factory=dict)
    infer_ms: dict = field(default_factory=dict)
    inferences: int = 0
    hold_steps: dict = field(default_factory=dict)
    hold_onsets: int = 0
    diag_warnings: int = 0
    diag_errors: int = 0
    jerk_rms: float | None = None
    step_mean: float | None = None
    boundary_step_mean: float | None = None
    boundary_ratio: float | None = None
    chunk_boundaries: int = 0
    # raw series for plots (not in the JSON summary)
    _latencies: list = field(default_factory=list, repr=False)
    _policy_latencies: list = field(default_factory=list, repr=False)
    _periods: list = field(default_factory=list, repr=False)
    _cmd_t: list = field(default_factory=list, repr=False)
    _cmds: list = field(default_factory=list, repr=False)
    _state_t: list = field(default_factory=list, repr=False)
    _states: list = field(default_factory=list, repr=False)
    _boundaries: list = field(default_factory=list, repr=False)
    _infer: list = field(default_factory=list, repr=False)

    @property
    def outcome(self) -> str:
        if self.success is None:
            return "unknown (no episode events)" if self.reason == "no_episode_events" else "incomplete"
        return "success" if self.success else f"failure ({self.reason})"

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["outcome"] = self.outcome
        d["infer_ms_mean"] = self.infer_ms.get("mean")
        return d

    def table_row(self) -> dict:
        """The row shape of :func:`wam_apps.evaluation.table.build`."""
        return {"policy": self.policy, "dimension": self.dimension, "level": int(self.level),
                "success": bool(self.success), "infer_ms_mean": self.infer_ms.get("mean"), "stalls": self.stalls,
                "task": self.task, "seed": self.seed, "episode": self.episode, "bag": self.bag}


class _Builder:
    """Folds one bag's messages (log-time order) into episodes."""

    def __init__(self, bag_name: str, labels: dict, state_topics: dict[str, tuple[str, str]], policy: str | None):
        self.bag_name, self.labels = bag_name, labels
        self.state_topics = state_topics  # topic → (source "raw" | "perturbed", arm)
        sources = {src for src, _ in state_topics.values()}
        self.e2e_source = "raw" if "raw" in sources else "perturbed"  # obs as the sim/robot published it
        self.policy = policy or str(labels.get("policy") or "policy")
        self.episodes: list[Episode] = []
        self.cur: Episode | None = None
        self.active: dict | None = None
        self.pending_state: dict[tuple[str, int], dict[str, tuple[int, np.ndarray]]] = {}
        self.last_obs: dict[str, int | None] = {}  # source → log time of the newest unanswered pair
        self.statuses: list[dict] = []
        self.last_hold = None
        self.last_answer: int | None = None  # the stamp the previous COMMAND answered (lockstep)
        self.physical: dict = {}

    def _label(self, ep: Episode) -> None:
        dim = dimension_of(self.labels.get("dimension"))
        lvl = self.labels.get("level")
        if dim is None and self.active:
            raw = self.active.get("dimension")
            d = dimension_of(raw) or (str(raw).strip().title() if isinstance(raw, str) and raw.strip() else None)
            if d is not None and d != CLEAN:  # e.g. "light" → Light; "occlusion" stays its own column
                dim, lvl = d, self.active.get("level")
        if dim is None and self.physical:
            name, plevel = next(iter(self.physical.items()))
            dim, lvl = dimension_of(name) or str(name), plevel
        if dim is None:
            dim, lvl = CLEAN, 0
        ep.dimension = dim
        try:
            ep.level = int(lvl or 0)
        except (TypeError, ValueError):
            ep.level = 0

    def feed(self, m: BagMessage) -> None:
        t = m.topic
        if t == T.EPISODE:
            ev = json_event(m)
            if not ev:
                return
            if ev.get("event") == "start":
                self._finish(None)
                ep = Episode(self.bag_name, int(ev.get("episode", len(self.episodes))), task=str(ev.get("task", "")),
                             seed=ev.get("seed"), policy=self.policy, start_ns=m.log_ns)
                ep.clock = str(ev.get("clock", ""))
                self.physical = ev.get("physical") or {}
                self.cur = ep
                self.statuses = []
                self.last_hold = None
                self.last_answer = None
                self.last_obs = {}
            elif ev.get("event") == "end" and self.cur is not None:
                self._finish(ev, m.log_ns)
            return
        if t == T.ACTIVE_PERTURBATION:
            ev = json_event(m)
            if ev:
                self.active = ev
            return
        ep = self.cur
        if ep is None:
            return
        if t in self.state_topics:
            try:
                js = decode(m)
            except Exception:  # noqa: BLE001 - malformed: skipped
                return
            stamp = js.header.stamp.sec * 1_000_000_000 + js.header.stamp.nanosec
            try:
                arm7 = aloha.arm_state_from_joint_state(list(js.name), list(js.position))
            except (ValueError, IndexError):
                arm7 = np.full(7, np.nan)
            src, arm = self.state_topics[t]
            pend = self.pending_state.setdefault((src, stamp), {})
            pend[arm] = (m.log_ns, arm7)
            if len(pend) == len(T.ARMS):
                self.last_obs[src] = m.log_ns
                if src == self.e2e_source:
                    ep._state_t.append(m.log_ns)
                    ep._states.append(np.concatenate([pend[a][1][:7] for a in T.ARMS]))
                for key in [k for k in self.pending_state if k[0] == src and k[1] <= stamp]:
                    del self.pending_state[key]
            return
        if t == T.COMMAND:
            try:
                msg = decode(m)
                data = np.asarray(msg.data, dtype=float)
            except Exception:  # noqa: BLE001
                return
            answers = aloha.command_answers(msg.layout)
            if answers is not None and answers == self.last_answer:
                ep.resent_commands += 1
                return
            self.last_answer = answers
            if ep._cmd_t:
                ep._periods.append((m.log_ns - ep._cmd_t[-1]) / 1e6)
            ep._cmd_t.append(m.log_ns)
            ep._cmds.append(data)
            for src, t_obs in list(self.last_obs.items()):
                if t_obs is not None:
                    (ep._latencies if src == self.e2e_source else ep._policy_latencies).append((m.log_ns - t_obs) / 1e6)
                    self.last_obs[src] = None
            return
        if t == T.POLICY_STATUS:
            st = json_event(m)
            if st is not None:
                st["_log_ns"] = m.log_ns
                self.statuses.append(st)
            return
        if t == T.DIAGNOSTICS:
            try:
                arr = decode(m)
            except Exception:  # noqa: BLE001
                return
            for s in arr.status:
                lvl = int.from_bytes(s.level, "little") if isinstance(s.level, (bytes, bytearray)) else int(s.level)
                if s.name == "recorder":
                    continue
                if lvl == 1:
                    ep.diag_warnings += 1
                elif lvl >= 2:
                    ep.diag_errors += 1

    def _finish(self, ev: dict | None, log_ns: int | None = None) -> None:
        ep = self.cur
        if ep is None:
            return
        self.cur = None
        if ev is not None:
            ep.success = bool(ev.get("success"))
            ep.reason = str(ev.get("reason", "success" if ep.success else "failure"))
            ep.steps = ev.get("steps")
            ep.end_ns = log_ns
            ep.duration_s = (log_ns - ep.start_ns) / 1e9 if log_ns else None
            lat = ev.get("latency_ms")
            ep.sim_latency_ms = lat if isinstance(lat, dict) else {}
        self._label(ep)
        ep.commands = len(ep._cmds)
        ep.command_period_ms = _stats(ep._periods)
        ep.latency_ms = _stats(ep._latencies)
        ep.policy_latency_ms = _stats(ep._policy_latencies)
        period_ms = T.DT * 1e3
        ep.stalls = (None if ep.clock == "lockstep"
                     else int(sum(1 for p in ep._periods if p > 1.5 * period_ms)))
        infer = [s.get("infer_ms") for s in self.statuses if s.get("inferred") and isinstance(s.get("infer_ms"), (int, float))]
        ep._infer = infer
        ep.inferences = len(infer)
        ep.infer_ms = _stats(infer)
        holds: dict[str, int] = {}
        onsets, prev = 0, None
        for s in self.statuses:
            h = s.get("hold")
            if h:
                holds[str(h)] = holds.get(str(h), 0) + 1
                if h != prev:
                    onsets += 1
            prev = h
        ep.hold_steps, ep.hold_onsets = holds, onsets
        self._smoothness(ep)
        self.episodes.append(ep)

    def _smoothness(self, ep: Episode) -> None:
        cmds = [c for c in ep._cmds if c.shape == (T.STATE_DIM,)]
        if len(cmds) < 2:
            return
        a = np.stack(cmds)
        steps = np.abs(np.diff(a[:, ARM_IDX], axis=0)).max(axis=1)  # max joint move per step (rad)
        if len(a) >= 4:
            jerk = np.diff(a[:, ARM_IDX], n=3, axis=0) / T.DT ** 3
            ep.jerk_rms = float(np.sqrt(np.mean(jerk ** 2)))
        # a status follows the command it describes (the node publishes the command, then the
        # status): it belongs to the newest command logged at or before it (status_every may be > 1)
        import bisect

        cmd_t = [t for t, c in zip(ep._cmd_t, ep._cmds) if c.shape == (T.STATE_DIM,)]
        chunk_of: dict[int, object] = {}
        for s in self.statuses:
            if not s.get("published", True) or s.get("dry_run", False) or s.get("chunk_id") is None:
                continue
            k = bisect.bisect_right(cmd_t, s["_log_ns"]) - 1
            if k >= 0:
                chunk_of[k] = s["chunk_id"]
        known = sorted(chunk_of)
        boundary = [k for prev, k in zip(known, known[1:]) if chunk_of[k] != chunk_of[prev]]
        ep._boundaries = boundary
        ep.chunk_boundaries = len(boundary)
        inside = [steps[k - 1] for k in range(1, len(a)) if k not in set(boundary)]
        at = [steps[k - 1] for k in boundary if k - 1 < len(steps)]
        ep.step_mean = float(np.mean(inside)) if inside else None
        ep.boundary_step_mean = float(np.mean(at)) if at else None
        if ep.step_mean and ep.boundary_step_mean is not None and ep.step_mean > 0:
            ep.boundary_ratio = ep.boundary_step_mean / ep.step_mean


def labels_of(bag: Bag) -> dict:
    raw = bag.custom_data.get("wam_policy.labels")
    try:
        out = json.loads(raw) if raw else {}
    except ValueError:
        out = {}
    return out if isinstance(out, dict) else {}


def analyze_bag(path: str | Path, policy: str | None = None, labels: dict | None = None) -> list[Episode]:
    """Every episode of one bag (a rosbag2 directory or .mcap file)."""
    path = Path(path)
    with Bag(path) as bag:
        lab = labels_of(bag)
        lab.update(labels or {})
        have = bag.topics
        states = {}
        for src, fn in (("raw", lambda x: x), ("perturbed", T.perturbed)):
            tops = {fn(T.joint_state_topic(a)): (src, a) for a in T.ARMS}
            if all(t in have for t in tops):
                states.update(tops)
        wanted = [t for t in (T.EPISODE, T.ACTIVE_PERTURBATION, T.COMMAND, T.POLICY_STATUS, T.DIAGNOSTICS, *states)
                  if t in have]
        b = _Builder(path.name, lab, states, policy)
        for m in bag.messages(wanted):
            b.feed(m)
        b._finish(None)
        if not b.episodes and T.COMMAND in have:
            # no EPISODE events (a robot run without an operator tool): the whole bag is one
            # episode of unknown outcome — timing, latency, holds and smoothness still apply
            b = _Builder(path.name, lab, states, policy)
            b.cur = Episode(path.name, 0, policy=b.policy, start_ns=bag.start_ns, reason="no_episode_events")
            for m in bag.messages(wanted):
                b.feed(m)
            b._finish(None)
            b.episodes[-1].reason = "no_episode_events"
    return b.episodes


def analyze(paths: Iterable[str | Path], policy: str | None = None, labels: dict | None = None) -> list[Episode]:
    out: list[Episode] = []
    for p in paths:
        out.extend(analyze_bag(p, policy, labels))
    return out
