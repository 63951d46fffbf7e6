"""The ALOHA topic table (Interbotix ALOHA + realsense2_camera names), shared by all nodes.

The real robot's table is ``config/robot_topics.yaml``; these constants are its defaults so
nodes run on embedded defaults. ``perturbed(topic)`` is where perturbation_node republishes.
"""
from __future__ import annotations

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
OPTIONAL_CAMERAS = ("cam_low",)
ARMS = ("left", "right")
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
JOINTS_PER_ARM = ARM_JOINTS + ("gripper",)
STATE_DIM = 14
DT = 0.02  # 50 Hz control

PERTURBED_PREFIX = "/perturbed"


def camera_topic(cam: str) -> str:
    return f"/{cam}/camera/color/image_rect_raw"


def camera_frame(cam: str) -> str:
    return f"{cam}_color_optical_frame"


def joint_state_topic(arm: str) -> str:
    return f"/follower_{arm}/joint_states"


def joint_names(arm: str) -> list[str]:
    """Interbotix joint names as published in /follower_{arm}/joint_states."""
    return list(JOINTS_PER_ARM)


#: ros2_control forward_command_controller path: one 14-dim Float64MultiArray,
#: [left 6 joints, left gripper (0 closed..1 open), right 6, right gripper]
COMMAND = "/forward_position_controller/commands"
SHADOW_COMMAND = "/wam_policy/dry_run/commands"  # dry_run publishes here only
INSTRUCTION = "/instruction"
CLOCK = "/clock"
EPISODE = "/sim/episode"  # std_msgs/String JSON: {"event": "start"|"end", "episode", "task", "seed", "success", ...}
PRIVILEGED_STATE = "/sim/privileged_state"  # std_msgs/String JSON, for scripted experts
ACTIVE_PERTURBATION = "/perturbation/active"  # std_msgs/String JSON, latched
DIAGNOSTICS = "/diagnostics"
POLICY_STATUS = "/wam_policy/status"  # std_msgs/String JSON per command step
ESTOP = "/wam_policy/estop"  # std_msgs/Bool, latched


def perturbed(topic: str) -> str:
    return PERTURBED_PREFIX + topic


def background_mask_topic(cam: str) -> str:
    """sensor_msgs/Image mono8, same size as the camera image, nonzero = background (sim publishes it);
    perturbation_node's ``background`` op replaces those pixels."""
    return f"/{cam}/camera/background_mask"
