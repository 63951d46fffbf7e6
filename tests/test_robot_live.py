"""The real-robot graph (config/aloha.yaml) end to end, with RealSense recordings for cameras.

`load_graph("aloha")` as the launch file builds it — realsense_cameras on software-device
recordings, perturbation_node (clean), wam_policy_node (synthetic backend, dry run by
default), recorder — each node its own process; this test plays the Interbotix driver's
follower joint states. Dry run must put commands on the shadow topic and none on COMMAND;
then `wam-policy preflight` against the live graph must pass.
The Interbotix adapter is left out: interbotix_xs_msgs is not installable here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from robot_io.realsense import write_recording
from wam_common import aloha, topics

pytestmark = pytest.mark.ros

W, H = 160, 120
SERIALS = {"cam_high": "230322270001", "cam_left_wrist": "230322270002", "cam_right_wrist": "230322270003"}
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5])


@pytest.fixture(scope="module")
def cams(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rs_live")
    ts = [threading.Thread(target=write_recording, args=(folder / f"{c}.db3", s, 90),
                           kwargs={"width": W, "height": H, "seed": k}) for k, (c, s) in enumerate(SERIALS.items())]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return folder


def test_aloha_graph_dry_run_and_preflight(cams, probe, domain_id, tmp_path):
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray, String

    from rosutil import wait_for
    from wam_common import qos
    from wam_common.graph import load_graph
    from wam_common.launcher import GraphRunner

    graph = load_graph("aloha", {
        "realsense_cameras": {"serials": dict(SERIALS), "playback_dir": str(cams), "width": W, "height": H,
                              "playback_loop": True},
        "interbotix_adapter": {"enabled": False},
        "recorder": {"output_dir": str(tmp_path), "bag_name": "robot"},
    })
    assert graph.node("wam_policy_node").parameters["safety"]["dry_run"] is True
    # the Interbotix driver's side: follower joint states at 50 Hz
    pubs = {a: probe.node.create_publisher(JointState, topics.joint_state_topic(a), qos.SENSOR) for a in topics.ARMS}

    def joints():
        now = probe.node.get_clock().now().to_msg()
        for pub in pubs.values():
            msg = JointState(name=aloha.JOINT_STATE_NAMES, position=aloha.joint_state_positions(HOME))
            msg.header.stamp = now
            pub.publish(msg)

    probe.node.create_timer(0.02, joints)
    probe.listen(topics.SHADOW_COMMAND, Float64MultiArray)
    probe.listen(topics.COMMAND, Float64MultiArray)
    probe.listen(topics.POLICY_STATUS, String, depth=500)
    for c in SERIALS:
        probe.listen(topics.perturbed(topics.camera_topic(c)), Image, reliable=False)
    runner = GraphRunner(graph, domain_id=domain_id, log_dir=tmp_path / "logs")
    with runner:
        ok = wait_for(lambda: probe.count(topics.SHADOW_COMMAND) >= 50 or runner.dead(), 90)
        logs = {n: runner.log(n)[-1500:] for n in runner.procs}
        assert ok and not runner.dead(), (runner.dead(), logs)
        for c in SERIALS:
            assert probe.count(topics.perturbed(topics.camera_topic(c))) > 0, c
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
        for extra in ([], ["--perturbed"]):  # what the robot publishes, and what the policy reads
            res = subprocess.run(
                [sys.executable, "-m", "wam_apps.cli", "preflight", "--duration", "2", "--discovery-s", "5",
                 "--set", f"realsense_cameras.width={W}", "--set", f"realsense_cameras.height={H}",
                 "--slop-ms", "40", "--min-rate-fraction", "0.5", "--latency-budget-ms", "1000", *extra],
                env=env, capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stdout + res.stderr + str(logs)
            assert "wam_policy_node" in res.stdout  # the e-stop subscriber it found
            assert "services /wam_policy_node/estop" in res.stdout
            assert any(ln.startswith("recorder ") and ln.rstrip().endswith("PASS") for ln in res.stdout.splitlines())
            assert (topics.PERTURBED_PREFIX + topics.camera_topic("cam_high") in res.stdout) == bool(extra)
        n_cmd = probe.count(topics.COMMAND)
        assert runner.dead() == {}, runner.dead()
    assert n_cmd == 0  # dry run: nothing reached the motors' topic
    cmds = probe.decoded(topics.SHADOW_COMMAND, Float64MultiArray)
    assert all(len(m.data) == 14 and np.all(np.isfinite(m.data)) for m in cmds)
    assert (tmp_path / "robot").is_dir()
