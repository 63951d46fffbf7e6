"""ros2 launch wam_policy aloha.launch.py [armed:=false] [use_realsense_ros:=false] [profile:=clean]

The real ALOHA graph from config/aloha.yaml: RealSense cameras (or your realsense2_camera),
the Interbotix arm adapter, perturbation_node (clean by default), wam_policy_node (dry run
unless armed:=true) and the recorder — the same description `wam-policy up aloha` starts.
"""
from wam_common.launch_description import generate_for

ARGUMENTS = {
    "armed": ("false", "true sends commands to the motors; false publishes to the dry-run shadow topic only"),
    "use_realsense_ros": ("false", "true: you run realsense2_camera yourself; our camera node is not started"),
    "profile": ("clean", "perturbation profile (config/perturbations/<profile>.yaml)"),
}


def flag(values, name: str) -> bool:
    """A true/false launch argument; anything else is an error (a typo never arms or disarms silently)."""
    from wam_common.config import ConfigError

    value = values[name].strip().lower()
    if value not in ("1", "true", "yes", "0", "false", "no"):
        raise ConfigError(f"launch argument '{name}' must be true or false, got '{values[name]}'")
    return value in ("1", "true", "yes")


def to_overrides(values):
    from perturbation_node.profiles import load_profile

    # the robot never runs unperturbed when a profile was asked for: a bad one stops the launch here,
    # before any node starts (and perturbation_node refuses it too)
    load_profile(values["profile"])
    out = {
        "wam_policy_node": {"safety": {"dry_run": not flag(values, "armed")}},
        "perturbation_node": {"profile": values["profile"]},
    }
    if flag(values, "use_realsense_ros"):
        out["realsense_cameras"] = {"enabled": False}
    return out


def generate_launch_description():
    return generate_for("aloha", ARGUMENTS, to_overrides)
