"""A fixed-latency backend: a smooth, time-indexed trajectory computed in a known time.

For dry runs of a graph, benches and tests of the runtime: ``latency_ms`` (+ ``jitter_ms``)
of wall time per inference, then ``horizon`` actions of ``anchor + amplitude * sin(2π t/period)``
where ``t`` is the action's own time since the episode's first observation, so chunks computed at
different times agree where they overlap (plus ``chunk_noise`` rad of per-chunk offset, to make
chunk boundaries visible). ``anchor`` is the first state seen after a reset. ``inject`` puts a
fault into every ``inject_every``-th chunk (``nan_chunk``, ``out_of_limits``, ``error``; for the whole-chunk
check ``seam_jump``: the left shoulder 0.8 rad off; ``too_fast``: the left waist swinging ±0.7 rad per step
from mid-chunk; ``collision``: the left arm reaching smoothly down through the table), to exercise the
safety filter end to end.
"""
from __future__ import annotations

import time

import numpy as np

from wam_common.schema import Param, defaults
from wam_common.topics import DT

from . import ActionChunk, Backend, BackendError, Observation, register_backend

INJECT = ("", "nan_chunk", "out_of_limits", "error", "seam_jump", "too_fast", "collision")

PARAMS = {
    "latency_ms": Param(0.0, "wall time each inference takes (ms)", range=(0.0, None)),
    "jitter_ms": Param(0.0, "random change of each inference's time, uniform within ±jitter_ms (ms)", range=(0.0, None)),
    "horizon": Param(50, "actions per chunk", range=(1, None)),
    "amplitude": Param(0.1, "amplitude of the sine trajectory around the first state (rad)"),
    "period_s": Param(2.0, "period of the sine trajectory (s)", range=(0.001, None)),
    "chunk_noise": Param(0.0, "random offset per chunk, to make chunk boundaries visible (rad)", range=(0.0, None)),
    "seed": Param(0, "seed of the jitter and the chunk noise"),
    "needs_images": Param(True, "the node gathers the cameras for each inference (as a vision policy)"),
    "inject": Param("", "the fault put into every inject_every-th chunk", choices=INJECT),
    "inject_every": Param(0, "inject into chunks n, 2n, ... (0 = never)", range=(0, None)),
}
DEFAULTS = defaults(PARAMS)


@register_backend("synthetic")
class SyntheticBackend(Backend):
    def __init__(self, cfg):
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in dict(cfg).items() if v is not None})
        super().__init__(merged)
        c = self.cfg
        self.needs_images = bool(c["needs_images"])
        self.horizon = int(c["horizon"])
        if self.horizon < 1:
            raise ValueError("synthetic.horizon must be >= 1")
        self._rng = np.random.default_rng(int(c["seed"]))
        self._anchor: np.ndarray | None = None
        self._t0: int | None = None
        self.calls = 0

    def reset(self, episode=None) -> None:
        self._anchor, self._t0 = None, None

    def infer(self, obs: Observation) -> ActionChunk:
        c = self.cfg
        t_start = time.perf_counter()
        self.calls += 1
        if self._anchor is None:
            self._anchor = np.asarray(obs.state, dtype=np.float64).copy()
            self._t0 = obs.stamp_ns
        lat = float(c["latency_ms"]) + (float(c["jitter_ms"]) * self._rng.uniform(-1, 1) if c["jitter_ms"] else 0.0)
        if lat > 0:
            time.sleep(lat / 1000.0)
        t = (obs.stamp_ns - self._t0) * 1e-9 + DT * np.arange(self.horizon)
        wave = float(c["amplitude"]) * np.sin(2 * np.pi * t / float(c["period_s"]))
        actions = self._anchor[None, :] + wave[:, None]
        actions[:, 6] = self._anchor[6]  # grippers stay put
        actions[:, 13] = self._anchor[13]
        if c["chunk_noise"]:
            actions[:, :6] += self._rng.normal(0, float(c["chunk_noise"]), 6)[None, :]
            actions[:, 7:13] += self._rng.normal(0, float(c["chunk_noise"]), 6)[None, :]
        every = int(c["inject_every"])
        if c["inject"] and every > 0 and self.calls % every == 0:
            if c["inject"] == "nan_chunk":
                actions[self.horizon // 2:, 3] = np.nan
            elif c["inject"] == "out_of_limits":
                actions[:, 1] = 10.0
            elif c["inject"] == "error":
                raise BackendError("synthetic: injected inference error")
            elif c["inject"] == "seam_jump":
                actions[:, 1] += 0.8
            elif c["inject"] == "too_fast":
                actions[self.horizon // 2:, 0] += 0.7 * (-1.0) ** np.arange(self.horizon - self.horizon // 2)
            elif c["inject"] == "collision":  # shoulder forward, elbow open: the gripper goes through the table
                ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, self.horizon))
                actions[:, 1] += ramp * (0.9 - actions[0, 1])
                actions[:, 2] += ramp * (0.3 - actions[0, 2])
        return ActionChunk(actions, obs.stamp_ns, (time.perf_counter() - t_start) * 1e3)
