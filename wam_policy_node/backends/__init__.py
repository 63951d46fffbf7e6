"""The backend interface and its registry (keyed by name, LeRobot style).

``Backend.infer(obs) -> ActionChunk``: one observation in, a chunk of ``H`` 14-dim joint commands
out (``actions[i]`` is the command for ``obs.stamp_ns + i * DT``). ``Backend.observe(obs)`` is called
with every new observation, also between inferences (a streaming world action model conditions its next
chunk on the frames seen while the last one ran); most backends ignore it. Backends are found by name:
``@register_backend("synthetic")`` on the class; ``make_backend("synthetic", cfg)`` builds one.
Backend modules are imported lazily (``wam_policy_node.backends.<name>``) so that choosing the
``expert`` backend never imports torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from wam_common.config import ConfigError
from wam_common.topics import STATE_DIM


@dataclass
class Observation:
    stamp_ns: int  # ROS time of the observation (the joint states' stamp)
    images: dict[str, np.ndarray]  # model image key → HxWx3 uint8 RGB
    state: np.ndarray  # (14,)
    prompt: str = ""
    privileged: dict | None = None  # sim privileged state of this step (expert backend)
    step: int | None = None  # episode step index when known
    # real-time chunking hints for backends that can use them (LeRobot RTC guidance)
    prev_actions: np.ndarray | None = None  # committed actions from obs.stamp_ns on (old chunk)
    inference_delay: int = 0  # expected delay in steps
    image_stamps: dict[str, int] = field(default_factory=dict)  # camera → stamp of the frame used


@dataclass
class ActionChunk:
    actions: np.ndarray  # (H, 14) float64
    stamp_ns: int  # stamp of the observation it was computed from
    infer_ms: float  # wall time of the inference
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.actions = np.asarray(self.actions, dtype=np.float64)
        if self.actions.ndim == 1:
            self.actions = self.actions[None, :]
        if self.actions.ndim != 2 or self.actions.shape[1] != STATE_DIM or self.actions.shape[0] < 1:
            raise ValueError(f"action chunk must be (H, {STATE_DIM}), got {self.actions.shape}")


class BackendError(RuntimeError):
    """An inference that failed (dead server, bad reply). The node holds; it does not crash."""


class Backend:
    """Base class. Subclasses set the flags and implement :meth:`infer`."""

    name = "base"
    needs_images = True  # the node waits for/syncs cameras only when True
    needs_privileged = False  # the node waits for the sim's privileged state of the step
    supports_rtc = False  # accepts Observation.prev_actions / inference_delay
    # observe() uses every observation (images included): the node gathers the cameras at every step
    streams_observations = False
    # the model assumes each chunk ran to its end as predicted before the next inference: the node
    # refuses any runtime but ``strategy: sync`` with ``execute_steps: 0``
    requires_sync_runtime = False
    # attributes (dotted paths) that reset() re-creates and that hold one episode's state: a policy
    # server (wam_policy_node/server.py) shares one instance among connections by swapping them;
    # () = the backend is cheap to build and the server builds one per connection
    episode_state: tuple[str, ...] = ()
    # model image key → (height, width) the checkpoint was trained at (its input features); {} = any size.
    # A backend that fills it resizes or refuses other sizes (observation.fit_image); a policy server
    # advertises it in its metadata (wam_policy_node/server.py)
    image_sizes: Mapping[str, tuple[int, int]] = {}

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = dict(cfg)

    def reset(self, episode: Mapping[str, Any] | None = None) -> None:
        """A new episode starts (EPISODE start event or the first privileged state of one)."""

    def observe(self, obs: Observation) -> None:
        """A new observation (called once per stamp, before the controller decides whether to infer;
        ``infer`` then gets the same observation). Default: nothing."""

    def infer(self, obs: Observation) -> ActionChunk:  # pragma: no cover - interface
        raise NotImplementedError

    def batch_unsupported(self) -> str:
        """Why :meth:`infer_batch` cannot stack observations into one forward ("" = it can). A policy
        server (``batch.max_size`` > 1) runs requests one at a time, and says so, where this is not ""."""
        return f"backend '{self.name}' has no batched inference"

    def infer_batch(self, observations: list[Observation]) -> list[ActionChunk | Exception]:
        """Several observations (of different clients, each at its own episode step) in one call: one
        result per observation, in order, each a chunk or the exception that observation's inference
        raised (one bad request must not fail the others). Only called where :meth:`batch_unsupported`
        is "", i.e. where the inference reads no per-episode state (``episode_state``). Default: one
        :meth:`infer` after the other (no speed-up)."""
        out: list[ActionChunk | Exception] = []
        for obs in observations:
            try:
                out.append(self.infer(obs))
            except Exception as exc:  # noqa: BLE001 - returned per observation
                out.append(exc)
        return out

    def warm_batches(self, sizes) -> None:
        """Allocate/capture what each batch size in ``sizes`` needs (a server calls it at start-up, so no
        client pays a CUDA graph capture). Default: nothing."""

    def rejected(self, chunk: ActionChunk, reason: str) -> None:
        """The safety filter refused the chunk ``infer`` just returned (it never reaches the arm):
        a backend that keeps state from its own outputs (RTC's left-over chunk) forgets it."""

    def close(self) -> None:
        pass


_REGISTRY: dict[str, type[Backend]] = {}
BUILTIN = ("synthetic", "expert", "lerobot", "openpi", "cosmos", "openvla_oft", "dreamzero", "replay")


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    def deco(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(f"{__name__}.{name}")
    if name not in _REGISTRY:
        raise ConfigError(f"key 'backend.type': unknown backend '{name}' (known: {', '.join(available())})")
    return _REGISTRY[name]


def available() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def make_backend(name: str, cfg: Mapping[str, Any] | None = None) -> Backend:
    return backend_class(name)(dict(cfg or {}))
