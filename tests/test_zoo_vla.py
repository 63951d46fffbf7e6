"""X-VLA and VLA-JEPA (LeRobot's ``xvla`` and ``vla_jepa``) through the `lerobot` backend and the node's
controller: the zoo's tiny checkpoints (LeRobot's real classes — Florence-2 + soft-prompted transformer;
Qwen3-VL + DiT action head + V-JEPA 2 world model — at a few dozen channels, random weights, with their
tokenizer / Qwen3-VL and V-JEPA 2 directories written locally) load with no network after a move, run in
lockstep through ``PolicyController`` (commands = the chunk LeRobot's ``predict_action_chunk`` + the
checkpoint's post-processor give, one inference per chunk) and their actions depend on the images. The
full-size builds are checked for the published architecture without building weights."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from zoo_obs import CAMS
from zoo_obs import random_obs as _obs

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it; the node test at the end is `ros`.

DT = 20_000_000
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
KINDS = ("xvla", "vla_jepa")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """kind → the tiny checkpoint, written and then moved (the names its config wrote no longer exist)."""
    from wam_policy_node.zoo import save_random_policy

    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(kind)
        made = save_random_policy(kind, root / "made", size="tiny", cameras=CAMS)
        moved = root / "elsewhere" / "ckpt"
        shutil.move(str(made), moved)
        out[kind] = moved
    return out


def _backend(path):
    from wam_policy_node.backends.lerobot import LeRobotBackend

    return LeRobotBackend({"path": str(path), "device": "cpu", "engine": "eager", "warmup": 0})


def _infer(backend, seed):
    import torch

    backend.reset()
    torch.manual_seed(0)  # the same flow-matching noise for every call
    return backend.infer(_obs(seed)).actions


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_build_loads_offline_moved_and_runs_lockstep(kind, ckpts, monkeypatch):
    import torch

    from wam_policy_node.backends import Observation
    from wam_policy_node.controller import PolicyController
    from wam_policy_node.runtime import ChunkRuntime
    from wam_policy_node.safety import SafetyFilter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub fetch fails at once instead of hanging
    b = _backend(ckpts[kind])
    assert b.policy_type == kind and b.engine == "eager"
    cfg = b.policy.config
    if kind == "vla_jepa":  # re-pointed at the moved checkpoint's own directories
        assert cfg.qwen_model_name == str(ckpts[kind].resolve() / "qwen")
        assert cfg.jepa_encoder_name == str(ckpts[kind].resolve() / "jepa_encoder")
        assert b.policy.model.video_encoder is not None  # the published architecture, world model included
    a0, a0_again, a1 = _infer(b, 0), _infer(b, 0), _infer(b, 1)
    assert a0.shape == (cfg.chunk_size, 14) and np.isfinite(a0).all()
    np.testing.assert_array_equal(a0, a0_again)  # so the difference below comes from the images
    assert np.abs(a0 - a1).max() > 1e-6, "the images do not reach the actions"

    # lockstep through the node's controller: one inference per chunk, its actions are the commands
    h = cfg.chunk_size
    ctl = PolicyController(b, ChunkRuntime("sync"), SafetyFilter({"enabled": False}))
    ctl.reset_episode({"episode": 0})
    cmds, inferred = [], []
    for k in range(h + 2):
        o = _obs(0 if k == 0 else 100 + k, stamp_ns=k * DT)
        o = Observation(o.stamp_ns, o.images, HOME + 0.01 * k, o.prompt)
        torch.manual_seed(0)
        cmd, st = ctl.step_lockstep(k * DT, o)
        assert st["hold"] is None, st
        cmds.append(cmd)
        if st["inferred"]:
            inferred.append(k)
    assert inferred == [0, h]
    b.reset()
    torch.manual_seed(0)
    first = b.infer(Observation(0, _obs(0).images, HOME, _obs(0).prompt)).actions
    np.testing.assert_allclose(np.array(cmds[:h]), first, rtol=1e-6, atol=1e-7)


def test_vla_jepa_full_size_directories_load_offline(tmp_path):
    """The full-size Qwen3-VL / V-JEPA 2 directories (no weights) are Qwen3-VL-2B's and ViT-L/16 fpc64-256's
    architecture, and the processor expands a camera into the visual tokens the model expects."""
    import torch
    from transformers import AutoConfig, AutoProcessor

    from wam_policy_node.zoo.vla_jepa import CHAT_TEMPLATE, FULL, write_jepa, write_qwen

    write_qwen(tmp_path / "qwen", FULL)
    write_jepa(tmp_path / "jepa", FULL)
    cfg = AutoConfig.from_pretrained(tmp_path / "qwen")
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim,
            t.intermediate_size, t.vocab_size) == (2048, 28, 16, 8, 128, 6144, 151936)
    assert (v.depth, v.hidden_size, v.num_heads, v.out_hidden_size, v.deepstack_visual_indexes) == (
        24, 1024, 16, 2048, [5, 11, 17])
    j = AutoConfig.from_pretrained(tmp_path / "jepa")
    assert (j.model_type, j.hidden_size, j.num_hidden_layers, j.tubelet_size, j.crop_size) == ("vjepa2", 1024, 24, 2, 256)
    proc = AutoProcessor.from_pretrained(tmp_path / "qwen")
    assert proc.chat_template == CHAT_TEMPLATE
    msg = [[{"role": "user", "content": [{"type": "image", "image": torch.rand(3, 224, 224)},
                                         {"type": "text", "text": "pick up the cube"}]}]]
    enc = proc.apply_chat_template(msg, tokenize=True, add_generation_prompt=True, return_dict=True,
                                   processor_kwargs={"return_tensors": "pt", "do_rescale": False})
    ids = enc["input_ids"][0].tolist()
    assert ids.count(cfg.image_token_id) == 64  # 224² → 256² (minimum pixels) → 16×16 patches → 2×2 merge
    assert proc.tokenizer.unk_token_id not in ids


def test_xvla_full_size_on_meta_device():
    """``full`` is X-VLA-0.9B: Florence-2-large (DaViT + BART-large encoder, decoder dropped) + a 24-layer
    1024-wide soft-prompted transformer."""
    from wam_policy_node.zoo.xvla import param_counts

    n = param_counts("full")
    assert 0.85e9 < n["total"] < 0.92e9
    assert 0.19e9 < n["text_encoder"] < 0.22e9 and 0.29e9 < n["transformer"] < 0.32e9


@pytest.mark.ros
@pytest.mark.parametrize("kind,h", [("xvla", 32), ("vla_jepa", 7)])
def test_tiny_build_drives_the_node(ckpts, probe, domain_id, tmp_path, kind, h):
    """The real node (ROS 2, lockstep with the test's sim driver) with the `lerobot` backend on the tiny
    checkpoint: one inference per chunk (X-VLA 32 actions, VLA-JEPA 7), no hold, the policy's actions as
    commands (safety filter off). VLA-JEPA's node start-up imports Qwen3-VL and V-JEPA 2: over 90 s on the
    2-core machine at load 20, hence the long wait for the node's subscriptions."""
    import json

    from std_msgs.msg import String

    from policy_sim import LockstepSim
    from rosutil import wait_for
    from test_policy_node import start_policy
    from wam_common import topics

    probe.listen(topics.POLICY_STATUS, String)
    sim = LockstepSim(probe, cameras=CAMS, size=(48, 64))
    runner = start_policy(domain_id, {"backend": {"type": "lerobot", "lerobot": {"path": str(ckpts[kind]),
                                                                                 "device": "cpu"}},
                                      "observation": {"cameras": list(CAMS), "image_keys": list(CAMS)},
                                      "runtime": {"strategy": "sync"},
                                      # random weights over random normalisation stats act beyond the joint
                                      # limits: the filter would (rightly) reject every chunk
                                      "safety": {"enabled": False}}, tmp_path)
    try:
        assert sim.wait_matched(240), runner.log("wam_policy_node")[-3000:]
        n = h + 2
        cmds = sim.run_episode(0, n, give_up_s=90)
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= n, 10)
        st = [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]
        assert [s["step"] for s in st if s["inferred"]] == [0, h]
        assert all(s["hold"] is None for s in st), [s for s in st if s["hold"]][:2]
        assert np.all(np.isfinite(np.array(cmds))) and not np.allclose(cmds[0], cmds[1])
    finally:
        runner.stop()
