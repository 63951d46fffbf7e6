"""Action-chunk scheduling: which command to send at time ``t``, given the chunks computed so far.

Every chunk is indexed by the time of the observation it came from: ``chunk.actions[i]`` is the
command for ``chunk.stamp_ns + i * dt``. So a chunk that arrives ``d = ceil(latency / dt)`` steps
late has its first ``d`` actions in the past; they are skipped (or blended), never replayed.

Strategies (``runtime.strategy``):

- ``sync`` — the openpi ``ActionChunkBroker`` baseline: run a chunk to its end (or
  ``execute_steps``), then infer while the robot waits, then play the new chunk from its first
  action. In real time the waiting shows as command gaps (stalls).
- ``temporal_ensemble`` — ACT: every chunk covering ``t`` votes, weights ``exp(-k * i)`` with
  ``i = 0`` the oldest; a new inference starts as soon as the previous one ends.
- ``rtc`` — real-time chunking (Black et al. 2025): actions already committed (the past, up to
  the arrival of the new chunk) stay frozen; over the overlap with the old plan the new chunk is
  blended in with a decaying soft mask (old weight 1 → 0); after it, the new chunk alone.
  Replans every ``replan_steps`` steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wam_common.schema import Param, defaults
from wam_common.topics import DT

from .backends import ActionChunk

STRATEGIES = ("sync", "temporal_ensemble", "rtc")

PARAMS = {
    "strategy": Param("rtc", "how chunks become commands (see wam_policy_node/runtime.py)", choices=STRATEGIES),
    "execute_steps": Param(0, "sync: actions of a chunk executed before the next inference (0 = all)",
                           range=(0, None)),
    "replan_steps": Param(10, "rtc: start a new inference this many steps after the newest chunk's observation",
                          range=(1, None)),
    "ensemble_k": Param(0.01, "temporal_ensemble: weight exp(-k i) of the i-th oldest chunk", range=(0.0, None)),
    "ensemble_every": Param(1, "temporal_ensemble: steps between inferences (lockstep)", range=(1, None)),
    "blend_steps": Param(10, "rtc: steps over which a new chunk takes over (0 = the whole overlap; longer = "
                         "smoother, laggier)", range=(0, None)),
}
DEFAULTS = defaults(PARAMS)


def rtc_weights(n: int) -> np.ndarray:
    """Weights of the *old* plan over an overlap of ``n`` steps: 1 → 0, RTC's exponential soft mask."""
    if n <= 0:
        return np.zeros(0)
    c = 1.0 - (np.arange(n) + 1.0) / (n + 1.0)
    return c * np.expm1(c) / math.expm1(1.0)


@dataclass
class _Chunk:
    cid: int
    base_ns: int  # time of actions[0]
    actions: np.ndarray
    infer_ms: float
    obs_ns: int

    def index(self, t_ns: int, dt_ns: int) -> int:
        return int(round((t_ns - self.base_ns) / dt_ns))

    def at(self, t_ns: int, dt_ns: int) -> np.ndarray | None:
        i = self.index(t_ns, dt_ns)
        if 0 <= i < len(self.actions):
            return self.actions[i]
        return None

    def end_ns(self, dt_ns: int) -> int:  # time of the last action
        return self.base_ns + (len(self.actions) - 1) * dt_ns


class ChunkRuntime:
    """Pure scheduler (no threads, no ROS). ``add`` chunks, ask ``action(t)`` and ``should_infer(t)``."""

    def __init__(self, strategy: str = "rtc", dt: float = DT, execute_steps: int = 0, replan_steps: int = 10,
                 ensemble_k: float = 0.01, ensemble_every: int = 1, blend_steps: int = 10):
        if strategy not in STRATEGIES:
            raise ValueError(f"runtime.strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self.dt_ns = int(round(dt * 1e9))
        self.execute_steps = int(execute_steps)
        self.replan_steps = max(1, int(replan_steps))
        self.ensemble_k = float(ensemble_k)
        self.ensemble_every = max(1, int(ensemble_every))
        self.blend_steps = int(blend_steps)
        self.reset()

    @classmethod
    def from_config(cls, cfg: dict, dt: float = DT) -> "ChunkRuntime":
        c = dict(DEFAULTS)
        c.update(cfg or {})
        return cls(c["strategy"], dt, c["execute_steps"], c["replan_steps"], c["ensemble_k"],
                   c["ensemble_every"], c["blend_steps"])

    def reset(self) -> None:
        self._chunks: list[_Chunk] = []  # temporal_ensemble keeps several; others keep one plan
        self._next_id = 0
        self.last_obs_ns: int | None = None  # obs stamp of the newest chunk

    # -- adding chunks ---------------------------------------------------------------------
    def add(self, chunk: ActionChunk, now_ns: int | None = None) -> int:
        """Add a chunk that became available at ``now_ns`` (defaults to its obs stamp). Returns its id."""
        now_ns = chunk.stamp_ns if now_ns is None else int(now_ns)
        acts = np.asarray(chunk.actions, dtype=np.float64)
        cid = self._next_id
        self._next_id += 1
        self.last_obs_ns = chunk.stamp_ns
        if self.strategy == "sync":
            n = len(acts) if self.execute_steps <= 0 else min(self.execute_steps, len(acts))
            # the robot waited for this chunk: play it from its first action, starting now
            base = max(chunk.stamp_ns, now_ns)
            self._chunks = [_Chunk(cid, base, acts[:n], chunk.infer_ms, chunk.stamp_ns)]
        elif self.strategy == "temporal_ensemble":
            new = _Chunk(cid, chunk.stamp_ns, acts, chunk.infer_ms, chunk.stamp_ns)
            self._chunks = [c for c in self._chunks if c.end_ns(self.dt_ns) >= now_ns] + [new]
        else:  # rtc
            self._chunks = [self._merge_rtc(cid, chunk, acts, now_ns)]
        return cid

    def first_future(self, stamp_ns: int, now_ns: int) -> int:
        """Index of the first action of a chunk (observation ``stamp_ns``, available at ``now_ns``) that will be
        played: ``sync`` plays a chunk from its first action; the others skip what is already in the past."""
        if self.strategy == "sync":
            return 0
        return max(0, math.ceil((int(now_ns) - int(stamp_ns)) / self.dt_ns - 1e-9))

    def _ceil_step(self, now_ns: int, base_ns: int) -> int:
        k = math.ceil((now_ns - base_ns) / self.dt_ns - 1e-9)
        return base_ns + k * self.dt_ns

    def _merge_rtc(self, cid: int, chunk: ActionChunk, acts: np.ndarray, now_ns: int) -> _Chunk:
        new = _Chunk(cid, chunk.stamp_ns, acts.copy(), chunk.infer_ms, chunk.stamp_ns)
        if not self._chunks:
            return new
        old = self._chunks[-1]
        # first index of the new chunk that is still in the future (d = inference delay)
        d = max(0, math.ceil((now_ns - new.base_ns) / self.dt_ns - 1e-9))
        times = new.base_ns + np.arange(len(acts)) * self.dt_ns
        overlap = [i for i in range(d, len(acts)) if old.at(int(times[i]), self.dt_ns) is not None]
        if self.blend_steps > 0:
            overlap = overlap[: self.blend_steps]
        # committed prefix: what the old plan says for the skipped steps (kept for prev_actions)
        for i in range(min(d, len(acts))):
            o = old.at(int(times[i]), self.dt_ns)
            if o is not None:
                new.actions[i] = o
        w = rtc_weights(len(overlap))
        for wi, i in zip(w, overlap):
            new.actions[i] = wi * old.at(int(times[i]), self.dt_ns) + (1.0 - wi) * acts[i]
        return new

    # -- reading ---------------------------------------------------------------------------
    def action(self, t_ns: int) -> tuple[np.ndarray | None, dict]:
        """The command for time ``t_ns`` (None when no chunk covers it) and info for the status."""
        if not self._chunks:
            return None, {"chunk_id": None, "chunk_index": None}
        if self.strategy == "temporal_ensemble":
            votes = [(c, c.at(t_ns, self.dt_ns)) for c in self._chunks]
            votes = [(c, a) for c, a in votes if a is not None]
            if not votes:
                return None, {"chunk_id": None, "chunk_index": None}
            w = np.exp(-self.ensemble_k * np.arange(len(votes)))  # oldest first
            a = np.sum([wi * ai for wi, (_, ai) in zip(w, votes)], axis=0) / w.sum()
            newest = votes[-1][0]
            return a, {"chunk_id": newest.cid, "chunk_index": newest.index(t_ns, self.dt_ns), "n_votes": len(votes)}
        c = self._chunks[-1]
        a = c.at(t_ns, self.dt_ns)
        if a is None:
            return None, {"chunk_id": c.cid, "chunk_index": None}
        return a.copy(), {"chunk_id": c.cid, "chunk_index": c.index(t_ns, self.dt_ns)}

    def covers(self, t_ns: int) -> bool:
        return self.action(t_ns)[0] is not None

    def remaining(self, t_ns: int) -> int:
        """Actions left in the newest chunk/plan from ``t_ns`` on (inclusive)."""
        if not self._chunks:
            return 0
        c = self._chunks[-1]
        return max(0, len(c.actions) - max(0, c.index(t_ns, self.dt_ns)))

    def should_infer(self, t_ns: int) -> bool:
        """Whether a new inference should start at ``t_ns`` (the caller knows if one is in flight)."""
        if not self.covers(t_ns):
            return True
        if self.strategy == "sync":
            return False
        steps_since = (t_ns - self.last_obs_ns) / self.dt_ns if self.last_obs_ns is not None else 1e9
        if self.strategy == "temporal_ensemble":
            return steps_since >= self.ensemble_every - 1e-6
        return steps_since >= self.replan_steps - 1e-6

    def prefix(self, t_ns: int, n: int) -> np.ndarray | None:
        """The planned actions for ``t_ns, t_ns + dt, ...`` (up to ``n``) — RTC's committed prefix."""
        if not self._chunks:
            return None
        out = []
        for i in range(n):
            a, _ = self.action(t_ns + i * self.dt_ns)
            if a is None:
                break
            out.append(a)
        return np.array(out) if out else None
