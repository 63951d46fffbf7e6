"""Test helpers for sim_bridge: start the node as a real process; drive it with the pure scripted expert.

:class:`ExpertDriver` lives on the test probe node: it plans with ``sim_bridge.experts.make_expert``
at each episode's first privileged message and answers every (deduplicated by stamp) joint-state
pair with exactly one COMMAND — the lockstep side of docs/GRAPH_CONTRACT.md, without the policy node.
"""
from __future__ import annotations

import hashlib
import json
import threading

from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String

from wam_common import qos, topics
from wam_common.graph import Graph, NodeSpec
from wam_common.imageio import decode_image
from wam_common.launcher import GraphRunner


def sim_graph(**params) -> Graph:
    base = {"render": {"width": 160, "height": 120, "camera_every": 25}, "start_delay_s": 1.0}
    for k, v in params.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return Graph(name="sim_test", nodes=[NodeSpec("sim_bridge", "sim_bridge", base)], use_sim_time=False)


def start_sim(domain_id: int, **params) -> GraphRunner:
    return GraphRunner(sim_graph(**params), domain_id=domain_id).start()


class ExpertDriver:
    def __init__(self, probe, task: str, answer: bool = True, cameras=topics.CAMERAS, lockstep: bool = True,
                 wait_images_every: int = 0):
        """``wait_images_every=n``: at steps k % n == 0 answer only once every camera's frame of that
        step arrived (what wam_policy_node does in lockstep); 0: answer on joint states alone."""
        from sim_bridge.experts import make_expert

        self.expert = make_expert(task)
        self.answer = answer
        self.wait_images_every = int(wait_images_every)
        self.stamps: dict[str, set[int]] = {c: set() for c in cameras}
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.events: list[dict] = []
        self.priv: dict[int, dict] = {}          # stamp → privileged
        self.js: dict[str, dict[int, JointState]] = {"left": {}, "right": {}}
        self.answered: set[int] = set()
        self.episode = None
        self.commands = 0
        self.images: dict[str, list[tuple[int, str, str, tuple, str]]] = {c: [] for c in cameras}
        self.instructions: list[str] = []
        node = probe.node
        sensor = qos.sensor(lockstep)
        self.pub = node.create_publisher(Float64MultiArray, topics.COMMAND, qos.COMMAND)
        node.create_subscription(String, topics.PRIVILEGED_STATE, self._on_priv, sensor)
        for arm in topics.ARMS:
            node.create_subscription(JointState, topics.joint_state_topic(arm),
                                     lambda m, arm=arm: self._on_js(arm, m), sensor)
        node.create_subscription(String, topics.EPISODE, self._on_event, qos.EVENTS)
        node.create_subscription(String, topics.INSTRUCTION, lambda m: self.instructions.append(m.data), qos.LATCHED)
        for cam in cameras:
            node.create_subscription(Image, topics.camera_topic(cam), lambda raw, cam=cam: self._on_image(cam, raw),
                                     sensor, raw=True)

    @staticmethod
    def _ns(stamp) -> int:
        return stamp.sec * 1_000_000_000 + stamp.nanosec

    def _on_image(self, cam, raw):
        im = decode_image(raw)
        digest = hashlib.sha1(im.array.tobytes()).hexdigest()
        with self.lock:
            self.images[cam].append((im.stamp.ns, im.encoding, im.frame_id, im.array.shape, digest))
            self.stamps[cam].add(im.stamp.ns)
        self._maybe_answer(im.stamp.ns)

    def _on_event(self, msg):
        with self.cond:
            self.events.append(json.loads(msg.data))
            self.cond.notify_all()

    def _on_priv(self, msg):
        p = json.loads(msg.data)
        if p["episode"] != self.episode:  # plans from initial_objects, so a missed step 0 is fine
            self.episode = p["episode"]
            self.expert.reset(p)
        with self.lock:
            self.priv[p["stamp_ns"]] = p
        self._maybe_answer(p["stamp_ns"])

    def _on_js(self, arm, msg):
        t = self._ns(msg.header.stamp)
        with self.lock:
            self.js[arm][t] = msg
        self._maybe_answer(t)

    def _maybe_answer(self, t):
        with self.lock:
            ready = t in self.priv and t in self.js["left"] and t in self.js["right"] and t not in self.answered
            if not ready or not self.answer:
                return
            step = self.priv[t]["step"]
            if self.wait_images_every and step % self.wait_images_every == 0:
                if not all(t in st for st in self.stamps.values()):
                    return
            self.answered.add(t)
        cmd = self.expert.actions(step, 1)[0]
        self.pub.publish(Float64MultiArray(data=[float(x) for x in cmd]))
        self.commands += 1

    def wait_event(self, kind: str, count: int = 1, timeout: float = 120.0) -> list[dict]:
        with self.cond:
            self.cond.wait_for(lambda: sum(e["event"] == kind for e in self.events) >= count, timeout)
            return [e for e in self.events if e["event"] == kind]


def raw_messages(probe, topic, msg_type):
    return [deserialize_message(raw, msg_type) for _, raw in probe.msgs[topic]]
