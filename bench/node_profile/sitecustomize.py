"""Span profiler for the policy node process, loaded by ``bench/node_overhead.py --profile``.

The bench puts this folder first on the node's PYTHONPATH with ``WAM_NODE_PROFILE=<file>``; Python
imports ``sitecustomize`` at start-up, which wraps (without changing what they do) rclpy's message take,
every subscription callback and publish, and the node's own steps (image decode and conversion, the
lockstep core, the controller, the model call, status JSON) with ``time.perf_counter_ns`` spans. Spans
are written to the file as JSON lines at exit (and every 20 commands). ``perf_counter_ns`` is
CLOCK_MONOTONIC: the bench's own timestamps (publish, receipt) are on the same clock.
Without ``WAM_NODE_PROFILE`` this file does nothing. ``WAM_NODE_EXECUTOR=events`` (an experiment) runs the
node on rclpy's experimental EventsExecutor instead of the SingleThreadedExecutor.
"""
from __future__ import annotations

import os

PATH = os.environ.get("WAM_NODE_PROFILE")


def _install(path: str) -> None:
    import atexit
    import functools
    import json
    import time

    ns = time.perf_counter_ns
    spans: list[tuple] = []  # (name, start_ns, end_ns, depth)
    depth = [0]
    n_cmd = [0]

    dumps = json.dumps  # the node's json.dumps is wrapped below

    def dump() -> None:
        with open(path, "w") as f:
            for s in list(spans):
                f.write(dumps(s) + "\n")

    def timed(name, fn, outer_only=False):
        inside = [False]

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            if outer_only and inside[0]:  # a recursive call: inside the outer call's span
                return fn(*a, **kw)
            inside[0] = True
            d = depth[0]
            depth[0] = d + 1
            t0 = ns()
            try:
                return fn(*a, **kw)
            finally:
                spans.append((name, t0, ns(), d))
                depth[0] = d
                inside[0] = False
        return wrapper

    def patch(obj, attr, name, outer_only=False):
        setattr(obj, attr, timed(name, getattr(obj, attr), outer_only))

    import rclpy.executors
    import rclpy.node
    import rclpy.publisher

    orig_take = rclpy.executors.Executor._take_subscription

    def take(self, sub):
        d = depth[0]
        t0 = ns()
        try:
            return orig_take(self, sub)
        finally:
            spans.append((f"take {sub.topic_name}", t0, ns(), d))

    rclpy.executors.Executor._take_subscription = take

    orig_cs = rclpy.node.Node.create_subscription

    def create_subscription(self, msg_type, topic, callback, *a, **kw):
        return orig_cs(self, msg_type, topic, timed(f"callback {topic}", callback), *a, **kw)

    rclpy.node.Node.create_subscription = create_subscription

    orig_pub = rclpy.publisher.Publisher.publish

    def publish(self, msg):
        d = depth[0]
        t0 = ns()
        try:
            return orig_pub(self, msg)
        finally:
            spans.append((f"publish {self.topic_name}", t0, ns(), d))
            if self.topic_name in (topics.COMMAND, topics.SHADOW_COMMAND):
                n_cmd[0] += 1
                if n_cmd[0] % 20 == 0:
                    dump()

    rclpy.publisher.Publisher.publish = publish

    from wam_common import node_main, topics

    orig_run = node_main.run_node

    def run_node(factory, *a, **kw):
        mod = __import__("sys").modules[factory.__module__]
        spans.append((f"tree {os.path.dirname(os.path.dirname(os.path.abspath(mod.__file__)))}", 0, 0, -1))
        for attr in ("_on_image", "_on_joint_state", "_answer", "_emit", "_publish_cmd", "_publish_diag",
                     "_check_pending"):
            if hasattr(factory, attr):
                patch(factory, attr, f"node.{attr}")
        for attr in ("decode_image", "to_rgb", "_jsonable"):
            if hasattr(mod, attr):
                patch(mod, attr, attr, outer_only=True)
        patch(mod.json, "dumps", "json.dumps")
        from wam_policy_node import controller, lockstep

        patch(lockstep.Lockstep, "poll", "Lockstep.poll")
        patch(lockstep.Lockstep, "pair", "Lockstep.pair")
        patch(controller.PolicyController, "step_lockstep", "controller.step_lockstep")
        patch(controller.PolicyController, "_infer", "controller._infer")
        patch(controller.PolicyController, "_command", "controller._command")
        patch(controller.PolicyController, "_accept", "controller._accept")
        try:
            return orig_run(factory, *a, **kw)
        finally:
            dump()

    node_main.run_node = run_node
    atexit.register(dump)


if PATH:
    _install(PATH)
if os.environ.get("WAM_NODE_EXECUTOR") == "events":  # an experiment: rclpy's (experimental) EventsExecutor
    from rclpy.experimental.events_executor import EventsExecutor

    from wam_common import node_main as _nm

    _nm.SingleThreadedExecutor = lambda: EventsExecutor()
