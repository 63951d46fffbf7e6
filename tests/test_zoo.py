"""The zoo's random-weight checkpoints of real architectures load through the `lerobot` backend's
normal path with no network — also after the directory moved (a checkpoint carries its tokenizer) —
and answer observations with live networks (different images → different actions)."""
from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pytest

from zoo_obs import random_obs as _obs

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.


@pytest.mark.parametrize("kind", ["act", "diffusion", "pi0", "pi05"])
def test_zoo_checkpoint_loads_offline_and_moved(kind, tmp_path):
    import torch

    from wam_policy_node.backends.lerobot import LeRobotBackend
    from wam_policy_node.zoo.parts import tiny_dims
    from wam_policy_node.zoo import save_random_policy

    made = save_random_policy(kind, tmp_path / "made", size="tiny")
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.move(str(made), moved)  # the saved pre-processor's tokenizer path no longer exists
    ctx = tiny_dims() if kind.startswith("pi") else contextlib.nullcontext()
    with ctx:
        b = LeRobotBackend({"path": str(moved), "device": "cpu", "engine": "eager", "warmup": 0})
    outs = []
    for seed in (0, 1):
        b.reset()
        torch.manual_seed(0)  # the same sampling noise for both (flow / diffusion policies)
        a = b.infer(_obs(seed)).actions
        assert a.ndim == 2 and a.shape[1] == 14 and np.isfinite(a).all()
        outs.append(a)
    assert np.abs(outs[0] - outs[1]).max() > 1e-6, "the images do not reach the actions"


def test_unknown_kind_is_a_clear_error(tmp_path):
    from wam_policy_node.zoo import save_random_policy

    with pytest.raises(ValueError, match="unknown policy kind"):
        save_random_policy("gpt", tmp_path / "x")


def test_prompt_reaches_the_actions_through_the_memoized_tokenizer(tmp_path):
    """The backend tokenizes each prompt once (a cache): a changed prompt must still change the
    actions, and a repeated one give the same tokens as LeRobot's own tokenizer step."""
    import torch

    from wam_policy_node.backends.lerobot import LeRobotBackend
    from wam_policy_node.zoo.parts import tiny_dims
    from wam_policy_node.zoo import save_random_policy

    ckpt = save_random_policy("pi0", tmp_path / "pi0", size="tiny")
    with tiny_dims():
        b = LeRobotBackend({"path": str(ckpt), "device": "cpu", "engine": "eager", "warmup": 0})
    obs = _obs(0)
    toks = [b.batch(obs)["observation.language.tokens"] for _ in range(2)]
    assert torch.equal(toks[0], toks[1])
    step = next(s for s in b.pre.steps if hasattr(s, "input_tokenizer"))
    direct = step.input_tokenizer([obs.prompt + "\n"], max_length=step.max_length, truncation=step.truncation,
                                  padding=step.padding, padding_side=step.padding_side, return_tensors="pt")
    assert torch.equal(toks[0].cpu(), direct["input_ids"])
    outs = []
    for prompt in ("pick up the cube", "insert the peg", "pick up the cube"):
        obs.prompt = prompt
        torch.manual_seed(0)
        outs.append(b.infer(obs).actions)
    assert np.abs(outs[0] - outs[1]).max() > 1e-6 and np.array_equal(outs[0], outs[2])
