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
        Latency:                 # inference latency in sim time (wam_policy_node/latency.py)
          values: {1: 0.05, 2: 0.1, 3: 0.2, 4: 0.4, 5: 0.8}     # level → value: "{value}" is substituted
          sim:   {wam_policy_node: {latency: {fixed_s: "{value}"}}}
      configurations:            # explicit extra ones (same keys, plus name/dimension/level/value)
        - {name: cam_high_fog, dimension: Noise, level: 3, sim: {...}}
      strategies:                # optional: cross every policy with these runtime settings
        sync: {strategy: sync, execute_steps: 20}                  # label → wam_policy_node runtime overrides
        rtc: {strategy: rtc}

A configuration's ``value`` is the number its level stands for (the latency in seconds; for a
Latency configuration naming a measured ``profile``, the profile's p50), the x axis of the
latency plot. ``strategies`` crosses each policy with runtime settings (``wam-policy eval
--strategy LABEL`` picks some): the table's rows become ``<policy>+<label>``.

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
#: dimensions of this stack beyond the study's (issue 21: inference latency in sim time)
EXTRA_DIMENSIONS = ("Latency",)
CLEAN = "Clean"


@dataclass
class Configuration:
    name: str
    dimension: str  # one of DIMENSIONS, or CLEAN
    level: int
    sim: dict = field(default_factory=dict)  # node → parameter overrides in simulation
    robot: dict | None = None  # node → overrides on hardware (None: not stream-applicable)
    operator: str = ""  # what a person sets up by hand on hardware
    value: float | None = None  # what the level stands for (Latency: seconds); Clean: 0

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
    strategies: dict = field(default_factory=dict)  # label → wam_policy_node runtime overrides

    def configuration(self, name: str) -> Configuration:
        for c in self.configurations:
            if c.name == name:
                return c
        raise KeyError(name)


def _subst(value: Any, level: int, number: float | None = None) -> Any:
    if isinstance(value, Mapping):
        return {k: _subst(v, level, number) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(v, level, number) for v in value]
    if isinstance(value, str):
        if value == "{level}":
            return level
        if value == "{value}" and number is not None:
            return number
        out = value.replace("{level}", str(level))
        return out.replace("{value}", f"{number:g}") if number is not None else out
    return value


def _profile_value(sim: dict) -> float | None:
    """A Latency configuration that names a measured profile: its p50 (s)."""
    name = ((sim.get("wam_policy_node") or {}).get("latency") or {}).get("profile")
    if not name:
        return None
    from wam_policy_node.latency import load_profile

    return load_profile(str(name)).p50_s


def _overrides(raw: Any, where: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise ConfigError(f"{where}: must map node name → parameter overrides")
    return copy.deepcopy(dict(raw))


def _dimension(name: str, where: str) -> str:
    if name not in DIMENSIONS + EXTRA_DIMENSIONS and name != CLEAN:
        raise ConfigError(f"{where}: unknown dimension '{name}' (known: "
                          f"{', '.join((CLEAN,) + DIMENSIONS + EXTRA_DIMENSIONS)})")
    return name


def load_suite(name_or_path: str) -> Suite:
    path = resolve_config(name_or_path, "suites")
    data = load_yaml(path)
    s = data.get("suite")
    if not isinstance(s, Mapping):
        raise ConfigError(f"{path}: missing mapping key 'suite'")
    known = {"name", "task", "episodes", "seed", "clean", "levels", "dimensions", "configurations", "description",
             "strategies"}
    bad = sorted(set(s) - known)
    if bad:
        raise ConfigError(f"{path}: unknown key 'suite.{bad[0]}' (known: {', '.join(sorted(known))})")
    for key, typ in (("episodes", int), ("seed", int)):
        if key in s and (not isinstance(s[key], typ) or isinstance(s[key], bool)):
            raise ConfigError(f"{path}: key 'suite.{key}' must be an integer")
    configs: list[Configuration] = []
    if s.get("clean", True):
        configs.append(Configuration("clean", CLEAN, 0, {}, {}, "", 0.0))
    levels = s.get("levels", [1, 2, 3, 4, 5])
    if not isinstance(levels, list) or not all(isinstance(v, int) and 1 <= v <= 5 for v in levels):
        raise ConfigError(f"{path}: key 'suite.levels' must be a list of integers 1..5")
    dims = s.get("dimensions") or {}
    if not isinstance(dims, Mapping):
        raise ConfigError(f"{path}: key 'suite.dimensions' must be a mapping")
    for dim, spec in dims.items():
        where = f"{path}: suite.dimensions.{dim}"
        _dimension(dim, where)
        if not isinstance(spec, Mapping) or set(spec) - {"sim", "robot", "operator", "values"}:
            raise ConfigError(f"{where}: expected keys sim, robot, operator, values")
        values = spec.get("values") or {}
        if not isinstance(values, Mapping) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            raise ConfigError(f"{where}.values: must map level → number")
        for lv in levels:
            robot = spec.get("robot")
            if values and lv not in values:
                raise ConfigError(f"{where}.values: no value for level {lv}")
            num = float(values[lv]) if values else None
            configs.append(Configuration(
                f"{dim.lower()}_{lv}", dim, lv,
                _subst(_overrides(spec.get("sim"), where + ".sim"), lv, num),
                _subst(_overrides(robot, where + ".robot"), lv, num) if robot is not None else None,
                _subst(str(spec.get("operator", "")), lv, num), num))
    raw_configs = s.get("configurations") or []
    if not isinstance(raw_configs, list):
        raise ConfigError(f"{path}: key 'suite.configurations' must be a list")
    for i, raw in enumerate(raw_configs):
        where = f"{path}: suite.configurations[{i}]"
        if not isinstance(raw, Mapping) or "name" not in raw or "dimension" not in raw:
            raise ConfigError(f"{where}: needs keys 'name' and 'dimension'")
        extra = set(raw) - {"name", "dimension", "level", "sim", "robot", "operator", "value"}
        if extra:
            raise ConfigError(f"{where}: unknown key '{sorted(extra)[0]}'")
        lv = raw.get("level", 0)
        if isinstance(lv, bool) or not isinstance(lv, int):
            raise ConfigError(f"{where}: key 'level' must be an integer, got {lv!r:.40}")
        robot = raw.get("robot")
        sim = _overrides(raw.get("sim"), where + ".sim")
        value = raw.get("value")
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ConfigError(f"{where}: key 'value' must be a number")
        if value is None and raw["dimension"] == "Latency":
            value = _profile_value(sim)
        configs.append(Configuration(str(raw["name"]), _dimension(str(raw["dimension"]), where),
                                     int(raw.get("level", 0)), sim,
                                     _overrides(robot, where + ".robot") if robot is not None else None,
                                     str(raw.get("operator", "")), None if value is None else float(value)))
    names = [c.name for c in configs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{path}: duplicate configuration name '{sorted(dup)[0]}'")
    if not configs:
        raise ConfigError(f"{path}: the suite has no configurations")
    strategies = s.get("strategies") or {}
    if not isinstance(strategies, Mapping) or not all(isinstance(v, Mapping) for v in strategies.values()):
        raise ConfigError(f"{path}: key 'suite.strategies' must map a label → runtime overrides")
    for label, ov in strategies.items():
        check_strategy(str(label), dict(ov), f"{path}: suite.strategies.{label}")
    return Suite(str(s.get("name", path.stem)), str(s.get("task", "transfer_cube")), int(s.get("episodes", 10)),
                 int(s.get("seed", 0)), configs, {str(k): dict(v) for k, v in strategies.items()})


def check_strategy(label: str, overrides: dict, where: str) -> None:
    """Runtime overrides of a strategy label: known keys, a known strategy (ConfigError naming the key)."""
    from wam_policy_node.runtime import DEFAULTS, STRATEGIES

    bad = sorted(set(overrides) - set(DEFAULTS))
    if bad:
        raise ConfigError(f"{where}: unknown runtime key '{bad[0]}' (known: {', '.join(DEFAULTS)})")
    if overrides.get("strategy", label) not in STRATEGIES:
        raise ConfigError(f"{where}: key 'strategy' must be one of {', '.join(STRATEGIES)}")


def strategy_overrides(suite: Suite, labels: list[str] | None) -> dict[str, dict]:
    """Label → runtime overrides to cross each policy with: the ``--strategy`` labels (the suite's, or a bare
    strategy name), else all the suite's; {} when neither (each policy keeps its own strategy)."""
    if not labels:
        return dict(suite.strategies)
    out = {}
    for label in labels:
        ov = suite.strategies.get(label, {"strategy": label})
        check_strategy(label, ov, f"--strategy {label}")
        out[label] = dict(ov)
    return out
