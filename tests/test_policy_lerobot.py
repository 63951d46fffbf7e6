"""The lerobot backend: tiny randomly initialised LeRobot policies saved to a temp dir and loaded
back through LeRobot's real loader (get_policy_class(...).from_pretrained + make_pre_post_processors),
compared with LeRobot's own inference path, and driven through the real node process."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402
from lerobot.policies.factory import get_policy_class, make_pre_post_processors  # noqa: E402

from wam_common.config import ConfigError  # noqa: E402
from wam_policy_node.backends import Observation, make_backend  # noqa: E402

# Tiers: the node test is `ros`; the others carry none: pure, but they build LeRobot policies on CPU
# (too slow for make test-unit).

CAMS = ["cam_high", "cam_left_wrist"]
H, W = 48, 64


def _features():
    inp = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, H, W)) for c in CAMS}
    inp["observation.state"] = PolicyFeature(FeatureType.STATE, (14,))
    return inp, {"action": PolicyFeature(FeatureType.ACTION, (14,))}


def _stats():
    s = {"observation.state": {"mean": torch.zeros(14), "std": torch.ones(14),
                               "min": -torch.ones(14) * 3, "max": torch.ones(14) * 3},
         "action": {"mean": torch.full((14,), 0.3), "std": torch.full((14,), 0.1),
                    "min": torch.full((14,), -0.5), "max": torch.full((14,), 1.0)}}
    for c in CAMS:
        s[f"observation.images.{c}"] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.2),
                                        "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
    return s


def save_tiny(kind: str, d) -> None:
    inp, out = _features()
    if kind == "act":
        from lerobot.policies.act.configuration_act import ACTConfig

        cfg = ACTConfig(input_features=inp, output_features=out, dim_model=32, n_heads=2, dim_feedforward=64,
                        n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, chunk_size=20,
                        n_action_steps=20, pretrained_backbone_weights=None, use_vae=False, device="cpu")
    else:
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

        cfg = DiffusionConfig(input_features=inp, output_features=out, n_obs_steps=2, horizon=16, n_action_steps=8,
                              down_dims=(16, 32), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
                              crop_shape=None, pretrained_backbone_weights=None, use_group_norm=True,
                              spatial_softmax_num_keypoints=8, num_inference_steps=3, device="cpu")
    torch.manual_seed(0)
    pol = get_policy_class(kind)(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=_stats())
    pol.save_pretrained(d)
    pre.save_pretrained(d)
    post.save_pretrained(d)


def _obs(seed=0, stamp=1_000_000_000):
    rng = np.random.default_rng(seed)
    return Observation(stamp, {c: rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for c in CAMS},
                       rng.normal(0, 0.3, 14), "pick up the cube")


def _reference(d, obs: Observation, seed: int) -> np.ndarray:
    """LeRobot's own path: prepare_observation_for_inference → preprocessor → predict_action_chunk →
    postprocessor per action (as lerobot.async_inference.policy_server does)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.utils import prepare_observation_for_inference

    cfg = PreTrainedConfig.from_pretrained(d)
    pol = get_policy_class(cfg.type).from_pretrained(d, config=cfg).eval()
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(d))
    raw = {f"observation.images.{c}": obs.images[c].copy() for c in CAMS}
    raw["observation.state"] = np.asarray(obs.state, np.float32)
    batch = pre(prepare_observation_for_inference(raw, torch.device("cpu"), obs.prompt))
    torch.manual_seed(seed)
    with torch.inference_mode():
        if cfg.type == "diffusion":  # the online path: select_action fills the queues and plans a chunk
            first = pol.select_action(dict(batch))
            chunk = torch.stack([first] + list(pol._queues["action"]), dim=1)
        else:
            chunk = pol.predict_action_chunk(batch)
    return torch.stack([post(chunk[:, i]) for i in range(chunk.shape[1])], 1)[0].double().numpy()


@pytest.mark.parametrize("kind,horizon", [("act", 20), ("diffusion", 8)])
def test_tiny_policy_round_trip_matches_lerobot(tmp_path, kind, horizon):
    if kind == "diffusion":
        pytest.importorskip("diffusers", reason="LeRobot's Diffusion policy needs 'diffusers' (lerobot[diffusion])")
    save_tiny(kind, tmp_path)
    b = make_backend("lerobot", {"path": str(tmp_path), "warmup": 0})
    assert b.needs_images and b.device.type in ("cpu", "cuda")
    obs = _obs()
    torch.manual_seed(7)
    chunk = b.infer(obs)
    assert chunk.actions.shape == (horizon, 14) and chunk.stamp_ns == obs.stamp_ns and chunk.infer_ms > 0
    assert np.all(np.isfinite(chunk.actions))
    ref = _reference(tmp_path, obs, 7)
    np.testing.assert_allclose(chunk.actions, ref, atol=1e-5)
    # the images matter (a different frame → a different chunk), the un-normalisation is applied
    other = _obs(seed=1)
    other.state = obs.state
    torch.manual_seed(7)
    b.reset()
    assert not np.allclose(b.infer(other).actions, chunk.actions)


def test_missing_dir_or_camera_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="backend.lerobot.path"):
        make_backend("lerobot", {"path": str(tmp_path / "nope")})
    save_tiny("act", tmp_path)
    b = make_backend("lerobot", {"path": str(tmp_path), "warmup": 0})
    obs = _obs()
    del obs.images["cam_left_wrist"]
    from wam_policy_node.backends import BackendError

    with pytest.raises(BackendError, match="observation.images.cam_left_wrist"):
        b.infer(obs)


def test_zoo_key_writes_the_checkpoint_once(tmp_path, monkeypatch):
    """``backend.lerobot.zoo``: a random-weight zoo architecture written on first use into a cache folder
    named after the spec, loaded from there next time; an unknown kind is a config error."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = {"kind": "act", "size": "tiny", "seed": 3, "cameras": CAMS, "image_size": [H, W]}
    b = make_backend("lerobot", {"zoo": spec, "device": "cpu", "warmup": 0})
    assert b.policy_type == "act"
    (ckpt,) = (tmp_path / "wam_policy" / "zoo").iterdir()  # no temporary folder left behind
    assert ckpt.name.startswith("act-") and json.loads((ckpt / "zoo.json").read_text())["seed"] == 3
    stamp = (ckpt / "model.safetensors").stat().st_mtime_ns
    again = make_backend("lerobot", {"zoo": spec, "device": "cpu", "warmup": 0})
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    obs = _obs()
    assert np.allclose(again.infer(obs).actions, b.infer(obs).actions)
    other = make_backend("lerobot", {"zoo": dict(spec, seed=4), "device": "cpu", "warmup": 0})
    assert len(list((tmp_path / "wam_policy" / "zoo").iterdir())) == 2
    assert not np.allclose(other.infer(obs).actions, b.infer(obs).actions)
    with pytest.raises(ConfigError, match="backend.lerobot.zoo.kind"):
        make_backend("lerobot", {"zoo": {"kind": "nope"}})


@pytest.mark.ros
def test_lerobot_backend_drives_the_node(probe, domain_id, tmp_path):
    from std_msgs.msg import String

    from policy_sim import LockstepSim
    from rosutil import wait_for
    from test_policy_node import start_policy
    from wam_common import topics

    save_tiny("act", tmp_path / "act")
    probe.listen(topics.POLICY_STATUS, String)
    sim = LockstepSim(probe, cameras=CAMS, size=(H, W))
    runner = start_policy(domain_id, {"backend": {"type": "lerobot", "lerobot": {"path": str(tmp_path / "act")}},
                                      "observation": {"cameras": list(CAMS), "image_keys": list(CAMS)},  # no YAML aliases
                                      "runtime": {"strategy": "sync"},
                                      # random weights: a jerky path the whole-chunk check (rightly) refuses
                                      "safety": {"chunk": {"enabled": False}}}, tmp_path)
    try:
        assert sim.wait_matched(60), runner.log("wam_policy_node")[-3000:]
        cmds = sim.run_episode(0, 25, camera_every=5, give_up_s=60)
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= 25, 10)
        st = [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]
        assert [s["step"] for s in st if s["inferred"]] == [0, 20]
        assert all(s["hold"] is None for s in st), [s for s in st if s["hold"]][:2]
        assert np.all(np.isfinite(np.array(cmds)))
        assert not np.allclose(cmds[0], cmds[10])  # the policy's actions, not a hold
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def act_dir(tmp_path_factory):
    from wam_policy_node.zoo import save_random_policy

    return save_random_policy("act", tmp_path_factory.mktemp("zoo") / "act", size="tiny")


def test_a_loaded_backend_runs_its_options(act_dir):
    """The options record of a loaded checkpoint (tests/test_policy_holds.py has the pure cases)."""
    from wam_policy_node.backends.lerobot import LeRobotBackend, Options

    b = LeRobotBackend({"path": str(act_dir), "device": "cpu", "warmup": 0})
    assert b.options == Options("eager", False, False, "", "float32", None) and b.engine == "eager"
    assert not b.use_rtc and not b.supports_rtc and b.autocast_dtype is None and b._stream is None
    assert b._predict_fn == b.policy.predict_action_chunk and b._prefetch is None
    text = ("key 'backend.lerobot.rtc': policy type 'act' has no RTC guidance (SmolVLA, π0, π0.5 have); "
            "set rtc: false")
    with pytest.raises(ConfigError, match=f"^{re.escape(text)}$"):
        LeRobotBackend({"path": str(act_dir), "device": "cpu", "warmup": 0, "rtc": True})
