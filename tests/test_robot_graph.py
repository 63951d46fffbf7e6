"""The launch files build exactly the graph description's nodes (without launch_ros).

The launch files are imported as plain modules (they import launch/launch_ros only inside
``generate_for``'s body); the default config each passes to ``generate_for`` is read from
its source with ``ast``; their ``ARGUMENTS`` defaults go through their ``to_overrides`` and
``wam_common.launch_description.graph_from_arguments`` — the very calls the launch file's
OpaqueFunction makes — and the resulting node list must equal ``load_graph``'s.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from wam_common.config import check_against
from wam_common.graph import EXECUTABLES, PACKAGE, load_graph
from wam_common.launch_description import graph_from_arguments

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"


def _launch_module(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _default_config(name: str) -> str:
    tree = ast.parse((LAUNCH / name).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "generate_for"]
    assert len(calls) == 1, f"{name}: expected one generate_for(...) call"
    arg = calls[0].args[0]
    assert isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    return arg.value


def _launch_graph(name: str, values: dict | None = None):
    mod = _launch_module(name)
    args = getattr(mod, "ARGUMENTS", {})
    vals = {k: d for k, (d, _) in args.items()}
    vals.update(values or {})
    extra = mod.to_overrides(vals) if hasattr(mod, "to_overrides") else {}
    return graph_from_arguments(_default_config(name), "", extra)


def _table(graph):
    return [(n.name, n.executable, n.parameters, n.remappings) for n in graph.nodes]


@pytest.mark.parametrize("launch_file,config", [("aloha.launch.py", "aloha"), ("aloha_sim.launch.py", "aloha_sim")])
def test_launch_nodes_equal_graph_description(launch_file, config):
    assert _default_config(launch_file) == config
    assert _table(_launch_graph(launch_file)) == _table(load_graph(config))
    for spec in _launch_graph(launch_file).nodes:
        kw = spec.launch_kwargs(False)
        assert (kw["package"], kw["executable"], kw["name"]) == (PACKAGE, spec.executable, spec.name)


def test_every_launch_file_is_covered():
    assert sorted(p.name for p in LAUNCH.glob("*.launch.py")) == ["aloha.launch.py", "aloha_sim.launch.py"]


def test_real_graph_is_dry_run_by_default_and_armed_by_flag():
    g = load_graph("aloha")
    assert [n.name for n in g.nodes] == ["realsense_cameras", "interbotix_adapter", "perturbation_node",
                                         "wam_policy_node", "recorder"]
    assert g.use_sim_time is False
    assert g.node("wam_policy_node").parameters["safety"]["dry_run"] is True
    assert g.node("wam_policy_node").parameters["lockstep"] is False
    assert g.node("perturbation_node").parameters == {"profile": "clean", "lockstep": False}
    armed = _launch_graph("aloha.launch.py", {"armed": "true"})
    assert armed.node("wam_policy_node").parameters["safety"]["dry_run"] is False
    assert _launch_graph("aloha.launch.py", {"armed": "no"}).node("wam_policy_node").parameters["safety"]["dry_run"] is True
    theirs = _launch_graph("aloha.launch.py", {"use_realsense_ros": "true"})
    assert "realsense_cameras" not in [n.name for n in theirs.nodes]
    assert len(theirs.nodes) == len(g.nodes) - 1
    noisy = _launch_graph("aloha.launch.py", {"profile": "noise"})
    assert noisy.node("perturbation_node").parameters["profile"] == "noise"


@pytest.mark.parametrize("values,error", [
    ({"profile": "nosuch"}, "unknown perturbation profile 'nosuch'"),
    ({"profile": "light@9"}, "level 9 is not one of 1..5"),
    ({"armed": "ture"}, "launch argument 'armed' must be true or false, got 'ture'"),
    ({"use_realsense_ros": "maybe"}, "launch argument 'use_realsense_ros' must be true or false"),
])
def test_bad_launch_arguments_are_config_errors(values, error):
    """What the launch file's OpaqueFunction raises: ros2 launch prints it as one line and exits 1
    (tests/test_ros2_launch.py runs the real one)."""
    from wam_common.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(error)):
        _launch_graph("aloha.launch.py", values)


def test_executables_match_setup_py():
    tree = ast.parse((ROOT / "setup.py").read_text())
    nodes = next(ast.literal_eval(n.value) for n in ast.walk(tree)
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "NODES")
    assert {k: v.split(":")[0] for k, v in nodes.items()} == EXECUTABLES


@pytest.mark.parametrize("module", ["robot_io.realsense_node", "robot_io.interbotix_adapter"])
def test_real_graph_parameters_fit_our_nodes_schemas(module):
    mod = importlib.import_module(module)
    spec = next(n for n in load_graph("aloha").nodes if n.module == module)
    check_against(mod.DEFAULTS, spec.parameters, f"config/aloha.yaml: {spec.name}")


def test_real_graph_parameters_fit_the_other_nodes_schemas():
    """Where the other nodes exist already, aloha.yaml may set only parameters they declare."""
    checked = 0
    for spec in load_graph("aloha").nodes:
        if spec.module.startswith("robot_io."):
            continue
        if importlib.util.find_spec(spec.module) is None:
            continue
        mod = importlib.import_module(spec.module)
        defaults = getattr(mod, "DEFAULTS", None)
        if not isinstance(defaults, dict):
            continue
        params = {k: v for k, v in spec.parameters.items() if k != "backend"}  # backend keys: per backend
        check_against(defaults, params, f"config/aloha.yaml: {spec.name}")
        checked += 1
    if checked == 0:
        pytest.skip("no other node module importable yet")
