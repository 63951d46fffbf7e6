"""The one graph description: which nodes run, with which parameters and remappings.

``config/<graph>.yaml`` says it; ``launch/*.launch.py`` (launch_ros, on a robot) and the
``wam-policy`` CLI (:mod:`wam_common.launcher`, no ros2cli needed) both build from
:func:`load_graph`, so ``ros2 launch`` and the CLI start the same graph.

Schema::

    graph:
      name: aloha_sim
      use_sim_time: true          # given to every node
      dds_profile: dds/fastdds.xml  # relative to config/, exported as FASTRTPS_DEFAULT_PROFILES_FILE
      nodes:
        - name: sim_bridge        # ROS node name
          executable: sim_bridge  # console script (ros2 run wam_policy <executable>)
          enabled: true
          parameters: {...}       # nested; flattened to dotted ROS parameters
          remappings: {/from: /to}
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import ConfigError, config_dir, deep_merge, load_yaml, resolve_config

PACKAGE = "wam_policy"

#: executable name → python module with ``main()``; setup.py's console_scripts are the same table.
EXECUTABLES: dict[str, str] = {
    "sim_bridge": "sim_bridge.node",
    "perturbation_node": "perturbation_node.node",
    "wam_policy_node": "wam_policy_node.node",
    "recorder": "recorder.node",
    "realsense_cameras": "robot_io.realsense_node",
    "interbotix_adapter": "robot_io.interbotix_adapter",
}


@dataclass
class NodeSpec:
    name: str
    executable: str
    parameters: dict = field(default_factory=dict)
    remappings: dict[str, str] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return EXECUTABLES[self.executable]

    def ros_parameters(self, use_sim_time: bool) -> dict:
        params = copy.deepcopy(self.parameters)
        params["use_sim_time"] = use_sim_time
        return params

    def launch_kwargs(self, use_sim_time: bool) -> dict:
        """Keyword arguments for ``launch_ros.actions.Node`` (the launch files pass them as-is)."""
        return {
            "package": PACKAGE,
            "executable": self.executable,
            "name": self.name,
            "parameters": [self.ros_parameters(use_sim_time)],
            "remappings": list(self.remappings.items()),
            "output": "screen",
            "emulate_tty": True,
        }


@dataclass
class Graph:
    name: str
    nodes: list[NodeSpec]
    use_sim_time: bool = False
    dds_profile: Path | None = None
    source: Path | None = None

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def env(self) -> dict[str, str]:
        """Environment every node of this graph gets (DDS profile, loopback-only discovery)."""
        env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        if self.dds_profile is not None:
            env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(self.dds_profile)
            env["RMW_FASTRTPS_USE_QOS_FROM_XML"] = "0"
        return env


def parse_set(items: list[str], option: str = "--set ") -> dict:
    """``['wam_policy_node.backend.type=lerobot', ...]`` → nested overrides (values parsed as YAML);
    ``option``: how the user wrote them, for the error message (``--set `` or ``set:=``)."""
    import yaml

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{option}'{item}': expected NODE.KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            val = yaml.safe_load(raw)
        except yaml.YAMLError:
            val = raw
        node = out
        parts = key.strip().split(".")
        if len(parts) < 2:
            raise ConfigError(f"{option}'{item}': expected NODE.KEY=VALUE")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = val
    return out


def load_graph(name_or_path: str | Path = "aloha_sim", overrides: Mapping[str, Any] | None = None) -> Graph:
    """Read a graph description; ``overrides`` maps node name → nested parameter overrides
    (``{"wam_policy_node": {"backend": {"type": "lerobot"}}, "recorder": {"enabled": False}}``)."""
    path = resolve_config(name_or_path)
    data = load_yaml(path)
    g = data.get("graph")
    if not isinstance(g, Mapping):
        raise ConfigError(f"{path}: missing mapping key 'graph'")
    nodes_raw = g.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise ConfigError(f"{path}: key 'graph.nodes' must be a non-empty list")
    overrides = dict(overrides or {})
    nodes: list[NodeSpec] = []
    seen = set()
    for i, raw in enumerate(nodes_raw):
        where = f"{path}: graph.nodes[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping")
        unknown = set(raw) - {"name", "executable", "enabled", "parameters", "remappings"}
        if unknown:
            raise ConfigError(f"{where}: unknown key '{sorted(unknown)[0]}'")
        name = raw.get("name")
        exe = raw.get("executable")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: key 'name' must be a non-empty string")
        if not isinstance(exe, str) or exe not in EXECUTABLES:
            raise ConfigError(f"{where}: key 'executable' is '{exe}', not one of {', '.join(EXECUTABLES)}")
        if name in seen:
            raise ConfigError(f"{where}: duplicate node name '{name}'")
        seen.add(name)
        params = raw.get("parameters") or {}
        remaps = raw.get("remappings") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}: key 'parameters' must be a mapping")
        if not isinstance(remaps, Mapping):
            raise ConfigError(f"{where}: key 'remappings' must be a mapping")
        ov = dict(overrides.pop(name, {}) or {})
        enabled = ov.pop("enabled", raw.get("enabled", True))
        if not enabled:
            continue
        nodes.append(NodeSpec(name, exe, deep_merge(params, ov), {str(k): str(v) for k, v in remaps.items()}))
    if overrides:
        bad = sorted(overrides)[0]
        raise ConfigError(f"{path}: override for unknown node '{bad}' (nodes: {', '.join(sorted(seen))})")
    profile = g.get("dds_profile")
    prof_path = None
    if profile and not isinstance(profile, str):
        raise ConfigError(f"{path}: key 'graph.dds_profile' must be a file path (a string), got {type(profile).__name__}")
    if profile:
        prof_path = (config_dir() / profile) if not Path(profile).is_absolute() else Path(profile)
        try:
            found = prof_path.is_file()
        except OSError as exc:  # a name too long for the file system, ...
            raise ConfigError(f"{path}: key 'graph.dds_profile': {exc.strerror}: {str(prof_path)[:200]}") from None
        if not found:
            raise ConfigError(f"{path}: key 'graph.dds_profile': no such file {prof_path}")
    return Graph(
        name=str(g.get("name", path.stem)),
        nodes=nodes,
        use_sim_time=bool(g.get("use_sim_time", False)),
        dds_profile=prof_path,
        source=path,
    )
