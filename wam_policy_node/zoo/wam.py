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
"""
from __future__ import annotations

from pathlib import Path
from unittest import mock

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
    text, vae = dict(UMT5_XXL), dict(WAN22_VAE)
    if size == "reduced":
        video["num_layers"] = action["num_layers"] = layers or REDUCED_LAYERS
    elif size == "tiny":
        n = layers or 2
        video.update(hidden_dim=64, ffn_dim=128, freq_dim=32, text_dim=32, num_heads=2, attn_head_dim=32, num_layers=n)
        action.update(hidden_dim=32, ffn_dim=64, freq_dim=32, text_dim=32, num_heads=2, attn_head_dim=32, num_layers=n)
        text.update(vocab_size=1024, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
        vae.update(base_dim=8, decoder_base_dim=8, num_res_blocks=1)
    vae.update(latents_mean=[0.0] * vae["z_dim"], latents_std=[1.0] * vae["z_dim"])
    return video, action, text, vae


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
    from lerobot.policies.fastwam.modeling_fastwam import FastWAMPolicy
    from lerobot.policies.fastwam.wan.adapters import WanVideoVAE38
    from lerobot.policies.fastwam.wan.components import WanTextEncoder
    from transformers import UMT5Config, UMT5EncoderModel

    from ..engines.testing import make_local_tokenizer

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
        tokenizer_max_len=16 if tiny else 128, context_len=16 if tiny else 128,
        text_encoder_model_id=str(out), tokenizer_model_id=str(out / "tokenizer"), base_model_id=None,
        torch_dtype=dtype_name, num_inference_steps=int(spec.extra.get("steps", 2 if tiny else 10)),
        video_dit_config=video, action_dit_config=action, device=spec.device)
    # the frozen parts just built are handed over as LeRobot's loaders would return them
    mod = "lerobot.policies.fastwam.modeling_fastwam"
    with mock.patch(f"{mod}.load_pretrained_wan_text_encoder",
                    lambda **kw: WanTextEncoder(dtype=dtype, device=spec.device, pretrained=text_encoder)), \
         mock.patch(f"{mod}.load_pretrained_wan_vae",
                    lambda **kw: WanVideoVAE38(dtype=dtype, device=spec.device, pretrained=vae)), \
         torch.device(spec.device):
        pol = FastWAMPolicy(cfg)
    randomise(pol, spec.seed)
    save(pol, cfg, out, cameras=spec.cameras)
