"""The entry wrapper every node's ``main()`` uses.

Starts rclpy, builds the node, spins it (nothing polls with ``spin_once``), and turns a configuration error
into one clear line on stderr and exit status 2. SIGINT/SIGTERM shut the node down cleanly
(rclpy's own SIGINT/SIGTERM handlers shut the context down; the node's ``close()`` then
runs, so the recorder closes its bag).

Executor: single-threaded unless a node's ``main`` passes ``threads``. rclpy's multi-threaded executor
keeps its main thread busy taking the GIL, which starved the other threads: a GPU forward in
``wam_policy_node`` took 1.5-3x longer and answered seconds late (docs/results/node_overhead_gpu.md),
and the recorder's callbacks stalled up to 1 s, so a reliable reader's keep-last history was
overwritten before it was taken (docs/RECORDING.md).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

from .config import ConfigError


class RosLogHandler(logging.Handler):
    """Python ``logging`` records → a ROS node's logger (info / warning / error by level)."""

    def __init__(self, ros_logger, level: int = logging.INFO):
        super().__init__(level)
        self.ros = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.ERROR:
                self.ros.error(msg)
            elif record.levelno >= logging.WARNING:
                self.ros.warning(msg)
            else:
                self.ros.info(msg)
        except Exception:  # noqa: BLE001 - logging must never take the node down
            self.handleError(record)


def forward_logging(node, name: str = "wam_policy") -> RosLogHandler:
    """Forward the package's Python loggers (``name`` and below: e.g. the lerobot backend's load and
    warm-up progress) to ``node``'s ROS logger while it lives; returns the handler (``remove`` it)."""
    handler = RosLogHandler(node.get_logger())
    logger = logging.getLogger(name)
    if not any(isinstance(h, RosLogHandler) for h in logger.handlers):
        handler.restore = (logger.level, logger.propagate)  # what the first forwarder found
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.propagate = False  # not also to the root logger's stderr fallback
    return handler


def stop_forwarding(handler: logging.Handler, name: str = "wam_policy") -> None:
    """Undo ``forward_logging``: the last forwarder to stop restores the logger's level and propagation."""
    logger = logging.getLogger(name)
    logger.removeHandler(handler)
    forwarders = [h for h in logger.handlers if isinstance(h, RosLogHandler)]
    if not forwarders:
        level, propagate = getattr(handler, "restore", (logging.NOTSET, True))
        logger.setLevel(level)
        logger.propagate = propagate
    elif hasattr(handler, "restore") and not hasattr(forwarders[0], "restore"):
        forwarders[0].restore = handler.restore


def normal_scheduling() -> None:
    """Run under the normal time-sharing policy even if started from a real-time parent.

    A node inherits its parent's scheduling policy; under SCHED_FIFO rclpy's executors
    busy-wait and can starve the whole machine (seen: two nodes at 95 % of a core for 30 min
    after a shell at FIFO 99 started them). A node that needs real-time priority for one thread
    raises it for that thread itself (``bench/control_loop.py --rt``)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]  # threads made at import (BLAS, DDS) too
    except OSError:
        tids = [0]
    changed = False
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):  # BATCH/IDLE do not busy-wait
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                changed = True
        except (AttributeError, OSError):  # not Linux, not permitted, or the thread ended
            pass
    if changed:
        print(f"[{os.path.basename(sys.argv[0])}] started under a real-time scheduling policy: running at "
              "SCHED_OTHER (the executor would busy-wait)", file=sys.stderr, flush=True)


def run_node(factory: Callable[[], "rclpy.node.Node"], name: str, args: list[str] | None = None,
             threads: int = 1) -> int:
    normal_scheduling()
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        try:
            node = factory()
        except ConfigError as exc:
            print(f"[{name}] config error: {exc}", file=sys.stderr, flush=True)
            return 2
        # threads <= 1: a SingleThreadedExecutor (about half the per-callback CPU of the
        # multi-threaded one in rclpy, and no spinning main thread taking the GIL: see above)
        executor = SingleThreadedExecutor() if threads <= 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        return 0
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
