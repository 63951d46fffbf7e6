"""Loading a LeRobot *checkpoint* (a pretrained directory) onto a device: what the lerobot backend and the
fast engines both start from. (A policy *config* — ``config/policies/<name>.yaml`` — is loaded by
:func:`wam_common.policies.load_policy_config`.)

- :func:`load_checkpoint`: LeRobot's ``from_pretrained`` onto a device, with the frozen parts a WAM
  checkpoint carries;
- :func:`config_only_backbones`: VLA-JEPA's Qwen3-VL / V-JEPA 2 built from a config-only directory;
- :func:`zoo_checkpoint`: ``backend.lerobot.zoo`` — a random-weight checkpoint of a real architecture,
  written on first use.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from wam_common.config import ConfigError


def zoo_checkpoint(path: str, spec: dict) -> Path:
    """``backend.lerobot.zoo``: the zoo checkpoint for ``spec``, written on first use (into a temporary
    folder renamed into place, so parallel eval workers never load a half-written one)."""
    import hashlib
    import json
    import os
    import shutil
    import tempfile

    from . import zoo

    kw = dict(spec)
    kind = str(kw.pop("kind", ""))
    if kind not in zoo.kinds():
        raise ConfigError(f"key 'backend.lerobot.zoo.kind': '{kind}' is not one of {zoo.kinds()}")
    for key in ("cameras", "image_size"):
        if kw.get(key):
            kw[key] = tuple(kw[key])
    if path:
        out = Path(path).expanduser()
    else:
        digest = hashlib.sha1(json.dumps([kind, kw], sort_keys=True).encode()).hexdigest()[:12]
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        out = cache / "wam_policy" / "zoo" / f"{kind}-{digest}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        zoo.save_random_policy(kind, tmp, **kw)
        tmp.rename(out)
    except OSError:
        if not (out / "config.json").is_file():  # else another process wrote it first
            raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"key 'backend.lerobot.zoo': {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def local_tokenizer_overrides(path: Path) -> dict:
    """A checkpoint may carry its tokenizer in ``<dir>/tokenizer`` (robots are often offline; the
    saved pre-processor names a Hub tokenizer such as PaliGemma's): point the tokenizer step at it."""
    import json

    tok = path / "tokenizer"
    if not (tok / "tokenizer_config.json").is_file():
        return {}
    for f in sorted(path.glob("policy_preprocessor*.json")):
        try:
            steps = json.loads(f.read_text()).get("steps", [])
        except (OSError, ValueError):
            continue
        if any(s.get("registry_name") == "tokenizer_processor" for s in steps):
            return {"tokenizer_processor": {"tokenizer_name": str(tok)}}
    return {}


def local_vlm_overrides(path: Path, pcfg) -> dict:
    """A SmolVLA checkpoint may carry its VLM config + processor in ``<dir>/vlm`` (the zoo's do): if the
    config's ``vlm_model_name`` is not a directory here (the checkpoint was moved), use ``<dir>/vlm`` for
    the model and for the tokenizer step."""
    vlm = path / "vlm"
    name = getattr(pcfg, "vlm_model_name", None)
    if name is None or not (vlm / "config.json").is_file() or Path(name).is_dir():
        return {}
    pcfg.vlm_model_name = str(vlm.resolve())
    return {"tokenizer_processor": {"tokenizer_name": pcfg.vlm_model_name}}


def load_checkpoint(path, *, device: str, config=None):
    """LeRobot's ``from_pretrained`` of a checkpoint directory onto ``device`` (eval mode), with the frozen
    parts a FastWAM / LingBot-VA checkpoint carries (``_local_wan``); ``config``: its loaded config."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    import torch

    path = Path(path)
    pcfg = config if config is not None else PreTrainedConfig.from_pretrained(str(path))
    pcfg.device = str(device)
    # LeRobot builds the model (random init) before it reads the checkpoint over it: on a GPU, build it
    # there — a multi-billion-parameter init on the host takes minutes, on the GPU under a second
    where = torch.device(device) if torch.device(device).type == "cuda" else contextlib.nullcontext()
    with _local_wan(path, pcfg), _local_vla_jepa(path, pcfg), where:
        policy = get_policy_class(pcfg.type).from_pretrained(str(path), config=pcfg)
    return policy.to(device).eval()


@contextlib.contextmanager
def _local_wan(path: Path, pcfg):
    """FastWAM builds its frozen Wan2.2 VAE, UMT5 text encoder and tokenizer from the Hub when the policy
    is constructed. A checkpoint may carry them (diffusers layout, the zoo's do) in ``<dir>/vae``,
    ``<dir>/text_encoder``, ``<dir>/tokenizer``: where the config's names are not directories here (a
    moved checkpoint), use those. The VAE's repo is named in code (``fastwam/wan/components.py``,
    ``load_pretrained_wan_vae``), so that name points at ``<dir>`` while the policy is built.
    LingBot-VA loads the same three lazily from ``config.wan_pretrained_path``: ``<dir>`` when that is
    not a directory here."""
    root = path.resolve()
    here = lambda name: Path(str(name)).expanduser().is_dir()  # noqa: E731
    if pcfg.type == "lingbot_va" and (root / "vae").is_dir() and not here(pcfg.wan_pretrained_path):
        pcfg.wan_pretrained_path = str(root)
    if pcfg.type != "fastwam":
        yield
        return
    if (root / "text_encoder").is_dir() and not here(pcfg.text_encoder_model_id):
        pcfg.text_encoder_model_id = str(root)
    if (root / "tokenizer").is_dir() and not here(pcfg.tokenizer_model_id):
        pcfg.tokenizer_model_id = str(root / "tokenizer")
    from lerobot.policies.fastwam.wan import components

    hub = components.WAN22_DIFFUSERS_MODEL_ID
    if (root / "vae").is_dir():
        components.WAN22_DIFFUSERS_MODEL_ID = str(root)
    try:
        yield
    finally:
        components.WAN22_DIFFUSERS_MODEL_ID = hub


def _has_weights(name) -> bool:
    d = Path(str(name)).expanduser()
    return not d.is_dir() or any(d.glob("*.safetensors")) or any(d.glob("*.bin"))


@contextlib.contextmanager
def config_only_backbones(device: str | None = None):
    """Within the block, VLA-JEPA's backbones (``Qwen3VLForConditionalGeneration.from_pretrained`` of
    ``qwen_model_name``, ``AutoModel.from_pretrained`` of ``jepa_encoder_name``) are built from the named
    directory's config when it holds no weights: the policy's own ``model.safetensors`` carries every one
    of their parameters (LeRobot loads it over them right after), so the Hub's weights are not needed.
    ``device``: where those built from config are made (``"meta"`` to count parameters)."""
    import torch
    from lerobot.policies.vla_jepa import modeling_vla_jepa, qwen_interface
    from transformers import AutoConfig

    qwen_cls, auto = qwen_interface.Qwen3VLForConditionalGeneration, modeling_vla_jepa.AutoModel

    def from_config(cls, name, kw):
        if _has_weights(name):
            return cls.from_pretrained(name, **kw)
        make = getattr(cls, "from_config", None) or cls._from_config  # AutoModel / a model class
        with torch.device(device) if device else contextlib.nullcontext():
            return make(AutoConfig.from_pretrained(name), dtype=kw.get("torch_dtype") or kw.get("dtype"))

    class Qwen:
        from_pretrained = staticmethod(lambda name, **kw: from_config(qwen_cls, name, kw))

    class Auto:
        from_pretrained = staticmethod(lambda name, **kw: from_config(auto, name, kw))

    qwen_interface.Qwen3VLForConditionalGeneration, modeling_vla_jepa.AutoModel = Qwen, Auto
    try:
        yield
    finally:
        qwen_interface.Qwen3VLForConditionalGeneration, modeling_vla_jepa.AutoModel = qwen_cls, auto


@contextlib.contextmanager
def _local_vla_jepa(path: Path, pcfg):
    """A VLA-JEPA checkpoint may carry its backbones' configs and processors (no weights: the zoo's do, and a
    real one can get them copied in) in ``<dir>/qwen`` and ``<dir>/jepa_encoder``: where the config's names
    are not directories here (a moved checkpoint, or Hub ids on an offline robot), use those; build the
    backbones from config (:func:`config_only_backbones`)."""
    if pcfg.type != "vla_jepa":
        yield
        return
    root = path.resolve()
    for attr, sub in (("qwen_model_name", "qwen"), ("jepa_encoder_name", "jepa_encoder")):
        if (root / sub / "config.json").is_file() and not Path(str(getattr(pcfg, attr))).expanduser().is_dir():
            setattr(pcfg, attr, str(root / sub))
    with config_only_backbones():
        yield
