"""The sim's scripted experts as a backend (demos and data): ``sim_bridge.experts.make_expert``.

Reads the privileged state of the step (``Observation.privileged``); resets the expert from the
first privileged message of each episode; a chunk is ``Expert.actions(step, horizon)``.
No images needed.
"""
from __future__ import annotations

import time

from sim_bridge.experts import make_expert  # the one node→node import (tests/test_layers.py)
from wam_common.schema import Param, defaults

from . import ActionChunk, Backend, BackendError, Observation, register_backend

PARAMS = {
    "horizon": Param(50, "actions per chunk", range=(1, None)),
    "task": Param("", "the task whose scripted plan runs (\"\" = the task named in the privileged state)"),
}
DEFAULTS = defaults(PARAMS)


@register_backend("expert")
class ExpertBackend(Backend):
    needs_images = False
    needs_privileged = True

    def __init__(self, cfg):
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in dict(cfg).items() if v is not None})
        super().__init__(merged)
        self.horizon = int(self.cfg["horizon"])
        self._expert = None
        self._task = None
        self._episode = None

    def reset(self, episode=None) -> None:
        self._episode = None  # re-arm: the next privileged state resets the expert

    def infer(self, obs: Observation) -> ActionChunk:
        t0 = time.perf_counter()
        priv = obs.privileged
        if not priv:
            raise BackendError("expert: no privileged state for this step (is sim_bridge publishing /sim/privileged_state?)")
        task = self.cfg["task"] or priv.get("task")
        if not task:
            raise BackendError("expert: privileged state names no 'task'")
        if self._expert is None or task != self._task:
            self._expert, self._task, self._episode = make_expert(task), task, None
        episode_key = (priv.get("episode"), priv.get("episode_start_ns"), priv.get("seed"))
        if episode_key != self._episode:
            self._expert.reset(priv)
            self._episode = episode_key
        step = priv.get("step", obs.step)
        if step is None:
            raise BackendError("expert: privileged state has no 'step'")
        actions = self._expert.actions(int(step), self.horizon)
        return ActionChunk(actions, obs.stamp_ns, (time.perf_counter() - t0) * 1e3, {"step": int(step)})
