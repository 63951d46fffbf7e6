"""VLA-JEPA (LeRobot ``vla_jepa``), random weights, with local Qwen3-VL and V-JEPA 2 directories.

VLA-JEPA (starVLA's ``VLA_JEPA``) is a Qwen3-VL-2B vision-language model whose hidden states at 32
"embodied action" tokens condition a flow-matching DiT action head (4 Euler steps, chunk 7 in LeRobot's
defaults); a V-JEPA 2 video encoder and an action-conditioned predictor over its latents (the world
model) are trained jointly but are not on the inference path (``predict_action`` runs Qwen once + the
action head).

LeRobot builds the policy with ``Qwen3VLForConditionalGeneration.from_pretrained(config.qwen_model_name)``
+ ``AutoProcessor`` (the chat template, tokenizer and image processor) and, with the world model on,
``AutoModel`` / ``AutoVideoProcessor.from_pretrained(config.jepa_encoder_name)`` — Hub downloads of weights
that the checkpoint's own ``model.safetensors`` then overwrites anyway. The zoo's checkpoint carries both
directories *without weights*: ``<dir>/qwen`` (Qwen3-VL config, processor, tokenizer, chat template) and
``<dir>/jepa_encoder`` (V-JEPA 2 config, video processor). :func:`wam_policy_node.checkpoint.config_only_backbones`
builds a backbone from a directory's config when it holds no weights (the ``lerobot`` backend does so
when loading, and re-points both names at ``<dir>`` for a moved checkpoint). A real checkpoint loads
the same way with those two directories copied next to it (no Hub access on the robot).

- ``full``: Qwen3-VL-2B-Instruct's architecture as far as it could be checked offline — text 2048 wide,
  28 layers, 16 heads / 8 KV heads of 128, MLP 6144, vocabulary 151936, tied embeddings, interleaved
  M-RoPE (24/20/20, θ 5e6); vision 1024 wide, 24 layers, 16 heads, MLP 4096, patch 16, 2×2 merge to
  2048, DeepStack taps 5/11/17 — the image processor's published pixel range (65536..16777216), V-JEPA 2
  ViT-L/16 fpc64-256 (``VJEPA2Config``'s defaults: 1024 × 24 layers, tubelet 2), and LeRobot's
  ``VLAJEPAConfig`` defaults (DiT-B action head: 16 layers, 1024 hidden; predictor 12 layers × 8 heads;
  chunk 7, 4 flow steps). Cameras at 224×224 (each image → 64 visual tokens after the processor's
  minimum-pixel upscale to 256×256).
- ``tiny``: the same classes a few dozen channels wide (Qwen3-VL 32-wide text, 2 layers; 32-wide vision,
  2 layers; LeRobot's ``DiT-test`` action preset; V-JEPA 2 32 wide, 2 layers), 64×64 images.

ALOHA: 14-dim state and action; the config's single-arm gripper handling (snap to {0, 1} before
un-normalising, binarise to ±1 after, for dimension 6: the LIBERO convention) is switched off — ALOHA's
two grippers are continuous joint positions — and normalisation is LeRobot's (state mean/std, action
min/max, clipped to [-1, 1] before un-normalising).

Not the real asset: the tokenizer is word-level (numbers, the prompt template's words, Qwen's special
tokens with compact ids), not Qwen's BPE; the chat template is reduced to the user-turn-with-images form
LeRobot sends; every weight is random. ``extra``: ``config`` (VLAJEPAConfig overrides),
``world_model`` (default true: the published architecture; false drops the training-only parts).
"""
from __future__ import annotations

from pathlib import Path

from . import ZooSpec, features, randomise, register, save

FULL = {
    "text": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=6144, vocab_size=151936, max_position_embeddings=262144, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                  "mrope_interleaved": True}),
    "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16, spatial_merge_size=2,
                   temporal_patch_size=2, out_hidden_size=2048, num_position_embeddings=2304,
                   deepstack_visual_indexes=[5, 11, 17]),
    "pixels": (65536, 16777216),
    "jepa": {},  # VJEPA2Config defaults = ViT-L/16 fpc64-256
    "policy": {},  # VLAJEPAConfig defaults
}
TINY = {
    "text": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                 intermediate_size=64, vocab_size=1024, max_position_embeddings=4096, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                  "mrope_interleaved": True}),
    "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                   temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=256,
                   deepstack_visual_indexes=[1]),
    "pixels": (64 * 64, 128 * 128),
    "jepa": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, crop_size=64, pred_hidden_size=16,
                 pred_num_hidden_layers=1, pred_num_attention_heads=2, num_pooler_layers=1),
    "policy": dict(action_model_type="DiT-test", action_hidden_size=32, action_num_layers=2, predictor_depth=1,
                   predictor_num_heads=2, num_embodied_action_tokens_per_instruction=4, num_action_tokens_per_timestep=2,
                   num_target_vision_tokens=4, num_inference_timesteps=2, torch_dtype="float32"),
}

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
            "<|image_pad|>", "<|video_pad|>"]
_WORDS = ("user assistant your task is infer the temporal dynamics from frames and produce corresponding policy "
          "actions execute robot action pick up cube transfer insert peg socket lift beam to left right arm "
          "gripper with a of on in put place move grasp open close red blue green warm").split()
# the user turn with images then text, as Qwen3-VL's template renders it for LeRobot's messages
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer():
    """A word-level tokenizer with Qwen3-VL's special tokens (compact ids)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0}
    for w in [str(i) for i in range(256)] + _WORDS + list(",.;:!?-_'\"(){}"):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIAL])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", model_max_length=262144)


def write_qwen(qwen_dir: Path, dims: dict) -> None:
    """A Qwen3-VL directory without weights: config, processor (image + video processors, tokenizer,
    chat template), loadable offline with ``AutoConfig`` / ``AutoProcessor.from_pretrained(qwen_dir)``."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tok = make_tokenizer()
    if len(tok) > dims["text"]["vocab_size"]:
        raise ValueError(f"zoo vla_jepa: tokenizer has {len(tok)} tokens > vocabulary {dims['text']['vocab_size']}")
    ids = {t: tok.convert_tokens_to_ids(t) for t in _SPECIAL}
    cfg = Qwen3VLConfig(text_config=dict(dims["text"]), vision_config=dict(dims["vision"]),
                        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                        tie_word_embeddings=True)
    cfg.architectures = ["Qwen3VLForConditionalGeneration"]
    v = dims["vision"]
    lo, hi = dims["pixels"]
    common = dict(patch_size=v["patch_size"], merge_size=v["spatial_merge_size"],
                  temporal_patch_size=v["temporal_patch_size"], image_mean=[0.5] * 3, image_std=[0.5] * 3)
    images = Qwen2VLImageProcessor(size={"shortest_edge": lo, "longest_edge": hi}, **common)
    videos = Qwen3VLVideoProcessor(size={"shortest_edge": lo, "longest_edge": hi}, **common)
    qwen_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(qwen_dir)
    Qwen3VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                     chat_template=CHAT_TEMPLATE).save_pretrained(qwen_dir)


def write_jepa(jepa_dir: Path, dims: dict) -> None:
    """A V-JEPA 2 directory without weights: config and video processor."""
    from transformers import VJEPA2Config, VJEPA2VideoProcessor

    cfg = VJEPA2Config(**dims["jepa"])
    cfg.architectures = ["VJEPA2Model"]
    side = cfg.crop_size
    jepa_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(jepa_dir)
    VJEPA2VideoProcessor(crop_size={"height": side, "width": side},
                         size={"shortest_edge": int(side * 256 / 224)}).save_pretrained(jepa_dir)


def make_config(spec: ZooSpec, qwen: str, jepa: str):
    from lerobot.policies.vla_jepa.configuration_vla_jepa import VLAJEPAConfig

    tiny = spec.size == "tiny"
    dims = TINY if tiny else FULL
    h, w = spec.image_size or ((64, 64) if tiny else (224, 224))
    inputs, outputs = features(spec, (h, w))
    kw = dict(dims["policy"])
    if spec.chunk:
        kw.update(chunk_size=spec.chunk, n_action_steps=spec.chunk)
    kw.update(input_features=inputs, output_features=outputs, device=spec.device, qwen_model_name=qwen,
              jepa_encoder_name=jepa, enable_world_model=bool(spec.extra.get("world_model", True)),
              binarize_gripper_action=False, pre_snap_gripper_action=False)
    if "dtype" in spec.extra:
        kw["torch_dtype"] = str(spec.extra["dtype"])
    kw.update(spec.extra.get("config", {}))
    return VLAJEPAConfig(**kw)


def param_counts(size: str = "full", out: Path | None = None) -> dict[str, int]:
    """Parameters of VLA-JEPA's parts at ``size``, built on the meta device (writes the two config
    directories into ``out`` or a temporary folder)."""
    import tempfile

    from lerobot.policies.vla_jepa.modeling_vla_jepa import VLAJEPAPolicy

    from ..checkpoint import config_only_backbones

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out or tmp)
        dims = TINY if size == "tiny" else FULL
        write_qwen(root / "qwen", dims)
        write_jepa(root / "jepa_encoder", dims)
        cfg = make_config(ZooSpec(size=size), str(root / "qwen"), str(root / "jepa_encoder"))
        # the backbones on the meta device; the action head's init reads a value (.item()): built on the host
        with config_only_backbones(device="meta"):
            pol = VLAJEPAPolicy(cfg)
    m = pol.model
    n = lambda mod: sum(p.numel() for p in mod.parameters()) if mod is not None else 0  # noqa: E731
    qwen = m.qwen.model
    return {"qwen_vision": n(qwen.model.visual), "qwen_text": n(qwen.model.language_model),
            "action_head": n(m.action_model), "video_encoder": n(m.video_encoder),
            "video_predictor": n(m.video_predictor), "total": n(pol)}


@register("vla_jepa")
def build_vla_jepa(out: Path, spec: ZooSpec) -> None:
    import torch
    from lerobot.policies.vla_jepa.modeling_vla_jepa import VLAJEPAPolicy

    from ..checkpoint import config_only_backbones

    dims = TINY if spec.size == "tiny" else FULL
    qwen, jepa = (out / "qwen").resolve(), (out / "jepa_encoder").resolve()
    write_qwen(qwen, dims)
    write_jepa(jepa, dims)
    cfg = make_config(spec, str(qwen), str(jepa))
    torch.manual_seed(spec.seed)
    with config_only_backbones(), torch.device(spec.device):
        pol = VLAJEPAPolicy(cfg)
    randomise(pol, spec.seed)
    save(pol, cfg, out, cameras=spec.cameras)
