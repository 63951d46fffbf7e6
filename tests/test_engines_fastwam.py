"""The FastWAM engine computes LeRobot's own ``predict_action_chunk``: the zoo's tiny FastWAM on CPU.

The zoo's tiny FastWAM (LeRobot's real classes: Wan2.2 VAE, UMT5 encoder, video and action DiTs in a
mixture of transformers, every parameter randomised), loaded through LeRobot's ``from_pretrained``.
The engine holds that same policy and runs its modules on static buffers (without CUDA graphs here:
CI has no GPU; the graphs are exercised by bench/gpu_inference.py on the device), so its actions
are LeRobot's to the bit: the prompt cache, the start-up constants and the per-chunk context
embedding must not change a single value.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from wam_policy_node.engines import EngineError, FastWAMEngine, make_engine  # noqa: E402

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.

CAMS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
STATE = "observation.state"
CHUNK = 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import os

    from wam_policy_node.zoo import save_random_policy

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return save_random_policy("fastwam", tmp_path_factory.mktemp("fastwam") / "ckpt", size="tiny", cameras=CAMS,
                              chunk=CHUNK, seed=5)


@pytest.fixture(scope="module")
def pair(ckpt):
    """(LeRobot's policy, the engine over it)."""
    from wam_policy_node.checkpoint import load_checkpoint

    pol = load_checkpoint(ckpt, device="cpu")
    return pol, FastWAMEngine(pol, cuda_graph=False)


def _batch(pol, seed: int = 0, task: str = "transfer the cube", b: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    feats = pol.config.image_features
    batch = {k: torch.rand(b, *feats[k].shape, generator=g) for k in sorted(feats)}
    batch[STATE] = torch.randn(b, 14, generator=g)
    batch["task"] = task
    return batch


def _ref(pol, batch: dict) -> torch.Tensor:
    return pol.predict_action_chunk(dict(batch))


def test_same_actions_as_lerobot_to_the_bit(pair):
    pol, eng = pair
    for seed in (0, 1):
        batch = _batch(pol, seed)
        a, b = _ref(pol, batch), eng.predict_action_chunk(batch)
        assert b.shape == (1, CHUNK, 14) and b.dtype == torch.float32
        assert a.abs().mean() > 0.05  # not two near-zero outputs
        assert torch.equal(a, b), (a - b).abs().max()


def test_raw_camera_frames_are_converted_as_the_backend_does(pair):
    """uint8 (1, H, W, 3) frames (what the backend hands a fast engine) → the same actions as LeRobot
    on the backend's float conversion of them (permute, /255)."""
    pol, eng = pair
    batch = _batch(pol, 2)
    raw = {k: (batch[k].permute(0, 2, 3, 1) * 255).round().to(torch.uint8) for k in eng.image_keys}
    as_float = dict(batch, **{k: raw[k].permute(0, 3, 1, 2).float().div(255.0) for k in raw})
    assert torch.equal(_ref(pol, as_float), eng.predict_action_chunk(dict(batch, **raw)))


def test_each_input_reaches_the_actions_as_in_lerobot(pair):
    pol, eng = pair
    base = _batch(pol, 3)
    out0 = eng.predict_action_chunk(base)
    variants = {f"image {k}": dict(base, **{k: torch.rand_like(base[k])}) for k in eng.image_keys}
    variants["state"] = dict(base, **{STATE: base[STATE] + 1.0})
    variants["prompt"] = dict(base, task="insert the peg")
    variants["seed"] = dict(base, seed=7)
    for what, batch in variants.items():
        b = eng.predict_action_chunk(batch)
        assert (b - out0).abs().max().item() > 1e-3, f"{what} does not change the actions"
        assert torch.equal(_ref(pol, batch), b), what
    # explicit noise: the seed-7 draw passed in gives LeRobot's seed-7 actions
    noise = pol.model._make_action_latents(CHUNK, 7, "cpu").float()
    assert torch.equal(eng.predict_action_chunk(base, noise=noise), _ref(pol, variants["seed"]))


def test_each_prompt_is_encoded_once(pair):
    pol, eng = pair
    eng._prompts.clear()
    n0 = eng.prompt_encodes
    outs = [eng.predict_action_chunk(_batch(pol, 4, task=t)) for t in ("pick", "place", "pick", "place", "pick")]
    assert eng.prompt_encodes - n0 == 2
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[0], outs[4]) and torch.equal(outs[1], outs[3])
    assert not torch.equal(outs[0], outs[1])


def test_a_batch_of_two_is_two_samples(pair):
    pol, eng = pair
    batch = _batch(pol, 5, b=2)
    out = eng.predict_action_chunk(batch)
    assert out.shape == (2, CHUNK, 14)
    assert torch.equal(out, _ref(pol, batch))
    one = {k: (v[1:2] if torch.is_tensor(v) else v) for k, v in batch.items()}
    assert torch.equal(out[1:2], eng.predict_action_chunk(one))


def test_prefetch_starts_the_images_and_the_call_uses_them(pair):
    pol, eng = pair
    batch = _batch(pol, 6)
    first = eng.predict_action_chunk(batch)  # the shapes are known after a call
    nxt = _batch(pol, 7)
    hits = eng.prefetch_hits
    assert eng.prefetch({k: nxt[k] for k in eng.image_keys})
    out = eng.predict_action_chunk(nxt)
    assert eng.prefetch_hits == hits + 1 and torch.equal(out, _ref(pol, nxt)) and not torch.equal(out, first)
    # a prefetch of other tensors is not used: the call stages its own images
    assert eng.prefetch({k: batch[k].clone() for k in eng.image_keys})
    assert torch.equal(eng.predict_action_chunk(nxt), out) and eng.prefetch_hits == hits + 1
    # other image shapes: nothing is started
    assert not eng.prefetch({k: torch.rand(1, 3, 32, 32) for k in eng.image_keys})


def test_per_sample_seeds_and_a_temporal_stack_as_lerobot(pair):
    """A (B,) seed tensor seeds each sample (LeRobot slices it per sample, then cannot seed with the
    slice: its own call fails; compared sample by sample with int seeds); a (B, T, 3, H, W) stack conditions
    on its first step, as LeRobot's video path does."""
    pol, eng = pair
    batch = dict(_batch(pol, 11, b=2), seed=torch.tensor([3, 9]))
    rows = [{k: (v[i: i + 1] if torch.is_tensor(v) else v) for k, v in batch.items()} | {"seed": sd}
            for i, sd in enumerate((3, 9))]
    assert torch.equal(eng.predict_action_chunk(batch), torch.cat([_ref(pol, r) for r in rows]))
    one = _batch(pol, 12)
    stacked = dict(one, **{k: torch.stack([one[k], torch.rand_like(one[k])], dim=1) for k in eng.image_keys})
    out = eng.predict_action_chunk(stacked)
    assert torch.equal(out, _ref(pol, stacked)) and torch.equal(out, eng.predict_action_chunk(one))


def test_without_fp32_attention_as_lerobot(ckpt):
    """LeRobot's ``fp32_attention: false`` (attention in the model's dtype): the engine follows it."""
    from lerobot.configs import PreTrainedConfig

    from wam_policy_node.checkpoint import load_checkpoint

    cfg = PreTrainedConfig.from_pretrained(ckpt)
    cfg.fp32_attention = cfg.video_dit_config["fp32_attention"] = cfg.action_dit_config["fp32_attention"] = False
    pol = load_checkpoint(ckpt, device="cpu", config=cfg)
    assert not pol.model.mot.fp32_attention
    eng = FastWAMEngine(pol, cuda_graph=False)
    batch = _batch(pol, 13)
    assert torch.equal(eng.predict_action_chunk(batch), _ref(pol, batch))


def test_bad_inputs_are_engine_errors_that_say_what(pair):
    pol, eng = pair
    batch = _batch(pol, 8)
    cases = {
        "cam_left_wrist": {k: v for k, v in batch.items() if "left" not in k},
        "task": {k: v for k, v in batch.items() if k != "task"},
        "non-finite": dict(batch, **{STATE: torch.full((1, 14), float("nan"))}),
        STATE: dict(batch, **{STATE: torch.zeros(1, 9)}),
        "uint8 .* or float": dict(batch, **{"observation.images.cam_high": torch.zeros(1, 5, 5, dtype=torch.int32)}),
        "different batch sizes": dict(batch, **{"observation.images.cam_high": batch["observation.images.cam_high"]
                                                .repeat(2, 1, 1, 1)}),
        "num_inference_steps": dict(batch, num_inference_steps=3),
        "'task'": dict(batch, task=[]),
    }
    for match, bad in cases.items():
        with pytest.raises(EngineError, match=match):
            eng.predict_action_chunk(bad)
    with pytest.raises(EngineError, match="noise shape"):
        eng.predict_action_chunk(batch, noise=torch.zeros(1, 3, 14))
    with pytest.raises(EngineError, match="RTC"):
        eng.predict_action_chunk(batch, inference_delay=3)
    assert torch.equal(eng.predict_action_chunk(batch), _ref(pol, batch))  # still answers after the errors


def test_make_engine_and_the_backend_run_it(ckpt, tmp_path):
    """``make_engine`` loads it from the checkpoint; the ``lerobot`` backend with ``engine: fast`` answers an
    observation with the eager backend's actions (its raw frames go to the engine's prefetch)."""
    from zoo_obs import random_obs

    from wam_policy_node.backends.lerobot import LeRobotBackend

    eng = make_engine(ckpt, impl="fast", device="cpu", cuda_graph=False)
    assert isinstance(eng, FastWAMEngine) and eng.startup["load_s"] > 0
    lines = []
    eng.warmup(progress=lines.append)
    assert len(lines) == 2 and re.search(r"first action after [\d.]+ s", lines[1])
    # the backend's progress lines (the node forwards the "wam_policy" loggers to its ROS logger)
    import logging

    logger, seen = logging.getLogger("wam_policy.backend.lerobot"), []
    handler = logging.Handler()
    handler.emit = lambda rec: seen.append(rec.getMessage())
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        fast = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "fast", "warmup": 1})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert [m.split(":")[1].split()[0] for m in seen] == ["loading", "fastwam", "ready,"], seen
    assert re.search(r"first action after [\d.]+ s \(load [\d.]+ s \+ warm-up [\d.]+ s\)", seen[-1])
    assert fast.startup["load_s"] > 0 and fast.startup["warmup_s"] > 0
    eager = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "eager", "warmup": 0})
    assert fast.engine == "fast" and isinstance(fast.policy, FastWAMEngine)
    for seed in (0, 1, 2):
        obs = random_obs(seed)
        a, b = eager.infer(obs).actions, fast.infer(obs).actions
        assert a.shape == (CHUNK, 14)
        np.testing.assert_array_equal(a, b)
    assert fast.policy.prefetch_hits >= 2  # the frames went to the engine before the pre-processor
