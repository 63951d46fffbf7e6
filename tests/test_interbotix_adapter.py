"""COMMAND → Interbotix follower arm commands (pure conversion), and the node's clear refusal
where interbotix_xs_msgs is not installed (as on this machine: a real process, exit 2)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from robot_io.interbotix_adapter import MISSING_MSGS, ArmCommand, CommandError, check_deviation, to_arm_commands
from wam_common import aloha


def _cmd(left=None, right=None):
    left = np.array([0.1, -0.5, 0.6, 0.05, -0.2, 0.3, 1.0]) if left is None else np.asarray(left, float)
    right = np.array([-0.1, -0.4, 0.7, -0.05, 0.2, -0.3, 0.0]) if right is None else np.asarray(right, float)
    return np.concatenate([left, right])


@pytest.mark.unit
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


@pytest.mark.unit
def test_one_arm_only():
    (only,) = to_arm_commands(_cmd(), arms=["right"])
    assert only.side == "right" and only.joints == tuple(_cmd()[7:13])


@pytest.mark.unit
def test_small_excursions_clipped_large_rejected():
    over = _cmd(left=[0, aloha.ARM_UPPER[1] + 0.1, 0, 0, 0, 0, 1.05])
    left = to_arm_commands(over)[0]
    assert left.joints[1] == pytest.approx(aloha.ARM_UPPER[1])
    assert left.gripper == pytest.approx(aloha.PUPPET_GRIPPER_JOINT_OPEN)
    with pytest.raises(CommandError, match=r"left shoulder = .* beyond its limit"):
        to_arm_commands(_cmd(left=[0, aloha.ARM_UPPER[1] + 0.5, 0, 0, 0, 0, 1]))
    with pytest.raises(CommandError, match=r"right gripper = 1.500"):
        to_arm_commands(_cmd(right=[0, 0, 0, 0, 0, 0, 1.5]))


@pytest.mark.unit
@pytest.mark.parametrize("bad,match", [
    (np.zeros(13), "13 values, expected 14"),
    (np.zeros(0), "0 values"),
    (np.r_[np.zeros(13), np.nan], r"non-finite values at indices \[13\]"),
    (np.r_[np.inf, np.zeros(13)], r"indices \[0\]"),
])
def test_bad_commands_rejected(bad, match):
    with pytest.raises(CommandError, match=match):
        to_arm_commands(bad)


@pytest.mark.unit
def test_unknown_arm():
    with pytest.raises(CommandError, match="unknown arm 'middle'"):
        to_arm_commands(_cmd(), arms=["middle"])


@pytest.mark.ros
@pytest.mark.skipif(importlib.util.find_spec("interbotix_xs_msgs") is not None,
                    reason="interbotix_xs_msgs installed: the node would start")
def test_node_says_what_is_missing(domain_id):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    res = subprocess.run([sys.executable, "-m", "robot_io.interbotix_adapter"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "interbotix_xs_msgs is not importable" in res.stderr
    assert MISSING_MSGS in res.stderr


@pytest.mark.ros
def test_node_forwards_drops_bad_and_obeys_estop(probe, domain_id, tmp_path):
    """The node over DDS with the standard-message output (the Interbotix output differs only in
    the message classes, which cannot be installed here)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Bool, Float64MultiArray

    from rosutil import wait_for
    from wam_common import qos, topics
    from wam_common.graph import Graph, NodeSpec
    from wam_common.launcher import GraphRunner

    out = {s: f"/follower_{s}/forward_position_controller/commands" for s in topics.ARMS}
    for t in out.values():
        probe.listen(t, Float64MultiArray)
    probe.listen(topics.DIAGNOSTICS, DiagnosticArray)
    cmd = probe.node.create_publisher(Float64MultiArray, topics.COMMAND, qos.COMMAND)
    estop = probe.node.create_publisher(Bool, topics.ESTOP, qos.LATCHED)

    def diag(key):
        arrs = probe.decoded(topics.DIAGNOSTICS, DiagnosticArray)
        for st in (s for a in reversed(arrs) for s in a.status if s.name == "interbotix_adapter: arms"):
            return {kv.key: kv.value for kv in st.values}[key]
        return None

    def diag_estop():
        return diag("estop")

    def send(v):
        cmd.publish(Float64MultiArray(data=[float(x) for x in v]))

    g = Graph("arms", [NodeSpec("interbotix_adapter", "interbotix_adapter",
                                {"output": "float64", "diagnostics_period_s": 0.1, "max_deviation_rad": 0.0})])
    with GraphRunner(g, domain_id=domain_id, log_dir=tmp_path) as runner:
        assert wait_for(lambda: cmd.get_subscription_count() > 0 and all(
            probe.node.count_publishers(t) for t in out.values()), 30), runner.log("interbotix_adapter")
        good = _cmd()
        send(good)
        assert wait_for(lambda: all(probe.count(t) == 1 for t in out.values()), 10), runner.log("interbotix_adapter")
        left = probe.decoded(out["left"], Float64MultiArray)[0].data
        right = probe.decoded(out["right"], Float64MultiArray)[0].data
        assert list(left) == pytest.approx(list(good[:6]) + [aloha.PUPPET_GRIPPER_JOINT_OPEN])
        assert list(right) == pytest.approx(list(good[7:13]) + [aloha.PUPPET_GRIPPER_JOINT_CLOSE])
        # bad commands are dropped (the arms hold); a good one after them gets through alone
        for k, bad in enumerate((np.zeros(13), np.r_[np.zeros(13), np.nan], _cmd(left=[0, 3.0, 0, 0, 0, 0, 1]))):
            send(bad)  # (COMMAND keeps one message: wait for each to be handled)
            assert wait_for(lambda: diag("dropped") == str(k + 1), 10), diag("dropped")
        marker = _cmd(left=[0.2, -0.2, 0.2, 0, 0, 0, 0.5])
        send(marker)
        assert wait_for(lambda: probe.count(out["left"]) >= 2, 10)
        assert probe.count(out["left"]) == 2
        assert probe.decoded(out["left"], Float64MultiArray)[1].data[0] == pytest.approx(0.2)
        # e-stop: commands dropped until released
        estop.publish(Bool(data=True))
        assert wait_for(lambda: diag_estop() == "True", 10)
        send(good)
        assert wait_for(lambda: diag("dropped") == "4", 10), diag("dropped")
        estop.publish(Bool(data=False))
        assert wait_for(lambda: diag_estop() == "False", 10), (diag_estop(), runner.log("interbotix_adapter"))
        send(marker)
        assert wait_for(lambda: probe.count(out["left"]) >= 3, 10)
        assert probe.count(out["left"]) == 3  # the command sent during the e-stop never went out
        assert runner.dead() == {}
        log = runner.log("interbotix_adapter")
    assert "command dropped, arms hold" in log and "e-stop ENGAGED" in log


@pytest.mark.unit
def test_deviation_check():
    c = ArmCommand("left", (0.1, -0.5, 0.6, 0.0, 0.0, 0.0), 0.3)
    check_deviation(c, [0.0, -0.4, 0.5, 0.0, 0.0, 0.0], 0.5)
    with pytest.raises(CommandError, match=r"left elbow: command 0.600 rad is 0.700 rad from the measured -0.100"):
        check_deviation(c, [0.0, -0.4, -0.1, 0.0, 0.0, 0.0], 0.5)
    with pytest.raises(CommandError, match="unusable"):
        check_deviation(c, [0.0, np.nan, 0.5, 0.0, 0.0, 0.0], 0.5)


@pytest.mark.ros
def test_node_guards_against_commands_far_from_the_measured_state(probe, domain_id, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from rosutil import wait_for
    from wam_common import qos, topics
    from wam_common.graph import Graph, NodeSpec
    from wam_common.launcher import GraphRunner

    out = "/follower_left/forward_position_controller/commands"
    probe.listen(out, Float64MultiArray)
    probe.listen(topics.DIAGNOSTICS, DiagnosticArray)
    cmd = probe.node.create_publisher(Float64MultiArray, topics.COMMAND, qos.COMMAND)
    js = probe.node.create_publisher(JointState, topics.joint_state_topic("left"), qos.SENSOR)
    measured = np.array([0.1, -0.5, 0.6, 0.05, -0.2, 0.3, 0.5])
    publishing = {"on": False, "n": 0}

    def tick():
        if publishing["on"]:
            js.publish(JointState(name=aloha.JOINT_STATE_NAMES, position=aloha.joint_state_positions(measured)))
            publishing["n"] += 1

    probe.node.create_timer(0.02, tick)

    def diag(key):
        for st in (s for a in reversed(probe.decoded(topics.DIAGNOSTICS, DiagnosticArray)) for s in a.status
                   if s.name == "interbotix_adapter: arms"):
            return {kv.key: kv.value for kv in st.values}.get(key), st.message
        return None, ""

    def send_and_wait(v, dropped=None, sent=None):
        cmd.publish(Float64MultiArray(data=[float(x) for x in v]))
        want = {"dropped": dropped, "sent": sent}
        key = "dropped" if dropped is not None else "sent"
        assert wait_for(lambda: diag(key)[0] == str(want[key]), 10), diag(key)
        return diag(key)[1]

    g = Graph("guard", [NodeSpec("interbotix_adapter", "interbotix_adapter",
                                 {"output": "float64", "arms": ["left"], "diagnostics_period_s": 0.1,
                                  "max_deviation_rad": 0.5, "state_timeout_s": 0.5})])
    with GraphRunner(g, domain_id=domain_id, log_dir=tmp_path) as runner:
        assert wait_for(lambda: cmd.get_subscription_count() > 0 and diag("sent")[0] == "0", 30), \
            runner.log("interbotix_adapter")
        msg = send_and_wait(_cmd(left=measured), dropped=1)  # no joint state yet
        assert "no joint state on /follower_left/joint_states yet" in msg
        publishing["on"] = True
        assert wait_for(lambda: probe.node.count_subscribers(topics.joint_state_topic("left")) > 0, 10)
        n0 = publishing["n"]  # a few joint states out since the adapter subscribed (best effort: no acks to wait on)
        assert wait_for(lambda: publishing["n"] >= n0 + 5, 10)
        send_and_wait(_cmd(left=measured + [0.3, 0, 0, 0, 0, 0, 0.5]), sent=1)  # near: forwarded
        assert probe.count(out) == 1
        msg = send_and_wait(_cmd(left=measured + [0, 0, -0.9, 0, 0, 0, 0]), dropped=2)  # elbow 0.9 away
        assert "left elbow" in msg and "from the measured" in msg
        publishing["on"] = False
        time.sleep(0.8)  # the point: the last joint state ages past state_timeout_s (0.5 s)
        msg = send_and_wait(_cmd(left=measured), dropped=3)  # joint state stopped: stale
        assert "s old" in msg
        assert probe.count(out) == 1
        assert runner.dead() == {}
