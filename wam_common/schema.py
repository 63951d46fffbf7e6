"""A node's interface as data: its parameters (:class:`Param`) and its topics and services.

Each node module (and each pure core that owns a block of a node's parameters: the policy's
observation, runtime, safety and backends) writes its parameters once, as a nested mapping of
:class:`Param` named ``PARAMS``: the default, the description, the range or the allowed values and
whether a change at run time takes effect. The plain ``DEFAULTS`` that configs merge onto are
derived from it (:func:`defaults`), :func:`wam_common.params.declare_tree` declares a ROS parameter
with a ``ParameterDescriptor`` for each, and ``wam-policy nodes-doc`` prints them into
docs/NODES.md. :class:`Topic` and :class:`Service` describe what a node creates (each node module's
``endpoints(cfg)``). Pure Python: no ROS.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .config import ConfigError


@dataclass(frozen=True)
class Param:
    """One parameter. ``range``: ``(lo, hi)`` or ``(lo, hi, step)``, inclusive; ``hi`` None = no upper
    bound. ``choices``: the allowed strings (for a list: of each item). ``dynamic``: a change at run time
    (``ros2 param set``) takes effect; otherwise the parameter is read-only once the node runs. ``kind``: the
    type's name where the default cannot tell it (an empty list, None). A mapping default is an open table:
    any key below it is accepted (``physical.light``)."""

    default: Any
    description: str
    range: tuple | None = None
    choices: tuple[str, ...] = ()
    dynamic: bool = False
    kind: str = ""

    @property
    def table(self) -> bool:
        return isinstance(self.default, Mapping)

    @property
    def type_name(self) -> str:
        """The ROS parameter type of the value (``kind``, else from the default)."""
        d = self.default
        if self.kind:
            return self.kind
        if self.table:
            return "table"
        if isinstance(d, (list, tuple)):
            item = {type(v) for v in d}
            return f"{_TYPE_NAMES[item.pop()]}[]" if len(item) == 1 and type(d[0]) in _TYPE_NAMES else "list"
        return _TYPE_NAMES.get(type(d), "any")

    @property
    def bounds(self) -> tuple[float, float, float] | None:
        """``(lo, hi, step)`` of the range (``hi`` inf when unbounded), or None."""
        if self.range is None:
            return None
        lo, hi, *step = self.range
        return lo, math.inf if hi is None else hi, step[0] if step else 0

    def constraints(self) -> str:
        """The allowed values in words (``additional_constraints``), "" when any value of the type is."""
        if not self.choices:
            return ""
        return f"{'each item ' if isinstance(self.default, (list, tuple)) else ''}one of: {self._choices()}"

    def _choices(self) -> str:
        return ", ".join(repr(c) if c == "" else c for c in self.choices)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (range, choices), or None."""
        if self.range is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi, _ = self.bounds
            if not lo <= value <= hi:
                return f"must be >= {lo}, got {value}" if math.isinf(hi) else f"must be within {lo}..{hi}, got {value}"
        if self.choices:
            items = value if isinstance(value, (list, tuple)) else [value]
            bad = [v for v in items if v not in self.choices]
            if bad:
                return f"must be one of {self._choices()}, got {bad[0]!r}"
        return None


_TYPE_NAMES = {bool: "bool", int: "integer", float: "double", str: "string"}


def defaults(spec: Mapping) -> dict:
    """The plain nested defaults of a ``PARAMS`` mapping (what a config is merged onto)."""
    return {k: copy.deepcopy(v.default) if isinstance(v, Param) else defaults(v) for k, v in spec.items()}


def leaves(spec: Mapping, prefix: str = "") -> Iterator[tuple[str, Param]]:
    """``(dotted name, Param)`` of every parameter (an open table under its own name)."""
    for key, val in spec.items():
        if isinstance(val, Param):
            yield prefix + key, val
        else:
            yield from leaves(val, f"{prefix}{key}.")


def find(spec: Mapping, name: str) -> Param | None:
    """The :class:`Param` that governs the dotted ``name``: its own, or that of the open table it is in."""
    node: Any = spec
    for part in name.split("."):
        if isinstance(node, Param):
            return node if node.table else None
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Param) else None


def lookup(cfg: Mapping, name: str) -> Any:
    for part in name.split("."):
        cfg = cfg[part]
    return cfg


def check(spec: Mapping, cfg: Mapping, where: str) -> None:
    """Ranges and allowed values of a (type-checked) config; a ConfigError names the first bad key."""
    for name, p in leaves(spec):
        problem = None if p.table else p.problem(lookup(cfg, name))
        if problem:
            raise ConfigError(f"{where}: key '{name}' {problem}")


@dataclass(frozen=True)
class Topic:
    """A topic a node publishes or subscribes to. ``msg``: the message class (or its type name); ``qos``: the
    rclpy ``QoSProfile`` it uses, or a depth (rclpy's default profile of that depth), or None: adapted to
    the publishers it discovers."""

    name: str
    msg: type | str
    direction: str  # "publishes" | "subscribes"
    qos: Any
    description: str

    @property
    def type(self) -> str:
        return self.msg if isinstance(self.msg, str) else interface_type(self.msg)


@dataclass(frozen=True)
class Service:
    """A service a node serves; ``name`` may be node-relative (``~/estop``)."""

    name: str
    srv: type
    description: str

    @property
    def type(self) -> str:
        return interface_type(self.srv)


def publishes(name: str, msg: type | str, qos: Any, description: str) -> Topic:
    return Topic(name, msg, "publishes", qos, description)


def subscribes(name: str, msg: type | str, qos: Any, description: str) -> Topic:
    return Topic(name, msg, "subscribes", qos, description)


def interface_type(cls: type) -> str:
    """``sensor_msgs.msg.JointState`` → ``"sensor_msgs/msg/JointState"`` (the name ROS tools print)."""
    pkg, kind = cls.__module__.split(".")[:2]
    return f"{pkg}/{kind}/{cls.__name__}"
