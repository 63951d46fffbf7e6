"""Hold reasons (:class:`wam_policy_node.safety.Hold`), the controller's inference records and the lerobot
backend's resolved options.

Every ``Hold`` member is reached by driving a real :class:`PolicyController` (the synthetic backend, a
``ChunkRuntime``, a ``SafetyFilter``) into it; the status carries the member itself, which equals, prints
and serialises as its plain string (what the node publishes and the analysis reads back from bags). The
realtime cases hold the worker's inference on an event instead of sleeping.
"""
from __future__ import annotations

import contextlib
import json
import re
import threading

import numpy as np
import pytest

from wam_common.config import ConfigError
from wam_policy_node.backends import Observation, make_backend
from wam_policy_node.backends.lerobot import DEFAULTS, Options, _LingBotVA, resolve_options
from wam_policy_node.backends.synthetic import SyntheticBackend
from wam_policy_node.controller import Inference, PolicyController
from wam_policy_node.runtime import ChunkRuntime
from wam_policy_node.safety import Hold, SafetyFilter

pytestmark = pytest.mark.unit

HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
T = 1_000_000_000


def _obs(state=HOME, stamp_ns: int = T) -> Observation:
    return Observation(stamp_ns, {}, np.array(state, dtype=np.float64))


def _lockstep(**synthetic) -> PolicyController:
    backend = make_backend("synthetic", {"needs_images": False, **synthetic})
    return PolicyController(backend, ChunkRuntime("sync"), SafetyFilter())


class _Gated(SyntheticBackend):
    """The synthetic backend with each inference held until ``gate`` opens (the realtime worker stays
    busy) and, with ``observe_error``, an ``observe`` that raises."""

    def __init__(self, observe_error: bool = False):
        super().__init__({"needs_images": False})
        self.gate = threading.Event()
        self.observe_error = observe_error

    def observe(self, obs: Observation) -> None:
        if self.observe_error:
            raise RuntimeError("observe failed")

    def infer(self, obs: Observation):
        self.gate.wait(10.0)
        return super().infer(obs)


@contextlib.contextmanager
def _realtime(inference_timeout_s: float = 2.0, observe_error: bool = False):
    backend = _Gated(observe_error)
    ctl = PolicyController(backend, ChunkRuntime("rtc"), SafetyFilter(), clock_ns=lambda: T, realtime=True,
                           inference_timeout_s=inference_timeout_s)
    try:
        yield ctl
    finally:
        backend.gate.set()
        ctl.close()


def _estop() -> dict:
    ctl = _lockstep()
    ctl.set_estop(True)
    return ctl.step_lockstep(T, _obs())[1]


def _first_tick(**kw) -> dict:
    """The status of a realtime controller's first tick: its inference is submitted and still running."""
    with _realtime(**kw) as ctl:
        return ctl.tick(T, _obs())[1]


def _stale() -> dict:
    with _realtime() as ctl:
        return ctl.tick(T + 1_000_000_000, _obs())[1]  # 1 s old, stale_obs_s 0.5


def _chunk_fault(inject: str) -> dict:
    """A chunk the whole-chunk check refuses (safety.chunk.policy reject: the arm holds with its reason)."""
    backend = make_backend("synthetic", {"needs_images": False, "inject": inject, "inject_every": 1})
    ctl = PolicyController(backend, ChunkRuntime("sync"), SafetyFilter({"chunk": {"policy": "reject"}}))
    return ctl.step_lockstep(T, _obs())[1]


def _seam() -> dict:
    """A seam is a jump between plans: the second chunk jumps away from the first one being executed."""
    backend = make_backend("synthetic", {"needs_images": False, "inject": "seam_jump", "inject_every": 2})
    ctl = PolicyController(backend, ChunkRuntime("sync"), SafetyFilter({"chunk": {"policy": "reject"}}))
    state = HOME
    for i in range(200):
        cmd, st = ctl.step_lockstep(T + i * 20_000_000, _obs(state, T + i * 20_000_000))
        if st["hold"] is not None:
            return st
        state = cmd
    return st


def _tracking() -> dict:
    """A joint far from its command for longer than the window (0 here): the watchdog holds."""
    ctl = PolicyController(make_backend("synthetic", {"needs_images": False}), ChunkRuntime("sync"),
                           SafetyFilter({"tracking": {"window_s": 0.0}}))
    ctl.step_lockstep(T, _obs())
    blocked = HOME.copy()
    blocked[2] += 1.0
    return ctl.step_lockstep(T + 20_000_000, _obs(blocked, T + 20_000_000))[1]


SCENARIOS = {  # hold → a status of a controller driven into it
    Hold.ESTOP: _estop,
    Hold.BAD_STATE: lambda: _lockstep().step_lockstep(T, _obs(np.full(14, np.nan)))[1],
    Hold.TRACKING_ERROR: _tracking,
    Hold.STALE_OBS: _stale,
    # the node passes the reason as a string: the status has the member
    Hold.MISSING_CAMERA: lambda: _lockstep().step_lockstep(T, _obs(), missing="missing_camera")[1],
    Hold.NAN_CHUNK: lambda: _lockstep(inject="nan_chunk", inject_every=1).step_lockstep(T, _obs())[1],
    Hold.OUT_OF_LIMITS_CHUNK: lambda: _lockstep(inject="out_of_limits", inject_every=1).step_lockstep(T, _obs())[1],
    Hold.SEAM_JUMP: lambda: _seam(),
    Hold.DYNAMICS_CHUNK: lambda: _chunk_fault("too_fast"),
    Hold.COLLISION_CHUNK: lambda: _chunk_fault("collision"),
    Hold.INFERENCE_ERROR: lambda: _lockstep(inject="error", inject_every=1).step_lockstep(T, _obs())[1],
    Hold.OBSERVE_ERROR: lambda: _first_tick(observe_error=True),
    Hold.INFERENCE_TIMEOUT: lambda: _first_tick(inference_timeout_s=-1.0),  # any running inference is overdue
    Hold.NO_ACTION: _first_tick,
}


def test_every_hold_has_a_scenario():
    assert list(SCENARIOS) == list(Hold)
    assert [h.value for h in Hold] == ["estop", "bad_state", "tracking_error", "stale_obs", "missing_camera",
                                       "nan_chunk", "out_of_limits_chunk", "seam_jump", "dynamics_chunk",
                                       "collision_chunk", "inference_error", "observe_error", "inference_timeout",
                                       "no_action"]


@pytest.mark.parametrize("hold", list(Hold), ids=str)
def test_each_hold_is_reached_and_reads_as_its_string(hold):
    st = SCENARIOS[hold]()
    assert st["hold"] is hold and st["hold"] == hold.value
    assert str(st["hold"]) == f"{st['hold']}" == hold.value
    assert json.loads(json.dumps(st))["hold"] == hold.value
    assert json.dumps({"hold": hold}) == f'{{"hold": "{hold.value}"}}'
    if hold in (Hold.NAN_CHUNK, Hold.OUT_OF_LIMITS_CHUNK, Hold.INFERENCE_ERROR, Hold.SEAM_JUMP, Hold.DYNAMICS_CHUNK,
                Hold.COLLISION_CHUNK):
        assert st["rejected"] is hold and st["inferred"]


def test_a_rejected_chunk_is_a_named_record_that_still_unpacks():
    ctl = _lockstep(inject="nan_chunk", inject_every=2)
    ok = ctl._infer(_obs())
    assert ok.chunk is not None and ok.error is None and ok.detail == ""
    bad = ctl._infer(_obs(stamp_ns=T + 20_000_000))
    assert isinstance(bad, Inference) and bad.chunk is None and bad.error is Hold.NAN_CHUNK
    assert bad.detail.startswith("chunk rejected (nan_chunk), shape (50, 14)")
    chunk, reason, detail = bad
    assert (chunk, reason, detail) == (None, "nan_chunk", bad.detail)
    assert ctl._accept(bad, T) is Hold.NAN_CHUNK and ctl.last_error is Hold.NAN_CHUNK


# -- the lerobot backend's options ---------------------------------------------------------------------
@pytest.mark.parametrize("cfg,ptype,device,want", [
    ({}, "act", "cpu", Options("eager", False, False, "", "float32", None)),
    ({}, "act", "cuda", Options("eager", False, False, "", "bfloat16", None)),  # bf16 autocast on CUDA
    ({"dtype": "bfloat16"}, "act", "cpu", Options("eager", False, False, "", "bfloat16", None)),
    ({}, "pi0", "cpu", Options("eager", False, False, "", "float32", None)),  # auto: fast on CUDA only
    ({}, "pi0", "cuda", Options("fast", True, False, "", "bfloat16", None)),
    ({"rtc": True}, "pi05", "cuda", Options("fast", True, True, "", "bfloat16", None)),  # the engine's RTC guidance
    ({"rtc": True}, "fastwam", "cuda", Options("eager", False, True, "", "bfloat16", None)),  # no fast RTC: eager
    ({"rtc": True, "engine": "fast", "rtc_jacobian": "full"}, "smolvla", "cpu",
     Options("fast", True, True, "", "float32", None, "full")),
    ({"engine": "fast", "dtype": "bfloat16"}, "smolvla", "cpu", Options("fast", True, False, "", "float32", None)),
    ({"dtype": "float32"}, "fastwam", "cuda", Options("fast", True, False, "", "float32", None)),
    ({}, "lingbot_va", "cuda", Options("fast", False, False, "", "bfloat16", _LingBotVA)),  # installed in place
    ({"compile": "reduce-overhead"}, "lingbot_va", "cpu",
     Options("eager", False, False, "reduce-overhead", "float32", _LingBotVA)),
    ({"engine": "eager", "compile": "max-autotune"}, "pi0", "cuda",
     Options("eager", False, False, "max-autotune", "bfloat16", None)),
])
def test_resolved_options(cfg, ptype, device, want):
    assert resolve_options({**DEFAULTS, **cfg}, ptype, device) == want


@pytest.mark.parametrize("cfg,ptype,device,text", [
    ({"engine": "turbo"}, "pi0", "cpu", "key 'backend.lerobot.engine' must be auto, fast or eager, got 'turbo'"),
    ({"engine": "fast"}, "act", "cuda", "key 'backend.lerobot.engine': no fast engine for policy type 'act' "
                                        "(have pi0, pi05, smolvla, fastwam, lingbot_va)"),
    ({"engine": "fast", "rtc": True}, "fastwam", "cuda",
     "key 'backend.lerobot.engine': the fast engine for 'fastwam' has no RTC guidance (have pi0, pi05, smolvla); "
     "use engine: eager with rtc: true"),
    ({"rtc": True, "rtc_jacobian": "full"}, "pi0", "cpu",  # auto on CPU: eager
     "key 'backend.lerobot.rtc_jacobian': full is the fast engine's (LeRobot's eager RTC is identity); "
     "use engine: fast, or rtc_jacobian: identity"),
    ({"rtc_jacobian": "exact"}, "pi0", "cuda", "key 'backend.lerobot.rtc_jacobian' must be one of identity, full, "
                                               "got 'exact'"),
    ({"compile": "fastest"}, "act", "cpu", "key 'backend.lerobot.compile': unknown torch.compile mode 'fastest'"),
    ({"compile": "default"}, "pi0", "cuda",
     "key 'backend.lerobot.compile': the fast engine compiles itself; use engine: eager"),
])
def test_option_clashes_are_config_errors(cfg, ptype, device, text):
    with pytest.raises(ConfigError, match=f"^{re.escape(text)}$"):
        resolve_options({**DEFAULTS, **cfg}, ptype, device)


def test_the_watchdog_and_the_estop_hold_with_a_latency_model_too():
    """The lockstep step with a latency model (wam_policy_node.latency) goes through the same gate: e-stop,
    bad state, tracking watchdog."""
    from wam_policy_node.latency import LatencyModel

    ctl = PolicyController(make_backend("synthetic", {"needs_images": False}), ChunkRuntime("rtc"),
                           SafetyFilter({"tracking": {"window_s": 0.0}}), latency=LatencyModel(fixed_s=0.1))
    ctl.step_lockstep(T, _obs())
    blocked = HOME.copy()
    blocked[2] += 1.0
    st = ctl.step_lockstep(T + 20_000_000, _obs(blocked, T + 20_000_000))[1]
    assert st["hold"] is Hold.TRACKING_ERROR and st["tracking"]["joint"] == "left/elbow"
    ctl.set_estop(True)
    assert ctl.step_lockstep(T + 40_000_000, _obs(blocked, T + 40_000_000))[1]["hold"] is Hold.ESTOP
