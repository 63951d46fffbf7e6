"""The zoo's FastWAM checkpoint (random weights, its own Wan2.2 VAE / UMT5 encoder / tokenizer) loads
through the `lerobot` backend with no network — also after the directory moved — and answers
observations with live networks: a (chunk, 14) action chunk that depends on the images."""
from __future__ import annotations

import shutil

import numpy as np

from zoo_obs import CAMS
from zoo_obs import random_obs as _obs

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.


def test_fastwam_loads_offline_and_answers(tmp_path, monkeypatch):
    from wam_policy_node.backends.lerobot import LeRobotBackend
    from wam_policy_node.zoo import save_random_policy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub fetch fails at once instead of hanging
    made = save_random_policy("fastwam", tmp_path / "made", size="tiny", cameras=CAMS, chunk=16)
    for sub in ("vae", "text_encoder", "tokenizer"):
        assert (made / sub).is_dir(), f"the checkpoint lacks its {sub}"
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.move(str(made), moved)  # the config's encoder/tokenizer paths no longer exist
    b = LeRobotBackend({"path": str(moved), "device": "cpu", "engine": "eager", "warmup": 0})
    assert b.policy_type == "fastwam" and b.policy.config.text_encoder_model_id == str(moved.resolve())
    outs = []
    for seed in (0, 1):
        b.reset()
        a = b.infer(_obs(seed)).actions  # FastWAM seeds its own flow noise (inference_seed)
        assert a.shape == (16, 14) and np.isfinite(a).all()
        outs.append(a)
    assert np.abs(outs[0] - outs[1]).max() > 1e-6, "the images do not reach the actions"


def test_fastwam_sizes_on_meta_device():
    """``full`` is LeRobot's published FastWAM (Wan2.2-TI2V-5B video DiT, UMT5-XXL); ``reduced`` only
    has fewer DiT layers."""
    from wam_policy_node.zoo.wam import param_counts

    full, reduced = param_counts("full"), param_counts("reduced", layers=4)
    assert 4.9e9 < full["video_dit"] < 5.1e9 and 5.6e9 < full["text_encoder"] < 5.8e9
    assert reduced["text_encoder"] == full["text_encoder"] and reduced["vae"] == full["vae"]
    assert reduced["video_dit"] < full["video_dit"] / 5 and reduced["action_dit"] < full["action_dit"] / 5


def test_fastwam_encodes_each_prompt_once(tmp_path, monkeypatch):
    """The backend caches FastWAM's prompt embedding (LeRobot runs the UMT5 text encoder for every
    chunk): one encoder call per distinct prompt, and the same actions as encoding it every time."""
    import torch

    from wam_policy_node.backends.lerobot import LeRobotBackend
    from wam_policy_node.zoo import save_random_policy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = save_random_policy("fastwam", tmp_path / "m", size="tiny", cameras=CAMS, chunk=16)
    b = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "eager", "warmup": 0})
    enc = b.policy.model.text_encoder
    calls = []
    enc.register_forward_hook(lambda *_: calls.append(1))
    uncached = type(b.policy.model).encode_prompt.__get__(b.policy.model)  # LeRobot's own, every time
    outs = []
    for prompt in ("transfer the cube", "transfer the cube", "insert the peg", "transfer the cube"):
        obs = _obs(0)
        obs = type(obs)(obs.stamp_ns, obs.images, obs.state, prompt)
        b.reset()
        outs.append(b.infer(obs).actions)
    assert len(calls) == 2  # two distinct prompts
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[3])
    # the cached embedding is LeRobot's for that text
    key = next(iter(b.policy.model.prompt_cache))
    emb, mask = b.policy.model.prompt_cache[key]
    ref_emb, ref_mask = uncached(key)
    assert torch.equal(emb, ref_emb) and torch.equal(mask, ref_mask)
