"""The LingBot-VA engine is LeRobot's LingBot-VA without its per-layer device bookkeeping: the zoo's tiny
LingBot-VA on CPU.

Two copies of the same checkpoint, one with the engine installed, run the same episode (LeRobot's own
``select_action`` loop: the first chunk from the first observation, every later chunk after the observed
keyframes and the executed chunk went into the KV cache) from the same seed: the actions are equal to the
bit, also after the KV pool filled and started evicting. The host mirror of the pool is checked against
LeRobot's own bookkeeping (``WanAttention.update_cache`` & co on a real layer), and LeRobot's bookkeeping
is never called once the engine is in.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from wam_policy_node.engines import EngineError, LingBotVAEngine  # noqa: E402
from wam_policy_node.engines.lingbot_stream import SlotPool  # noqa: E402

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.

CAMS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import os

    from wam_policy_node.zoo import save_random_policy

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return save_random_policy("lingbot_va", tmp_path_factory.mktemp("lingbot") / "ckpt", size="tiny", cameras=CAMS,
                              seed=4)


@pytest.fixture(scope="module")
def pair(ckpt):
    """(LeRobot's policy, a second copy with the engine installed)."""
    from wam_policy_node.checkpoint import load_checkpoint

    ref, pol = load_checkpoint(ckpt, device="cpu"), load_checkpoint(ckpt, device="cpu")
    return ref, pol, LingBotVAEngine(pol)


def _episode(pol, steps: int, seed: int = 0, frames: int = 123) -> torch.Tensor:
    cfg = pol.config
    pol.reset()
    torch.manual_seed(seed)  # LingBot-VA draws its flow noise from the global generator
    g = torch.Generator().manual_seed(frames)
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            b = {k: torch.rand(1, *cfg.image_features[k].shape, generator=g) for k in sorted(cfg.image_features)}
            b["observation.state"] = torch.randn(1, 14, generator=g)
            b["task"] = "transfer the cube"
            out.append(pol.select_action(b))
    return torch.stack(out)


def test_an_episode_gives_lerobots_actions_to_the_bit_also_once_the_cache_evicts(pair):
    ref, pol, eng = pair
    steps = 12 + 16 * 19  # 20 chunks: the tiny model's pool (attn_window 30) is full after 15
    a, b = _episode(ref, steps), _episode(pol, steps)
    assert a.shape == (steps, 1, 14) and a.abs().mean() > 0.05
    assert torch.equal(a, b), (a - b).abs().max()
    assert eng.pool.mask.all(), "the episode did not reach eviction"
    assert eng.uploads <= 4 * 20  # index sets uploaded: a few per chunk, not one per layer and pass
    # the frames observed during a chunk reach the next one (through the cache), as in LeRobot
    c = _episode(pol, 12 + 16 + 1, frames=7)
    d = _episode(ref, 12 + 16 + 1, frames=7)
    assert torch.equal(c, d) and not torch.equal(c[12:28], b[12:28])


def test_the_prompt_is_encoded_once_across_episodes(pair):
    """LeRobot encodes the prompt at the first chunk of every episode; the engine keeps its embedding."""
    _, pol, eng = pair
    eng._prompts.clear()
    n0 = eng.prompt_encodes
    a = _episode(pol, 13)
    b = _episode(pol, 13)
    assert eng.prompt_encodes - n0 == 1 and torch.equal(a, b)


def test_every_episode_uses_the_engines_kv_tensors(pair):
    """LeRobot allocates new K/V tensors at every episode's first chunk; the engine puts its own back, so the
    CUDA graphs captured in one episode (they hold those addresses) stay valid in the next."""
    _, pol, eng = pair
    caches = lambda: [b.attn1.attn_caches["pos"] for b in pol.transformer.blocks]  # noqa: E731
    _episode(pol, 13)
    first = [(c["k"].data_ptr(), c["v"].data_ptr()) for c in caches()]
    _episode(pol, 13)
    assert [(c["k"].data_ptr(), c["v"].data_ptr()) for c in caches()] == first
    assert eng._kv_ptr == first[0][0]


def test_make_engine_points_to_the_in_place_install(ckpt):
    from wam_policy_node.engines import make_engine

    with pytest.raises(EngineError, match="load_fast"):
        make_engine(ckpt, impl="fast", device="cpu")


def test_lerobots_device_bookkeeping_is_not_called(pair, monkeypatch):
    from lerobot.policies.lingbot_va import utils

    _, pol, eng = pair

    def forbidden(*_a, **_k):
        raise AssertionError("LeRobot's per-layer cache bookkeeping ran")

    for name in ("allocate_slots", "update_cache", "_next_cache_id", "restore_cache", "clear_pred_cache"):
        monkeypatch.setattr(utils.WanAttention, name, forbidden)
    passes = eng.passes
    out = _episode(pol, 12 + 16 + 1)
    assert torch.isfinite(out).all() and eng.passes > passes


def test_the_host_pool_mirrors_lerobots_bookkeeping():
    """The same writes (sizes, flags), restores and clears on LeRobot's own ``WanAttention`` cache and on
    ``SlotPool``: the same slots written and the same slots valid after every operation. Writes of one
    size into a pool of a multiple of it: an eviction frees whole writes (LeRobot's argsort leaves the
    order among one write's slots open; see the module docstring)."""
    from lerobot.policies.lingbot_va.utils import WanAttention

    attn = WanAttention(dim=8, heads=2, dim_head=4)
    size, k = 60, 6
    attn.init_kv_cache("pos", size, 2, 4, "cpu", torch.float32, 1)
    pool = SlotPool(size)
    rng = np.random.default_rng(0)
    key = torch.zeros(1, k, 2, 4)
    for step in range(200):
        op = rng.choice(["keep", "pred", "temp", "clear"], p=[0.4, 0.25, 0.25, 0.1])
        if op == "clear":
            attn.clear_pred_cache("pos")
            pool.clear_pred()
        else:
            slots = attn.update_cache("pos", key, key, is_pred=op == "pred").numpy()
            mine = pool.write(k, is_pred=op == "pred")
            np.testing.assert_array_equal(slots, mine, err_msg=f"step {step}: {op}")
            if op == "temp":
                attn.restore_cache("pos", torch.from_numpy(slots))
                pool.restore(mine)
        lerobot_valid = attn.attn_caches["pos"]["mask"].nonzero().squeeze(-1).numpy()
        np.testing.assert_array_equal(lerobot_valid, pool.valid(), err_msg=f"step {step}: {op}")


def test_install_checks(ckpt):
    from wam_policy_node.checkpoint import load_checkpoint

    pol = load_checkpoint(ckpt, device="cpu")
    LingBotVAEngine(pol)
    with pytest.raises(EngineError, match="already installed"):
        LingBotVAEngine(pol)
    other = load_checkpoint(ckpt, device="cpu")
    other.config.attn_mode = "flex"
    with pytest.raises(EngineError, match="attn_mode"):
        LingBotVAEngine(other)
    pool = SlotPool(4)
    with pytest.raises(EngineError, match="exhausted"):
        pool.write(5, is_pred=False)


def test_the_backend_runs_it_with_the_eager_backends_actions(ckpt):
    """``engine: fast`` in the ``lerobot`` backend installs it on LeRobot's policy; lockstep through the
    controller (its observe/infer streaming) gives the eager backend's commands."""
    from test_zoo_lingbot import _rollout

    from wam_policy_node.backends.lerobot import LeRobotBackend

    fast = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "fast", "warmup": 1})
    eager = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "eager", "warmup": 0})
    assert fast.engine == "fast" and fast.streams_observations and fast.policy._lingbot_engine is not None
    a, inferred = _rollout(fast, between=0)
    b, _ = _rollout(eager, between=0)
    assert inferred == [0, 12, 28]
    np.testing.assert_array_equal(a, b)
