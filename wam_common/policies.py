"""Policy *configs*: ``config/policies/<name>.yaml`` → the ``wam_policy_node`` overrides that select and
configure a backend. (Loading a *checkpoint* onto a device is :func:`wam_policy_node.checkpoint.load_checkpoint`.)"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from wam_common.config import ConfigError, config_dir, load_yaml, resolve_config


#: backend keys that name files or folders (``backend.<type>.<key>``)
PATH_KEYS = ("path", "bag")


def load_policy_config(name_or_path: str) -> tuple[str, dict]:
    """A policy config (``config/policies/<name>.yaml``): ``{name: ..., wam_policy_node: {...overrides}}``
    → (name, wam_policy_node overrides).

    Relative checkpoint/bag paths (``backend.<type>.path``/``.bag``) are relative to the repository
    root (the folder holding ``config/``) and come back absolute, so the overrides mean the same in
    any working directory: an eval worker's, or a Ray task's on another machine (the same path there)."""
    path = resolve_config(name_or_path, "policies")
    data = load_yaml(path)
    bad = sorted(set(data) - {"name", "wam_policy_node", "description"})
    if bad:
        raise ConfigError(f"{path}: unknown key '{bad[0]}' (known: name, wam_policy_node, description)")
    ov = data.get("wam_policy_node") or {}
    if not isinstance(ov, Mapping):
        raise ConfigError(f"{path}: key 'wam_policy_node' must be a mapping")
    backend = ov.get("backend")
    for sub in backend.values() if isinstance(backend, Mapping) else ():
        for key in PATH_KEYS if isinstance(sub, dict) else ():
            val = sub.get(key)
            if isinstance(val, str) and val and not Path(val).expanduser().is_absolute():
                sub[key] = str(config_dir().parent / val)
    return str(data.get("name", path.stem)), dict(ov)
