"""The entry wrapper every node's ``main()`` uses.

Starts rclpy, builds the node, spins it (the executor waits until there is work, at most
``StopSignals.POLL_S`` at a time), and turns a configuration error into one clear line on stderr and exit status 2.

Shutdown (:class:`StopSignals`): the first SIGINT or SIGTERM asks the node to stop; it shuts down in
order — the executor stops serving callbacks (after ``drain_s`` more of them: the recorder takes the
messages already on their way), the node's ``close()`` runs while the ROS context is still valid
(sim_bridge stops its episode thread, the recorder finishes its bag), the node is destroyed, then
the context is shut down. Every further SIGINT/SIGTERM is noted on stderr and ignored, so that
``close()`` always finishes: ``ros2 launch`` signals its nodes itself when stdin is not a terminal,
so a Ctrl-C or ``kill -INT`` to the process group reaches each node twice, and a person may press
Ctrl-C again. (rclpy's own handlers are not installed: they shut the context down at once, under
threads that still publish, and re-raise KeyboardInterrupt in the middle of ``close()``.) A signal
while the node is being built interrupts the start-up (KeyboardInterrupt out of the factory, exit
0) unless the node passes ``interruptible_start=False`` (the recorder: its bag is created there).

Executor: single-threaded unless a node's ``main`` passes ``threads``. rclpy's multi-threaded executor
keeps its main thread busy taking the GIL, which starved the other threads: a GPU forward in
``wam_policy_node`` took 1.5-3x longer and answered seconds late (docs/results/node_overhead_gpu.md),
and the recorder's callbacks stalled up to 1 s, so a reliable reader's keep-last history was
overwritten before it was taken (docs/RECORDING.md).
"""
from __future__ import annotations

import faulthandler
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Callable

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

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


class StopSignals:
    """SIGINT/SIGTERM handling of a node process (see the module docstring).

    Python runs signal handlers in the main thread, and only while it executes Python code: not while
    the executor waits (rcl_wait, in C). Python's wakeup fd (``signal.set_wakeup_fd``, written by the
    C-level handler in whichever thread the signal lands) wakes a watcher thread, which triggers a
    guard condition of the node: the executor serves it, returns to Python, the handler runs and marks
    the stop, and :meth:`spin` sees it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    POLL_S = 1.0       # the longest the executor waits before it looks at the stop flag again
    FINISH_S = 10.0    # after the orderly shutdown, the interpreter's own finalization gets this long

    def __init__(self, name: str, interruptible_start: bool = True):
        self.name = name
        self.interruptible_start = interruptible_start
        self.requested = False  # a stop was asked for: every later signal is only noted
        self.starting = True    # the node is being built
        self._guard = None
        self._executor = None
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)
        threading.Thread(target=self._watch, args=(read_fd,), name="stop-signals", daemon=True).start()

    def _on_signal(self, signum, _frame) -> None:
        if self.requested:
            # os.write: a print() could re-enter the stream the main thread is writing
            os.write(2, f"[{self.name}] {signal.Signals(signum).name} again: ignored, finishing the shutdown\n".encode())
            return
        self.requested = True
        if self.starting and self.interruptible_start:
            raise KeyboardInterrupt
        self.wake()  # the handler may run inside spin_once, before it waits: wake that wait too

    def ignore(self) -> None:
        """From now on (the process is exiting) ignore the signals: at finalization Python resets the
        signals it handles to their default action, and one landing then would kill the process.

        The node's own shutdown is done here (``close()`` finished, the node destroyed, the context
        shut down); what is left is the interpreter's finalization (thread joins, library destructors).
        Should that not end within ``FINISH_S`` (between ``ros2 launch``'s SIGTERM at 5 s and its
        SIGKILL at 15 s), every thread's stack is printed to stderr and the process exits with status 1:
        a stuck exit is reported with where it stuck instead of being killed without a word. Python
        cancels that timer late in its finalization, before the C libraries' own exit handlers (DDS,
        OpenCV's thread pool) run: a hang there ends 2 s later by SIGALRM's default action (the
        kernel's, which no finalization undoes; ``run_node`` is a process's entry point, never called
        inside another program)."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        sys.stderr.flush()
        faulthandler.dump_traceback_later(self.FINISH_S, exit=True)
        signal.alarm(math.ceil(self.FINISH_S) + 2)

    def _watch(self, read_fd: int) -> None:
        while os.read(read_fd, 64):
            self.wake()

    def wake(self) -> None:
        guard, executor = self._guard, self._executor
        if guard is not None:
            try:
                guard.trigger()
            except InvalidHandle:  # destroyed meanwhile: spin() has returned
                pass
        if executor is not None:
            executor.wake()  # its own guard is in every wait set, whatever the node's callback groups do

    def spin(self, node, executor, drain_s: float = 0.0) -> None:
        """Serve ``node``'s callbacks until a stop is asked for, then ``drain_s`` seconds more."""
        self._guard = node.create_guard_condition(lambda: None)  # wakes the executor after a signal
        self._executor = executor
        self.starting = False
        try:
            while not self.requested:
                # bounded wait: should a wake-up ever be lost, the stop is still seen within POLL_S
                executor.spin_once(timeout_sec=self.POLL_S)
            end = time.monotonic() + drain_s
            while (left := end - time.monotonic()) > 0:
                executor.spin_once(timeout_sec=left)
        except ExternalShutdownException:  # someone else shut the context down
            pass
        finally:
            guard, self._guard, self._executor = self._guard, None, None
            node.destroy_guard_condition(guard)


def run_node(factory: Callable[[], "rclpy.node.Node"], name: str, args: list[str] | None = None,
             threads: int = 1, drain_s: float = 0.0, interruptible_start: bool = True) -> int:
    """``drain_s``: after the stop request, serve callbacks this much longer before ``close()``;
    ``interruptible_start``: whether a signal interrupts building the node (else the node is built,
    then stopped)."""
    normal_scheduling()
    # `kill -USR1 <pid>` prints every thread's Python stack to stderr (also while the main thread is
    # blocked in C): how a node that does not stop is diagnosed (docs/TROUBLESHOOTING.md)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    stop = StopSignals(name, interruptible_start)
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        try:
            node = factory()
        except ConfigError as exc:
            print(f"[{name}] config error: {exc}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            print(f"[{name}] stopped during start-up", file=sys.stderr, flush=True)
            return 0
        # threads <= 1: a SingleThreadedExecutor (about half the per-callback CPU of the
        # multi-threaded one in rclpy, and no spinning main thread taking the GIL: see above)
        executor = SingleThreadedExecutor() if threads <= 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        stop.spin(node, executor, drain_s)
        executor.shutdown()
        return 0
    finally:
        stop.requested = True  # from here on, signals are only noted
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        rclpy.try_shutdown()
        stop.ignore()
