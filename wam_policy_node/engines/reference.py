"""LeRobot's own eager forward, behind the engine interface (the reference).

``predict_action_chunk(batch, noise=None)`` is LeRobot's ``PI0Policy.predict_action_chunk`` /
``PI05Policy.predict_action_chunk`` / ``SmolVLAPolicy.predict_action_chunk`` with one addition: the
flow noise can be passed in (π: LeRobot draws it inside ``sample_actions``; SmolVLA takes it), so
that the fast engine and the reference can be compared on the same noise. With ``noise=None`` it is
exactly LeRobot's call.

``dtype``: π configs carry their own (``config.dtype``: LeRobot casts the weights); a policy without
one (SmolVLA) runs bf16 as the ``lerobot`` backend runs it on CUDA, under ``torch.autocast``.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from ._common import STATE, TOKEN_MASK, TOKENS, EngineError, as_dtype, dummy_batch


@contextlib.contextmanager
def differentiated_rtc(policy):
    """LeRobot's RTC step with the paper's VJP (the fast engine's ``rtc_jacobian="full"`` reference): inside,
    ``policy``'s ``RTCProcessor.denoise_step`` hands its denoiser ``x_t`` already requiring grad, so its
    ``autograd.grad(x1_t, x_t, err)`` runs back through LeRobot's model (LeRobot 0.6.1 computes ``v_t``
    before ``x_t`` requires grad: a constant, the correction is ``err`` itself). Everything else is LeRobot's."""
    proc = policy.rtc_processor
    if proc is None:
        raise EngineError("the policy has no RTC processor (config.rtc_config; init_rtc_processor)")
    orig = proc.denoise_step

    def denoise_step(x_t, prev_chunk_left_over, inference_delay, time, original_denoise_step_partial,
                     execution_horizon=None):
        return orig(x_t, prev_chunk_left_over, inference_delay, time,
                    lambda x: original_denoise_step_partial(x.requires_grad_(True)), execution_horizon).detach()

    proc.denoise_step = denoise_step
    try:
        yield proc
    finally:
        del proc.denoise_step  # the class's method again


class EagerEngine:
    def __init__(self, policy, autocast=None):
        self.policy = policy
        self.config = policy.config
        self.device = next(policy.parameters()).device
        self.startup: dict[str, float] = {}
        self.image_keys = list(self.config.image_features)
        self.autocast = autocast  # a dtype for torch.autocast around the call, or None
        policy.eval()

    @classmethod
    def from_pretrained(cls, pretrained_dir: str | Path, *, device="cuda", dtype="bfloat16", config=None):
        from lerobot.configs import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class

        t0 = time.perf_counter()
        if config is None:
            config = PreTrainedConfig.from_pretrained(pretrained_dir)
        config.device = str(device)
        autocast = None
        if hasattr(config, "dtype") and dtype is not None:
            config.dtype = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        elif dtype is not None and as_dtype(dtype) != torch.float32:
            autocast = as_dtype(dtype)
        policy = get_policy_class(config.type).from_pretrained(pretrained_dir, config=config)
        eng = cls(policy.to(device), autocast=autocast)
        eng.startup["load_s"] = time.perf_counter() - t0
        return eng

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, noise: torch.Tensor | None = None, **rtc) -> torch.Tensor:
        ctx = (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None
               else contextlib.nullcontext())
        with ctx:
            return self._predict(batch, noise, **rtc)

    def _predict(self, batch: dict, noise: torch.Tensor | None, **rtc) -> torch.Tensor:
        pol = self.policy
        if noise is None:
            return pol.predict_action_chunk(batch, **rtc)
        if self.config.type == "smolvla":  # takes the noise (a copy of the state: adapt_to_pi_aloha edits it)
            batch = {k: (v.clone() if k == STATE else v) for k, v in batch.items()}
            return pol.predict_action_chunk(batch, noise=noise.to(self.device, torch.float32), **rtc)
        for key in (TOKENS, TOKEN_MASK):
            if key not in batch:
                raise EngineError(f"batch needs {key!r}")
        batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        images, img_masks = pol._preprocess_images(batch)
        tokens, masks = batch[TOKENS], batch[TOKEN_MASK]
        noise = noise.to(self.device, torch.float32)
        if self.config.type == "pi05":
            actions = pol.model.sample_actions(images, img_masks, tokens, masks, noise=noise, **rtc)
        else:
            if STATE not in batch:
                raise EngineError(f"batch needs {STATE!r}")
            state = pol.prepare_state(batch)
            actions = pol.model.sample_actions(images, img_masks, tokens, masks, state, noise=noise, **rtc)
        return actions[:, :, : self.config.output_features["action"].shape[0]]

    def warmup(self, batch: dict | None = None, progress=None) -> float:
        t0 = time.perf_counter()
        if batch is None:
            batch = dummy_batch(self.config, 1)
        self.predict_action_chunk(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.startup["warmup_s"] = time.perf_counter() - t0
        return self.startup["warmup_s"]

    def reset(self) -> None:
        self.policy.reset()
