"""π0 and π0.5 (LeRobot), random weights, with a local tokenizer.

``full``: PaliGemma-3B (SigLIP-So400m + Gemma-2B) + Gemma-300M action expert, 224×224 images,
chunk 50, 10 flow steps — the published sizes. ``tiny``: the same classes at the widths of
:func:`wam_policy_node.zoo.parts.tiny_dims`; a tiny checkpoint only loads inside that context
(LeRobot hard-codes the Gemma sizes), so tests wrap loading in ``with tiny_dims():``.

The processors LeRobot builds name ``google/paligemma-3b-pt-224``'s tokenizer; the checkpoint gets a
word-level tokenizer of its own in ``<dir>/tokenizer`` (ids below PaliGemma's vocabulary) and its
pre-processor is pointed at it — the ``lerobot`` backend also picks up ``<dir>/tokenizer`` itself.
``extra={"rtc": True | {...}}`` saves it with LeRobot's RTC guidance enabled (``RTCConfig`` fields).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from . import ZooSpec, features, randomise, register, rtc_config, save


def _build(kind: str, out: Path, spec: ZooSpec) -> None:
    import torch
    from lerobot.policies.factory import get_policy_class

    from lerobot.processor import tokenizer_processor

    from .parts import make_config, make_local_tokenizer, patched, tiny_dims

    full = spec.size == "full"
    h, w = spec.image_size or ((224, 224) if full else (56, 56))
    if h != w:
        raise ValueError(f"zoo {kind}: square images only (got {h}x{w}); the processor resizes with padding")
    tok_dir = out / "tokenizer"
    tok = make_local_tokenizer(tok_dir)
    ctx = contextlib.nullcontext() if full else tiny_dims()
    with ctx:
        cfg = make_config(kind, n_cams=len(spec.cameras), image_size=h, chunk_size=spec.chunk or 50,
                          device=spec.device, dtype=str(spec.extra.get("dtype", "float32")),
                          tokenizer_max_length=spec.extra.get("tokenizer_max_length"))
        cfg.input_features, _ = features(spec, (h, w))  # the spec's camera names (make_config has its own)
        cfg.rtc_config = rtc_config(spec)
        torch.manual_seed(spec.seed)
        with torch.device(spec.device):
            pol = get_policy_class(kind)(cfg)
        randomise(pol, spec.seed)
        patch = patched(tokenizer_processor.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
        save(pol, cfg, out, cameras=spec.cameras, processor_patches=(patch,), tokenizer=tok_dir)


@register("pi0")
def build_pi0(out: Path, spec: ZooSpec) -> None:
    _build("pi0", out, spec)


@register("pi05")
def build_pi05(out: Path, spec: ZooSpec) -> None:
    _build("pi05", out, spec)
