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
    "action_noise": Param(0.0, "std (rad) of a smooth noise added to the arm joint targets, seeded by the episode "
                          "seed and noise_seed (a graded family of weaker policies; 0 = the exact expert)",
                          range=(0.0, 1.0)),
    "noise_seed": Param(0, "second seed of the action noise (policies with the same action_noise and noise_seed "
                        "make the same noise for the same episode seed)", range=(0, None)),
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
        self.noise = float(self.cfg["action_noise"])
        self.noise_seed = int(self.cfg["noise_seed"])
        if not 0.0 <= self.noise <= 1.0:
            raise BackendError(f"expert: action_noise must be in 0..1 rad, got {self.noise}")
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
            self._expert, self._task, self._episode = make_expert(task, self.noise, self.noise_seed), task, None
        episode_key = (priv.get("episode"), priv.get("episode_start_ns"), priv.get("seed"))
        if episode_key != self._episode:
            try:
                self._expert.reset(priv)
            except ValueError as exc:
                raise BackendError(f"expert: {exc}") from None
            self._episode = episode_key
        step = priv.get("step", obs.step)
        if step is None:
            raise BackendError("expert: privileged state has no 'step'")
        actions = self._expert.actions(int(step), self.horizon)
        return ActionChunk(actions, obs.stamp_ns, (time.perf_counter() - t0) * 1e3, {"step": int(step)})
