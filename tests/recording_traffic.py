"""Contract-shaped test traffic for the recorder and analysis tests: real publishers, real DDS.

:class:`Traffic` creates one publisher per graph-contract topic with the contract's QoS and
publishes serialized messages (``publisher.publish(raw_bytes)``), remembering every payload so
a test can compare the bag byte for byte. :meth:`Traffic.episode` plays one lockstep-shaped
episode: start event, then per step clock, cameras (every ``camera_every``), privileged state,
joint states, one command and one POLICY_STATUS, then the end event.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np
from rclpy.serialization import serialize_message

from wam_common import aloha, qos, topics as T
from wam_common.imageio import Stamp, encode_image


def contract_qos(topic: str, lockstep: bool = True):
    if topic in (T.INSTRUCTION, T.perturbed(T.INSTRUCTION), T.ACTIVE_PERTURBATION, T.ESTOP):
        return qos.LATCHED
    if topic in (T.COMMAND, T.SHADOW_COMMAND):
        return qos.COMMAND
    if topic == T.EPISODE:
        return qos.EVENTS
    if topic == T.POLICY_STATUS:  # as wam_policy_node.node.STATUS_QOS
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    if topic in (T.CLOCK, T.DIAGNOSTICS):
        return 10
    return qos.sensor(lockstep)


def deep(q, depth: int = 1000):
    """The contract's reliability/durability with a deep writer history: a reliable KEEP_LAST
    writer of depth 1-2 drops samples a slow reader has not acknowledged yet (DDS semantics,
    not the recorder's doing), which a loaded 2-core test machine would otherwise hit."""
    import copy

    from rclpy.qos import QoSProfile

    if isinstance(q, int):
        return QoSProfile(depth=max(q, depth))
    q = copy.copy(q)
    q.depth = max(q.depth, depth)
    return q


class Traffic:
    def __init__(self, node, lockstep: bool = True, size=(48, 64), cameras=T.CAMERAS, pattern: str = "noise"):
        from diagnostic_msgs.msg import DiagnosticArray
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float64MultiArray, String

        self.node, self.size, self.cameras, self.pattern = node, size, tuple(cameras), pattern
        self.sent: dict[str, list[bytes]] = defaultdict(list)
        self.types = {T.CLOCK: Clock, T.INSTRUCTION: String, T.perturbed(T.INSTRUCTION): String,
                      T.COMMAND: Float64MultiArray, T.SHADOW_COMMAND: Float64MultiArray, T.EPISODE: String,
                      T.PRIVILEGED_STATE: String, T.ACTIVE_PERTURBATION: String, T.POLICY_STATUS: String,
                      T.DIAGNOSTICS: DiagnosticArray, T.ESTOP: Bool}
        for c in self.cameras:
            self.types[T.camera_topic(c)] = self.types[T.perturbed(T.camera_topic(c))] = Image
        for a in T.ARMS:
            self.types[T.joint_state_topic(a)] = self.types[T.perturbed(T.joint_state_topic(a))] = JointState
        self.pubs = {t: node.create_publisher(cls, t, deep(contract_qos(t, lockstep))) for t, cls in self.types.items()}
        self.t_ns = 1_000_000_000
        self.rng = np.random.default_rng(0)

    def frame(self, episode: int, step: int, cam_index: int) -> np.ndarray:
        """noise: random pixels; flat: one colour per (episode, step, camera) (survives video coding)."""
        if self.pattern == "flat":
            return np.full((*self.size, 3), (40 * episode + 7 * step + 60 * cam_index) % 200 + 20, np.uint8)
        return self.rng.integers(0, 255, (*self.size, 3), dtype=np.uint8)

    def wait_matched(self, timeout: float = 20.0, topics=None, subscribers: int = 1) -> bool:
        from rosutil import wait_matched

        return wait_matched([self.pubs[t] for t in (topics or self.pubs)], timeout, subscribers)

    def acked(self, timeout: float = 20.0) -> bool:
        """Everything sent so far sits in every matched reader's DDS history (all these publishers are reliable
        in lockstep mode)."""
        from rosutil import acked

        return acked(*self.pubs.values(), timeout=timeout)

    def send(self, topic: str, msg_or_raw) -> bytes:
        raw = msg_or_raw if isinstance(msg_or_raw, (bytes, bytearray)) else serialize_message(msg_or_raw)
        self.pubs[topic].publish(bytes(raw))
        self.sent[topic].append(bytes(raw))
        return bytes(raw)

    def string(self, topic: str, payload) -> bytes:
        from std_msgs.msg import String

        return self.send(topic, String(data=payload if isinstance(payload, str) else json.dumps(payload)))

    def latched(self, instruction="transfer the cube", perturbation=None):
        self.string(T.INSTRUCTION, instruction)
        self.string(T.perturbed(T.INSTRUCTION), instruction)
        self.string(T.ACTIVE_PERTURBATION, perturbation or {"profile": "clean", "dimension": "Clean", "level": 0})
        from std_msgs.msg import Bool

        self.send(T.ESTOP, Bool(data=False))

    def episode(self, i: int, steps: int = 10, success: bool = True, camera_every: int = 2, seed: int = 0,
                pace: float = 0.004, diag: bool = True, chunk: int = 4, infer_ms: float = 12.0,
                holds: tuple[int, ...] = (), task: str = "transfer_cube", extra_start: dict | None = None):
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        start = {"event": "start", "episode": i, "task": task, "seed": seed + i, "stamp_ns": self.t_ns,
                 "instruction": "transfer the cube", "physical": {}, "camera_every": camera_every,
                 "max_steps": steps}
        start.update(extra_start or {})
        self.string(T.EPISODE, start)
        time.sleep(0.05)  # pacing as the sim does: the start event goes out a moment before the first step
        t0 = self.t_ns
        for k in range(steps):
            stamp = Stamp.from_ns(self.t_ns)
            clk = Clock()
            clk.clock.sec, clk.clock.nanosec = stamp.sec, stamp.nanosec
            self.send(T.CLOCK, clk)
            if k % camera_every == 0:
                for ci, c in enumerate(self.cameras):
                    img = self.frame(i, k, ci)
                    raw = encode_image(img, "rgb8", stamp, T.camera_frame(c))
                    self.send(T.camera_topic(c), raw)
                    self.send(T.perturbed(T.camera_topic(c)), raw)
            self.string(T.PRIVILEGED_STATE, {"episode": i, "step": k, "stamp_ns": self.t_ns, "episode_start_ns": t0,
                                             "task": task, "seed": seed + i, "qpos": [0.0] * 4, "objects": {},
                                             "initial_objects": {}})
            q = np.sin(0.1 * k + np.arange(14))
            for a, arm7 in zip(T.ARMS, aloha.split14(q)):
                js = JointState()
                js.header.stamp.sec, js.header.stamp.nanosec = stamp.sec, stamp.nanosec
                js.name = list(aloha.JOINT_STATE_NAMES)
                js.position = aloha.joint_state_positions(arm7)
                self.send(T.joint_state_topic(a), js)
                self.send(T.perturbed(T.joint_state_topic(a)), js)
            time.sleep(pace)  # pacing: the policy's answer comes a moment after the observation
            cmd = Float64MultiArray()
            cmd.data = [float(v) for v in q + 0.01]
            self.send(T.COMMAND, cmd)
            hold = "stale_obs" if k in holds else None
            self.string(T.POLICY_STATUS, {"t_ns": self.t_ns, "stamp_ns": self.t_ns, "step": k, "episode": i,
                                          "hold": hold, "inferred": k % chunk == 0,
                                          "infer_ms": infer_ms, "chunk_id": k // chunk, "chunk_index": k % chunk,
                                          "chunk_stamp_ns": t0 + (k // chunk) * chunk * 20_000_000,
                                          "published": True, "strategy": "sync"})
            if diag and k in holds:
                arr = DiagnosticArray()
                arr.status.append(DiagnosticStatus(level=DiagnosticStatus.WARN, name="wam_policy_node: safety",
                                                   message="HOLD: stale_obs", hardware_id="wam_policy"))
                self.send(T.DIAGNOSTICS, arr)
            self.t_ns += 20_000_000
        self.string(T.EPISODE, {"event": "end", "episode": i, "task": task, "seed": seed + i, "stamp_ns": self.t_ns,
                                "success": bool(success), "steps": steps,
                                "reason": "success" if success else "timeout", "max_reward": 4 if success else 1,
                                "latency_ms": {"mean": 5.0, "p50": 5.0, "p99": 6.0, "n": steps}})
        time.sleep(0.05)  # pacing: a gap between episodes, as the sim leaves one


# After ``acked`` the samples sit in the recorder's DDS reader; its executor takes them a moment
# later, and a SIGINT before that drops what is not taken. The recorder shows that moment only on
# /diagnostics (``RecorderStatus``), which a test recording every contract topic would record too:
# there this grace before the stop stands in for it.
TAKE_GRACE_S = 0.2


class RecorderStatus:
    """The recorder's own counters from its /diagnostics status (``diagnostics_period_s`` > 0):
    received, written, dropped, duplicates, … — what a test waits on before it stops the recorder."""

    def __init__(self, probe):
        from diagnostic_msgs.msg import DiagnosticArray

        self.probe, self._type = probe, DiagnosticArray
        probe.listen(T.DIAGNOSTICS, DiagnosticArray, depth=1000)

    def latest(self) -> dict[str, int]:
        for arr in reversed(self.probe.decoded(T.DIAGNOSTICS, self._type)):
            for st in arr.status:
                if st.name == "recorder":
                    return {kv.key: int(kv.value) for kv in st.values if kv.value.lstrip("-").isdigit()}
        return {}

    def wait(self, timeout: float = 20.0, **at_least: int) -> bool:
        """Until every named counter is at least the number given (``wait(received=40)``)."""
        from rosutil import wait_for

        return wait_for(lambda: all(self.latest().get(k, -1) >= n for k, n in at_least.items()), timeout)


def recorded_bag(out_dir, plan, steps: int = 12, holds: dict | None = None, chunk: int = 4, size=(48, 64),
                 recorder_params: dict | None = None, camera_every: int = 2, pattern: str = "noise"):
    """Run the recorder node (own ROS_DOMAIN_ID) while a probe plays ``plan`` = [(dimension, level,
    success), …] as episodes; returns (bag_dir, EPISODE events the probe received, plan)."""
    from pathlib import Path

    import rclpy
    from rclpy.context import Context
    from std_msgs.msg import String

    from rosutil import Probe, wait_for
    from wam_common.graph import Graph, NodeSpec
    from wam_common.launcher import DomainLease, GraphRunner

    out_dir = Path(out_dir)
    lease = DomainLease()
    ctx = Context()
    rclpy.init(context=ctx, domain_id=lease.domain_id)
    probe = Probe(ctx, "traffic_probe")
    runner = None
    try:
        probe.listen(T.EPISODE, String, latched=True)
        params = {"output_dir": str(out_dir), "bag_name": "bag", "diagnostics_period_s": 0.0,
                  "discovery_period_s": 0.1, "chunk_bytes": 32768}
        params.update(recorder_params or {})
        root = Path(__file__).resolve().parents[1]
        g = Graph("rec", [NodeSpec("recorder", "recorder", params)], dds_profile=root / "config/dds/fastdds.xml")
        runner = GraphRunner(g, domain_id=lease.domain_id, log_dir=out_dir / "logs").start()
        tr = Traffic(probe.node, size=size, pattern=pattern)
        if not tr.wait_matched(subscribers=1, topics=[t for t in tr.pubs if t != T.EPISODE]) or \
                not tr.wait_matched(subscribers=2, topics=[T.EPISODE]):
            raise RuntimeError("recorder did not subscribe:\n" + runner.log("recorder"))
        for i, (dim, lvl, ok) in enumerate(plan):
            tr.latched(perturbation={"profile": f"{dim.lower()}_{lvl}", "dimension": dim, "level": lvl,
                                     "episode": i})
            tr.episode(i, steps=steps, success=ok, holds=(holds or {}).get(i, ()), chunk=chunk,
                       camera_every=camera_every)
        tr.string(T.EPISODE, {"event": "done", "episodes": len(plan), "successes": sum(bool(p[2]) for p in plan)})
        if not (wait_for(lambda: probe.count(T.EPISODE) >= 2 * len(plan) + 1, 20) and tr.acked()):
            raise RuntimeError("not every message reached the recorder:\n" + runner.log("recorder"))
        time.sleep(TAKE_GRACE_S)  # acked is in its DDS reader; its executor takes it (see TAKE_GRACE_S)
        import json as _json

        events = [_json.loads(m.data) for m in probe.decoded(T.EPISODE, String)]
    finally:
        if runner is not None:
            runner.stop()
        probe.close()
        ctx.try_shutdown()
        lease.release()
    return out_dir / "bag", events, plan
