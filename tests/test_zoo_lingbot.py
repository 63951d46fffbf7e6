"""LingBot-VA through the `lerobot` backend and the controller: the zoo's tiny checkpoint (random weights,
its own Wan2.2 VAE / UMT5 encoder / T5 tokenizer) loads with no network after a move, and its second chunk
is conditioned on the frames observed while the first one ran (``Backend.observe``), as LeRobot's
``select_action`` conditions it. Also the controller's side of that contract with any backend:
``observe`` once per new observation stamp, before the inference it may trigger."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from wam_common.config import ConfigError
from wam_policy_node.backends import ActionChunk, Backend, Observation
from wam_policy_node.controller import PolicyController
from wam_policy_node.runtime import ChunkRuntime
from wam_policy_node.safety import SafetyFilter

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
DT = 20_000_000
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


def _images(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for c in CAMS}


@pytest.fixture(scope="module")
def lingbot(tmp_path_factory):
    from wam_policy_node.backends.lerobot import LeRobotBackend
    from wam_policy_node.zoo import save_random_policy

    root = tmp_path_factory.mktemp("lingbot")
    made = save_random_policy("lingbot_va", root / "made", size="tiny", cameras=CAMS)
    for sub in ("vae", "text_encoder", "tokenizer"):
        assert (made / sub).is_dir(), f"the checkpoint lacks its {sub}"
    moved = root / "elsewhere" / "ckpt"
    shutil.move(str(made), moved)  # the config's wan_pretrained_path no longer exists
    b = LeRobotBackend({"path": str(moved), "device": "cpu", "engine": "eager", "warmup": 0})
    assert b.policy.config.wan_pretrained_path == str(moved.resolve())
    return b


def _rollout(backend, between: int, steps: int = 12 + 16 + 2):
    """Lockstep through the controller (sync runtime): the frames of steps 1..11 come from seed
    ``between``, all others are the same in every rollout. Returns the commands and the inferred steps."""
    import torch

    ctl = PolicyController(backend, ChunkRuntime("sync"), SafetyFilter({"enabled": False}))  # commands = actions
    ctl.reset_episode({"episode": 0})
    torch.manual_seed(0)  # the policy's flow noise
    cmds, inferred = [], []
    for k in range(steps):
        imgs = _images(1000 + between * 100 + k if 1 <= k <= 11 else k)
        cmd, st = ctl.step_lockstep(k * DT, Observation(k * DT, imgs, HOME + 0.01 * k, "pick up the cube"))
        assert st["hold"] is None and st.get("observe_error") is None, st
        cmds.append(cmd)
        if st["inferred"]:
            inferred.append(k)
    return np.array(cmds), inferred


def test_lingbot_second_chunk_depends_on_the_frames_observed_during_the_first(lingbot, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub fetch fails at once instead of hanging
    assert lingbot.requires_sync_runtime and lingbot.streams_observations
    a, inferred = _rollout(lingbot, between=0)
    # the first chunk has 12 actions (LeRobot drops the conditioning frame's 4), later ones 16
    assert inferred == [0, 12, 28] and a.shape == (30, 14) and np.isfinite(a).all()
    # fed back into the KV cache: the initial latent + the 12 frames of chunk 1 (steps 1-12), then the 16
    # of chunk 2 (steps 13-28): 4 latent frames each, as LeRobot's select_action feeds them
    assert lingbot.policy._frame_st_id == 2 * lingbot.policy.config.frame_chunk_size
    again, _ = _rollout(lingbot, between=0)
    other, _ = _rollout(lingbot, between=1)
    np.testing.assert_array_equal(a, again)  # deterministic under the same seed and frames
    np.testing.assert_array_equal(a[:12], other[:12])  # the first chunk saw the same observation
    assert np.abs(a[12:28] - other[12:28]).max() > 1e-6, "the frames seen during chunk 1 do not reach chunk 2"


def test_lingbot_refuses_a_runtime_that_does_not_execute_its_chunks(lingbot):
    for rt in (ChunkRuntime("rtc"), ChunkRuntime("temporal_ensemble"), ChunkRuntime("sync", execute_steps=8)):
        with pytest.raises(ConfigError, match="runtime.strategy: sync"):
            PolicyController(lingbot, rt, SafetyFilter({}))


class _Recorder(Backend):
    """A constant-chunk backend that records the controller's calls (the contract under test)."""

    def __init__(self, cfg=None):
        super().__init__(cfg or {})
        self.calls: list[tuple[str, int]] = []

    def observe(self, obs):
        self.calls.append(("observe", obs.stamp_ns))

    def infer(self, obs):
        self.calls.append(("infer", obs.stamp_ns))
        return ActionChunk(np.repeat(HOME[None], 4, axis=0), obs.stamp_ns, 1.0)


def _obs(k: int) -> Observation:
    return Observation(k * DT, {}, HOME, "")


def test_controller_observes_each_new_stamp_once_before_inferring():
    b = _Recorder()
    ctl = PolicyController(b, ChunkRuntime("sync"), SafetyFilter({}))
    for k in range(6):  # lockstep: one observation per step, a chunk of 4 at steps 0 and 4
        ctl.step_lockstep(k * DT, _obs(k))
    ctl.step_lockstep(5 * DT, _obs(5))  # the same stamp again: not observed twice
    ctl.step_lockstep(6 * DT, _obs(6), missing="missing_camera")  # an incomplete observation: not observed
    assert b.calls == [("observe", 0), ("infer", 0), ("observe", DT), ("observe", 2 * DT), ("observe", 3 * DT),
                       ("observe", 4 * DT), ("infer", 4 * DT), ("observe", 5 * DT)]

    b = _Recorder()
    now = [0]
    ctl = PolicyController(b, ChunkRuntime("sync"), SafetyFilter({}), clock_ns=lambda: now[0], realtime=True)
    newest = None
    for tick in range(9):  # realtime: 50 Hz ticks, observations at 25 Hz (each seen by two ticks)
        now[0] = tick * DT
        if tick % 2 == 0:
            newest = _obs(tick)
        ctl.tick(now[0], newest)
    ctl.reset_episode()  # a new episode observes again, even the same stamp
    ctl.tick(now[0], newest)
    seen = [t for name, t in b.calls if name == "observe"]
    assert seen == [0, 2 * DT, 4 * DT, 6 * DT, 8 * DT, 8 * DT]
    assert b.calls[:2] == [("observe", 0), ("infer", 0)] and ("infer", 4 * DT) in b.calls
    i = b.calls.index(("infer", 4 * DT))
    assert b.calls[i - 1] == ("observe", 4 * DT)  # observed before the inference it triggered


def test_lingbot_sizes_on_meta_device():
    """``full`` is LeRobot's default LingBot-VA (5.1 B transformer, UMT5-XXL, Wan2.2 VAE); ``reduced`` only
    has fewer transformer layers."""
    from wam_policy_node.zoo.wam import lingbot_param_counts

    full, reduced = lingbot_param_counts("full"), lingbot_param_counts("reduced", layers=4)
    assert 5.0e9 < full["transformer"] < 5.2e9 and 5.6e9 < full["text_encoder"] < 5.8e9
    assert reduced["text_encoder"] == full["text_encoder"] and reduced["vae"] == full["vae"]
    assert reduced["transformer"] < full["transformer"] / 5
