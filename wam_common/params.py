"""ROS parameters ⇄ nested config dicts.

A node owns a nested ``DEFAULTS`` dict (its schema and embedded defaults). Parameters arrive
flattened with dots (``safety.max_velocity``) from a params file, a launch file or ``-p``.
:func:`declare_tree` declares every default, rejects overrides the schema does not know, and
returns the validated nested dict — a :class:`ConfigError` names the bad key otherwise.
"""
from __future__ import annotations

from typing import Any, Mapping

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from .config import ConfigError, check_against, flatten, unflatten

_ROS_STANDARD = {"use_sim_time", "start_type_description_service"}


def _ros_value(val: Any) -> Any:
    if isinstance(val, tuple):
        return list(val)
    return val


def declare_tree(node: Node, defaults: Mapping) -> dict:
    flat_defaults = flatten(defaults)
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    for name in overrides:
        if name in _ROS_STANDARD or name.startswith("qos_overrides."):
            continue
        if name not in flat_defaults:
            # an empty-mapping default is an open table: accept anything below it
            if not any(name.startswith(k + ".") for k, v in _open_tables(defaults)):
                raise ConfigError(f"node '{node.get_name()}': unknown parameter '{name}'")
    values: dict[str, Any] = {}
    for name, default in flat_defaults.items():
        desc = ParameterDescriptor(dynamic_typing=True)
        param = node.declare_parameter(name, _ros_value(default) if default is not None else "", desc)
        values[name] = param.value
    for name, ov in overrides.items():
        if name not in flat_defaults and name not in _ROS_STANDARD and not name.startswith("qos_overrides."):
            param = node.declare_parameter(name, ov.value, ParameterDescriptor(dynamic_typing=True))
            values[name] = param.value
    given = unflatten(values)
    return check_against(defaults, given, f"node '{node.get_name()}'")


def _open_tables(tree: Mapping, prefix: str = ""):
    for key, val in tree.items():
        if isinstance(val, Mapping):
            if not val:
                yield prefix + key, val
            else:
                yield from _open_tables(val, prefix + key + ".")
