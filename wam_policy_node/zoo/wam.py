"""World action models (LeRobot): FastWAM, random weights, with its frozen Wan2.2 parts written locally.

FastWAM (``lerobot/policies/fastwam``) is a mixture-of-transformers over a Wan2.2-TI2V-5B video DiT and an
action DiT; a frozen Wan2.2 VAE encodes the (width-concatenated) camera images and a frozen UMT5-XXL
encoder embeds the prompt. Inference (``infer_action``) encodes the current frame once, prefills the
video expert's KV cache and runs the flow-matching steps on the action expert only.

LeRobot loads the frozen parts from the Hub when the policy is built: the UMT5 encoder from
``config.text_encoder_model_id`` (``<id>/text_encoder``), the tokenizer from ``config.tokenizer_model_id``
and the VAE from ``Wan-AI/Wan2.2-TI2V-5B-Diffusers/vae`` — a repo id fixed in code
(``lerobot/policies/fastwam/wan/components.py``, ``load_pretrained_wan_vae``). The checkpoint therefore
carries all three, random weights, in the diffusers layout: ``<dir>/vae``, ``<dir>/text_encoder``,
``<dir>/tokenizer`` (a word-level tokenizer, ids inside UMT5's vocabulary). The config names the
directory for the encoder and the tokenizer; ``LeRobotBackend`` re-points both at ``<dir>`` (the
checkpoint may move) and redirects the VAE repo id to it while the policy is built.

Sizes (parameters counted on the meta device, :func:`param_counts`):

- ``full``: LeRobot's defaults, the published architecture — video DiT 3072 wide, 30 layers (5.00 B),
  action DiT 1024 wide, 30 layers (1.02 B), UMT5-XXL encoder (5.68 B), Wan2.2 VAE (0.70 B): 12.4 B in
  all, bf16 weights; 224×448 concatenated input (the cameras share the width), chunk 32, 10 flow steps.
- ``reduced``: the same widths with ``extra={"layers": N}`` DiT layers in both experts (default 10:
  video 1.73 B, action 0.35 B; encoder and VAE unchanged: 8.5 B in all).
- ``tiny``: the same classes a few dozen channels wide, 2 layers, 64×64 per camera, 2 flow steps, float32.

``extra``: ``layers`` (reduced/tiny DiT depth), ``dtype`` (weights dtype), ``steps`` (flow steps).
The VAE's latent mean/std are 0/1 (the released ones describe the released weights, not these).

LingBot-VA (``lerobot/policies/lingbot_va``) is an autoregressive video-action model: one dual-stream
Wan2.2 DiT (video and action tokens, KV cache across chunks) over the latents of the same frozen Wan2.2
VAE, prompt from the same UMT5-XXL encoder. LeRobot loads the frozen parts lazily at the first inference
from ``config.wan_pretrained_path`` (``vae/``, ``text_encoder/``, ``tokenizer/`` sub-folders): the zoo
writes all three into the checkpoint and names it there (a T5 tokenizer, word-level vocabulary);
``LeRobotBackend`` re-points the path at ``<dir>`` for a moved checkpoint. Its chunks after the first
are conditioned on the frames observed while the previous chunk ran (the backend's ``observe``).

- ``full``: LeRobot's defaults (the released checkpoints' transformer): 3072 wide (24 heads × 128),
  30 layers, 5.09 B; the same UMT5-XXL and Wan2.2 VAE; each camera at 128×128, the latents side by side,
  4 latent frames × 4 actions per chunk (16 actions, 12 on the first), 20 video + 50 action flow steps,
  CFG 5 (bf16).
- ``reduced``: the same with ``extra={"layers": N}`` transformer layers (default 10: 1.82 B).
- ``tiny``: the same classes a few dozen channels wide, 2 layers, 32×32 per camera, 2 flow steps per
  stream, float32.

``extra``: ``layers``, ``dtype``, ``steps`` (flow steps of each stream), ``layout`` (LeRobot's
``camera_layout``: ``width_concat`` or ``robotwin_tshape``). The 14 actions are channels 0..13 of the
model's 30-dim action space.
"""
from __future__ import annotations

from pathlib import Path

from . import ZooSpec, features, randomise, register, save

UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                relative_attention_max_distance=128, tie_word_embeddings=False)
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 attn_scales=[], temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                 out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4)
REDUCED_LAYERS = 10


def _parts(size: str, layers: int | None):
    """(video DiT kwargs, action DiT kwargs, UMT5 config kwargs, VAE kwargs) for a size."""
    from lerobot.policies.fastwam.configuration_fastwam import default_action_dit_config, default_video_dit_config

    video, action = default_video_dit_config(14), default_action_dit_config(14)
    text, vae = _frozen_parts(size)
    if size == "reduced":
        video["num_layers"] = action["num_layers"] = layers or REDUCED_LAYERS
    elif size == "tiny":
        n = layers or 2
        video.update(hidden_dim=64, ffn_dim=128, freq_dim=32, text_dim=32, num_heads=2, attn_head_dim=32, num_layers=n)
        action.update(hidden_dim=32, ffn_dim=64, freq_dim=32, text_dim=32, num_heads=2, attn_head_dim=32, num_layers=n)
    return video, action, text, vae


def _frozen_parts(size: str):
    """(UMT5 config kwargs, Wan2.2 VAE kwargs) for a size: the published ones, or a few channels wide."""
    text, vae = dict(UMT5_XXL), dict(WAN22_VAE)
    if size == "tiny":
        text.update(vocab_size=1024, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
        vae.update(base_dim=8, decoder_base_dim=8, num_res_blocks=1)
    vae.update(latents_mean=[0.0] * vae["z_dim"], latents_std=[1.0] * vae["z_dim"])
    return text, vae


def param_counts(size: str = "full", layers: int | None = None) -> dict[str, int]:
    """Parameters of each FastWAM part at ``size``, built on the meta device (no memory)."""
    import torch
    from diffusers import AutoencoderKLWan
    from lerobot.policies.fastwam.wan import ActionDiT, WanVideoDiT
    from transformers import UMT5Config, UMT5EncoderModel

    video, action, text, vae = _parts(size, layers)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        return {"video_dit": n(WanVideoDiT(**video)), "action_dit": n(ActionDiT(**action)),
                "text_encoder": n(UMT5EncoderModel(UMT5Config(**text))), "vae": n(AutoencoderKLWan(**vae))}


@register("fastwam")
def build_fastwam(out: Path, spec: ZooSpec) -> None:
    import torch
    from diffusers import AutoencoderKLWan
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.fastwam.configuration_fastwam import FastWAMConfig
    from lerobot.policies.fastwam import modeling_fastwam
    from lerobot.policies.fastwam.modeling_fastwam import FastWAMPolicy
    from lerobot.policies.fastwam.wan.adapters import WanVideoVAE38
    from lerobot.policies.fastwam.wan.components import WanTextEncoder
    from transformers import UMT5Config, UMT5EncoderModel

    from .parts import make_local_tokenizer, patched

    tiny = spec.size == "tiny"
    video, action, text, vae_kw = _parts(spec.size, spec.extra.get("layers"))
    # the model concatenates the cameras along the width
    n = len(spec.cameras)
    if spec.image_size or tiny:  # (h, w) per camera
        h, w = spec.image_size or (64, 64)
        total = (h, w * n)
    else:  # LeRobot's default: 224×448 shared by the cameras
        total = (224, 448)
    if total[0] % 16 or total[1] % 16:
        raise ValueError(f"zoo fastwam: concatenated image {total} must be a multiple of 16 (Wan VAE)")
    inp, outp = features(spec, total)  # the image entries are replaced below
    cams = [k for k in inp if k.startswith("observation.images.")]
    for i, k in enumerate(cams):  # the declared widths sum to the concatenated width, as LeRobot checks
        inp[k] = PolicyFeature(FeatureType.VISUAL, (3, total[0], total[1] // n + (i < total[1] % n)))
    dtype_name = str(spec.extra.get("dtype", "float32" if tiny else "bfloat16"))
    dtype = getattr(torch, dtype_name)

    make_local_tokenizer(out / "tokenizer")
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        text_encoder = UMT5EncoderModel(UMT5Config(**text)).to(dtype)
        vae = AutoencoderKLWan(**vae_kw).to(dtype)  # both as their libraries initialise them
    text_encoder.save_pretrained(out / "text_encoder")
    vae.save_pretrained(out / "vae")

    cfg = FastWAMConfig(
        input_features=inp, output_features=outp, action_dim=14, proprio_dim=14, image_size=total,
        action_horizon=spec.chunk or 32, n_action_steps=spec.chunk or 32,
        tokenizer_max_len=32 if tiny else 128, context_len=32 if tiny else 128,  # tiny: the template + task fit
        text_encoder_model_id=str(out), tokenizer_model_id=str(out / "tokenizer"), base_model_id=None,
        torch_dtype=dtype_name, num_inference_steps=int(spec.extra.get("steps", 2 if tiny else 10)),
        video_dit_config=video, action_dit_config=action, device=spec.device)
    # the frozen parts just built are handed over as LeRobot's loaders would return them
    with patched(modeling_fastwam, "load_pretrained_wan_text_encoder",
                 lambda **kw: WanTextEncoder(dtype=dtype, device=spec.device, pretrained=text_encoder)), \
         patched(modeling_fastwam, "load_pretrained_wan_vae",
                 lambda **kw: WanVideoVAE38(dtype=dtype, device=spec.device, pretrained=vae)), \
         torch.device(spec.device):
        pol = FastWAMPolicy(cfg)
    randomise(pol, spec.seed)
    save(pol, cfg, out, cameras=spec.cameras)


def _lingbot_transformer(size: str, layers: int | None) -> dict:
    """LingBotVAConfig's transformer fields for a size (LeRobot's defaults at ``full``)."""
    from lerobot.policies.lingbot_va.configuration_lingbot_va import LingBotVAConfig

    names = ("num_attention_heads", "attention_head_dim", "text_dim", "freq_dim", "ffn_dim", "num_layers")
    d = {k: LingBotVAConfig.__dataclass_fields__[k].default for k in names}
    if size == "reduced":
        d["num_layers"] = layers or REDUCED_LAYERS
    elif size == "tiny":
        d.update(num_attention_heads=2, attention_head_dim=24, text_dim=32, freq_dim=32, ffn_dim=64,
                 num_layers=layers or 2)
    return d


def lingbot_param_counts(size: str = "full", layers: int | None = None) -> dict[str, int]:
    """Parameters of each LingBot-VA part at ``size``, built on the meta device (no memory)."""
    import torch
    from diffusers import AutoencoderKLWan
    from lerobot.policies.lingbot_va.utils import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    text, vae = _frozen_parts(size)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        return {"transformer": n(WanTransformer3DModel(**_lingbot_transformer(size, layers))),
                "text_encoder": n(UMT5EncoderModel(UMT5Config(**text))), "vae": n(AutoencoderKLWan(**vae))}


def _t5_tokenizer(path: Path) -> None:
    """A T5 tokenizer (LingBot-VA loads ``T5TokenizerFast``) over a few hundred words, ids far inside
    UMT5's vocabulary; other words map to ``<unk>``."""
    from transformers import T5TokenizerFast

    words = ("task pick up the cube transfer insert peg socket lift beam to left right arm gripper and with a of "
             "on in put place move grasp open close red blue green").split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -5.0) for w in dict.fromkeys(words + [str(i) for i in range(256)])]
    T5TokenizerFast(vocab=vocab, extra_ids=0).save_pretrained(str(path))


@register("lingbot_va")
def build_lingbot_va(out: Path, spec: ZooSpec) -> None:
    import torch
    from diffusers import AutoencoderKLWan
    from lerobot.policies.lingbot_va.configuration_lingbot_va import LingBotVAConfig
    from lerobot.policies.lingbot_va.modeling_lingbot_va import LingBotVAPolicy
    from transformers import UMT5Config, UMT5EncoderModel

    tiny = spec.size == "tiny"
    text, vae_kw = _frozen_parts(spec.size)
    h, w = spec.image_size or ((32, 32) if tiny else (128, 128))  # per camera; the policy resizes to it
    if h % 16 or w % 16:
        raise ValueError(f"zoo lingbot_va: camera image {(h, w)} must be a multiple of 16 (Wan VAE + patch)")
    per_frame = 4  # actions per latent frame (LeRobot's default)
    chunk = spec.chunk or 16
    if chunk % per_frame or chunk < 2 * per_frame:
        raise ValueError(f"zoo lingbot_va: chunk {chunk} must be a multiple of {per_frame}, at least {2 * per_frame}")
    inp, outp = features(spec, (h, w))
    dtype_name = str(spec.extra.get("dtype", "float32" if tiny else "bfloat16"))
    dtype = getattr(torch, dtype_name)

    _t5_tokenizer(out / "tokenizer")
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        UMT5EncoderModel(UMT5Config(**text)).to(dtype).save_pretrained(out / "text_encoder")
        AutoencoderKLWan(**vae_kw).to(dtype).save_pretrained(out / "vae")  # as their libraries initialise them

    steps = spec.extra.get("steps")
    cfg = LingBotVAConfig(
        input_features=inp, output_features=outp, **_lingbot_transformer(spec.size, spec.extra.get("layers")),
        wan_pretrained_path=str(out), dtype=dtype_name, device=spec.device,
        obs_cam_keys=[k for k in inp if k.startswith("observation.images.")],
        camera_layout=str(spec.extra.get("layout", "width_concat")), height=h, width=w,
        action_per_frame=per_frame, frame_chunk_size=chunk // per_frame,
        num_inference_steps=int(steps or (2 if tiny else 20)),
        action_num_inference_steps=int(steps or (2 if tiny else 50)),
        max_sequence_length=16 if tiny else 512, used_action_channel_ids=list(range(outp["action"].shape[0])))
    with torch.device(spec.device):
        pol = LingBotVAPolicy(cfg)
    randomise(pol, spec.seed)
    save(pol, cfg, out, cameras=spec.cameras)
