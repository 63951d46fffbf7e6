"""Signals during shutdown (wam_common.node_main.StopSignals): the recorder alone, over DDS, with a
publisher streaming into it, gets SIGINT/SIGTERM several times 0.1-0.5 s apart — what a node of
`ros2 launch` gets when the process group is signalled (timeout, kill -INT -PGID, Ctrl-C twice).
close() still finishes: exit 0, and the bag reads without repair in rosbags and in mcap with every
message published before the first signal."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ros2_tools as rt
from rosutil import wait_for

from wam_common import topics as T
from wam_common.graph import Graph, NodeSpec
from wam_common.launcher import GraphRunner

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
INT, TERM = signal.SIGINT, signal.SIGTERM


def _stream(pub, stop: threading.Event, sent: list) -> None:
    """POLICY_STATUS ``{"seq": k}`` at ~200 Hz until ``stop``; (monotonic time, k) of each message."""
    from std_msgs.msg import String

    k = 0
    while not stop.is_set():
        pub.publish(String(data=json.dumps({"seq": k})))
        sent.append((time.monotonic(), k))
        k += 1
        time.sleep(0.005)


@pytest.mark.parametrize("signals", [
    [(INT, 0.0), (INT, 0.1)],
    [(INT, 0.0), (INT, 0.1), (INT, 0.4)],
    [(INT, 0.0), (TERM, 0.1), (INT, 0.3)],
    [(TERM, 0.0), (TERM, 0.1), (TERM, 0.6)],
], ids=["int-int", "int-int-int", "int-term-int", "term-term-term"])
def test_repeated_signals_never_interrupt_closing_the_bag(probe, domain_id, tmp_path, signals):
    params = {"output_dir": str(tmp_path), "bag_name": "bag", "topics": [T.POLICY_STATUS], "discovery_period_s": 0.1}
    g = Graph("rec", [NodeSpec("recorder", "recorder", params)], dds_profile=ROOT / "config/dds/fastdds.xml")
    runner = GraphRunner(g, domain_id=domain_id, log_dir=tmp_path / "logs").start()
    from std_msgs.msg import String

    pub = probe.publisher(T.POLICY_STATUS, String)
    stop, sent = threading.Event(), []
    streamer = threading.Thread(target=_stream, args=(pub, stop, sent), daemon=True)
    try:
        assert wait_for(lambda: pub.get_subscription_count() > 0, 30), runner.log("recorder")
        streamer.start()
        time.sleep(1.0)  # a second of traffic
        proc = runner.procs["recorder"]
        t0 = time.monotonic()
        first = None
        for sig, at in signals:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            first = first or time.monotonic()
            os.killpg(proc.pid, sig)
        code = proc.wait(30)
    finally:
        stop.set()
        streamer.join()
        runner.stop()
    log = runner.log("recorder")
    assert code == 0, log[-3000:]
    assert "closed" in log and "Traceback" not in log, log[-3000:]
    got = {json.loads(m.data)["seq"] for m in rt.bag_messages(tmp_path / "bag")[T.POLICY_STATUS]}
    # from the first message the recorder's reader took (the first few can go to discovery: the
    # writer may match the reader before the reader matches the writer) to the first signal
    before = [k for t, k in sent if t < first and k >= min(got)]
    assert len(before) > 100, (len(before), len(sent))
    missing = [k for k in before if k not in got]
    assert not missing, f"{len(missing)} of {len(before)} messages sent before the first signal missing: {missing[:10]}"


STUCK_EXIT = """
import sys, threading
from rclpy.node import Node
from wam_common.node_main import StopSignals, run_node

def stuck_forever():
    threading.Event().wait()

class Stuck(Node):
    def __init__(self):
        super().__init__("stuck")
        # a library thread nobody joins: the interpreter's finalization waits for it for ever
        threading.Thread(target=stuck_forever, name="never-ends", daemon=False).start()
        print("ready", flush=True)

StopSignals.FINISH_S = 1.0
sys.exit(run_node(Stuck, "stuck"))
"""


def test_a_stuck_exit_is_reported_with_its_stacks_not_left_to_sigkill(domain_id, tmp_path):
    """After the node's own shutdown, the interpreter's finalization gets StopSignals.FINISH_S: a
    process that would hang there (a non-daemon thread that never ends) prints every thread's stack and
    exits 1, instead of ignoring SIGTERM until `ros2 launch` kills it (which says nothing of where)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT), ROS_DOMAIN_ID=str(domain_id))
    p = subprocess.Popen([sys.executable, "-c", STUCK_EXIT], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(INT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 1, (p.returncode, err)
    assert "Timeout (0:00:01)!" in err and "stuck_forever" in err, err
