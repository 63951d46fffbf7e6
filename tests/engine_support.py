"""Assertions the engine equivalence tests share: a fast engine against LeRobot's reference."""
from __future__ import annotations


def assert_same_actions(ref, fast, batch: dict, noise, tol: float):
    """The fast engine gives the reference's actions for one batch and noise: (B, chunk, 14) with B the
    noise's batch size, finite, not near zero (so the comparison means something), within ``tol``,
    and rows of a batch that differ (each row is its own sample). Returns both."""
    a = ref.predict_action_chunk(batch, noise=noise)
    b = fast.predict_action_chunk(batch, noise=noise)
    assert a.shape == b.shape == (noise.shape[0], fast.chunk, 14)
    assert b.isfinite().all()
    assert a.abs().mean() > 0.05  # the comparison is not between two near-zero outputs
    assert (a - b).abs().max().item() < tol
    if b.shape[0] > 1:
        assert (b[0] - b[1]).abs().max().item() > 1e-3
    return a, b


def assert_each_input_matters(ref, fast, base: dict, noise, variants: dict, tol: float) -> None:
    """Each variant ``name → (batch, noise)`` of ``base`` changes the fast engine's actions, and the
    fast engine follows the reference on it."""
    out0 = fast.predict_action_chunk(base, noise=noise)
    for what, (batch, nz) in variants.items():
        b = fast.predict_action_chunk(batch, noise=nz)
        a = ref.predict_action_chunk(batch, noise=nz)
        assert (b - out0).abs().max().item() > 1e-3, f"{what} does not change the actions"
        assert (a - b).abs().max().item() < tol, what


def assert_input_errors_name_the_key(fast, batch: dict) -> None:
    """FlowEngine's own input checks: no prompt tokens, no image, a wrong noise shape, RTC inputs —
    each an EngineError that says what is wrong."""
    import re

    import torch

    from wam_policy_node.engines._common import TOKENS, EngineError

    cases = [
        (TOKENS, lambda: fast.predict_action_chunk({k: v for k, v in batch.items() if k != TOKENS})),
        ("no image", lambda: fast.predict_action_chunk({k: v for k, v in batch.items() if "images" not in k})),
        ("noise shape", lambda: fast.predict_action_chunk(batch, noise=torch.zeros(1, 3, 3))),
        ("RTC", lambda: fast.predict_action_chunk(batch, inference_delay=3)),
    ]
    for match, call in cases:
        try:
            call()
        except EngineError as exc:
            assert re.search(match, str(exc)), f"EngineError {exc!s} does not say {match!r}"
        else:
            raise AssertionError(f"no EngineError ({match})")
