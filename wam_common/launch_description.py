"""Build a launch_ros ``LaunchDescription`` from the graph description.

The launch files in ``launch/`` are two lines that call :func:`generate_for`; the nodes,
parameters and remappings come from :func:`wam_common.graph.load_graph`, the same function
the ``wam-policy`` CLI uses. ``launch``/``launch_ros`` are imported here, only when a launch
file runs (they exist on robots with ROS 2 installed, not in the pip environment).

Launch arguments: ``config`` (graph name or path), ``set`` (``;``-separated
``NODE.KEY=VALUE`` overrides, as ``wam-policy up --set``) and any extra arguments the caller
maps onto overrides (e.g. ``armed`` → ``wam_policy_node.safety.dry_run``).
"""
from __future__ import annotations

from typing import Callable, Mapping

from .graph import Graph, load_graph, parse_set


def graph_from_arguments(config: str, sets: str, extra: Mapping[str, dict] | None = None) -> Graph:
    items = [s.strip() for s in sets.split(";") if s.strip()]
    overrides = parse_set(items, "set:=")
    for node, params in (extra or {}).items():
        from .config import deep_merge

        overrides[node] = deep_merge(overrides.get(node, {}), params)
    return load_graph(config, overrides)


def generate_for(default_config: str, arguments: Mapping[str, tuple[str, str]] | None = None,
                 to_overrides: Callable[[dict], dict] | None = None):
    """``arguments``: extra launch arguments name → (default, description);
    ``to_overrides(values)`` turns their values into per-node overrides."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    arguments = dict(arguments or {})
    decls = [
        DeclareLaunchArgument("config", default_value=default_config, description="graph description (config name or path)"),
        DeclareLaunchArgument("set", default_value="", description="';'-separated NODE.KEY=VALUE overrides"),
    ] + [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in arguments.items()]

    def _nodes(context, *args, **kwargs):  # noqa: ARG001
        values = {k: LaunchConfiguration(k).perform(context) for k in arguments}
        extra = to_overrides(values) if to_overrides else {}
        graph = graph_from_arguments(LaunchConfiguration("config").perform(context),
                                     LaunchConfiguration("set").perform(context), extra)
        actions = [SetEnvironmentVariable(k, v) for k, v in graph.env().items()]
        actions += [Node(**spec.launch_kwargs(graph.use_sim_time)) for spec in graph.nodes]
        return actions

    return LaunchDescription(decls + [OpaqueFunction(function=_nodes)])
