"""wam_policy_node in realtime mode as a real process: 50 Hz timer, async inference, holds."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String

from policy_sim import HOME
from rosutil import wait_for
from test_policy_node import start_policy
from wam_common import aloha, qos, topics
from wam_common.imageio import Stamp, encode_image

pytestmark = pytest.mark.ros


class Sensors:
    """Cameras + joint states under /perturbed at ~50 Hz wall time (a realtime sim/robot)."""

    def __init__(self, probe):
        n = probe.node
        self.cam = {c: n.create_publisher(Image, topics.perturbed(topics.camera_topic(c)), qos.SENSOR)
                    for c in topics.CAMERAS}
        self.js = {a: n.create_publisher(JointState, topics.perturbed(topics.joint_state_topic(a)), qos.SENSOR)
                   for a in topics.ARMS}
        self.cameras_on = True
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()
        return self

    def _run(self):
        img = np.zeros((48, 64, 3), np.uint8)
        while not self._stop.is_set():
            t = time.time_ns()
            if self.cameras_on:
                for c, p in self.cam.items():
                    p.publish(encode_image(img, "rgb8", Stamp.from_ns(t), topics.camera_frame(c)))
            for i, (a, p) in enumerate(self.js.items()):
                m = JointState()
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(t, 1_000_000_000)
                m.name = list(aloha.JOINT_STATE_NAMES)
                m.position = aloha.joint_state_positions(HOME[7 * i: 7 * i + 7])
                p.publish(m)
            time.sleep(0.02)  # pacing: a 50 Hz sensor stream

    def stop(self):
        self._stop.set()
        self._t.join(2)


def test_realtime_commands_flow_while_inferring_and_stale_camera_holds(probe, domain_id, tmp_path):
    probe.listen(topics.POLICY_STATUS, String, depth=2000)
    probe.listen(topics.COMMAND, Float64MultiArray, depth=2000)
    runner = start_policy(domain_id, {"lockstep": False, "backend": {"type": "synthetic", "synthetic": {
        "latency_ms": 300.0, "horizon": 50}}, "runtime": {"strategy": "rtc", "replan_steps": 10},
        "safety": {"stale_obs_s": 0.3}}, tmp_path, use_sim_time=False)  # wall time here (no /clock)
    sensors = Sensors(probe).start()
    try:
        def st():
            return [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]

        assert wait_for(lambda: len([s for s in st() if s["chunk_index"] is not None and s["hold"] is None]) > 60, 60), \
            runner.log("wam_policy_node")[-3000:]
        ok = [s for s in st() if s["hold"] is None and s["chunk_index"] is not None]
        # chunks are indexed by observation time: a 300 ms chunk starts ~15 actions in, never at 0
        first_idx = {}
        for s in ok:
            first_idx.setdefault(s["chunk_id"], s["chunk_index"])
        assert all(i >= 10 for i in list(first_idx.values())[1:]), first_idx
        # commands kept flowing while inferences were in flight (rtc replans every 10 steps)
        assert len(first_idx) >= 3
        sensors.cameras_on = False
        assert wait_for(lambda: any(s["hold"] == "missing_camera" for s in st()), 20), runner.log("wam_policy_node")[-2000:]
        n_before = len(st())
        sensors.cameras_on = True
        assert wait_for(lambda: any(s["hold"] is None for s in st()[n_before:]), 20)
        cmds = np.array([m.data for m in probe.decoded(topics.COMMAND, Float64MultiArray)])
        assert np.all(np.isfinite(cmds))
        assert runner.dead() == {}
    finally:
        sensors.stop()
        runner.stop()


def test_realtime_closed_loop_with_the_sim_and_the_expert(probe, domain_id, tmp_path):
    """sim_bridge in realtime (sim time on /clock) + the node's timer on ROS time + async expert chunks."""
    from wam_common.graph import Graph, NodeSpec
    from wam_common.launcher import GraphRunner

    probe.listen(topics.EPISODE, String, latched=True)
    probe.listen(topics.POLICY_STATUS, String, depth=5000)
    g = Graph("policy_rt", [
        NodeSpec("sim_bridge", "sim_bridge", {"task": "transfer_cube", "clock": "realtime", "seed": 1,
                                              "realtime": {"speed": 0.5}, "start_delay_s": 3.0,
                                              "render": {"width": 64, "height": 48, "camera_every": 10}}),
        NodeSpec("wam_policy_node", "wam_policy_node", {"lockstep": False, "backend": {"type": "expert"},
                                                        "observation": {"input_prefix": ""},
                                                        "runtime": {"strategy": "rtc", "replan_steps": 10}}),
    ], use_sim_time=True)
    runner = GraphRunner(g, domain_id=domain_id, log_dir=tmp_path / "logs").start()
    try:
        def end():
            evs = [json.loads(m.data) for m in probe.decoded(topics.EPISODE, String)]
            return next((e for e in evs if e["event"] == "end"), None)

        assert wait_for(lambda: end() is not None, 240), runner.log("sim_bridge")[-2000:]
        e = end()
        assert e["success"], (e, runner.log("wam_policy_node")[-2000:])
        st = [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]
        chunks = {s["chunk_id"] for s in st if s["chunk_id"] is not None}
        assert len(chunks) >= 5  # replanned asynchronously while commands kept flowing
        assert runner.dead() == {}
    finally:
        runner.stop(order=["wam_policy_node"])
