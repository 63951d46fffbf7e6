"""LeRobot's real-time-chunking (RTC) guidance through the `lerobot` backend (``rtc: true``).

Tiny random-weight SmolVLA and π0 checkpoints from the zoo, saved with RTC enabled in their config,
run LeRobot's own ``predict_action_chunk`` with ``prev_chunk_left_over`` (the un-executed rest of the
previous chunk, model space, indexed by observation time) and ``inference_delay``. With the same
observation and noise, the guided chunk's first ``inference_delay`` actions land on the left-over
where the unguided chunk starts elsewhere; a later observation stamp shifts which part is left over.
``rtc: true`` on a policy without RTC (ACT) is a config error; a checkpoint of an RTC-capable policy
saved without ``rtc_config`` gets LeRobot's defaults (as LeRobot's rollout does). The fast engine's
guidance (``engine: fast``) gives the eager backend's guided chunks.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from wam_common.config import ConfigError
from wam_common.topics import DT
from wam_policy_node.backends import Observation

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
H, HORIZON, DELAY = 20, 10, 4  # chunk length, the checkpoint's RTC execution horizon, inference delay
T0 = 1_000_000_000


def _obs(seed: int, k: int = 0, delay: int = 0) -> Observation:
    """Observation ``seed`` (images, state) stamped ``k`` control steps after ``T0``."""
    rng = np.random.default_rng(seed)
    imgs = {c: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for c in CAMS}
    obs = Observation(T0 + int(round(k * DT * 1e9)), imgs, rng.normal(size=14) * 0.3, "pick up the cube")
    obs.inference_delay = delay
    return obs


def _load(path, **cfg):
    from wam_policy_node.backends.lerobot import LeRobotBackend

    return LeRobotBackend({"path": str(path), "device": "cpu", "engine": "eager", "warmup": 0, **cfg})


def _tiny(kind: str):
    from wam_policy_node.zoo.parts import tiny_dims

    return tiny_dims() if kind.startswith("pi") else contextlib.nullcontext()


@pytest.fixture(scope="module", params=["smolvla", "pi0"])
def rtc_backend(request, tmp_path_factory):
    from wam_policy_node.zoo import save_random_policy

    kind = request.param
    with _tiny(kind):
        path = save_random_policy(kind, tmp_path_factory.mktemp(kind) / "ckpt", size="tiny", chunk=H,
                                  extra={"rtc": {"execution_horizon": HORIZON}})
        return _load(path, rtc=True)


@pytest.fixture(scope="module")
def pi0_plain(tmp_path_factory):
    """A tiny π0 checkpoint saved without ``rtc_config``, as published checkpoints are."""
    from wam_policy_node.zoo import save_random_policy

    with _tiny("pi0"):
        return save_random_policy("pi0", tmp_path_factory.mktemp("pi0_plain") / "ckpt", size="tiny", chunk=H)


def _chunks(b, k: int, delay: int, prev: bool = True):
    """A fresh episode: with ``prev``, a first chunk ``a`` (observation 5 at ``T0``, noise seed 0);
    then the chunk for observation 7 stamped ``k`` steps later (noise seed 1). Returns (a, chunk)."""
    import torch

    b.reset()
    a = None
    if prev:
        torch.manual_seed(0)
        a = b.infer(_obs(5)).actions
    torch.manual_seed(1)
    return a, b.infer(_obs(7, k, delay)).actions


def test_guidance_pulls_the_new_chunk_onto_the_left_over(rtc_backend):
    b = rtc_backend
    assert b.use_rtc and b.supports_rtc and b.engine == "eager"
    assert b.policy.config.rtc_config.execution_horizon == HORIZON  # the checkpoint's RTC settings
    a, guided = _chunks(b, 3, DELAY)
    _, free = _chunks(b, 3, DELAY, prev=False)  # same observation, same noise, nothing left over
    assert guided.shape == (H, 14) and np.isfinite(guided).all()
    left = a[3:3 + DELAY]  # what the previous chunk planned for the new chunk's first steps
    err_free = np.abs(free[:DELAY] - left).mean(axis=1)
    err_guided = np.abs(guided[:DELAY] - left).mean(axis=1)
    assert err_free.mean() > 0.3  # another observation and noise: unguided, the chunk starts elsewhere
    assert err_guided.max() < 0.05 * err_free.mean()


def test_left_over_is_indexed_by_observation_time(rtc_backend):
    b = rtc_backend
    a, guided = _chunks(b, 6, DELAY)  # 6 steps later: the left-over starts at the previous chunk's step 6
    assert np.abs(guided[:DELAY] - a[6:6 + DELAY]).mean() < 0.05 * np.abs(guided[:DELAY] - a[3:3 + DELAY]).mean()
    stamp, raw = b._last_raw  # the model-space chunk kept with its observation's stamp
    assert stamp == _obs(7, 6).stamp_ns and tuple(raw.shape) == (H, 14)
    kw = b._rtc_kwargs(_obs(7, 6 + 2, 3))
    assert kw["inference_delay"] == 3
    assert np.array_equal(kw["prev_chunk_left_over"][0].numpy(), raw[2:].numpy())
    # an observation at or past the previous chunk's end, or before its stamp: nothing left over,
    # exactly the unguided chunk
    assert b._rtc_kwargs(_obs(7, 6 + H)) == {} and b._rtc_kwargs(_obs(7, 5)) == {}
    _, free = _chunks(b, H, DELAY, prev=False)
    _, late = _chunks(b, H, DELAY)
    np.testing.assert_allclose(late, free, atol=1e-6)


def test_controller_passes_the_inference_delay(rtc_backend):
    """The controller fills ``inference_delay`` (expected latency in control steps) for this backend."""
    from wam_policy_node.controller import PolicyController
    from wam_policy_node.runtime import ChunkRuntime
    from wam_policy_node.safety import SafetyFilter

    ctl = PolicyController(rtc_backend, ChunkRuntime("rtc"), SafetyFilter())
    ctl.last_infer_ms = 3.5 * DT * 1e3
    assert ctl._prepare(_obs(7), T0).inference_delay == 4


def test_rtc_on_a_checkpoint_without_rtc_config(pi0_plain):
    """rtc: true enables LeRobot's default RTC (as its RTC rollout does); rtc: false leaves it off."""
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    with _tiny("pi0"):
        off = _load(pi0_plain)
        assert not off.use_rtc and not off.supports_rtc and off.policy.config.rtc_config is None
        on = _load(pi0_plain, rtc=True)
    assert on.use_rtc and on.supports_rtc and on.policy._rtc_enabled()
    assert on.policy.config.rtc_config == RTCConfig()
    assert on.policy.model.rtc_processor is on.policy.rtc_processor is not None


def test_fast_engine_guidance_is_the_eager_backends(pi0_plain):
    """``engine: fast`` with ``rtc: true``: the fast engine's guidance (engines._common) gives the eager
    backend's guided chunks over an episode (same observations, same noise); the guidance moves the chunk."""
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    with _tiny("pi0"):
        fast = _load(pi0_plain, engine="fast", rtc=True, warmup=1)
        eager = _load(pi0_plain, rtc=True)
    assert fast.engine == "fast" and fast.use_rtc and fast.supports_rtc and fast.policy._rtc_enabled()
    assert fast.policy.config.rtc_config == RTCConfig() and fast.policy.rtc_jacobian == "identity"
    assert fast._last_raw is None  # the warm-up's guided call left no chunk behind
    for k in (3, 6):
        a, guided = _chunks(fast, k, DELAY)
        b, guided_eager = _chunks(eager, k, DELAY)
        np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_allclose(guided, guided_eager, atol=1e-4)
    _, free = _chunks(fast, 6, DELAY, prev=False)
    assert np.abs(free - guided).max() > 0.05
    with _tiny("pi0"):
        full = _load(pi0_plain, engine="fast", rtc=True, rtc_jacobian="full")
    assert full.policy.rtc_jacobian == "full"  # the paper's VJP (its equality: tests/test_engines_rtc.py)
    _, guided_full = _chunks(full, 6, DELAY)
    assert np.isfinite(guided_full).all() and np.abs(guided_full - guided).max() > 1e-3
    # the options (auto on CUDA, FastWAM, rtc_jacobian): tests/test_policy_holds.py::test_resolved_options


def test_rtc_on_a_policy_without_rtc_is_a_config_error(tmp_path):
    from wam_policy_node.zoo import save_random_policy

    path = save_random_policy("act", tmp_path / "act", size="tiny")
    with pytest.raises(ConfigError, match="'act' has no RTC guidance"):
        _load(path, rtc=True)
    assert not _load(path).supports_rtc


def test_a_refused_chunk_is_not_the_left_over(rtc_backend):
    """The safety filter refuses a chunk (it never reaches the arm): the next inference is guided by
    the last chunk that was accepted, not by the refused one."""
    from wam_policy_node.controller import PolicyController
    from wam_policy_node.runtime import ChunkRuntime
    from wam_policy_node.safety import SafetyFilter

    b = rtc_backend
    b.reset()
    accept = PolicyController(b, ChunkRuntime("rtc"), SafetyFilter({"enabled": False}))
    refuse = PolicyController(b, ChunkRuntime("rtc"), SafetyFilter({"reject_tolerance": -10.0}))
    chunk, reason, _ = accept._infer(_obs(5))
    assert reason is None and b._last_raw[0] == _obs(5).stamp_ns
    chunk, reason, _ = refuse._infer(_obs(7, 3))
    assert chunk is None and reason == "out_of_limits_chunk"
    assert b._last_raw[0] == _obs(5).stamp_ns  # still the accepted one
