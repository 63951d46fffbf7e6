"""The operator flow: episodes started/labelled from the keyboard (stdin) or a topic become
contract EPISODE events, and the real recorder keeps them in the bag."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wam_apps.robot.operator import OPERATOR_TOPIC, EpisodeBook, OperatorError, latency_summary, parse_command
from wam_common import topics

START_KEYS = {"event", "episode", "task", "seed", "stamp_ns", "instruction", "physical", "camera_every", "max_steps"}
END_KEYS = {"event", "episode", "task", "seed", "stamp_ns", "success", "steps", "reason", "max_reward", "latency_ms"}


# ------------------------------------------------------------------------------ pure


@pytest.mark.unit
def test_book_start_label_done():
    b = EpisodeBook(task="fold", instruction="fold the towel", seed=10, max_duration_s=30)
    s0 = b.start(1_000_000_000)
    assert START_KEYS <= set(s0) and s0["episode"] == 0 and s0["seed"] == 10 and s0["max_steps"] == 1500
    with pytest.raises(OperatorError, match="episode 0 is running"):
        b.start(2)
    b.add_status({"obs_age_ms": 40.0})
    b.add_status({"obs_age_ms": 60.0})
    b.add_status({"obs_age_ms": None})
    e0 = b.end(3_000_000_000, "success")
    assert END_KEYS <= set(e0)
    assert e0["success"] is True and e0["reason"] == "success" and e0["steps"] == 100 and e0["max_reward"] == 1.0
    assert e0["latency_ms"]["n"] == 2 and e0["latency_ms"]["mean"] == pytest.approx(50.0)
    with pytest.raises(OperatorError, match="no episode is running"):
        b.end(4, "failure")
    b.start(5_000_000_000)
    e1 = b.end(6_000_000_000, "failure")
    assert e1["episode"] == 1 and e1["seed"] == 11 and e1["success"] is False and e1["reason"] == "aborted"
    assert e1["label"] == "failure" and e1["latency_ms"]["n"] == 0
    b.start(7_000_000_000)
    assert not b.timed_out(36_000_000_000) and b.timed_out(37_000_000_000)
    assert b.end(37_000_000_000, "timeout")["reason"] == "timeout"
    b.start(40_000_000_000)
    assert b.end(41_000_000_000, "discard")["label"] == "discard"
    assert b.done() == {"event": "done", "episodes": 3, "successes": 1, "source": "operator"}  # discard not counted
    with pytest.raises(OperatorError, match="session is done"):
        b.start(50)


@pytest.mark.unit
def test_parse_command():
    assert parse_command("s") == ("start", {})
    assert parse_command(" Y ") == ("success", {})
    assert parse_command("discard") == ("discard", {})
    assert parse_command('{"cmd": "start", "instruction": "pick"}') == ("start", {"instruction": "pick"})
    for bad, match in [("", "empty"), ("zap", "unknown command 'zap'"), ("{nope", "not valid JSON"),
                       ('{"x": 1}', "'cmd'"), ('{"cmd": "start", "instruction": 3}', "'instruction' must be")]:
        with pytest.raises(OperatorError, match=match):
            parse_command(bad)
    assert latency_summary([]) == {"mean": None, "p50": None, "p99": None, "n": 0}


# ------------------------------------------------------------------------------ processes


def _operator(domain_id, *args, stdin=subprocess.PIPE):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "wam_apps.cli", "operator", *args], env=env, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _bag_messages(bag: Path) -> list[tuple[str, object]]:
    from rosbags.highlevel import AnyReader

    files = sorted(bag.rglob("*.mcap"))
    assert files, f"no .mcap under {bag}"
    out = []
    with AnyReader(files) as reader:
        conns = [c for c in reader.connections if c.topic in (topics.EPISODE, topics.ESTOP, topics.INSTRUCTION)]
        for conn, _, raw in reader.messages(connections=conns):
            out.append((conn.topic, reader.deserialize(raw, conn.msgtype).data))
    return out


@pytest.mark.ros
def test_keyboard_session_recorded_in_the_bag(probe, domain_id, tmp_path):
    from wam_common.graph import Graph, NodeSpec
    from wam_common.launcher import GraphRunner

    from recording_traffic import RecorderStatus
    from rosutil import wait_for, wait_quiet

    status = RecorderStatus(probe)  # its own status not recorded: its count goes quiet when the operator's does
    g = Graph("rec", [NodeSpec("recorder", "recorder", {"output_dir": str(tmp_path), "bag_name": "op",
                                                          "discovery_period_s": 0.2, "diagnostics_period_s": 0.1,
                                                          "exclude_topics": [topics.DIAGNOSTICS]})])
    runner = GraphRunner(g, domain_id=domain_id, log_dir=tmp_path / "logs")
    with runner:
        assert wait_for(lambda: (tmp_path / "op").exists() or runner.dead(), 30), runner.log("recorder")
        op = _operator(domain_id, "--task", "pick_cube", "--instruction", "pick up the cube", "--seed", "7")
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(op.stdout.readline, "")), daemon=True)
        reader.start()
        try:
            # keys once the operator sees the recorder on its topics (ESTOP keeps one latched value)
            assert wait_for(lambda: any(f"{topics.EPISODE} 1, {topics.ESTOP} 1" in ln for ln in lines), 30), lines
            for key in ["s", "e", "r", "y", "s", "n", "bogus", "s", "x", "q"]:
                op.stdin.write(key + "\n")
                op.stdin.flush()
                # an operator's pace: ESTOP keeps only its last value (latched, depth 1), so a press
                # before the previous value reached the recorder would merge the two
                time.sleep(0.3)
            op.stdin.close()
            op.wait(60)
            reader.join(10)
            out = "".join(lines)
        finally:
            if op.poll() is None:
                op.kill()
        assert op.returncode == 0, out
        assert "unknown command 'bogus'" in out and "E-STOP ENGAGED" in out
        # the recorder took the 7 events and 9 e-stop values (and the instruction), and nothing more comes
        assert status.wait(received=17), (status.latest(), runner.log("recorder"))
        assert wait_quiet(lambda: status.latest().get("received", 0), 0.5, 20), status.latest()
        assert runner.dead() == {}, runner.log("recorder")
    msgs = _bag_messages(tmp_path / "op")
    events = [json.loads(d) for t, d in msgs if t == topics.EPISODE]
    assert [(e["event"], e.get("label")) for e in events] == [
        ("start", None), ("end", "success"), ("start", None), ("end", "failure"), ("start", None), ("end", "discard"),
        ("done", None)]
    starts = [e for e in events if e["event"] == "start"]
    assert [e["episode"] for e in starts] == [0, 1, 2] and [e["seed"] for e in starts] == [7, 8, 9]
    assert all(START_KEYS <= set(e) and e["task"] == "pick_cube" and e["instruction"] == "pick up the cube"
               for e in starts)
    ends = [e for e in events if e["event"] == "end"]
    assert all(END_KEYS <= set(e) for e in ends)
    assert [e["success"] for e in ends] == [True, False, False]
    assert events[-1] == {"event": "done", "episodes": 2, "successes": 1, "source": "operator"}
    # held from start-up, released by s, e / r by hand, held again by each label
    assert [d for t, d in msgs if t == topics.ESTOP] == [True, False, True, False, True, False, True, False, True]
    assert "pick up the cube" in [d for t, d in msgs if t == topics.INSTRUCTION]


@pytest.mark.ros
def test_topic_driven_with_timeout(probe, domain_id):
    from rosutil import wait_for
    from std_msgs.msg import String



    from std_msgs.msg import Bool

    probe.listen(topics.EPISODE, String, latched=True)
    probe.listen(topics.INSTRUCTION, String, latched=True)
    probe.listen(topics.ESTOP, Bool, latched=True)
    cmd = probe.node.create_publisher(String, OPERATOR_TOPIC, 10)
    status = probe.publisher(topics.POLICY_STATUS, String)
    op = _operator(domain_id, "--no-keyboard", "--max-duration-s", "1.5", stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: cmd.get_subscription_count() > 0, 30)
        assert wait_for(lambda: probe.count(topics.ESTOP) >= 1, 30)  # held from start-up
        for word in ("estop", "start", "release"):  # a start while the e-stop is engaged is refused
            cmd.publish(String(data=word))
        cmd.publish(String(data=json.dumps({"cmd": "start", "instruction": "open the drawer"})))
        assert wait_for(lambda: probe.count(topics.EPISODE) >= 1, 10)
        for age in (30.0, 50.0, 70.0):
            status.publish(String(data=json.dumps({"obs_age_ms": age, "hold": None})))
        assert wait_for(lambda: probe.count(topics.EPISODE) >= 2, 15)  # ends by itself
        cmd.publish(String(data="nonsense"))
        cmd.publish(String(data="done"))
        out, _ = op.communicate(timeout=30)
    finally:
        if op.poll() is None:
            op.kill()
    assert op.returncode == 0, out
    assert "unknown command 'nonsense'" in out
    assert "the e-stop is engaged: r releases it" in out and "e-stop released (the arms hold until s" in out
    events = [json.loads(m.data) for m in probe.decoded(topics.EPISODE, String)]
    assert [e["event"] for e in events] == ["start", "end", "done"]
    assert events[0]["instruction"] == "open the drawer"
    end = events[1]
    assert end["reason"] == "timeout" and end["success"] is False and end["duration_s"] >= 1.5
    assert end["latency_ms"]["n"] == 3 and end["latency_ms"]["p50"] == pytest.approx(50.0)
    assert [m.data for m in probe.decoded(topics.INSTRUCTION, String)] == ["open the drawer"]
    assert [m.data for m in probe.decoded(topics.ESTOP, Bool)] == [True, False, True]  # arms held between



@pytest.mark.ros
def test_single_key_presses_on_a_terminal(probe, domain_id):
    """A real terminal (a pty): single key presses, no Enter, as an operator types them."""
    import pty

    from rosutil import wait_for
    from std_msgs.msg import String

    probe.listen(topics.EPISODE, String, latched=True)
    master, slave = pty.openpty()
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
    op = subprocess.Popen([sys.executable, "-m", "wam_apps.cli", "operator", "--task", "stack"], env=env,
                          stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(slave)
    try:
        # a key typed before the operator switched the terminal to cbreak is flushed by the
        # switch: press again until it lands (a repeated press is a harmless "! ..." message)
        for key, n in ((b"s", 1), (b"y", 2)):
            assert wait_for(lambda: os.write(master, key) and probe.count(topics.EPISODE) >= n, 30, interval=0.5)
        os.write(master, b"q")
        out, _ = op.communicate(timeout=30)
    finally:
        if op.poll() is None:
            op.kill()
        os.close(master)
    assert op.returncode == 0, out
    events = [json.loads(m.data) for m in probe.decoded(topics.EPISODE, String)]
    assert [(e["event"], e.get("success")) for e in events] == [("start", None), ("end", True), ("done", None)]
