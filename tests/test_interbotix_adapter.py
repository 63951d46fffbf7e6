"""COMMAND → Interbotix follower arm commands (pure conversion), and the node's clear refusal
where interbotix_xs_msgs is not installed (as on this machine: a real process, exit 2)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from robot_io.interbotix_adapter import MISSING_MSGS, CommandError, to_arm_commands
from wam_common import aloha


def _cmd(left=None, right=None):
    left = np.array([0.1, -0.5, 0.6, 0.05, -0.2, 0.3, 1.0]) if left is None else np.asarray(left, float)
    right = np.array([-0.1, -0.4, 0.7, -0.05, 0.2, -0.3, 0.0]) if right is None else np.asarray(right, float)
    return np.concatenate([left, right])


def test_split_order_and_gripper_unnormalised():
    cmd = _cmd()
    left, right = to_arm_commands(cmd)
    assert left.side == "left" and right.side == "right"
    assert left.joints == tuple(cmd[:6]) and right.joints == tuple(cmd[7:13])
    assert left.gripper == pytest.approx(aloha.PUPPET_GRIPPER_JOINT_OPEN)  # 1 = open
    assert right.gripper == pytest.approx(aloha.PUPPET_GRIPPER_JOINT_CLOSE)  # 0 = closed
    half = to_arm_commands(_cmd(left=[0, 0, 0, 0, 0, 0, 0.5]))[0].gripper
    assert half == pytest.approx((aloha.PUPPET_GRIPPER_JOINT_OPEN + aloha.PUPPET_GRIPPER_JOINT_CLOSE) / 2)
    assert aloha.gripper_joint_normalize(half) == pytest.approx(0.5)  # round trip


def test_one_arm_only():
    (only,) = to_arm_commands(_cmd(), arms=["right"])
    assert only.side == "right" and only.joints == tuple(_cmd()[7:13])


def test_small_excursions_clipped_large_rejected():
    over = _cmd(left=[0, aloha.ARM_UPPER[1] + 0.1, 0, 0, 0, 0, 1.05])
    left = to_arm_commands(over)[0]
    assert left.joints[1] == pytest.approx(aloha.ARM_UPPER[1])
    assert left.gripper == pytest.approx(aloha.PUPPET_GRIPPER_JOINT_OPEN)
    with pytest.raises(CommandError, match=r"left shoulder = .* beyond its limit"):
        to_arm_commands(_cmd(left=[0, aloha.ARM_UPPER[1] + 0.5, 0, 0, 0, 0, 1]))
    with pytest.raises(CommandError, match=r"right gripper = 1.500"):
        to_arm_commands(_cmd(right=[0, 0, 0, 0, 0, 0, 1.5]))


@pytest.mark.parametrize("bad,match", [
    (np.zeros(13), "13 values, expected 14"),
    (np.zeros(0), "0 values"),
    (np.r_[np.zeros(13), np.nan], r"non-finite values at indices \[13\]"),
    (np.r_[np.inf, np.zeros(13)], r"indices \[0\]"),
])
def test_bad_commands_rejected(bad, match):
    with pytest.raises(CommandError, match=match):
        to_arm_commands(bad)


def test_unknown_arm():
    with pytest.raises(CommandError, match="unknown arm 'middle'"):
        to_arm_commands(_cmd(), arms=["middle"])


@pytest.mark.skipif(importlib.util.find_spec("interbotix_xs_msgs") is not None,
                    reason="interbotix_xs_msgs installed: the node would start")
def test_node_says_what_is_missing(domain_id):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    res = subprocess.run([sys.executable, "-m", "robot_io.interbotix_adapter"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "interbotix_xs_msgs is not importable" in res.stderr
    assert MISSING_MSGS in res.stderr
