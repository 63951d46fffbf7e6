"""A test stand-in for sim_bridge's side of the lockstep handshake (docs/GRAPH_CONTRACT.md).

It publishes exactly what the sim publishes per step (``/clock``, due cameras, the privileged
state, both joint states under ``/perturbed``), then waits for one COMMAND, resending the step
after ``resend_s``. Used by tests/test_policy_*.py to drive the real wam_policy_node process.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String

from rosutil import wait_for
from wam_common import aloha, qos, topics
from wam_common.imageio import Stamp, encode_image

HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


class LockstepSim:
    def __init__(self, probe, cameras=topics.CAMERAS, size=(48, 64), prefix=topics.PERTURBED_PREFIX):
        n = probe.node
        self.node, self.cams, self.size = n, list(cameras), size
        self.pub_clock = n.create_publisher(Clock, topics.CLOCK, 10)
        self.pub_cam = {c: n.create_publisher(Image, prefix + topics.camera_topic(c), qos.sensor(True)) for c in self.cams}
        self.pub_js = {a: n.create_publisher(JointState, prefix + topics.joint_state_topic(a), qos.sensor(True))
                       for a in topics.ARMS}
        self.pub_priv = n.create_publisher(String, topics.PRIVILEGED_STATE, qos.sensor(True))
        self.pub_ep = n.create_publisher(String, topics.EPISODE, qos.EVENTS)
        self.pub_instr = n.create_publisher(String, prefix + topics.INSTRUCTION, qos.LATCHED)
        self._cv = threading.Condition()
        self.commands: list[np.ndarray] = []
        n.create_subscription(Float64MultiArray, topics.COMMAND, self._on_cmd, qos.COMMAND)
        self.t_ns = 1_000_000_000
        self.state = HOME.copy()
        self.resends = 0

    def _on_cmd(self, msg):
        with self._cv:
            self.commands.append(np.array(msg.data))
            self._cv.notify_all()

    def wait_matched(self, timeout=20.0) -> bool:
        """The policy node subscribes to both joint states and every camera, and publishes COMMAND."""
        subscribed = [*self.pub_js.values(), *self.pub_cam.values()]
        return wait_for(lambda: (all(p.get_subscription_count() for p in subscribed)
                                 and self.node.count_publishers(topics.COMMAND) > 0), timeout)

    def image(self, k: int, cam: str) -> bytes:
        h, w = self.size
        a = np.full((h, w, 3), (k * 7) % 255, np.uint8)
        a[0, 0] = self.cams.index(cam)
        return encode_image(a, "rgb8", Stamp.from_ns(self.t_ns), topics.camera_frame(cam))

    def publish_step(self, episode: int, k: int, t0: int, camera_every: int, cameras_last: bool):
        clk = Clock()
        clk.clock.sec, clk.clock.nanosec = divmod(self.t_ns, 1_000_000_000)
        self.pub_clock.publish(clk)
        due = k % camera_every == 0
        if due and not cameras_last:
            for c in self.cams:
                self.pub_cam[c].publish(self.image(k, c))
        priv = {"episode": episode, "step": k, "stamp_ns": self.t_ns, "episode_start_ns": t0, "task": "test",
                "seed": episode, "qpos": self.state.tolist(), "objects": {}, "initial_objects": {}}
        self.pub_priv.publish(String(data=json.dumps(priv)))
        for i, arm in enumerate(topics.ARMS):
            m = JointState()
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(self.t_ns, 1_000_000_000)
            m.name = list(aloha.JOINT_STATE_NAMES)
            m.position = aloha.joint_state_positions(self.state[7 * i: 7 * i + 7])
            self.pub_js[arm].publish(m)
        if due and cameras_last:  # the cameras come after the joint states (one extra hop)
            time.sleep(0.05)  # the point: that hop's delay, the node must wait for the frames
            for c in self.cams:
                self.pub_cam[c].publish(self.image(k, c))

    def run_episode(self, episode: int, steps: int, camera_every: int = 1, cameras_last: bool = False,
                    resend_s: float = 1.0, give_up_s: float = 20.0, before_each_step=None,
                    event_extra: dict | None = None) -> list[np.ndarray]:
        t0 = self.t_ns
        ev = {"event": "start", "episode": episode, "task": "test", "seed": episode, "stamp_ns": t0,
              "instruction": "do the test", "physical": {}, "camera_every": camera_every, "max_steps": steps,
              **(event_extra or {})}
        self.pub_ep.publish(String(data=json.dumps(ev)))
        out = []
        for k in range(steps):
            with self._cv:
                n0 = len(self.commands)
            if before_each_step:
                before_each_step(self, k)
            self.publish_step(episode, k, t0, camera_every, cameras_last)
            start = last = time.monotonic()
            with self._cv:
                while len(self.commands) == n0:
                    self._cv.wait(0.05)
                    now = time.monotonic()
                    if now - start > give_up_s:
                        raise TimeoutError(f"no command for episode {episode} step {k}")
                    if now - last > resend_s:
                        last = now
                        self.resends += 1
                        self._cv.release()
                        try:
                            self.publish_step(episode, k, t0, camera_every, cameras_last)
                        finally:
                            self._cv.acquire()
                cmd = self.commands[n0]
            out.append(cmd)
            self.state = np.clip(cmd, -10, 10)  # ideal position control
            self.t_ns += 20_000_000
        self.pub_ep.publish(String(data=json.dumps({"event": "end", "episode": episode, "steps": steps})))
        return out
