"""Test helpers over real rclpy: a probe node that records raw messages per topic, and waits.

Tests wait on a condition, never for a fixed time: ``wait_for(pred)`` polls any predicate;
``wait_matched`` waits for DDS matching; ``acked`` for every sample a reliable
publisher sent to be acknowledged by each matched reader; ``wait_quiet`` for a stream to end (the
one place a time window is the condition: "nothing more arrives for ``quiet_s``").
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Iterable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` until it holds (True) or ``timeout`` s pass (False; ``pred`` is asked once more)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)  # the polling interval, not a wait for something
    return pred()


def wait_matched(pubs: Iterable, timeout: float = 20.0, subscribers: int = 1) -> bool:
    """Every publisher in ``pubs`` has at least ``subscribers`` matched subscriptions."""
    pubs = list(pubs)
    return wait_for(lambda: all(p.get_subscription_count() >= subscribers for p in pubs), timeout)


def acked(*pubs, timeout: float = 10.0) -> bool:
    """Every message the (reliable) publishers sent so far is acknowledged by every matched reader,
    i.e. it sits in each subscriber's DDS history (best-effort publishers: True at once). Polled
    with a zero timeout so the probe's executor thread keeps running meanwhile."""
    from rclpy.duration import Duration

    now = Duration(seconds=0)
    return wait_for(lambda: all(p.wait_for_all_acked(now) for p in pubs), timeout)


def wait_quiet(count: Callable[[], int], quiet_s: float, timeout: float) -> bool:
    """``count()`` (messages received, bytes written, …) has not changed for ``quiet_s``: a stream
    that has ended. The one wait whose condition is a time window (nothing more arrives)."""
    end = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(min(0.05, quiet_s))  # the polling interval
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
    return False


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
            except Exception:  # noqa: BLE001 - the context shut down
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
