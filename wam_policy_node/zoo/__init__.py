"""Random-weight LeRobot checkpoints of real architectures, written offline.

Model weights cannot be downloaded where this stack is built and tested, so tests and benches make
their own checkpoints: LeRobot's own policy classes built from a config (at full size or reduced),
weights randomised, saved with ``save_pretrained`` together with the pre/post-processor pipelines
LeRobot builds for that config — and every Hub asset those pipelines or models would fetch
(tokenizers, VLM configs) written locally into the checkpoint directory instead. The result loads
through the normal path (``LeRobotBackend`` → ``from_pretrained`` + ``make_pre_post_processors``)
with no network: exactly what a robot does with a real checkpoint.

    from wam_policy_node.zoo import save_random_policy
    path = save_random_policy("pi05", tmp / "pi05", size="tiny")     # CPU tests
    path = save_random_policy("pi05", tmp / "pi05", size="full", device="cuda")  # GPU bench

Sizes: ``full`` = the published architecture; ``reduced`` = the same structure at fewer layers
where a full model does not fit a bench (documented per builder); ``tiny`` = widths/depths small
enough for a CPU test. Builders register per LeRobot policy type (``KINDS``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from wam_common.topics import CAMERAS, STATE_DIM

SIZES = ("tiny", "reduced", "full")


@dataclass
class ZooSpec:
    size: str = "tiny"
    cameras: tuple[str, ...] = tuple(CAMERAS)
    image_size: tuple[int, int] | None = None  # (h, w) the policy sees; None = the architecture's default
    chunk: int | None = None                    # action chunk length; None = the architecture's default
    seed: int = 0
    device: str = "cpu"                         # where the weights are built (cuda for full-size models)
    extra: dict = field(default_factory=dict)   # builder-specific options (JSON-serialisable)


Builder = Callable[[Path, ZooSpec], None]
_BUILDERS: dict[str, Builder] = {}


def register(kind: str):
    def deco(fn: Builder) -> Builder:
        _BUILDERS[kind] = fn
        return fn

    return deco


def kinds() -> list[str]:
    _load_all()
    return sorted(_BUILDERS)


def _load_all() -> None:
    import importlib

    for mod in ("classic", "pi", "smolvla", "wam", "xvla", "vla_jepa"):
        importlib.import_module(f"{__name__}.{mod}")


def save_random_policy(kind: str, out_dir: str | Path, *, size: str = "tiny", **kw) -> Path:
    """Write a loadable LeRobot pretrained directory for ``kind`` with random weights; returns it."""
    _load_all()
    if kind not in _BUILDERS:
        raise ValueError(f"zoo: unknown policy kind {kind!r} (have {sorted(_BUILDERS)})")
    if size not in SIZES:
        raise ValueError(f"zoo: size must be one of {SIZES}, got {size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = ZooSpec(size=size, **kw)
    _BUILDERS[kind](out, spec)
    (out / "zoo.json").write_text(json.dumps({"kind": kind, "size": size, "seed": spec.seed,
                                              "cameras": list(spec.cameras), "image_size": spec.image_size,
                                              "chunk": spec.chunk, "extra": spec.extra}, indent=1))
    return out


# ------------------------------------------------------------------ helpers for builders
def randomise(module, seed: int = 0) -> None:
    """Every parameter random (N(0, 1/fan_in) matrices, N(0, 0.1²) vectors): also the gates and
    norm scales some policies initialise to zero or one, so every path of the network is live."""
    import torch

    dev = next(module.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            r = torch.randn(p.shape, generator=g, device=dev, dtype=torch.float32)
            p.copy_(r / math.sqrt(p[0].numel()) if p.ndim >= 2 else r * 0.1)


def rtc_config(spec: ZooSpec):
    """``extra={"rtc": True}`` or ``{"rtc": {<RTCConfig fields>}}`` → an enabled LeRobot ``RTCConfig``
    (real-time-chunking guidance in ``predict_action_chunk``, for the flow-matching VLAs); else None."""
    opt = spec.extra.get("rtc")
    if not opt:
        return None
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    return RTCConfig(**({} if opt is True else dict(opt)))


def features(spec: ZooSpec, image_size: tuple[int, int], state_dim: int = STATE_DIM, action_dim: int = STATE_DIM):
    """LeRobot input/output features for ALOHA-like inputs: one image per camera, 14-dim state/action."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    h, w = spec.image_size or image_size
    inputs = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, h, w)) for c in spec.cameras}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}


def stats(cameras, state_dim: int = STATE_DIM, action_dim: int = STATE_DIM, seed: int = 0) -> dict:
    """Normalisation statistics of every kind LeRobot's normalisers ask for (mean/std, min/max,
    quantiles) for the state, the action and each camera."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, dim in (("observation.state", state_dim), ("action", action_dim)):
        mean = torch.randn(dim, generator=g) * 0.3
        std = torch.rand(dim, generator=g) + 0.5
        out[key] = {"mean": mean, "std": std, "min": mean - 2 * std, "max": mean + 2 * std,
                    "q01": mean - 2 * std, "q99": mean + 2 * std, "q10": mean - std, "q90": mean + std}
    for c in cameras:
        k = c if c.startswith("observation.") else f"observation.images.{c}"
        out[k] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25),
                  "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
    return out


def save(policy, cfg, out: Path, *, cameras, processor_patches=(), tokenizer=None) -> None:
    """``save_pretrained`` the policy and the processors LeRobot builds for ``cfg``.

    ``tokenizer``: a local tokenizer directory. LeRobot's processors name a Hub tokenizer
    (e.g. PaliGemma's); the saved pre-processor is pointed at this directory instead, so loading
    needs no network. ``processor_patches``: extra context managers (e.g. :func:`.parts.patched`) needed while
    LeRobot builds the processors (e.g. its tokenizer constructor)."""
    from contextlib import ExitStack

    from lerobot.policies.factory import make_pre_post_processors

    policy.save_pretrained(out)
    with ExitStack() as stack:
        for p in processor_patches:
            stack.enter_context(p)
        pre, post = make_pre_post_processors(cfg, dataset_stats=stats(cameras))
    pre.save_pretrained(out)
    post.save_pretrained(out)
    if tokenizer is not None:
        point_tokenizer(out, tokenizer)


def point_tokenizer(ckpt: Path, tokenizer_dir: str | Path) -> None:
    """Make every saved pre-processor step that names a tokenizer load it from ``tokenizer_dir``."""
    for f in Path(ckpt).glob("policy_preprocessor*.json"):
        data = json.loads(f.read_text())
        changed = False
        for step in data.get("steps", []):
            conf = step.get("config") or {}
            for key in ("tokenizer_name", "paligemma_tokenizer_name"):
                if key in conf:
                    conf[key] = str(tokenizer_dir)
                    changed = True
        if changed:
            f.write_text(json.dumps(data, indent=2))


__all__ = ["SIZES", "ZooSpec", "kinds", "register", "save_random_policy", "randomise", "rtc_config", "features",
           "stats", "save", "point_tokenizer"]
