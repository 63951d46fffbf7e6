"""SmolVLA (LeRobot), random weights, with a local SmolVLM2 directory instead of the Hub's.

LeRobot's SmolVLA reads ``HuggingFaceTB/SmolVLM2-500M-Video-Instruct`` at construction
(``AutoConfig`` for the VLM architecture, ``AutoProcessor`` for the tokenizer's image tokens) and its
pre-processor tokenizes with the same id. The checkpoint gets that directory of its own in
``<dir>/vlm`` — VLM config, tokenizer, image-processor and processor configs — the policy config's
``vlm_model_name`` and the saved pre-processor's tokenizer name it (absolute path; the ``lerobot``
backend re-points both at ``<dir>/vlm`` if the checkpoint was moved), ``load_vlm_weights=False``.

``full`` = SmolVLA-base as LeRobot builds it: SmolVLM2-500M (SigLIP-B/16 at 512 px: 768 wide,
12 layers, 12 heads, MLP 3072; pixel-shuffle ×4 → 64 tokens per image; SmolLM2-360M text: 960 wide,
32 layers of which LeRobot keeps ``num_vlm_layers=16``, 15 heads / 5 KV heads of 64, MLP 2560,
vocabulary 49280, RoPE θ 1e5, RMSNorm ε 1e-5, untied embeddings) + the action expert LeRobot derives
(0.75 × width, cross-attention with self-attention every 2nd layer), 512×512 padded images, chunk 50,
10 flow steps. These values are SmolVLM2-500M-Video-Instruct's published ``config.json`` as far as it
could be checked offline (the vision depth and MLP are SmolVLMVisionConfig's defaults, which that file
leaves unset); LeRobot's SmolVLA defaults are used as they are. Built on a meta device the policy
has 450.0 M parameters (VLM 350.2 M with 16 text layers, expert 98.2 M): SmolVLA-base's published 450 M.
``reduced`` = ``full``. ``extra={"config": {...}}`` overrides SmolVLAConfig fields (e.g. ``num_steps``);
``extra={"rtc": True | {...}}`` saves it with LeRobot's RTC guidance enabled (``RTCConfig`` fields).
``tiny`` = the same structure at widths 64 (text) / 32 (vision), 4 text layers of which 2 kept,
64 px images with 8 px patches (4 tokens per image after the ×4 shuffle).

Assumed / not the real asset:
- the tokenizer is word-level (numbers, a few hundred task words, SmolVLM's special tokens:
  ``<global-img>``, ``<row_r_col_c>``, ``<fake_token_around_image>``, ``<image>``,
  ``<end_of_utterance>``, ``<|im_start|>``/``<|im_end|>``/``<|endoftext|>`` as bos/pad/unk) with
  compact ids, not SmolLM2's BPE; ``image_token_id`` in the VLM config is its ``<image>`` id.
- the processor is transformers' ``Idefics3Processor`` (SmolVLM's predecessor, same tokenizer wiring)
  rather than ``SmolVLMProcessor`` (which also needs the ``num2words`` package, now in requirements.txt
  for real SmolVLA checkpoints). SmolVLA reads only the processor's tokenizer.
"""
from __future__ import annotations

from pathlib import Path

from . import ZooSpec, features, randomise, register, rtc_config, save

# SmolVLM2-500M-Video-Instruct (config.json; vision depth/MLP from SmolVLMVisionConfig defaults)
FULL = {
    "text": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
                 intermediate_size=2560, vocab_size=49280, max_position_embeddings=8192),
    "vision": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                   patch_size=16, image_size=512),
    "num_vlm_layers": 16,
}
TINY = {
    "text": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=128, vocab_size=512, max_position_embeddings=512),
    "vision": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   patch_size=8, image_size=64),
    "num_vlm_layers": 2,
}
SCALE_FACTOR = 4

_WORDS = ("task state action pick up the cube transfer insert peg socket lift beam to left right arm gripper "
          "and with a of on in put place move grasp open close red blue green user assistant").split()
_SPECIAL = (["<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
            + ["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
# names the tokenizer exposes as ``<name>`` / ``<name>_id`` (SmolVLA reads the fake/global ids)
_NAMED = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
          "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}


def make_tokenizer():
    """A word-level tokenizer with SmolVLM's special tokens (bos ``<|im_start|>``, eos
    ``<end_of_utterance>``, pad ``<|im_end|>``, unk ``<|endoftext|>``) and its named image tokens."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    for w in [str(i) for i in range(256)] + _WORDS + list(",.;:!?-_'\"()"):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIAL])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>", extra_special_tokens=_NAMED,
                                   model_max_length=8192)


def write_vlm(vlm_dir: Path, dims: dict) -> None:
    """Write a SmolVLM directory (config + processor) that ``AutoConfig``/``AutoProcessor``/
    ``AutoTokenizer.from_pretrained(vlm_dir)`` load offline."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor, SmolVLMConfig

    tok = make_tokenizer()
    text, vision = dims["text"], dims["vision"]
    if len(tok) > text["vocab_size"]:
        raise ValueError(f"zoo smolvla: tokenizer has {len(tok)} tokens > vocabulary {text['vocab_size']}")
    cfg = SmolVLMConfig(
        text_config=dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=100000.0, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False, **text),
        vision_config=dict(model_type="smolvlm_vision", **vision),
        scale_factor=SCALE_FACTOR, image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False, vocab_size=text["vocab_size"])
    cfg.architectures = ["SmolVLMForConditionalGeneration"]
    side = vision["image_size"]
    images = Idefics3ImageProcessor(do_image_splitting=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                    size={"longest_edge": 4 * side}, max_image_size={"longest_edge": side})
    seq_len = (side // vision["patch_size"]) ** 2 // SCALE_FACTOR**2
    vlm_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(vlm_dir)
    Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=seq_len).save_pretrained(vlm_dir)


@register("smolvla")
def build_smolvla(out: Path, spec: ZooSpec) -> None:
    import torch
    from lerobot.policies.factory import get_policy_class, make_policy_config

    dims = TINY if spec.size == "tiny" else FULL
    side = dims["vision"]["image_size"]
    h, w = spec.image_size or (side, side)
    if h != w or h % (dims["vision"]["patch_size"] * SCALE_FACTOR):
        raise ValueError(f"zoo smolvla: images must be square and a multiple of "
                         f"{dims['vision']['patch_size'] * SCALE_FACTOR} px (got {h}x{w})")
    dims = {**dims, "vision": {**dims["vision"], "image_size": h}}
    vlm = (out / "vlm").resolve()
    write_vlm(vlm, dims)
    inputs, outputs = features(spec, (h, w))
    chunk = spec.chunk or 50
    cfg = make_policy_config("smolvla", input_features=inputs, output_features=outputs, device=spec.device,
                             vlm_model_name=str(vlm), load_vlm_weights=False, num_vlm_layers=dims["num_vlm_layers"],
                             resize_imgs_with_padding=(w, h), chunk_size=chunk, n_action_steps=chunk,
                             rtc_config=rtc_config(spec), **spec.extra.get("config", {}))
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        pol = get_policy_class("smolvla")(cfg)
    randomise(pol, spec.seed)
    save(pol, cfg, out, cameras=spec.cameras, tokenizer=vlm)
