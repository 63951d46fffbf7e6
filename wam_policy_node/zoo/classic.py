"""ACT and Diffusion Policy (LeRobot), random weights.

``full``: LeRobot's default architecture (ACT: ResNet-18 + 4/1-layer 512-wide transformer, chunk
100; Diffusion: ResNet-18 + conditional 1D U-Net, 100 DDPM steps) at 480×640 inputs for ACT as the
ALOHA datasets have them, 96×96 crops for Diffusion. ``tiny``/``reduced``: the same classes at small
widths and, for ACT, 120×160 inputs.
"""
from __future__ import annotations

from pathlib import Path

from . import ZooSpec, features, randomise, register, save


@register("act")
def build_act(out: Path, spec: ZooSpec) -> None:
    import torch
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    full = spec.size == "full"
    inp, outp = features(spec, (480, 640) if full else (120, 160))
    kw = dict(input_features=inp, output_features=outp, pretrained_backbone_weights=None, device=spec.device)
    chunk = spec.chunk or (100 if full else 20)
    kw.update(chunk_size=chunk, n_action_steps=chunk)
    if not full:
        kw.update(dim_model=64, n_heads=4, dim_feedforward=128, n_encoder_layers=2, n_decoder_layers=1,
                  latent_dim=8, n_vae_encoder_layers=1)
    cfg = ACTConfig(**kw)
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        pol = ACTPolicy(cfg)
    randomise(pol, spec.seed)
    save(pol, cfg, out, cameras=spec.cameras)


@register("diffusion")
def build_diffusion(out: Path, spec: ZooSpec) -> None:
    import torch
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    full = spec.size == "full"
    inp, outp = features(spec, (96, 96))
    h, w = spec.image_size or (96, 96)
    kw = dict(input_features=inp, output_features=outp, pretrained_backbone_weights=None, device=spec.device,
              crop_shape=(int(h * 0.84) // 2 * 2, int(w * 0.84) // 2 * 2))
    if spec.chunk:
        kw.update(horizon=spec.chunk, n_action_steps=max(1, spec.chunk // 2))
    if not full:
        kw.update(down_dims=(32, 64), diffusion_step_embed_dim=32, num_inference_steps=4, horizon=spec.chunk or 16,
                  n_action_steps=8, spatial_softmax_num_keypoints=8)
    cfg = DiffusionConfig(**kw)
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        pol = DiffusionPolicy(cfg)  # LeRobot's own (random) init: fully randomised weights drive
    # every DDPM step into the sample clipping, and the actions stop depending on the images
    save(pol, cfg, out, cameras=spec.cameras)
