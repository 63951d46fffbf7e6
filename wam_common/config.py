"""Configuration files: locate, load, merge and validate YAML with errors that name the key.

Every config error is a :class:`ConfigError` whose message is one line naming the offending
key and file, so a node or the CLI can print it and exit non-zero.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is one line naming the key."""


def config_dir() -> Path:
    """The folder holding the shipped ``config/`` files.

    Order: ``$WAM_POLICY_CONFIG_DIR``; the source tree (``<repo>/config``); the ament share
    directory of an installed ``wam_policy`` package (``colcon build`` on a robot).
    """
    env = os.environ.get("WAM_POLICY_CONFIG_DIR")
    if env:
        return Path(env)
    src = Path(__file__).resolve().parents[1] / "config"
    if src.is_dir():
        return src
    try:  # installed by colcon: share/wam_policy/config
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("wam_policy")) / "config"
    except Exception:  # noqa: BLE001 - fall through to a clear error below
        pass
    raise ConfigError("config: cannot find the wam_policy config directory (set WAM_POLICY_CONFIG_DIR)")


def resolve_config(name_or_path: str | os.PathLike, subdir: str = "") -> Path:
    """A config given by path, or by short name (``aloha_sim`` → ``config/aloha_sim.yaml``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    base = config_dir() / subdir if subdir else config_dir()
    for cand in (base / f"{p}.yaml", base / f"{p}.yml", base / p):
        if cand.is_file():
            return cand
    where = f"{subdir}/" if subdir else ""
    raise ConfigError(f"config: no such config '{name_or_path}' (looked in {base} for {where}{p}.yaml)")


def load_yaml(path: str | os.PathLike) -> dict:
    """Load a YAML mapping; malformed YAML or a non-mapping top level is a ConfigError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}, line "
                          f"{raw[:exc.start].count(b'\n') + 1}: {exc.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        if not mark and isinstance(getattr(exc, "position", None), int):  # the reader: a character YAML forbids
            ch = getattr(exc, "character", "")
            code = ord(ch) if isinstance(ch, str) and len(ch) == 1 else ch if isinstance(ch, int) else None
            where = f" at character {exc.position}" + (f" (#x{code:04x})" if code is not None else "")
        problem = (getattr(exc, "problem", None) or getattr(exc, "reason", None)
                   or (str(exc).strip().splitlines() or ["invalid YAML"])[0])
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Recursive merge: mappings merge key by key, anything else in ``override`` wins."""
    out = copy.deepcopy(dict(base))
    for key, val in override.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` → ``{'a.b': 1}`` (ROS parameter names)."""
    out: dict[str, Any] = {}
    for key, val in tree.items():
        name = f"{prefix}{key}"
        if isinstance(val, Mapping):
            if not val:
                continue
            out.update(flatten(val, name + "."))
        else:
            out[name] = val
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten`."""
    out: dict = {}
    for name, val in flat.items():
        node = out
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = val
    return out


def check_against(defaults: Mapping, given: Mapping, where: str, prefix: str = "") -> dict:
    """Merge ``given`` onto ``defaults``, rejecting unknown keys and wrong types (key named).

    ``None`` in defaults accepts anything; ints are accepted where floats are expected.
    """
    out = copy.deepcopy(dict(defaults))
    for key, val in given.items():
        name = f"{prefix}{key}"
        if key not in defaults:
            known = ", ".join(sorted(str(k) for k in defaults)) or "none"
            raise ConfigError(f"{where}: unknown key '{name}' (known: {known})")
        ref = defaults[key]
        if isinstance(ref, Mapping):
            if not isinstance(val, Mapping):
                raise ConfigError(f"{where}: key '{name}' must be a mapping, got {type(val).__name__}")
            # an empty mapping default is an open dict (e.g. per-camera tables)
            out[key] = check_against(ref, val, where, name + ".") if ref else dict(val)
            continue
        if ref is not None and val is not None and not _type_ok(ref, val):
            raise ConfigError(
                f"{where}: key '{name}' must be {type(ref).__name__}, got {type(val).__name__} ({val!r})"
            )
        out[key] = float(val) if isinstance(ref, float) and isinstance(val, int) and not isinstance(val, bool) else val
    return out


def _type_ok(ref: Any, val: Any) -> bool:
    if isinstance(ref, bool):
        return isinstance(val, bool)
    if isinstance(ref, float):
        return isinstance(val, (int, float)) and not isinstance(val, bool)
    if isinstance(ref, int):
        return isinstance(val, int) and not isinstance(val, bool)
    if isinstance(ref, str):
        return isinstance(val, str)
    if isinstance(ref, (list, tuple)):
        return isinstance(val, (list, tuple))
    return True
