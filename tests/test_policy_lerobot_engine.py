"""The `lerobot` backend on the fast π0 engine (wam_policy_node.engines): chosen by `engine`, loaded
from a saved checkpoint with its own processors (tokenizer from a local directory), and it answers
observations like any backend. Numerical equality with LeRobot is tests/test_engines_pi.py's job."""
from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from wam_common.config import ConfigError
from wam_policy_node.backends import Observation
from wam_policy_node.zoo.parts import dataset_stats, make_config, make_local_tokenizer, tiny_dims

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.


@pytest.fixture(scope="module")
def pi0_dir(tmp_path_factory):
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    root = tmp_path_factory.mktemp("pi0")
    tokdir, ckpt = root / "tokenizer", root / "ckpt"
    tok = make_local_tokenizer(tokdir)
    with tiny_dims():
        cfg = make_config("pi0", image_size=56, tokenizer_max_length=24)
        torch.manual_seed(0)
        pol = get_policy_class("pi0")(cfg)
        pol.save_pretrained(ckpt)
        with mock.patch("lerobot.processor.tokenizer_processor.AutoTokenizer.from_pretrained", return_value=tok):
            pre, post = make_pre_post_processors(cfg, dataset_stats=dataset_stats())
        pre.save_pretrained(ckpt)
        post.save_pretrained(ckpt)
    # the saved pre-processor names the tokenizer to load: point it at the local one (no Hub here)
    for f in ckpt.glob("policy_preprocessor*.json"):
        text = f.read_text()
        data = json.loads(text)
        for step in data.get("steps", []):
            if "tokenizer_name" in (step.get("config") or {}):
                step["config"]["tokenizer_name"] = str(tokdir)
        f.write_text(json.dumps(data, indent=2))
    return ckpt, cfg


def _obs(cfg, seed=0, shade=None):
    rng = np.random.default_rng(seed)
    imgs = {}
    for key in cfg.image_features:
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        imgs[key.removeprefix("observation.images.")] = img if shade is None else np.full_like(img, shade)
    return Observation(1_000_000_000, imgs, rng.normal(size=14) * 0.1, "transfer the cube")


def test_backend_runs_on_the_fast_engine(pi0_dir):
    from wam_policy_node.backends.lerobot import LeRobotBackend

    ckpt, cfg = pi0_dir
    with tiny_dims():
        fast = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "fast", "warmup": 1})
        auto = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "auto", "warmup": 0})
    assert fast.engine == "fast" and type(fast.policy).__name__ == "PiFlowEngine"
    assert auto.engine == "eager"  # auto picks the fast engine on CUDA only
    a = fast.infer(_obs(cfg, shade=0))
    b = fast.infer(_obs(cfg, shade=255))
    assert a.actions.shape == (cfg.chunk_size, 14) and np.isfinite(a.actions).all()
    assert a.info["engine"] == "fast"
    torch.manual_seed(3)
    c = fast.infer(_obs(cfg, shade=0))
    torch.manual_seed(3)
    d = fast.infer(_obs(cfg, shade=255))
    assert not np.allclose(c.actions, d.actions)  # the images reach the actions
    assert not np.allclose(a.actions, b.actions)


def test_engine_choice_errors_name_the_key(pi0_dir):
    from wam_policy_node.backends.lerobot import LeRobotBackend

    ckpt, _ = pi0_dir
    with tiny_dims(), pytest.raises(ConfigError, match="backend.lerobot.engine"):
        LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "turbo"})
    with tiny_dims(), pytest.raises(ConfigError, match="backend.lerobot.rtc_jacobian"):
        LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "eager", "rtc": True, "rtc_jacobian": "full"})
    act = Path(__file__).resolve().parents[1] / "checkpoints" / "act_transfer_cube"  # a real ACT checkpoint
    with pytest.raises(ConfigError, match="no fast engine for policy type 'act'"):
        LeRobotBackend({"path": str(act), "device": "cpu", "engine": "fast"})


@pytest.mark.parametrize("ptype", ["pi0", "pi05"])
def test_fast_backend_gives_the_eager_backends_actions(ptype, tmp_path):
    """Raw observation → actions, same noise: the fast backend (images straight to the engine's vision
    tower while the pre-processor handles prompt and state on the host) = the eager backend (every input
    through LeRobot's pre-processor and model)."""
    from wam_policy_node.backends.lerobot import LeRobotBackend, _images_untouched
    from wam_policy_node.zoo import save_random_policy

    with tiny_dims():
        ckpt = save_random_policy(ptype, tmp_path / ptype, size="tiny", seed=4)
        fast = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "fast", "warmup": 0})
        eager = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "eager", "warmup": 0})
    assert _images_untouched(fast.pre) and fast._prefetch is not None
    cfg = fast.policy.config
    for seed in (0, 1, 2):
        obs = _obs(cfg, seed=seed)
        torch.manual_seed(seed)
        a = fast.infer(obs).actions
        torch.manual_seed(seed)
        b = eager.infer(obs).actions
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert fast.policy.prefetch_hits == 2  # every call after the first (which sets the shapes)
