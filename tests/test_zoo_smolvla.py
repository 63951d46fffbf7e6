"""The zoo's SmolVLA: its own SmolVLM directory (config, processor, tokenizer with SmolVLM's image
tokens) loads offline; a tiny random-weight checkpoint loads through the `lerobot` backend, answers
3 cameras with finite (chunk, 14) actions that depend on the images, and still loads — with the same
answers — after the checkpoint directory moved (the backend re-points ``vlm_model_name`` at ``<dir>/vlm``)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from zoo_obs import random_obs as _obs

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.


def _infer(backend, seed):
    import torch

    backend.reset()
    torch.manual_seed(0)  # the same flow-matching noise for every call
    return backend.infer(_obs(seed)).actions


def test_full_size_vlm_directory_loads_offline(tmp_path):
    """The full-size VLM directory (no weights) is SmolVLM2-500M's architecture and processor wiring."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    from wam_policy_node.zoo.smolvla import FULL, write_vlm

    write_vlm(tmp_path / "vlm", FULL)
    cfg = AutoConfig.from_pretrained(tmp_path / "vlm")
    t, v = cfg.text_config, cfg.vision_config
    assert cfg.model_type == "smolvlm" and cfg.scale_factor == 4
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim,
            t.intermediate_size, t.vocab_size) == (960, 32, 15, 5, 64, 2560, 49280)
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size, v.image_size) == (
        768, 12, 12, 16, 512)
    proc = AutoProcessor.from_pretrained(tmp_path / "vlm")
    assert proc.image_seq_len == 64  # (512 / 16)² / 4²
    tok = AutoTokenizer.from_pretrained(tmp_path / "vlm")
    ids = {tok.fake_image_token_id, tok.global_image_token_id, cfg.image_token_id, tok.eos_token_id}
    assert len(ids) == 4 and all(0 <= i < t.vocab_size for i in ids)
    assert tok.convert_tokens_to_ids("<row_6_col_6>") != tok.unk_token_id
    assert tok.convert_tokens_to_ids(tok.tokenize("<image><global-img>")) == [cfg.image_token_id,
                                                                             tok.global_image_token_id]


def test_tiny_smolvla_loads_infers_and_survives_a_move(tmp_path):
    from wam_policy_node.backends.lerobot import LeRobotBackend
    from wam_policy_node.zoo import save_random_policy

    made = save_random_policy("smolvla", tmp_path / "made", size="tiny")
    saved = json.loads((made / "config.json").read_text())
    assert saved["vlm_model_name"] == str((made / "vlm").resolve()) and saved["load_vlm_weights"] is False

    b = LeRobotBackend({"path": str(made), "device": "cpu", "engine": "eager"})
    a0, a0_again, a1 = _infer(b, 0), _infer(b, 0), _infer(b, 1)
    assert a0.shape == (saved["chunk_size"], 14) and np.isfinite(a0).all()
    np.testing.assert_array_equal(a0, a0_again)  # so the difference below comes from the images
    assert np.abs(a0 - a1).max() > 1e-6, "the images do not reach the actions"

    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.move(str(made), moved)  # config's vlm_model_name and the tokenizer step's path are gone
    b2 = LeRobotBackend({"path": str(moved), "device": "cpu", "engine": "eager", "warmup": 0})
    assert b2.policy.config.vlm_model_name == str((moved / "vlm").resolve())
    np.testing.assert_allclose(_infer(b2, 0), a0, rtol=1e-5, atol=1e-6)


def test_non_square_images_are_refused(tmp_path):
    from wam_policy_node.zoo import save_random_policy

    with pytest.raises(ValueError, match="square"):
        save_random_policy("smolvla", tmp_path / "x", size="tiny", image_size=(48, 64))
