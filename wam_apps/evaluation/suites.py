"""Evaluation suites: which configurations (clean + perturbations) to run, and how each is applied.

A suite file (``config/suites/<name>.yaml``)::

    suite:
      name: paper
      task: transfer_cube        # default task (``--task`` overrides)
      episodes: 50               # per configuration (``--episodes`` overrides)
      seed: 100000               # first seed; episode j of every configuration uses seed + j
      clean: true                # include the unperturbed configuration
      levels: [1, 2, 3, 4, 5]
      dimensions:                # one configuration per dimension × level; "{level}" is substituted
        Light:
          sim:   {sim_bridge: {physical: {light: "{level}"}}}         # node → parameter overrides
          robot: {perturbation_node: {profile: "light_{level}"}}       # stream-level on hardware
          operator: "dim or tint the room lights (level {level})"      # what a person sets by hand
      configurations:            # explicit extra ones (same keys, plus name/dimension/level)
        - {name: cam_high_fog, dimension: Noise, level: 3, sim: {...}}

``sim`` is what runs in simulation; ``robot`` what runs on a real robot (stream-level only: the
physical ones need a person, described by ``operator``). A configuration whose overrides touch
``sim_bridge`` is *physical*; one touching ``perturbation_node`` is *stream-level*.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from wam_common.config import ConfigError, load_yaml, resolve_config

#: the study's dimensions, in the order of its tables
DIMENSIONS = ("Camera", "Robot", "Language", "Light", "Background", "Noise", "Layout")
CLEAN = "Clean"


@dataclass
class Configuration:
    name: str
    dimension: str  # one of DIMENSIONS, or CLEAN
    level: int
    sim: dict = field(default_factory=dict)  # node → parameter overrides in simulation
    robot: dict | None = None  # node → overrides on hardware (None: not stream-applicable)
    operator: str = ""  # what a person sets up by hand on hardware

    @property
    def physical(self) -> bool:
        return "sim_bridge" in self.sim

    @property
    def stream(self) -> bool:
        return "perturbation_node" in self.sim

    def on_robot(self) -> bool:
        return self.dimension == CLEAN or self.robot is not None or bool(self.operator)


@dataclass
class Suite:
    name: str
    task: str
    episodes: int
    seed: int
    configurations: list[Configuration]

    def configuration(self, name: str) -> Configuration:
        for c in self.configurations:
            if c.name == name:
                return c
        raise KeyError(name)


def _subst(value: Any, level: int) -> Any:
    if isinstance(value, Mapping):
        return {k: _subst(v, level) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(v, level) for v in value]
    if isinstance(value, str):
        if value == "{level}":
            return level
        return value.replace("{level}", str(level))
    return value


def _overrides(raw: Any, where: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise ConfigError(f"{where}: must map node name → parameter overrides")
    return copy.deepcopy(dict(raw))


def _dimension(name: str, where: str) -> str:
    if name not in DIMENSIONS and name != CLEAN:
        raise ConfigError(f"{where}: unknown dimension '{name}' (known: {', '.join((CLEAN,) + DIMENSIONS)})")
    return name


def load_suite(name_or_path: str) -> Suite:
    path = resolve_config(name_or_path, "suites")
    data = load_yaml(path)
    s = data.get("suite")
    if not isinstance(s, Mapping):
        raise ConfigError(f"{path}: missing mapping key 'suite'")
    known = {"name", "task", "episodes", "seed", "clean", "levels", "dimensions", "configurations", "description"}
    bad = sorted(set(s) - known)
    if bad:
        raise ConfigError(f"{path}: unknown key 'suite.{bad[0]}' (known: {', '.join(sorted(known))})")
    for key, typ in (("episodes", int), ("seed", int)):
        if key in s and (not isinstance(s[key], typ) or isinstance(s[key], bool)):
            raise ConfigError(f"{path}: key 'suite.{key}' must be an integer")
    configs: list[Configuration] = []
    if s.get("clean", True):
        configs.append(Configuration("clean", CLEAN, 0, {}, {}, ""))
    levels = s.get("levels", [1, 2, 3, 4, 5])
    if not isinstance(levels, list) or not all(isinstance(v, int) and 1 <= v <= 5 for v in levels):
        raise ConfigError(f"{path}: key 'suite.levels' must be a list of integers 1..5")
    dims = s.get("dimensions") or {}
    if not isinstance(dims, Mapping):
        raise ConfigError(f"{path}: key 'suite.dimensions' must be a mapping")
    for dim, spec in dims.items():
        where = f"{path}: suite.dimensions.{dim}"
        _dimension(dim, where)
        if not isinstance(spec, Mapping) or set(spec) - {"sim", "robot", "operator"}:
            raise ConfigError(f"{where}: expected keys sim, robot, operator")
        for lv in levels:
            robot = spec.get("robot")
            configs.append(Configuration(
                f"{dim.lower()}_{lv}", dim, lv,
                _subst(_overrides(spec.get("sim"), where + ".sim"), lv),
                _subst(_overrides(robot, where + ".robot"), lv) if robot is not None else None,
                _subst(str(spec.get("operator", "")), lv)))
    raw_configs = s.get("configurations") or []
    if not isinstance(raw_configs, list):
        raise ConfigError(f"{path}: key 'suite.configurations' must be a list")
    for i, raw in enumerate(raw_configs):
        where = f"{path}: suite.configurations[{i}]"
        if not isinstance(raw, Mapping) or "name" not in raw or "dimension" not in raw:
            raise ConfigError(f"{where}: needs keys 'name' and 'dimension'")
        extra = set(raw) - {"name", "dimension", "level", "sim", "robot", "operator"}
        if extra:
            raise ConfigError(f"{where}: unknown key '{sorted(extra)[0]}'")
        lv = raw.get("level", 0)
        if isinstance(lv, bool) or not isinstance(lv, int):
            raise ConfigError(f"{where}: key 'level' must be an integer, got {lv!r:.40}")
        robot = raw.get("robot")
        configs.append(Configuration(str(raw["name"]), _dimension(str(raw["dimension"]), where),
                                     int(raw.get("level", 0)), _overrides(raw.get("sim"), where + ".sim"),
                                     _overrides(robot, where + ".robot") if robot is not None else None,
                                     str(raw.get("operator", ""))))
    names = [c.name for c in configs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{path}: duplicate configuration name '{sorted(dup)[0]}'")
    if not configs:
        raise ConfigError(f"{path}: the suite has no configurations")
    return Suite(str(s.get("name", path.stem)), str(s.get("task", "transfer_cube")), int(s.get("episodes", 10)),
                 int(s.get("seed", 0)), configs)
