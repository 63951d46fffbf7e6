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


def to_overrides(values):
    armed = values["armed"].strip().lower() in ("1", "true", "yes")
    out = {
        "wam_policy_node": {"safety": {"dry_run": not armed}},
        "perturbation_node": {"profile": values["profile"]},
    }
    if values["use_realsense_ros"].strip().lower() in ("1", "true", "yes"):
        out["realsense_cameras"] = {"enabled": False}
    return out


def generate_launch_description():
    return generate_for("aloha", ARGUMENTS, to_overrides)
