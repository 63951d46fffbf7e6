"""ALOHA conventions shared by the sim, the policy node and the hardware adapters.

The 14-dim state/action is ``[left 6 joints, left gripper, right 6 joints, right gripper]``
with joints in radians and grippers normalised 0 (closed) … 1 (open), exactly as ACT,
LeRobot's ``aloha`` datasets, gym-aloha and openpi use it. Interbotix ``JointState`` messages
carry the gripper as a joint angle (``gripper``) and the fingers as positions in metres
(``left_finger``, ``right_finger``); the normalised gripper is computed from ``left_finger``
with the puppet-gripper constants (ALOHA ``constants.py``).
"""
from __future__ import annotations

import numpy as np

from .topics import ARM_JOINTS

# Puppet (follower) gripper constants, from ALOHA / gym-aloha constants.py
PUPPET_GRIPPER_POSITION_OPEN = 0.05800
PUPPET_GRIPPER_POSITION_CLOSE = 0.01844
PUPPET_GRIPPER_JOINT_OPEN = 1.4910
PUPPET_GRIPPER_JOINT_CLOSE = -0.6213

#: names in /follower_{arm}/joint_states, in this order
JOINT_STATE_NAMES = list(ARM_JOINTS) + ["gripper", "left_finger", "right_finger"]

#: vx300s joint limits (rad) for the 6 arm joints, from the Interbotix vx300s URDF
ARM_LOWER = np.array([-3.14158, -1.85005, -1.76278, -3.14158, -1.86750, -3.14158])
ARM_UPPER = np.array([3.14158, 1.25664, 1.60570, 3.14158, 2.23402, 3.14158])


def gripper_position_normalize(x):
    return (x - PUPPET_GRIPPER_POSITION_CLOSE) / (PUPPET_GRIPPER_POSITION_OPEN - PUPPET_GRIPPER_POSITION_CLOSE)


def gripper_position_unnormalize(x):
    return x * (PUPPET_GRIPPER_POSITION_OPEN - PUPPET_GRIPPER_POSITION_CLOSE) + PUPPET_GRIPPER_POSITION_CLOSE


def gripper_joint_normalize(x):
    return (x - PUPPET_GRIPPER_JOINT_CLOSE) / (PUPPET_GRIPPER_JOINT_OPEN - PUPPET_GRIPPER_JOINT_CLOSE)


def gripper_joint_unnormalize(x):
    return x * (PUPPET_GRIPPER_JOINT_OPEN - PUPPET_GRIPPER_JOINT_CLOSE) + PUPPET_GRIPPER_JOINT_CLOSE


def arm_state_from_joint_state(names, positions) -> np.ndarray:
    """7-dim [6 joints, normalised gripper] from one arm's JointState (names may be in any order).

    Raises ValueError naming the missing joint."""
    names = list(names)
    if len(positions) < len(names):
        raise ValueError(f"JointState has {len(names)} names but {len(positions)} positions")
    idx = {n: i for i, n in enumerate(names)}

    def pos(name: str) -> float:  # a non-finite position passes: the controller holds on it (BAD_STATE)
        return float(positions[idx[name]])

    out = np.empty(7)
    for j, name in enumerate(ARM_JOINTS):
        if name not in idx:
            raise ValueError(f"joint '{name}' missing from JointState (have {names[:16]})")
        out[j] = pos(name)
    if "left_finger" in idx:
        out[6] = gripper_position_normalize(pos("left_finger"))
    elif "gripper" in idx:
        out[6] = gripper_joint_normalize(pos("gripper"))
    else:
        raise ValueError(f"neither 'left_finger' nor 'gripper' in JointState (have {names[:16]})")
    return out


def joint_state_positions(arm7: np.ndarray) -> list[float]:
    """Positions for JOINT_STATE_NAMES from a 7-dim arm state (inverse of arm_state_from_joint_state)."""
    finger = float(gripper_position_unnormalize(arm7[6]))
    return [float(v) for v in arm7[:6]] + [float(gripper_joint_unnormalize(arm7[6])), finger, -finger]


def split14(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(v)
    return v[..., :7], v[..., 7:14]


def pair_arm_states(pending: dict, arm: str, joint_state) -> tuple[int, np.ndarray] | None:
    """Collect one arm's ``JointState``; once both arms of the same header stamp are in, return
    ``(stamp_ns, 14-dim state)`` and forget that stamp. ``pending`` is the caller's dict (stamp →
    arm → 7-dim). Raises ValueError (as :func:`arm_state_from_joint_state`) for a malformed message."""
    from .topics import ARMS

    arm7 = arm_state_from_joint_state(list(joint_state.name), list(joint_state.position))
    stamp = joint_state.header.stamp.sec * 1_000_000_000 + joint_state.header.stamp.nanosec
    got = pending.setdefault(stamp, {})
    got[arm] = arm7
    if len(got) < len(ARMS):
        return None
    del pending[stamp]
    return stamp, np.concatenate([got[a] for a in ARMS])


# ---------------------------------------------------------------- COMMAND layout
#: ``layout.dim[0].label`` of a COMMAND (std_msgs/Float64MultiArray, one dimension of 14 joints).
#: In lockstep the policy node appends ``@<stamp ns>`` — the joint-state stamp the command answers —
#: so the sim can drop a stale answer (a re-answer to a step it resent, arriving after it moved on)
#: instead of applying it to the next step. Consumers that ignore the layout see a plain 14-vector.
COMMAND_LABEL = "aloha_joints"


def command_label(answers_ns: int | None = None) -> str:
    return COMMAND_LABEL if answers_ns is None else f"{COMMAND_LABEL}@{int(answers_ns)}"


def command_answers(layout) -> int | None:
    """The observation stamp a COMMAND answers (from its ``layout``), or None when unlabelled."""
    try:
        label = layout.dim[0].label
    except (AttributeError, IndexError, TypeError):
        return None
    head, sep, tail = str(label).partition("@")
    if not sep or head != COMMAND_LABEL:
        return None
    try:
        return int(tail)
    except ValueError:
        return None
