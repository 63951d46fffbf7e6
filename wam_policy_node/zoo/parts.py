"""Pieces the zoo builders share: reduced-size π0 / π0.5, π configs, a local tokenizer, stats, inputs.

LeRobot hard-codes the PaliGemma-3B / Gemma-300M sizes (``get_gemma_config(variant)`` and the
SigLIP-So400m vision config inside ``PaliGemmaWithExpertModel``). :func:`tiny_dims` patches those
two look-ups in LeRobot's own modules for the duration of a ``with`` block, so that LeRobot's
real classes (and the engine, which builds its skeleton through the same classes) construct a
model with the same structure but tiny widths and depths. Everything else — keys, dtypes,
processors, the sampling loop — is LeRobot's unchanged code.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any


@contextmanager
def patched(owner: Any, name: str, value: Any):
    """``owner.name = value`` for the duration of the block, restored after (an attribute swap on
    LeRobot's own modules where they hard-code a size or a Hub download)."""
    missing = object()
    old = vars(owner).get(name, missing)  # the descriptor itself (a classmethod stays one)
    setattr(owner, name, value)
    try:
        yield value
    finally:
        if old is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


@dataclass(frozen=True)
class TinyDims:
    text_width: int = 64
    text_depth: int = 2
    text_mlp: int = 128
    expert_width: int = 32
    expert_mlp: int = 64
    heads: int = 4
    head_dim: int = 16
    vision_width: int = 32
    vision_depth: int = 2
    vision_mlp: int = 64
    vision_heads: int = 2
    patch_size: int = 14


def _gemma_cfg_factory(modeling, dims: TinyDims):
    gemma_config = modeling.GemmaConfig

    def get_gemma_config(variant: str):
        if variant == "gemma_2b":
            return gemma_config(dims.text_width, dims.text_depth, dims.text_mlp, dims.heads, 1, dims.head_dim)
        if variant == "gemma_300m":
            return gemma_config(dims.expert_width, dims.text_depth, dims.expert_mlp, dims.heads, 1, dims.head_dim)
        raise ValueError(f"Unknown variant: {variant}")

    return get_gemma_config


def _paligemma_factory(orig, dims: TinyDims):
    def build(config):
        v = config.vision_config
        v.hidden_size = dims.vision_width
        v.num_hidden_layers = dims.vision_depth
        v.intermediate_size = dims.vision_mlp
        v.num_attention_heads = dims.vision_heads
        v.patch_size = dims.patch_size
        v.projection_dim = config.text_config.hidden_size
        config.text_config.num_image_tokens = (v.image_size // v.patch_size) ** 2
        return orig(config=config)

    return build


@contextmanager
def tiny_dims(dims: TinyDims | None = None):
    """Within the block, LeRobot's π0/π0.5 (and the engine) build the reduced-size model."""
    dims = dims or TinyDims()
    from lerobot.policies.pi0 import modeling_pi0
    from lerobot.policies.pi05 import modeling_pi05

    with ExitStack() as stack:
        for mod in (modeling_pi0, modeling_pi05):
            stack.enter_context(patched(mod, "get_gemma_config", _gemma_cfg_factory(mod, dims)))
            stack.enter_context(patched(mod, "PaliGemmaForConditionalGenerationWithPiGemma",
                                        _paligemma_factory(mod.PaliGemmaForConditionalGenerationWithPiGemma, dims)))
        yield dims


def make_config(policy_type: str, *, n_cams: int = 3, action_dim: int = 14, state_dim: int = 14,
                image_size: int = 224, chunk_size: int = 50, dtype: str = "float32", device: str = "cpu",
                tokenizer_max_length: int | None = None, num_inference_steps: int = 10):
    """A LeRobot π0/π0.5 config for ALOHA-like inputs (3 cameras, 14-dim state/action)."""
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_policy_config

    cams = ["cam_high", "cam_left_wrist", "cam_right_wrist", "cam_low"][:n_cams]
    inputs = {f"observation.images.{c}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, image_size, image_size))
              for c in cams}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    kw = dict(input_features=inputs, output_features=outputs, dtype=dtype, device=device,
              image_resolution=(image_size, image_size), chunk_size=chunk_size, n_action_steps=chunk_size,
              num_inference_steps=num_inference_steps)
    if tokenizer_max_length is not None:
        kw["tokenizer_max_length"] = tokenizer_max_length
    return make_policy_config(policy_type, **kw)


def random_batch(config, *, batch_size: int = 1, n_valid_tokens: int = 7, seed: int = 0, device="cpu",
                 vocab: int = 1000):
    """A post-preprocessor batch: images float [0,1] (B,3,H,W) at the model's size, normalised state,
    token ids + mask (``tokenizer_max_length`` of them, the first ``n_valid_tokens`` valid)."""
    import torch

    from ..engines._common import model_image_hw

    g = torch.Generator().manual_seed(seed)
    batch = {}
    h, w = model_image_hw(config)
    for key in config.image_features:
        batch[key] = torch.rand(batch_size, 3, h, w, generator=g).to(device)
    batch["observation.state"] = torch.randn(batch_size, config.input_features["observation.state"].shape[0],
                                             generator=g).to(device)
    t = config.tokenizer_max_length
    tokens = torch.randint(1, vocab, (batch_size, t), generator=g)
    mask = torch.zeros(batch_size, t, dtype=torch.bool)
    mask[:, :n_valid_tokens] = True
    tokens[~mask] = 0
    batch["observation.language.tokens"] = tokens.to(device)
    batch["observation.language.attention_mask"] = mask.to(device)
    return batch


def make_local_tokenizer(path, max_words: int = 400):
    """A small word-level tokenizer saved as a transformers ``PreTrainedTokenizerFast`` directory.

    LeRobot's π0/π0.5 processors load ``google/paligemma-3b-pt-224`` with ``AutoTokenizer``, which
    cannot be downloaded here. A directory written by this function loads through the same
    ``AutoTokenizer.from_pretrained(dir)`` call (override the processor step's ``tokenizer_name``):
    whitespace/punctuation split, the numbers 0..255 (π0.5 writes the discretised state into its
    prompt) and a few hundred words; anything else maps to ``<unk>``. Ids stay below ``max_words +
    260`` so any embedding table of PaliGemma's vocabulary covers them.
    """
    from pathlib import Path

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("task state action pick up the cube transfer insert peg socket lift beam to left right arm gripper "
             "and with a of on in put place move grasp open close red blue green").split()
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"])}
    for tok in [str(i) for i in range(256)] + words + list(",.;:!?-_'\"()") + ["Task", "State", "Action"]:
        if tok not in vocab and len(vocab) < max_words + 260:
            vocab[tok] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    Path(path).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(path))
    return fast


def dataset_stats(state_dim: int = 14, action_dim: int = 14, seed: int = 0):
    """Normalisation statistics of every kind LeRobot's normaliser may ask for (mean/std, min/max, quantiles)."""
    from . import stats

    return stats((), state_dim, action_dim, seed)
