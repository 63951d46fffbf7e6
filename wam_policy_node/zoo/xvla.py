"""X-VLA (LeRobot ``xvla``), random weights, with a local tokenizer.

X-VLA-0.9B (Zheng et al. 2025, ``2toinf/X-VLA``; LeRobot's ``lerobot/xvla-base``) is a Florence-2-large
encoder (DaViT vision tower + BART-large text encoder; the decoder is dropped) feeding a soft-prompted
flow-matching transformer (1024 wide, 24 layers, 16 heads, 30 embodiment domains × 32 soft prompts).
The first camera's image tokens go through the BART encoder with the prompt; the other cameras' tokens
join the action transformer directly ("aux visual inputs"). Inference: 10 flow steps of the transformer
on one encoding.

LeRobot builds the Florence-2 model from ``config.florence_config`` (no download: the config carries the
architecture) and its pre-processor tokenizes with ``facebook/bart-large``'s tokenizer. The checkpoint gets
a word-level tokenizer of its own in ``<dir>/tokenizer`` (ids inside BART's vocabulary) and its
pre-processor is pointed at it (the ``lerobot`` backend also picks up ``<dir>/tokenizer`` itself).

- ``full``: Florence-2-large as the released X-VLA checkpoints' ``florence_config`` describes it — DaViT
  widths 256/512/1024/2048, depths 1/1/9/1, heads and groups 8/16/32/64, window 12, projection 1024,
  learned 2-D position embedding (50×50) and cosine temporal embedding (100); BART-large encoder (1024
  wide, 12 layers, 16 heads, FFN 4096, vocabulary 51289, 1024 positions) — and LeRobot's ``XVLAConfig``
  defaults for the head (1024 × 24, 16 heads, MLP ×4, 30 domains, 32 soft prompts, 512 tokens), chunk 32,
  10 flow steps, prompt padded to 64 tokens, each camera resized with padding to 256×256 (the size
  ``xvla-base`` declares for its main cameras; 64 image tokens + 1 pooled per view). Parameters counted on
  the meta device: :func:`param_counts`.
- ``tiny``: the same classes a few dozen channels wide (DaViT 16/32/48/64, one block per stage; a
  one-layer 32-wide BART encoder; a two-layer 32-wide head), 64×64 images, 2 flow steps.

ALOHA's 14 joint positions: ``action_mode: auto`` (LeRobot's mode for a new embodiment: the model acts in
``max_action_dim`` = 20 channels, the first 14 are the robot's, loss and output on those only) and the state
zero-padded to ``max_state_dim`` = 32; normalisation identity, as LeRobot's XVLAConfig has it (the released
checkpoints act in raw units). ``domain_id`` 0 (``XVLAAddDomainIdProcessorStep``'s default).

Not the real asset: the tokenizer is word-level (numbers and a few hundred task words), not BART's BPE;
every weight is random. ``extra``: ``config`` (XVLAConfig overrides, e.g. ``num_denoising_steps``),
``action_mode``.
"""
from __future__ import annotations

from pathlib import Path

from . import ZooSpec, features, randomise, register, save

# Florence-2-large (the released X-VLA's florence_config), native transformers field names
FULL_VISION = dict(embed_dim=[256, 512, 1024, 2048], depths=[1, 1, 9, 1], num_heads=[8, 16, 32, 64],
                   num_groups=[8, 16, 32, 64], window_size=12, patch_size=[7, 3, 3, 3], patch_stride=[4, 2, 2, 2],
                   patch_padding=[3, 1, 1, 1], patch_prenorm=[False, True, True, True], projection_dim=1024,
                   max_position_embeddings=50, max_temporal_embeddings=100, drop_path_rate=0.0)
FULL_TEXT = dict(model_type="bart", vocab_size=51289, d_model=1024, encoder_layers=12, decoder_layers=12,
                 encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                 max_position_embeddings=1024)
FULL_HEAD = dict(hidden_size=1024, depth=24, num_heads=16, len_soft_prompts=32, dim_time=32, max_len_seq=512)

TINY_VISION = dict(FULL_VISION, embed_dim=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4],
                   num_groups=[1, 2, 2, 4], window_size=4, projection_dim=32, max_position_embeddings=16)
TINY_TEXT = dict(FULL_TEXT, vocab_size=1024, d_model=32, encoder_layers=1, decoder_layers=1,
                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                 max_position_embeddings=256)
TINY_HEAD = dict(hidden_size=32, depth=2, num_heads=2, len_soft_prompts=4, dim_time=8, max_len_seq=256)


def florence_config(size: str) -> dict:
    """``XVLAConfig.florence_config`` (native transformers format) for a size."""
    tiny = size == "tiny"
    return {"vision_config": dict(TINY_VISION if tiny else FULL_VISION),
            "text_config": dict(TINY_TEXT if tiny else FULL_TEXT),
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1, "is_encoder_decoder": True}


def make_config(spec: ZooSpec):
    from lerobot.policies.xvla.configuration_xvla import XVLAConfig

    tiny = spec.size == "tiny"
    h, w = spec.image_size or ((64, 64) if tiny else (256, 256))
    inputs, outputs = features(spec, (h, w))
    chunk = spec.chunk or 32
    kw = dict(TINY_HEAD if tiny else FULL_HEAD)
    kw.update(input_features=inputs, output_features=outputs, device=spec.device, florence_config=florence_config(
        spec.size), resize_imgs_with_padding=(h, w), chunk_size=chunk, n_action_steps=chunk,
        action_mode=str(spec.extra.get("action_mode", "auto")), num_denoising_steps=2 if tiny else 10,
        tokenizer_max_length=16 if tiny else 64, dtype=str(spec.extra.get("dtype", "float32")))
    kw.update(spec.extra.get("config", {}))
    return XVLAConfig(**kw)


def param_counts(size: str = "full") -> dict[str, int]:
    """Parameters of X-VLA's parts at ``size``, built on the meta device (no memory)."""
    import torch
    from lerobot.policies.xvla.modeling_xvla import XVLAPolicy

    with torch.device("meta"):
        pol = XVLAPolicy(make_config(ZooSpec(size=size, device="cpu")))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    vlm = pol.model.vlm
    return {"vision": n(vlm.vision_tower) + n(vlm.multi_modal_projector), "text_encoder": n(vlm.language_model),
            "transformer": n(pol.model.transformer), "total": n(pol)}


@register("xvla")
def build_xvla(out: Path, spec: ZooSpec) -> None:
    import torch
    from lerobot.policies.xvla.modeling_xvla import XVLAPolicy
    from lerobot.processor import tokenizer_processor

    from .parts import make_local_tokenizer, patched

    tok_dir = out / "tokenizer"
    tok = make_local_tokenizer(tok_dir)
    cfg = make_config(spec)
    vocab = cfg.florence_config["text_config"]["vocab_size"]
    if len(tok) > vocab:
        raise ValueError(f"zoo xvla: tokenizer has {len(tok)} tokens > vocabulary {vocab}")
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        pol = XVLAPolicy(cfg)
    randomise(pol, spec.seed)
    patch = patched(tokenizer_processor.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    save(pol, cfg, out, cameras=spec.cameras, processor_patches=(patch,), tokenizer=tok_dir)
