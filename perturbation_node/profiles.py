"""Perturbation profiles: ``config/perturbations/<name>.yaml`` → a validated :class:`Profile`.

A profile says which ops run on which stream, at which level, with which seed::

    name: light                 # defaults to the file name
    dimension: light            # the study column it belongs to (clean, camera, robot, language, light, ...)
    description: ...
    seed: 1000                  # per-episode seeds derive from (seed, episode index, stream, op index)
    level: 3                    # default level of every op below; a reference "light@5" overrides it
    resample: episode           # episode: one random field per episode | frame: a new one every frame
    pick: all                   # all: every op below | one: one op (name) drawn per episode (seeded)
    cameras:                    # per-camera targeting: a camera name or "all" → list of ops
      all: [{op: brightness}, {op: gamma, level: 2, resample: frame}]
      cam_high: [{op: viewpoint}]
    state: [{op: joint_noise}]  # both JointStates (the 6 arm joints)
    language: [{op: paraphrase}]  # /instruction

A *suite* file lists other profiles instead (``paper.yaml``: clean + one dimension at a time)::

    name: paper
    suite: [clean, camera, robot, language, light, background, noise]
    level: 3                    # level for entries given without "@L"
    episodes_per_entry: 1       # an episode with key k runs entry (k // episodes_per_entry) % len(suite);
                                # k = the episode's sim seed (EPISODE start event), else its index

References: ``"light"`` (file default level), ``"light@4"``, or a path to a YAML file.
Everything wrong is a :class:`~wam_common.config.ConfigError` naming the profile, key, op or level.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from wam_common.config import ConfigError, config_dir, load_yaml
from wam_common.topics import CAMERAS, OPTIONAL_CAMERAS

from . import ops as ops_mod

SUBDIR = "perturbations"
RESAMPLE = ("episode", "frame")
PICK = ("all", "one")
TARGET_KEYS = {"cameras": ("image", "stream"), "state": ("state",), "language": ("language",)}
_PROFILE_KEYS = {"name", "dimension", "description", "seed", "level", "resample", "pick", "cameras", "state",
                 "language"}
_SUITE_KEYS = {"name", "dimension", "description", "suite", "level", "episodes_per_entry", "seed"}
_ENTRY_KEYS = {"op", "level", "resample"}


@dataclass(frozen=True)
class OpEntry:
    op: str
    level: int
    resample: str = "episode"

    def as_dict(self) -> dict:
        return {"op": self.op, "level": self.level, "resample": self.resample}


@dataclass
class Profile:
    name: str
    ref: str
    dimension: str = ""
    description: str = ""
    seed: int = 0
    level: int | None = None
    pick: str = "all"
    cameras: dict[str, list[OpEntry]] = field(default_factory=dict)
    state: list[OpEntry] = field(default_factory=list)
    language: list[OpEntry] = field(default_factory=list)
    suite: list["Profile"] | None = None
    episodes_per_entry: int = 1

    @property
    def is_clean(self) -> bool:
        return self.suite is None and not self.state and not self.language and not any(self.cameras.values())

    def entry_for_episode(self, episode: int) -> "Profile":
        """The profile that runs in ``episode`` (itself, or the suite's entry for it)."""
        if self.suite is None:
            return self
        return self.suite[(max(0, int(episode)) // self.episodes_per_entry) % len(self.suite)]

    def camera_ops(self, cam: str) -> list[OpEntry]:
        return list(self.cameras.get("all", [])) + list(self.cameras.get(cam, []))

    def op_names(self) -> list[str]:
        names = [e.op for lst in self.cameras.values() for e in lst] + [e.op for e in self.state + self.language]
        return sorted(set(names))

    def only(self, op: str) -> "Profile":
        """A copy keeping only the entries of ``op`` (``pick: one``)."""
        return Profile(self.name, self.ref, self.dimension, self.description, self.seed, self.level, "all",
                       {k: [e for e in v if e.op == op] for k, v in self.cameras.items()},
                       [e for e in self.state if e.op == op], [e for e in self.language if e.op == op])

    def describe(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "ref": self.ref, "dimension": self.dimension, "seed": self.seed,
                             "level": self.level}
        if self.suite is not None:
            d["suite"] = [p.ref for p in self.suite]
            d["episodes_per_entry"] = self.episodes_per_entry
            return d
        d["pick"] = self.pick
        d["cameras"] = {k: [e.as_dict() for e in v] for k, v in self.cameras.items()}
        d["state"] = [e.as_dict() for e in self.state]
        d["language"] = [e.as_dict() for e in self.language]
        return d


def profile_dir() -> Path:
    return config_dir() / SUBDIR


def available() -> list[str]:
    d = profile_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def split_ref(ref: str) -> tuple[str, int | None]:
    ref = str(ref).strip()
    if not ref:
        raise ConfigError("perturbation profile: empty name")
    if "@" in ref:
        name, lv = ref.rsplit("@", 1)
        try:
            level = int(lv)
        except ValueError:
            raise ConfigError(f"perturbation profile '{ref}': level '{lv}' is not an integer 1..5") from None
        if level not in ops_mod.LEVELS:
            raise ConfigError(f"perturbation profile '{ref}': level {level} is not one of 1..5")
        return name, level
    return ref, None


def _path_for(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"perturbation profile '{name}': no such file")
        return p
    cand = profile_dir() / f"{name}.yaml"
    if not cand.is_file():
        known = ", ".join(available()) or "none"
        raise ConfigError(f"unknown perturbation profile '{name}' (known: {known})")
    return cand


def load_profile(ref: str, _depth: int = 0) -> Profile:
    """Load and validate a profile (or suite) by reference ``name[@level]`` or path."""
    name, level = split_ref(ref)
    path = _path_for(name)
    data = load_yaml(path)
    return parse_profile(data, ref=str(ref), default_name=path.stem, level_override=level, where=str(path),
                         _depth=_depth)


def _int(data: Mapping, key: str, default: int, where: str) -> int:
    val = data.get(key, default)
    if isinstance(val, bool) or not isinstance(val, int):
        raise ConfigError(f"{where}: key '{key}' must be an integer, got {val!r}")
    return val


def _choice(data: Mapping, key: str, default: str, allowed: tuple, where: str) -> str:
    val = data.get(key, default)
    if val not in allowed:
        raise ConfigError(f"{where}: key '{key}' is {val!r}, not one of {', '.join(allowed)}")
    return val


def parse_profile(data: Mapping, ref: str = "", default_name: str = "", level_override: int | None = None,
                  where: str = "profile", _depth: int = 0) -> Profile:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a profile must be a mapping")
    name = str(data.get("name", default_name) or default_name)
    where = f"perturbation profile '{name}' ({where})"
    if "suite" in data:
        return _parse_suite(data, ref or name, name, level_override, where, _depth)
    unknown = set(data) - _PROFILE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(_PROFILE_KEYS))})")
    seed = _int(data, "seed", 0, where)
    level = level_override
    if level is None and data.get("level") is not None:
        level = ops_mod.check_level(f"{name}.level", data.get("level"))
    resample = _choice(data, "resample", "episode", RESAMPLE, where)
    pick = _choice(data, "pick", "all", PICK, where)

    def entries(raw: Any, key: str) -> list[OpEntry]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: key '{key}' must be a list of {{op: NAME, level: 1..5}}")
        out = []
        for i, item in enumerate(raw):
            k = f"{key}[{i}]"
            if isinstance(item, str):
                item = {"op": item}
            if not isinstance(item, Mapping):
                raise ConfigError(f"{where}: key '{k}' must be a mapping with 'op'")
            bad = set(item) - _ENTRY_KEYS
            if bad:
                raise ConfigError(f"{where}: key '{k}.{sorted(bad)[0]}' is unknown (known: op, level, resample)")
            op = item.get("op")
            if not isinstance(op, str):
                raise ConfigError(f"{where}: key '{k}.op' must be an op name")
            spec = ops_mod.get_op(op)
            allowed = TARGET_KEYS[key.split(".")[0]]
            if spec.target not in allowed:
                raise ConfigError(f"{where}: key '{k}': op '{op}' is a {spec.target} op, not allowed under "
                                  f"'{key.split('.')[0]}' ({'/'.join(allowed)} ops only)")
            lv = level_override if level_override is not None else item.get("level", level)
            if lv is None:
                raise ConfigError(f"{where}: key '{k}.level' missing (and no profile 'level')")
            lv = ops_mod.check_level(op, lv)
            rs = _choice(item, "resample", resample, RESAMPLE, f"{where}: {k}")
            out.append(OpEntry(op, lv, rs))
        return out

    cams_raw = data.get("cameras") or {}
    if not isinstance(cams_raw, Mapping):
        raise ConfigError(f"{where}: key 'cameras' must be a mapping camera → list of ops")
    known_cams = ("all",) + tuple(CAMERAS) + tuple(OPTIONAL_CAMERAS)
    cameras = {}
    for cam, lst in cams_raw.items():
        if cam not in known_cams:
            raise ConfigError(f"{where}: key 'cameras.{cam}': unknown camera (known: {', '.join(known_cams)})")
        cameras[cam] = entries(lst, f"cameras.{cam}")
    return Profile(name=name, ref=ref or name, dimension=str(data.get("dimension", "")),
                   description=str(data.get("description", "")), seed=seed, level=level, pick=pick,
                   cameras=cameras, state=entries(data.get("state"), "state"),
                   language=entries(data.get("language"), "language"))


def _parse_suite(data, ref, name, level_override, where, depth) -> Profile:
    if depth > 0:
        raise ConfigError(f"{where}: a suite cannot contain another suite")
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(_SUITE_KEYS))})")
    items = data.get("suite")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: key 'suite' must be a non-empty list of profile names")
    level = level_override
    if level is None and data.get("level") is not None:
        level = ops_mod.check_level(f"{name}.level", data.get("level"))
    per = _int(data, "episodes_per_entry", 1, where)
    if per < 1:
        raise ConfigError(f"{where}: key 'episodes_per_entry' must be ≥ 1")
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"{where}: key 'suite[{i}]' must be a profile name")
        sub_ref = item if ("@" in item or level is None or item == "clean") else f"{item}@{level}"
        try:
            entries.append(load_profile(sub_ref, _depth=depth + 1))
        except ConfigError as exc:
            raise ConfigError(f"{where}: key 'suite[{i}]': {exc}") from None
    return Profile(name=name, ref=ref, dimension=str(data.get("dimension", "suite")),
                   description=str(data.get("description", "")), seed=_int(data, "seed", 0, where), level=level,
                   suite=entries, episodes_per_entry=per)
