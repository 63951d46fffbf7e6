"""Inference engines for LeRobot flow-matching policies (π0, π0.5), used by the ``lerobot`` backend.

One entry point::

    engine = make_engine(pretrained_dir, impl="fast", device="cuda", dtype="bfloat16")
    engine.warmup(example_batch)                  # buffers, CUDA graph capture (start-up)
    actions = engine.predict_action_chunk(batch)  # (B, chunk, action_dim), normalised
    actions = engine.predict_action_chunk(batch, noise=noise)  # same noise → same actions

``batch`` is what LeRobot's pre-processor (``make_pre_post_processors``) produces; the output goes
through LeRobot's post-processor unchanged. ``impl="eager"`` is LeRobot's own forward (the
reference); ``impl="fast"`` is :class:`~wam_policy_node.engines.pi_flow.PiFlowEngine`.
``supports(policy_type)`` says whether a fast engine exists for a LeRobot policy type.
"""
from __future__ import annotations

from pathlib import Path

from .pi_flow import EngineError, PiFlowEngine
from .reference import EagerEngine

FAST_TYPES = ("pi0", "pi05")
IMPLS = ("fast", "eager")


def supports(policy_type: str) -> bool:
    return policy_type in FAST_TYPES


def make_engine(pretrained_dir: str | Path, *, impl: str = "fast", device: str = "cuda",
                dtype: str = "bfloat16", cuda_graph: bool = True, config=None):
    """Load a LeRobot π0/π0.5 checkpoint directory (config.json + model.safetensors)."""
    if impl not in IMPLS:
        raise EngineError(f"engine impl {impl!r}: expected one of {IMPLS}")
    if config is None:
        from lerobot.configs import PreTrainedConfig

        if not (Path(pretrained_dir) / "config.json").is_file():
            raise EngineError(f"{pretrained_dir}: no config.json (a LeRobot pretrained_model directory)")
        config = PreTrainedConfig.from_pretrained(pretrained_dir)
    if impl == "eager":
        return EagerEngine.from_pretrained(pretrained_dir, device=device, dtype=dtype, config=config)
    if not supports(config.type):
        raise EngineError(f"no fast engine for policy type {config.type!r} (have {FAST_TYPES}); use impl='eager'")
    return PiFlowEngine.from_pretrained(pretrained_dir, device=device, dtype=dtype, cuda_graph=cuda_graph,
                                        config=config)


def load_fast(policy, *, dtype: str = "bfloat16", cuda_graph: bool = True) -> PiFlowEngine:
    """Fast engine over an already loaded LeRobot π0/π0.5 policy (weights converted on its device)."""
    if not supports(policy.config.type):
        raise EngineError(f"no fast engine for policy type {policy.config.type!r}")
    return PiFlowEngine.from_policy(policy, dtype=dtype, cuda_graph=cuda_graph)


__all__ = ["EngineError", "EagerEngine", "PiFlowEngine", "make_engine", "load_fast", "supports", "FAST_TYPES"]
