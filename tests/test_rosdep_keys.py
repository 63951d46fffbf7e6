"""package.xml's rosdep keys resolve, and every third-party import of the installed code has one.

No network: the rosdistro keys this package relies on are vendored below with the file and commit
of ros/rosdistro they were read from; every other key must be defined in the package's own rosdep
source (rosdep/wam_policy.yaml), whose pip pins must match requirements.txt / constraints.txt.
Imports are read from the source (ast) of the packages setup.py installs, so a new third-party
import without a key fails here instead of on the robot.
"""
from __future__ import annotations

import ast
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# what setup.py installs (find_packages include=...)
RUNTIME_PACKAGES = ("wam_common", "wam_policy_node", "perturbation_node", "sim_bridge", "robot_io", "recorder",
                    "wam_apps")
DEPEND_TAGS = ("depend", "build_depend", "build_export_depend", "exec_depend", "test_depend")

# Keys read in ros/rosdistro (they exist there; checked by reading the files, not by this test).
ROSDISTRO_KEYS = {
    "jazzy/distribution.yaml @ 0006cdad667d515a8328dae16964acbaf8fe1ad7": {
        "ament_index_python", "builtin_interfaces", "diagnostic_msgs", "launch", "launch_ros",
        "rcl_interfaces", "rclpy", "rmw_fastrtps_cpp", "rosbag2_storage_mcap", "rosgraph_msgs",
        "sensor_msgs", "std_msgs", "std_srvs", "trajectory_msgs",
    },
    "rosdep/python.yaml @ 000730dc5f916eb05b15d3f183bd1c17bf1b4722": {
        "python3-msgpack", "python3-numpy", "python3-opencv", "python3-pytest", "python3-requests",
        "python3-yaml",
    },
    "rosdep/base.yaml @ 8f8e55cd3a6f055e591c8911156d447c3fcc5595": {"libusb-1.0"},
}
KNOWN_ROSDISTRO = set().union(*ROSDISTRO_KEYS.values())

# Keys rosdep resolves from source packages in the workspace, never from rosdistro
# (interbotix_ros_core is not released into jazzy/distribution.yaml @ 0006cdad).
FROM_SOURCE = {"interbotix_xs_msgs"}

# Top-level import name -> rosdep key; None: optional, installed by hand (requirements-sapien.txt).
IMPORT_KEYS = {
    "ament_index_python": "ament_index_python",
    "builtin_interfaces": "builtin_interfaces",
    "diagnostic_msgs": "diagnostic_msgs",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "rcl_interfaces": "rcl_interfaces",
    "rclpy": "rclpy",
    "rosgraph_msgs": "rosgraph_msgs",
    "sensor_msgs": "sensor_msgs",
    "std_msgs": "std_msgs",
    "std_srvs": "std_srvs",
    "interbotix_xs_msgs": "interbotix_xs_msgs",
    "cv2": "python3-opencv",
    "msgpack": "python3-msgpack",
    "numpy": "python3-numpy",
    "requests": "python3-requests",
    "yaml": "python3-yaml",
    "diffusers": "wam_policy-diffusers-pip",
    "gym_aloha": "wam_policy-gym-aloha-pip",
    "json_numpy": "wam_policy-json-numpy-pip",
    "lerobot": "wam_policy-lerobot-pip",
    "lz4": "wam_policy-lz4-pip",
    "matplotlib": "wam_policy-matplotlib-pip",
    "mcap": "wam_policy-mcap-pip",
    "mujoco": "wam_policy-mujoco-pip",
    "pyrealsense2": "wam_policy-pyrealsense2-pip",
    "ray": "wam_policy-ray-pip",
    "rosbags": "wam_policy-rosbags-pip",
    "safetensors": "wam_policy-safetensors-pip",
    "scipy": "wam_policy-scipy-pip",
    "tokenizers": "wam_policy-tokenizers-pip",
    "torch": "wam_policy-torch-pip",
    "transformers": "wam_policy-transformers-pip",
    "websockets": "wam_policy-websockets-pip",
    "zstandard": "wam_policy-zstandard-pip",
    "sapien": None,
}

PIN = re.compile(r"^([A-Za-z0-9._\[\],-]+)==([A-Za-z0-9.+!-]+)$")
CONDITION = re.compile(r"^\$(\w+) == (\S+)$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _package_deps() -> list[tuple[str, str, str | None]]:
    """(tag, key, condition) for every dependency element of package.xml."""
    root = ET.parse(ROOT / "package.xml").getroot()
    return [(el.tag, el.text.strip(), el.get("condition")) for el in root if el.tag in DEPEND_TAGS]


def _condition_holds(condition: str | None, env: dict[str, str]) -> bool:
    """REP 149 condition of the only form package.xml uses: ``$VAR == value`` (unset VAR is '')."""
    if condition is None:
        return True
    match = CONDITION.match(condition)
    assert match, f"condition {condition!r} is not of the form '$VAR == value'"
    return env.get(match.group(1), "") == match.group(2)


def _own_rosdep() -> dict:
    return yaml.safe_load((ROOT / "rosdep" / "wam_policy.yaml").read_text())


def _pins() -> dict[str, str]:
    """name -> version: requirements.txt's direct pins over constraints.txt's full set."""
    pins = {}
    for name in ("constraints.txt", "requirements.txt"):
        for line in (ROOT / name).read_text().splitlines():
            match = PIN.match(line.split("#")[0].strip())
            if match:
                pins[_normalise(match.group(1).split("[")[0])] = match.group(2)
    return pins


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Third-party top-level import name -> [(file:line, imported at module level)]."""
    own = set(RUNTIME_PACKAGES)
    found: dict[str, list[tuple[str, bool]]] = {}

    class Visitor(ast.NodeVisitor):
        def __init__(self, where: str):
            self.where, self.depth = where, 0

        def _scope(self, node):
            self.depth += 1
            self.generic_visit(node)
            self.depth -= 1

        visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scope

        def _add(self, name: str, node):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in own and top != "__future__":
                found.setdefault(top, []).append((f"{self.where}:{node.lineno}", self.depth == 0))

        def visit_Import(self, node):
            for alias in node.names:
                self._add(alias.name, node)

        def visit_ImportFrom(self, node):
            if node.level == 0 and node.module:
                self._add(node.module, node)

    files = [f for pkg in RUNTIME_PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))]
    files += sorted((ROOT / "launch").glob("*.launch.py"))
    for path in files:
        Visitor(str(path.relative_to(ROOT))).visit(ast.parse(path.read_text(), str(path)))
    return found


def test_every_package_xml_key_resolves():
    own = _own_rosdep()
    deps = _package_deps()
    assert deps, "package.xml lists no dependencies"
    unresolved = []
    for tag, key, condition in deps:
        if key in FROM_SOURCE:
            # Only wanted when the source workspace is there, so it must be conditional and off by
            # default (a plain `rosdep install` would otherwise fail on it).
            assert condition is not None and not _condition_holds(condition, {}), (tag, key)
            assert _condition_holds(condition, {"WAM_POLICY_INTERBOTIX": "1"}), (tag, key)
        elif key not in KNOWN_ROSDISTRO and key not in own:
            unresolved.append(f"<{tag}>{key}")
    assert not unresolved, f"in neither rosdistro (vendored here) nor rosdep/wam_policy.yaml: {unresolved}"


def test_own_rosdep_source_is_well_formed_and_pinned_like_requirements():
    own = _own_rosdep()
    used = {key for _, key, _ in _package_deps()}
    pins = _pins()
    assert {"torch", "lerobot", "numpy"} <= pins.keys(), "pins not read from requirements/constraints"
    assert own.keys() <= used, f"keys defined but not used by package.xml: {sorted(own.keys() - used)}"
    clash = own.keys() & (KNOWN_ROSDISTRO | FROM_SOURCE)
    assert not clash, f"keys that would shadow rosdistro's: {sorted(clash)}"
    for key, rule in own.items():
        assert key.startswith("wam_policy-"), key
        assert set(rule) == {"debian", "ubuntu"}, (key, sorted(rule))  # Jazzy's platforms
        assert rule["debian"] == rule["ubuntu"], key
        spec = rule["ubuntu"]
        if key.endswith("-pip"):
            packages = spec["pip"]["packages"]
            assert packages, key
            for requirement in packages:
                match = PIN.match(requirement)
                assert match, f"{key}: {requirement!r} is not pinned as name==version"
                name, version = _normalise(match.group(1)), match.group(2)
                assert pins.get(name) == version, (
                    f"{key}: {requirement} but requirements/constraints pin {name}=={pins.get(name)}")
        else:
            assert isinstance(spec, list) and spec, (key, spec)  # apt package names


def test_every_third_party_import_has_a_key():
    imports = _imports()
    assert {"rclpy", "numpy", "lerobot"} <= imports.keys(), sorted(imports)  # the scan sees the code
    deps = {key for _, key, _ in _package_deps()}
    missing = {name: sites[0][0] for name, sites in imports.items() if name not in IMPORT_KEYS}
    assert not missing, f"third-party imports with no entry in IMPORT_KEYS (add a rosdep key): {missing}"
    for name, sites in imports.items():
        key = IMPORT_KEYS[name]
        if key is None or key in FROM_SOURCE:
            # Optional / conditional: importing the package must not need it.
            eager = [where for where, module_level in sites if module_level]
            assert not eager, f"{name} is optional but imported at module level: {eager}"
        if key is not None:
            assert key in deps, f"{name} ({sites[0][0]}) maps to {key}, which package.xml does not list"
    stale = sorted(set(IMPORT_KEYS) - imports.keys())
    assert not stale, f"IMPORT_KEYS entries no runtime module imports any more: {stale}"


@pytest.mark.parametrize("env, expected", [({}, False), ({"WAM_POLICY_INTERBOTIX": "1"}, True),
                                           ({"WAM_POLICY_INTERBOTIX": "0"}, False)])
def test_condition_evaluation(env, expected):
    assert _condition_holds("$WAM_POLICY_INTERBOTIX == 1", env) is expected
    assert _condition_holds(None, env) is True
    with pytest.raises(AssertionError):
        _condition_holds("$A == 1 and $B == 2", os.environ)
