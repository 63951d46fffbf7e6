"""ament_python package ``wam_policy``: ``colcon build`` on a robot, ``pip install -e .`` elsewhere."""
import sys
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "wam_policy"

# Same table as wam_common.graph.EXECUTABLES (a test checks they agree).
NODES = {
    "sim_bridge": "sim_bridge.node:main",
    "perturbation_node": "perturbation_node.node:main",
    "wam_policy_node": "wam_policy_node.node:main",
    "recorder": "recorder.node:main",
    "realsense_cameras": "robot_io.realsense_node:main",
    "interbotix_adapter": "robot_io.interbotix_adapter:main",
}


def colcon_install() -> bool:
    """``setup.py install`` / ``develop`` as colcon's ament_python build runs it (pip's wheel and editable
    builds go through bdist_wheel / editable_wheel instead, and get the console script in the venv)."""
    return any(cmd in sys.argv[1:] for cmd in ("install", "develop"))


def config_files():
    out = {}
    for path in glob("config/**/*", recursive=True) + glob("checkpoints/**/*", recursive=True):
        if path.endswith((".yaml", ".xml", ".json", ".txt", ".safetensors")):
            folder = path.rsplit("/", 1)[0]
            out.setdefault(f"share/{PACKAGE}/{folder}", []).append(path)
    return sorted(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["wam_common*", "wam_policy_node*", "perturbation_node*", "sim_bridge*", "recorder*",
                                    "robot_io*", "wam_apps*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        *config_files(),
        # colcon: `wam-policy` on PATH after `source install/setup.bash` (README, docs/ROBOT.md)
        *([("bin", ["scripts/wam-policy"])] if colcon_install() else []),
    ],
    include_package_data=True,
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="wam_policy developers",
    description="VLA / world-action-model deployment and robustness study on ALOHA over ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in NODES.items()]
        + ["wam-policy = wam_apps.cli:main"],
    },
)
