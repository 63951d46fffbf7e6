"""Open-loop replay of the commands recorded in a bag (parity runs: same actions, new graph).

Reads a rosbag2 bag (directory or ``.mcap``, via :mod:`wam_common.bag.reader`): for each
EPISODE ``start`` event, the commands on ``topic`` that follow it, in order, are that episode's
steps 0, 1, 2, ... (lockstep recordings have exactly one command per step). A live episode plays
the recorded episode with the same index (``episode: -1``; modulo the number recorded) or a fixed
one; ``Observation.step`` picks the actions. After the recorded end the last command is held.
"""
from __future__ import annotations

import time

import numpy as np

from wam_common import topics
from wam_common.config import ConfigError
from wam_common.schema import Param, defaults

from . import ActionChunk, Backend, BackendError, Observation, register_backend

PARAMS = {
    "bag": Param("", "the rosbag2 directory or .mcap file to replay"),
    "topic": Param(topics.COMMAND, "the recorded command topic"),
    "episode": Param(-1, "the recorded episode to play (-1 = the live episode's index, modulo the number "
                     "recorded)", range=(-1, None)),
    "horizon": Param(50, "actions per chunk", range=(1, None)),
}
DEFAULTS = defaults(PARAMS)


def read_commands(path: str, topic: str = topics.COMMAND) -> list[np.ndarray]:
    """Per recorded episode, the (steps, 14) commands in order."""
    from wam_common.bag.reader import Bag, BagReadError, decode, json_event

    episodes: list[list[np.ndarray]] = []
    cur: list | None = None
    try:
        with Bag(path) as bag:
            if topic not in bag.topics:
                raise ConfigError(f"key 'backend.replay.topic': bag '{path}' has no topic '{topic}'")
            for m in bag.messages([topics.EPISODE, topic]):
                if m.topic == topics.EPISODE:
                    ev = json_event(m) or {}
                    if ev.get("event") == "start":
                        cur = []
                        episodes.append(cur)
                    elif ev.get("event") in ("end", "done"):
                        cur = None
                elif cur is not None:
                    a = np.asarray(decode(m, bag.reader).data, dtype=np.float64)
                    if a.shape == (topics.STATE_DIM,):
                        cur.append(a)
    except BagReadError as exc:
        raise ConfigError(f"key 'backend.replay.bag': {exc}") from None
    out = [np.array(e) for e in episodes if e]
    if not out:
        raise ConfigError(f"key 'backend.replay.bag': no episode with commands on '{topic}' in '{path}'")
    return out


@register_backend("replay")
class ReplayBackend(Backend):
    needs_images = False

    def __init__(self, cfg):
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in dict(cfg).items() if v is not None})
        super().__init__(merged)
        if not self.cfg["bag"]:
            raise ConfigError("key 'backend.replay.bag' must name a bag")
        self.episodes = read_commands(str(self.cfg["bag"]), str(self.cfg["topic"]))
        self.horizon = max(1, int(self.cfg["horizon"]))
        self._live_episode = 0

    def reset(self, episode=None) -> None:
        if episode and episode.get("episode") is not None:
            self._live_episode = int(episode["episode"])

    def infer(self, obs: Observation) -> ActionChunk:
        t0 = time.perf_counter()
        step = obs.step
        if step is None and obs.privileged:
            step = obs.privileged.get("step")
        if step is None:
            raise BackendError("replay: the observation has no episode step (no EPISODE/privileged state)")
        pick = int(self.cfg["episode"])
        idx = (self._live_episode if pick < 0 else pick) % len(self.episodes)
        rec = self.episodes[idx]
        ii = np.clip(np.arange(int(step), int(step) + self.horizon), 0, len(rec) - 1)
        return ActionChunk(rec[ii], obs.stamp_ns, (time.perf_counter() - t0) * 1e3,
                           {"episode": idx, "recorded_steps": len(rec)})
