"""``wam-policy train``: ACT or Diffusion Policy on a LeRobotDataset, through LeRobot's own training.

A thin wrapper: it builds LeRobot 0.6.1's ``TrainPipelineConfig`` (``DatasetConfig`` + ``ACTConfig`` /
``DiffusionConfig``) and calls ``lerobot.scripts.lerobot_train.train`` — the same loop, optimiser
presets, processors and checkpoint layout as ``lerobot-train``. Then it ships the last checkpoint:
``--export DIR`` gets ``config.json``, ``model.safetensors`` cast to fp16 (the ``lerobot`` backend
loads it into a float32 model), the pre/post-processor pipelines with their normalisation stats,
and ``wam_train.json`` (dataset, settings, loss log, time).

Defaults are sized to ship: a reduced ACT (resnet18 trained from scratch — no download here —,
dim_model 256, feed-forward 1024, 4 encoder / 1 decoder / 2 VAE-encoder layers, chunk 100) on the
images as the sim renders them (240x320); about 17 M parameters, ~34 MB in fp16.

    wam-policy train --dataset runs/datasets/transfer_cube --steps 20000 --batch-size 64 \\
        --export checkpoints/act_transfer_cube
    wam-policy train --policy diffusion --dataset ... --steps 50000
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

from wam_common.config import ConfigError

PROCESSOR_GLOBS = ("policy_preprocessor*", "policy_postprocessor*")


def policy_config(kind: str, args, device: str):
    """The LeRobot policy config for ``--policy`` with this wrapper's reduced, from-scratch defaults."""
    common = dict(device=device, push_to_hub=False, use_amp=bool(args.amp))
    if kind == "act":
        from lerobot.policies.act.configuration_act import ACTConfig

        return ACTConfig(
            chunk_size=args.chunk_size, n_action_steps=args.chunk_size,
            vision_backbone="resnet18", pretrained_backbone_weights=None,
            dim_model=args.dim_model, n_heads=8, dim_feedforward=args.dim_feedforward,
            n_encoder_layers=args.layers, n_decoder_layers=1, n_vae_encoder_layers=max(1, args.layers // 2),
            latent_dim=32, dropout=0.1, kl_weight=10.0,
            optimizer_lr=args.lr, optimizer_lr_backbone=args.lr, optimizer_weight_decay=1e-4, **common)
    if kind == "diffusion":
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

        return DiffusionConfig(
            n_obs_steps=2, horizon=args.chunk_size if args.chunk_size % 8 == 0 else 64, n_action_steps=8,
            vision_backbone="resnet18", pretrained_backbone_weights=None, use_group_norm=True,
            crop_ratio=0.9, down_dims=(args.dim_model, args.dim_model * 2, args.dim_model * 4),
            optimizer_lr=args.lr, **common)
    raise ConfigError(f"--policy: unknown policy '{kind}' (known: act, diffusion)")


class _LogTap(logging.Handler):
    """Keeps LeRobot's training log lines (step, loss, grad norm, lr) for wam_train.json."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "loss" in msg and "step" in msg:
            self.lines.append(msg)


def train(args) -> dict:
    import torch
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig

    root = Path(args.dataset)
    if not (root / "meta" / "info.json").is_file():
        raise ConfigError(f"--dataset: '{root}' is not a LeRobotDataset (no meta/info.json)")
    info = json.loads((root / "meta" / "info.json").read_text())
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out or f"runs/train/{args.policy}_{root.name}")
    if out.exists():
        if not args.overwrite:
            raise ConfigError(f"--out '{out}' exists (use --overwrite)")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.amp and device.startswith("cuda"):
        torch.set_autocast_dtype("cuda", torch.bfloat16)  # LeRobot's use_amp follows the autocast default: bf16
    pcfg = policy_config(args.policy, args, device)
    cfg = TrainPipelineConfig(
        dataset=DatasetConfig(repo_id=f"local/{root.name}", root=str(root), video_backend="pyav"),
        policy=pcfg, output_dir=out, job_name=f"{args.policy}_{root.name}", seed=args.seed,
        num_workers=args.workers, batch_size=args.batch_size, steps=args.steps, env_eval_freq=0,
        log_freq=args.log_freq, save_checkpoint=True, save_freq=args.save_freq if args.save_freq > 0 else args.steps,
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None,
        dataloader_multiprocessing_context="spawn" if args.workers > 0 else None,
    )
    import lerobot.scripts.lerobot_train as lt

    tap = _LogTap()
    init_logging = lt.init_logging

    def init_logging_tapped(*a, **kw):  # LeRobot resets the root handlers: tap in after it
        init_logging(*a, **kw)
        logging.getLogger().addHandler(tap)

    lt.init_logging = init_logging_tapped
    argv, sys.argv = sys.argv, sys.argv[:1]  # LeRobot's config validation re-reads sys.argv for --policy.path
    t0 = time.monotonic()
    try:
        lt.train(cfg)
    finally:
        sys.argv = argv
        lt.init_logging = init_logging
        logging.getLogger().removeHandler(tap)
    seconds = time.monotonic() - t0
    last = out / "checkpoints" / "last" / "pretrained_model"
    if not (last / "config.json").is_file():
        raise RuntimeError(f"training finished without a checkpoint at {last}")
    result = {"policy": args.policy, "dataset": str(root), "dataset_episodes": info.get("total_episodes"),
              "dataset_frames": info.get("total_frames"), "steps": args.steps, "batch_size": args.batch_size,
              "lr": args.lr, "device": device, "amp": bool(args.amp), "seconds": round(seconds, 1),
              "checkpoint": str(last), "log": tap.lines[-50:]}
    if args.export:
        result["export"] = export_checkpoint(last, Path(args.export), result)
    return result


def export_checkpoint(src: Path, dst: Path, meta: dict | None = None, dtype: str = "float16") -> dict:
    """Copy a LeRobot ``pretrained_model`` folder to ``dst`` with the weights cast to ``dtype``."""
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        raise ConfigError(f"'{src}' is not a LeRobot pretrained_model folder (config.json + model.safetensors)")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy2(src / "config.json", dst / "config.json")
    for pattern in PROCESSOR_GLOBS:
        for f in src.glob(pattern):
            shutil.copy2(f, dst / f.name)
    cast = getattr(torch, dtype)
    sd = load_file(str(src / "model.safetensors"))
    n_params = sum(v.numel() for v in sd.values())
    sd = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    size = sum(f.stat().st_size for f in dst.iterdir())
    out = {"path": str(dst), "dtype": dtype, "parameters": int(n_params), "bytes": int(size)}
    if meta is not None:
        (dst / "wam_train.json").write_text(json.dumps({**meta, "export": out}, indent=1, default=str))
    return out


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True, help="LeRobotDataset root (from `wam-policy collect`)")
    p.add_argument("--policy", choices=["act", "diffusion"], default="act")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--chunk-size", type=int, default=100, help="ACT chunk / Diffusion horizon (default 100)")
    p.add_argument("--dim-model", type=int, default=256, help="ACT transformer width / Diffusion U-Net base width")
    p.add_argument("--dim-feedforward", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4, help="ACT encoder layers (VAE encoder: half)")
    p.add_argument("--workers", type=int, default=4, help="data-loader worker processes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--log-freq", type=int, default=200)
    p.add_argument("--save-freq", type=int, default=0, help="checkpoint every n steps (0 = only the last)")
    p.add_argument("--out", default=None, help="training output folder (default runs/train/<policy>_<dataset>)")
    p.add_argument("--export", default=None, help="ship the last checkpoint here as fp16 (e.g. checkpoints/act_transfer_cube)")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    if args.steps < 1 or args.batch_size < 1:
        raise ConfigError("--steps and --batch-size must be >= 1")
    try:
        result = train(args)
    except (RuntimeError, FileExistsError) as exc:
        print(f"wam-policy train: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k != "log"} | {"last_log": result["log"][-1:]}, indent=1))
    return 0
