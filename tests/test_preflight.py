"""``wam-policy preflight`` against real publishers in this test process.

A fake robot (real rclpy publishers on the test's ROS_DOMAIN_ID: cameras, follower joint
states, POLICY_STATUS, an e-stop subscriber) is shaped per scenario; preflight runs as its
own process (``python -m wam_apps.cli preflight``) and must print PASS rows for what is
right and a clear FAIL message for each fault: missing, silent, stale, slow, frozen, out of
limits, out of sync, slow policy, e-stop unreachable or engaged. Pure checks are tested too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from rosutil import wait_for
from wam_apps.robot import preflight as pf
from wam_common import aloha, topics
from wam_common.imageio import Stamp, encode_image

W, H = 64, 48  # the graph's camera size is overridden to keep the test light
GRAPH_SET = ["--set", f"realsense_cameras.width={W}", "--set", f"realsense_cameras.height={H}"]
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5])  # ALOHA's sleep-ish pose, gripper half open


class FakeRobot:
    """Publishers driven by timers in the probe's executor thread."""

    def __init__(self, probe, cams: dict, arms: dict, status: dict | None, estop_sub: bool = True,
                 estop_value: bool | None = None):
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, String

        from wam_common import qos

        self.node = probe.node
        self.k = 0
        self.pubs = {}
        self.ticks: dict[str, int] = {}  # timer → times it has published
        self._JointState, self._String = JointState, String
        for cam, spec in cams.items():
            if spec is None:
                continue
            pub = self.node.create_publisher(Image, topics.camera_topic(cam), qos.SENSOR)
            self.ticks[cam] = 0
            self.node.create_timer(1.0 / spec.get("hz", 30), lambda cam=cam, pub=pub, spec=spec: self._cam(cam, pub, spec))
        for arm, spec in arms.items():
            pub = self.node.create_publisher(JointState, topics.joint_state_topic(arm), qos.SENSOR)
            spec = dict(spec, n=0, arm=arm)
            self.ticks[arm] = 0
            self.node.create_timer(1.0 / spec.get("hz", 50), lambda arm=arm, pub=pub, spec=spec: self._joints(pub, spec))
        if status is not None:
            pub = self.node.create_publisher(String, topics.POLICY_STATUS, 50)
            self.ticks["status"] = 0

            def tick_status():
                pub.publish(String(data=json.dumps({"t_ns": time.time_ns(), "hold": None,
                                                    "infer_ms": status["infer_ms"], "chunk_stamp_ns": self.k // 10})))
                self.ticks["status"] += 1

            self.node.create_timer(0.02, tick_status)
        if estop_sub:
            self.node.create_subscription(Bool, topics.ESTOP, lambda m: None, qos.LATCHED)
        if estop_value is not None:
            self.estop_pub = self.node.create_publisher(Bool, topics.ESTOP, qos.LATCHED)
            self.estop_pub.publish(Bool(data=estop_value))

    def publishing(self, timeout: float = 10.0, ticks: int = 3) -> bool:
        """Every stream has published a few times (its timer runs in the probe's executor thread)."""
        return wait_for(lambda: all(n >= ticks for n in self.ticks.values()), timeout)

    def _cam(self, cam, pub, spec):
        now = time.time_ns() - int(spec.get("behind_s", 0) * 1e9)
        self.k += 1
        self.ticks[cam] += 1
        img = np.zeros((H, W, 3), np.uint8) if spec.get("frozen") else \
            np.full((H, W, 3), self.k % 251, np.uint8)
        stamp = (now // 33_333_333) * 33_333_333  # all cameras on the same 30 Hz grid: synced
        pub.publish(encode_image(img, "rgb8", Stamp.from_ns(stamp), topics.camera_frame(cam)))

    def _joints(self, pub, spec):
        if spec.get("stop_after") is not None:  # stop n messages after preflight subscribed
            if spec["n"] >= spec["stop_after"]:
                return
            if pub.get_subscription_count() > 0:
                spec["n"] += 1
        s7 = np.array(spec.get("state", HOME), dtype=float)
        msg = self._JointState(name=aloha.JOINT_STATE_NAMES, position=aloha.joint_state_positions(s7))
        msg.header.stamp = self.node.get_clock().now().to_msg()
        pub.publish(msg)
        self.ticks[spec["arm"]] += 1


def _preflight(domain_id, *extra, duration=2.0):
    cmd = [sys.executable, "-m", "wam_apps.cli", "preflight", "--duration", str(duration), "--discovery-s", "4", *GRAPH_SET,
           "--min-rate-fraction", "0.5", *extra]
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return res.returncode, res.stdout + res.stderr


def _rows(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        for res in ("PASS", "FAIL", "SKIP"):
            if line.rstrip().endswith("  " + res):
                rows[line.split("  ")[0].strip()] = res
    return rows


def _cam_row(cam):
    return f"topic {topics.camera_topic(cam)}"


def _joint_row(arm):
    return f"topic {topics.joint_state_topic(arm)}"


@pytest.mark.ros
def test_all_good_passes(probe, domain_id, tmp_path):
    robot = FakeRobot(probe, {c: {} for c in topics.CAMERAS}, {a: {} for a in topics.ARMS}, {"infer_ms": 80.0})
    assert robot.publishing()
    rc, out = _preflight(domain_id, "--load-backend", "--no-recorder", "--json", str(tmp_path / "pf.json"))
    assert rc == 0, out
    rows = _rows(out)
    for cam in topics.CAMERAS:
        assert rows[_cam_row(cam)] == "PASS", out
    for arm in topics.ARMS:
        assert rows[_joint_row(arm)] == "PASS" and rows[f"joint limits {arm}"] == "PASS", out
    assert rows["cameras synced"] == "PASS", out
    assert rows[f"policy answers ({topics.POLICY_STATUS})"] == "PASS", out
    assert rows["policy loads and answers (synthetic)"] == "PASS", out
    assert rows[f"e-stop ({topics.ESTOP})"] == "PASS" and "test_probe" in out, out
    assert "preflight: PASS" in out
    data = json.loads((tmp_path / "pf.json").read_text())
    assert data["ok"] is True and len(data["checks"]) == len(rows)


@pytest.mark.ros
def test_each_fault_has_its_message(probe, domain_id):
    bad = HOME.copy()
    bad[2] = 2.5  # left elbow beyond its 1.6057 rad limit
    FakeRobot(probe,
              {"cam_high": None,  # missing
               "cam_left_wrist": {"behind_s": 5.0},  # stale header stamps
               "cam_right_wrist": {"hz": 5}},  # slow
              {"left": {"state": bad}, "right": {"stop_after": 20}},  # out of limits; stops publishing
              {"infer_ms": 900.0}, estop_sub=False)
    rc, out = _preflight(domain_id)
    assert rc == 1, out
    rows = _rows(out)
    assert rows[_cam_row("cam_high")] == "FAIL"
    assert f"missing: nobody publishes {topics.camera_topic('cam_high')}" in out
    assert rows[_cam_row("cam_left_wrist")] == "FAIL"
    assert f"stale: the newest header stamp on {topics.camera_topic('cam_left_wrist')} is 5." in out
    assert rows[_cam_row("cam_right_wrist")] == "FAIL"
    assert f"rate: {topics.camera_topic('cam_right_wrist')} at" in out
    assert rows[_joint_row("left")] == "PASS"
    assert rows["joint limits left"] == "FAIL" and "out of limits: left elbow = 2.500 rad" in out
    assert rows[_joint_row("right")] == "FAIL"
    assert f"stale: the last message on {topics.joint_state_topic('right')} arrived" in out
    assert rows["cameras synced"] == "FAIL" and "cannot sync: no frames from cam_high" in out
    assert "too slow: inference took up to 900 ms" in out
    assert rows[f"e-stop ({topics.ESTOP})"] == "FAIL" and "unreachable: no node subscribes" in out
    assert rows["recorder"] == "FAIL" and "not recording: no node 'recorder' in the graph" in out
    assert "preflight: FAIL" in out


@pytest.mark.ros
def test_frozen_camera_engaged_estop_slow_backend(probe, domain_id):
    robot = FakeRobot(probe, {"cam_high": {"frozen": True}, "cam_left_wrist": {}, "cam_right_wrist": {}},
                      {a: {} for a in topics.ARMS}, None, estop_sub=True, estop_value=True)
    assert robot.publishing()
    rc, out = _preflight(domain_id, "--no-policy", "--no-recorder", "--load-backend", "--latency-budget-ms", "300",
                         "--set", "wam_policy_node.backend.synthetic.latency_ms=700")
    assert rc == 1, out
    rows = _rows(out)
    assert rows[_cam_row("cam_high")] == "FAIL" and "frozen: all" in out
    assert rows[_cam_row("cam_left_wrist")] == "PASS"
    assert rows[f"e-stop ({topics.ESTOP})"] == "FAIL" and "engaged:" in out
    assert rows["policy loads and answers (synthetic)"] == "FAIL" and "too slow" in out
    assert f"policy answers ({topics.POLICY_STATUS})" not in rows
    assert "recorder" not in rows


@pytest.mark.ros
def test_bad_arguments_exit_2(domain_id):
    rc, out = _preflight(domain_id, "--cameras", "cam_top")
    assert rc == 2 and "cam_top" in out
    rc, out = _preflight(domain_id, "--graph", "no_such_graph")
    assert rc == 2 and "no_such_graph" in out


# ------------------------------------------------------------------------------ pure checks


@pytest.mark.unit
def test_silent_topic_and_format_and_status_messages():
    now = time.time_ns()
    s = pf.TopicSamples("/x", publishers=2)
    c = pf.check_topic(s, 30, now)
    assert c.result == "FAIL" and "silent: /x has 2 publisher(s)" in c.message
    s = pf.TopicSamples("/cam", recv_ns=[now - 20_000_000 * k for k in range(30, 0, -1)],
                        stamp_ns=[now - 20_000_000 * k for k in range(30, 0, -1)],
                        digests=list(range(30)), formats={(320, 240, "rgb8")})
    c = pf.check_topic(s, 30, now, image=(640, 480, "rgb8"))
    assert c.result == "FAIL" and "carries 320x240 rgb8, expected 640x480 rgb8" in c.message
    assert pf.check_policy_status([], 500).message.startswith("missing:")
    c = pf.check_policy_status([json.dumps({"infer_ms": None, "hold": "stale_obs"})] * 3, 500)
    assert c.result == "FAIL" and "no inference finished yet (holds: stale_obs x3)" in c.message
    assert pf.check_policy_status(["not json", json.dumps({"infer_ms": 10})], 500).result == "FAIL"


@pytest.mark.unit
def test_joint_limit_messages():
    names = aloha.JOINT_STATE_NAMES
    assert pf.check_joint_limits("left", names, aloha.joint_state_positions(HOME)).result == "PASS"
    nan = HOME.copy()
    nan[0] = np.nan
    c = pf.check_joint_limits("left", names, aloha.joint_state_positions(nan))
    assert c.result == "FAIL" and "non-finite" in c.message and "waist" in c.message
    c = pf.check_joint_limits("right", names[1:], aloha.joint_state_positions(HOME)[1:])
    assert c.result == "FAIL" and "'waist' missing" in c.message
    c = pf.check_joint_limits("right", None, None)
    assert c.result == "FAIL" and topics.joint_state_topic("right") in c.message
    wide = HOME.copy()
    wide[6] = 1.5
    assert "gripper = 1.500" in pf.check_joint_limits("left", names, aloha.joint_state_positions(wide)).message


@pytest.mark.unit
def test_sync_measures_spread():
    base = np.arange(0, 1_000_000_000, 33_333_333)
    ok = pf.check_sync({"a": list(base), "b": list(base + 3_000_000), "c": list(base - 2_000_000)}, 0.025)
    assert ok.result == "PASS" and "median 5.0 ms" in ok.measured
    off = pf.check_sync({"a": list(base), "b": list(base + 15_000_000), "c": list(base - 15_000_000)}, 0.010)
    assert off.result == "FAIL" and "out of sync" in off.message


@pytest.mark.unit
def test_recorder_messages():
    assert pf.check_recorder("recorder", True, []).result == "PASS"
    c = pf.check_recorder("recorder", True, ["/cam_high/camera/color/image_rect_raw"])
    assert c.result == "FAIL" and "not recording /cam_high/camera/color/image_rect_raw" in c.message
    assert "not running" == pf.check_recorder("rec2", False, []).measured
