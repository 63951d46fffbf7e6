"""Test helpers over real rclpy: a probe node that records raw messages per topic, and waits."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


class Probe:
    """A node spinning in a background thread; ``listen(topic, type)`` records (recv_ns, raw bytes)."""

    def __init__(self, context, name: str = "test_probe"):
        self.node = rclpy.create_node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.msgs: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self):
        while self._running:
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down
                break

    def listen(self, topic: str, msg_type, reliable: bool = True, latched: bool = False, depth: int = 100):
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        )

        def cb(raw, topic=topic):
            with self._lock:
                self.msgs[topic].append((time.monotonic_ns(), raw))

        self.node.create_subscription(msg_type, topic, cb, qos, raw=True)

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.msgs[topic])

    def wait_count(self, topic: str, n: int, timeout: float) -> bool:
        """At least ``n`` messages on ``topic`` within ``timeout`` s."""
        return wait_for(lambda: self.count(topic) >= n, timeout)

    def raw(self, topic: str) -> list[bytes]:
        """The raw (CDR) messages received on ``topic`` so far."""
        with self._lock:
            return [raw for _, raw in self.msgs[topic]]

    def clear(self) -> None:
        with self._lock:
            self.msgs.clear()

    def decoded(self, topic: str, msg_type) -> list:
        from rclpy.serialization import deserialize_message

        with self._lock:
            return [deserialize_message(raw, msg_type) for _, raw in self.msgs[topic]]

    def publisher(self, topic: str, msg_type, latched: bool = False):
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        )
        return self.node.create_publisher(msg_type, topic, qos)

    def close(self):
        self._running = False
        self._thread.join(timeout=2)
        self.executor.shutdown(timeout_sec=0)
        self.node.destroy_node()
