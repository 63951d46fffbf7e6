"""``wam-policy analyze`` on a bag the recorder wrote from real DDS traffic: per-episode metrics,
the success-by-perturbation table against outcomes taken independently from the EPISODE topic,
the CLI's files and plots, and a crashed (unfinished) bag."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from recording_traffic import recorded_bag

PLAN = [("Clean", 0, True), ("Light", 3, False), ("Light", 3, True), ("Noise", 2, True), ("Camera", 1, False),
        ("Light", 5, False)]


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    return recorded_bag(out, PLAN, steps=14, holds={1: (4, 5, 9)}, chunk=5)


@pytest.mark.ros
def test_episode_metrics(bag):
    from wam_apps.analysis.episodes import analyze_bag

    bag_dir, events, _ = bag
    eps = analyze_bag(bag_dir)
    assert [e.episode for e in eps] == list(range(len(PLAN)))
    ends = {e["episode"]: e for e in events if e["event"] == "end"}
    for ep, (dim, lvl, _) in zip(eps, PLAN):
        assert ep.success == ends[ep.episode]["success"]
        assert ep.steps == ends[ep.episode]["steps"] == 14
        assert (ep.dimension, ep.level) == (dim, lvl)
        assert ep.commands == 14 and ep.command_period_ms["n"] == 13
        assert ep.latency_ms["n"] == 14 and ep.latency_ms["min"] >= 0  # one obs → one command per step
        assert ep.policy_latency_ms["n"] == 14 and ep.policy_latency_ms["min"] >= 0
        assert ep.inferences == 3 and ep.infer_ms["mean"] == pytest.approx(12.0)  # chunks at steps 0, 5, 10
        assert ep.chunk_boundaries == 2 and ep.jerk_rms is not None and ep.jerk_rms > 0
        assert ep.sim_latency_ms["p50"] == 5.0
    assert eps[1].hold_steps == {"stale_obs": 3} and eps[1].hold_onsets == 2 and eps[1].diag_warnings == 3
    assert all(e.hold_onsets == 0 for i, e in enumerate(eps) if i != 1)


@pytest.mark.ros
def test_table_matches_episode_topic(bag):
    from wam_apps.analysis.episodes import analyze_bag
    from wam_apps.analysis.report import success_table

    bag_dir, events, plan = bag
    table = success_table(analyze_bag(bag_dir))["policy"]
    # independently: the end events a probe received on /sim/episode, joined with what was set
    ends = {e["episode"]: e["success"] for e in events if e["event"] == "end"}
    n, k = Counter(), Counter()
    for i, (dim, lvl, _) in enumerate(plan):
        n[dim] += 1
        k[dim] += int(ends[i])
    for dim in n:
        assert (table[dim]["episodes"], table[dim]["successes"]) == (n[dim], k[dim]), dim
    pert = [i for i, p in enumerate(plan) if p[0] != "Clean"]
    assert table["Total"]["episodes"] == len(pert) and table["Total"]["successes"] == sum(ends[i] for i in pert)
    assert table["levels"]["Light"][3]["episodes"] == 2 and table["levels"]["Light"][5]["successes"] == 0


@pytest.mark.ros
def test_cli_writes_tables_and_plots(bag, tmp_path):
    bag_dir, _, _ = bag
    out = tmp_path / "an"
    r = subprocess.run([sys.executable, "-m", "wam_apps.cli", "analyze", str(bag_dir), "--out", str(out),
                        "--policy", "act"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| Policy | Clean | Camera | Light | Noise | Total |" in r.stdout
    for f in ["report.md", "episodes.csv", "episodes.json", "results.md", "results.csv", "results.json",
              "summary.json", "latency_hist.png", "command_period_hist.png", "dimensions.png", "levels.png",
              "joints_bag_ep0.png"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "latency_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "| Light | — | — | — | 1/2 (50%) | 0/1 (0%) |" in md, md  # levels 0, 1, 2, 3, 5
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"act"} and res["act"]["Clean"]["episodes"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == len(PLAN) and summary["successes"] == sum(p[2] for p in PLAN)


@pytest.mark.ros
def test_cli_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wam_apps.cli", "analyze", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.mcap").write_bytes(b"not an mcap file at all")
    r = subprocess.run([sys.executable, "-m", "wam_apps.cli", "analyze", str(tmp_path / "junk")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "junk" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.ros
def test_unfinished_bag_is_analyzed(bag, tmp_path):
    """A bag whose last file lost its footer (as after kill -9) still analyzes: the complete
    episodes keep their outcomes, the torn one is 'incomplete'."""
    import shutil

    from wam_apps.analysis.episodes import analyze_bag

    bag_dir, _, _ = bag
    crashed = tmp_path / "bag"
    shutil.copytree(bag_dir, crashed)
    last = sorted(crashed.glob("*.mcap"))[-1]
    data = last.read_bytes()
    last.write_bytes(data[: int(len(data) * 0.6)])  # summary, footer and a torn tail gone
    eps = analyze_bag(crashed)
    assert [e.success for e in eps[:-1]] == [p[2] for p in PLAN[:-1]]
    assert eps[-1].success is None and eps[-1].outcome == "incomplete"


def _robot_steps(w, n: int):
    """Declare both arms' joint states and COMMAND on the writer; for k < n write step k's joint
    states (50 Hz from t = 1 s) and yield (k, t) so the caller writes that step's command."""
    import numpy as np
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    from wam_common import aloha, topics as T

    for arm in T.ARMS:
        w.add_topic(T.joint_state_topic(arm), "sensor_msgs/msg/JointState")
    w.add_topic(T.COMMAND, "std_msgs/msg/Float64MultiArray")
    for k in range(n):
        t = 1_000_000_000 + k * 20_000_000
        for arm in T.ARMS:
            js = JointState()
            js.header.stamp.sec, js.header.stamp.nanosec = divmod(t, 1_000_000_000)
            js.name, js.position = list(aloha.JOINT_STATE_NAMES), aloha.joint_state_positions(np.zeros(7))
            w.write(T.joint_state_topic(arm), t, serialize_message(js))
        yield k, t


@pytest.mark.unit
def test_bag_without_episode_events(tmp_path):
    """A robot run recorded without EPISODE events is one episode of unknown outcome, timing intact."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Float64MultiArray, String

    from wam_common import topics as T
    from wam_apps.analysis.episodes import analyze_bag
    from wam_common.bag.writer import BagWriter

    w = BagWriter(tmp_path / "robot")
    w.add_topic(T.POLICY_STATUS, "std_msgs/msg/String")
    for k, t in _robot_steps(w, 30):
        w.write(T.COMMAND, t + 3_000_000, serialize_message(Float64MultiArray(data=[0.01 * k] * 14)))
        w.write(T.POLICY_STATUS, t + 3_100_000, serialize_message(String(data=json.dumps(
            {"chunk_id": k // 10, "inferred": k % 10 == 0, "infer_ms": 40.0, "hold": None}))))
    w.close()
    eps = analyze_bag(tmp_path / "robot")
    assert len(eps) == 1 and eps[0].success is None and eps[0].outcome.startswith("unknown")
    e = eps[0]
    assert e.commands == 30 and e.latency_ms["n"] == 30 and e.latency_ms["p50"] == pytest.approx(3.0)
    assert e.command_period_ms["p50"] == pytest.approx(20.0) and e.stalls == 0
    assert e.inferences == 3 and e.chunk_boundaries == 2


@pytest.mark.unit
def test_lockstep_reanswers_are_not_counted_as_steps(tmp_path):
    """A COMMAND answering the same stamp as the previous one (a lockstep re-answer) is counted
    apart: commands, periods and latencies stay one per answered step."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    from wam_common import aloha, topics as T
    from wam_apps.analysis.episodes import analyze_bag
    from wam_common.bag.writer import BagWriter

    w = BagWriter(tmp_path / "robot")

    def cmd(k, t):
        m = Float64MultiArray(data=[0.01 * k] * 14)
        m.layout.dim = [MultiArrayDimension(label=aloha.command_label(t), size=14, stride=14)]
        return serialize_message(m)

    for k, t in _robot_steps(w, 20):
        w.write(T.COMMAND, t + 3_000_000, cmd(k, t))
        if k % 5 == 4:  # the same answer again, before the next step
            w.write(T.COMMAND, t + 9_000_000, cmd(k, t))
    w.close()
    (e,) = analyze_bag(tmp_path / "robot")
    assert e.commands == 20 and e.resent_commands == 4
    assert e.latency_ms["n"] == 20 and e.command_period_ms["p50"] == pytest.approx(20.0)
