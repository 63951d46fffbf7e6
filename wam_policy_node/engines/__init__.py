"""Inference engines for LeRobot flow-matching policies (π0, π0.5, SmolVLA, FastWAM), used by the ``lerobot`` backend.

One entry point::

    engine = make_engine(pretrained_dir, impl="fast", device="cuda", dtype="bfloat16")
    engine.warmup(example_batch)                  # buffers, CUDA graph capture (start-up)
    actions = engine.predict_action_chunk(batch)  # (B, chunk, action_dim), normalised
    actions = engine.predict_action_chunk(batch, noise=noise)  # same noise → same actions

``batch`` is what LeRobot's pre-processor (``make_pre_post_processors``) produces; the output goes
through LeRobot's post-processor unchanged. ``impl="eager"`` is LeRobot's own forward (the
reference); ``impl="fast"`` is :class:`~wam_policy_node.engines.pi_flow.PiFlowEngine` (π0, π0.5) or
:class:`~wam_policy_node.engines.smolvla_flow.SmolVLAFlowEngine` (SmolVLA), both built on
``engines._common.FlowEngine``, or :class:`~wam_policy_node.engines.fastwam_graph.FastWAMEngine`
(FastWAM: LeRobot's own modules with the prompt cached, start-up constants and two CUDA graphs).
LingBot-VA's (:class:`~wam_policy_node.engines.lingbot_stream.LingBotVAEngine`) is installed on the
loaded LeRobot policy: its KV-cache bookkeeping moves to the host, which takes the device syncs out of
every layer and lets each transformer pass run as a CUDA graph (``load_fast(policy)``; ``make_engine``
refuses it). ``supports(policy_type)`` says whether a fast engine exists for a LeRobot policy type;
``supports_rtc(policy_type)`` whether it has LeRobot's RTC guidance (π0, π0.5, SmolVLA: ``engines._common``).
"""
from __future__ import annotations

from pathlib import Path

from ._common import EngineError, FlowEngine
from .fastwam_graph import FastWAMEngine
from .lingbot_stream import LingBotVAEngine
from .pi_flow import PiFlowEngine
from .reference import EagerEngine
from .smolvla_flow import SmolVLAFlowEngine

FAST_ENGINES: dict[str, type] = {"pi0": PiFlowEngine, "pi05": PiFlowEngine, "smolvla": SmolVLAFlowEngine,
                                 "fastwam": FastWAMEngine, "lingbot_va": LingBotVAEngine}
RTC_TYPES = ("pi0", "pi05", "smolvla")  # FlowEngine: LeRobot's RTC guidance inside the flow loop
IN_PLACE = ("lingbot_va",)  # installed on LeRobot's own policy object, which is then used as before
FAST_TYPES = tuple(FAST_ENGINES)
IMPLS = ("fast", "eager")


def supports(policy_type: str) -> bool:
    return policy_type in FAST_TYPES


def supports_rtc(policy_type: str) -> bool:
    """Whether the fast engine of ``policy_type`` runs LeRobot's RTC guidance (``prev_chunk_left_over``)."""
    return policy_type in RTC_TYPES


def installs_in_place(policy_type: str) -> bool:
    """Whether the fast engine for ``policy_type`` is installed on the loaded LeRobot policy (``load_fast``)
    rather than being an object of its own."""
    return policy_type in IN_PLACE


def make_engine(pretrained_dir: str | Path, *, impl: str = "fast", device: str = "cuda",
                dtype: str = "bfloat16", cuda_graph: bool = True, config=None):
    """Load a LeRobot π0/π0.5/SmolVLA/FastWAM checkpoint directory (config.json + model.safetensors)."""
    if impl not in IMPLS:
        raise EngineError(f"engine impl {impl!r}: expected one of {IMPLS}")
    if config is None:
        import lerobot.policies  # noqa: F401 - registers the policy config types
        from lerobot.configs import PreTrainedConfig

        if not (Path(pretrained_dir) / "config.json").is_file():
            raise EngineError(f"{pretrained_dir}: no config.json (a LeRobot pretrained_model directory)")
        config = PreTrainedConfig.from_pretrained(pretrained_dir)
    if impl == "eager":
        return EagerEngine.from_pretrained(pretrained_dir, device=device, dtype=dtype, config=config)
    if not supports(config.type):
        raise EngineError(f"no fast engine for policy type {config.type!r} (have {FAST_TYPES}); use impl='eager'")
    if installs_in_place(config.type):
        raise EngineError(f"the {config.type} engine installs itself on LeRobot's policy: "
                          "checkpoint.load_checkpoint(dir), then load_fast(policy)")
    return FAST_ENGINES[config.type].from_pretrained(pretrained_dir, device=device, dtype=dtype,
                                                     cuda_graph=cuda_graph, config=config)


def load_fast(policy, *, dtype: str = "bfloat16", cuda_graph: bool = True):
    """Fast engine over an already loaded LeRobot π0/π0.5/SmolVLA policy (weights converted on its device),
    FastWAM policy (its modules used as they are) or LingBot-VA policy (installed on it)."""
    if not supports(policy.config.type):
        raise EngineError(f"no fast engine for policy type {policy.config.type!r}")
    return FAST_ENGINES[policy.config.type].from_policy(policy, dtype=dtype, cuda_graph=cuda_graph)


__all__ = ["EngineError", "EagerEngine", "FlowEngine", "PiFlowEngine", "SmolVLAFlowEngine", "FastWAMEngine",
           "LingBotVAEngine", "make_engine", "load_fast", "supports", "supports_rtc", "installs_in_place",
           "RTC_TYPES", "FAST_TYPES", "FAST_ENGINES"]
