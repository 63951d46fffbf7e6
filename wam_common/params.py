"""ROS parameters ⇄ a node's nested ``PARAMS`` schema (:mod:`wam_common.schema`).

Parameters arrive flattened with dots (``safety.max_joint_velocity``) from a params file, a launch
file or ``-p``. :func:`declare_tree` rejects overrides the schema does not know, checks types, ranges
and allowed values (a :class:`ConfigError` names the bad key), declares every parameter with its
``ParameterDescriptor`` (description, type, range, allowed values, read-only unless ``dynamic``) and
returns the validated nested config.

At run time (``ros2 param set``) rclpy itself refuses read-only parameters, values of another type and
values out of range; an integer given for a double is taken as that double. A change of ``dynamic``
parameters is checked against the allowed values, then by the node's ``on_set(new_cfg, changed)``,
which raises ConfigError (or ValueError) to refuse it — the message is the reason ``ros2 param set``
prints — and may return a function that applies it. Once rclpy has stored the new values they are
written into the config dict :func:`declare_tree` returned (code that reads its values live needs
nothing more), then that function runs.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from .config import ConfigError, check_against, flatten, unflatten
from .schema import Param, check, defaults, find, leaves, lookup

_ROS_STANDARD = {"use_sim_time", "start_type_description_service"}
_STATIC = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
           float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}

#: ``on_set(new_cfg, changed names)`` → None, or a function that applies the change; raises to refuse
OnSet = Callable[[dict, set], "Callable[[], None] | None"]


def descriptor(name: str, p: Param) -> ParameterDescriptor:
    """The ``ParameterDescriptor`` of one parameter (a key below an open table gets the table's).
    Scalars are statically typed by their default; lists, tables and None defaults take any type."""
    d = ParameterDescriptor(name=name, description=p.description, read_only=not p.dynamic,
                            additional_constraints=p.constraints())
    static = _STATIC.get(type(p.default))
    if static is None:
        d.dynamic_typing = True
    else:
        d.type = static
    if p.range is not None:
        lo, hi, step = p.bounds
        if static == ParameterType.PARAMETER_INTEGER:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi) if math.isfinite(hi) else 2**63 - 1,
                                            step=int(step))]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=float(step))]
    return d


def _ros_value(val: Any) -> Any:
    if val is None:
        return ""
    return list(val) if isinstance(val, tuple) else val


def _standard(name: str) -> bool:
    return name in _ROS_STANDARD or name.startswith("qos_overrides.")


def declare_tree(node: Node, spec: Mapping, on_set: OnSet | None = None) -> dict:
    """Declare ``spec``'s parameters on ``node`` (overrides applied) and return the validated nested config;
    ``on_set`` checks and applies run-time changes of its dynamic parameters (see the module doc)."""
    where = f"node '{node.get_name()}'"
    overrides = {n: p.value for n, p in (getattr(node, "_parameter_overrides", {}) or {}).items() if not _standard(n)}
    for name in overrides:
        if find(spec, name) is None:
            raise ConfigError(f"{where}: unknown parameter '{name}'")
    cfg = check_against(defaults(spec), unflatten(overrides), where)
    check(spec, cfg, where)
    for name, p in leaves(spec):
        value = lookup(cfg, name)
        for full, val in (flatten(value, name + ".").items() if p.table else [(name, value)]):
            val = _ros_value(val)
            node.declare_parameter(full, val, descriptor(full, p), ignore_override=True)
            _store(cfg, full, val)
    if any(p.dynamic for _, p in leaves(spec)):
        _RunTime(node, spec, cfg, on_set)
    return cfg


def _store(cfg: dict, name: str, value: Any) -> None:
    *path, last = name.split(".")
    for part in path:
        cfg = cfg[part]
    cfg[last] = value


class _RunTime:
    """The set-parameter callbacks of one node: coerce, check (the schema, then the node), apply."""

    def __init__(self, node: Node, spec: Mapping, cfg: dict, on_set: OnSet | None):
        self.node, self.spec, self.cfg, self.on_set = node, spec, cfg, on_set
        self.pending: tuple[dict, Callable[[], None] | None] | None = None
        node.add_pre_set_parameters_callback(self.coerce)
        node.add_on_set_parameters_callback(self.check)
        node.add_post_set_parameters_callback(self.apply)

    def coerce(self, params: list[Parameter]) -> list[Parameter]:
        """An integer for a double parameter (``ros2 param set /n safety.max_joint_velocity 3``) is that double."""
        out = []
        for prm in params:
            p = find(self.spec, prm.name)
            if p is not None and isinstance(p.default, float) and prm.type_ == Parameter.Type.INTEGER:
                prm = Parameter(prm.name, Parameter.Type.DOUBLE, float(prm.value))
            out.append(prm)
        return out

    def check(self, params: list[Parameter]) -> SetParametersResult:
        changes = {prm.name: prm.value for prm in params if find(self.spec, prm.name) is not None}
        self.pending = None
        if not changes:
            return SetParametersResult(successful=True)
        new = copy.deepcopy(self.cfg)
        for name, value in changes.items():
            problem = find(self.spec, name).problem(value)
            if problem:
                return SetParametersResult(successful=False, reason=f"parameter '{name}' {problem}")
            _store(new, name, value)
        try:
            commit = self.on_set(new, set(changes)) if self.on_set else None
        except Exception as exc:  # noqa: BLE001 - a refused change is a reason, never a crashed node
            reason = str(exc) if isinstance(exc, (ConfigError, ValueError)) else f"{type(exc).__name__}: {exc}"
            self.node.get_logger().warning(f"parameters not set: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        self.pending = (changes, commit)
        return SetParametersResult(successful=True)

    def apply(self, params: list[Parameter]) -> None:
        pending, self.pending = self.pending, None
        if pending is None:
            return
        changes, commit = pending
        for name, value in changes.items():
            _store(self.cfg, name, value)
        try:
            if commit is not None:
                commit()
        except Exception as exc:  # noqa: BLE001 - the node keeps running on its previous settings
            self.node.get_logger().error(f"parameters stored but not applied: {type(exc).__name__}: {exc}")
            return
        self.node.get_logger().info("parameters set: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
