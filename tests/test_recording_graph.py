"""The recorder in the real graph: sim_bridge (MuJoCo) → perturbation_node → wam_policy_node
(expert) → sim_bridge, plus the recorder, each its own process on its own ROS_DOMAIN_ID.

A probe subscribed beside the recorder sees the same wire bytes: every topic it heard must be in
the bag byte for byte, in order. The analysis table must agree with the outcomes the probe took
from /sim/episode itself, and the bag must export to a LeRobotDataset that LeRobot loads.
"""
from __future__ import annotations

import json

import pytest

from wam_common import topics as T

pytestmark = pytest.mark.ros

EPISODES = 2
STOP_ORDER = ["wam_policy_node", "perturbation_node", "sim_bridge", "recorder"]


@pytest.fixture(scope="module")
def graph_bag(tmp_path_factory):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray, String

    from rosutil import Probe, wait_for, wait_quiet
    from wam_common.graph import load_graph
    from wam_common.launcher import DomainLease, GraphRunner

    out = tmp_path_factory.mktemp("graph")
    g = load_graph("aloha_sim", {
        # short episodes (they end by timeout, a failure: outcomes still come from /sim/episode)
        "sim_bridge": {"episodes": EPISODES, "start_delay_s": 2.0, "max_steps": 80,
                       "render": {"width": 64, "height": 48, "camera_every": 10}},
        "perturbation_node": {"profile": "light@4"},  # a study dimension, labelled by the node itself
        "recorder": {"output_dir": str(out), "bag_name": "bag", "diagnostics_period_s": 0.0},
    })
    lease = DomainLease()
    ctx = Context()
    rclpy.init(context=ctx, domain_id=lease.domain_id)
    probe = Probe(ctx, "graph_probe")
    heard = {T.EPISODE: String, T.COMMAND: Float64MultiArray, T.POLICY_STATUS: String,
             T.PRIVILEGED_STATE: String, T.CLOCK: None, T.DIAGNOSTICS: DiagnosticArray}
    for arm in T.ARMS:
        heard[T.joint_state_topic(arm)] = heard[T.perturbed(T.joint_state_topic(arm))] = JointState
    heard[T.camera_topic("cam_high")] = heard[T.perturbed(T.camera_topic("cam_high"))] = Image
    from rosgraph_msgs.msg import Clock

    heard[T.CLOCK] = Clock
    for topic, cls in heard.items():
        probe.listen(topic, cls, latched=topic == T.EPISODE, depth=5000)
    runner = GraphRunner(g, domain_id=lease.domain_id, log_dir=out / "logs")
    runner.start()
    try:
        def done():
            return any(json.loads(m.data).get("event") == "done" for m in probe.decoded(T.EPISODE, String))

        ok = wait_for(lambda: done() or bool(runner.dead()), 600, interval=0.5)
        assert ok and not runner.dead(), {n: runner.log(n)[-2000:] for n in runner.procs}
        # the tail of the last episode has reached the probe: nothing more comes on the stepped topics
        # (/diagnostics is periodic and never goes quiet)
        stepped = [t for t in heard if t != T.DIAGNOSTICS]
        assert wait_quiet(lambda: sum(probe.count(t) for t in stepped), 0.5, 30)
        events = [json.loads(m.data) for m in probe.decoded(T.EPISODE, String)]
        wire = {t: [raw for _, raw in probe.msgs[t]] for t in heard}
    finally:
        runner.stop(order=STOP_ORDER)
        probe.close()
        ctx.try_shutdown()
        lease.release()
    assert "closed" in runner.log("recorder"), runner.log("recorder")[-3000:]
    return out / "bag", events, wire, runner


def _diag_source(raw: bytes) -> tuple[tuple[str, ...], int]:
    """(the statuses' names: which node, header stamp ns) of a serialized DiagnosticArray."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.serialization import deserialize_message

    m = deserialize_message(raw, DiagnosticArray)
    return tuple(st.name for st in m.status), m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec


def _diag_text(raw: bytes) -> str:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.serialization import deserialize_message

    m = deserialize_message(raw, DiagnosticArray)
    return "; ".join(f"{st.name} @{m.header.stamp.sec}.{m.header.stamp.nanosec:09d} {st.message} "
                     + ",".join(f"{kv.key}={kv.value}" for kv in st.values) for st in m.status)


def test_every_topic_round_trips_byte_identical(graph_bag):
    from wam_common.bag.reader import Bag
    from wam_common.bag.repair import needs_repair

    bag_dir, events, wire, _ = graph_bag
    assert not needs_repair(bag_dir)
    got: dict[str, list[bytes]] = {}
    with Bag(bag_dir) as bag:
        for m in bag.messages():
            got.setdefault(m.topic, []).append(bytes(m.data))
        topics = bag.topics
    for topic, raws in wire.items():
        assert raws, f"the probe heard nothing on {topic}"
        if topic == T.DIAGNOSTICS:
            # periodic, from every node: the recorder (stopped last) hears more, and orders by publish
            # stamp where the probe saw arrival order across publishers. A node's status goes out from
            # its start, stamped 0 until the sim's clock runs (identical messages), and its writer may
            # match the probe (subscribed before the graph started) a moment before the recorder: of
            # a node's statuses at the recorder's first stamp the bag holds each kind, maybe fewer
            # copies; every later one the probe heard is in the bag
            from collections import Counter

            rec = got.get(topic, [])
            first: dict[tuple, int] = {}
            for raw in rec:
                who, ns = _diag_source(raw)
                first[who] = min(first.get(who, ns), ns)
            src = {raw: _diag_source(raw) for raw in raws}
            known = [raw for raw in raws if src[raw][0] in first]
            later = [raw for raw in known if src[raw][1] > first[src[raw][0]]]
            at_first = {raw for raw in known if src[raw][1] == first[src[raw][0]]}
            missing = list(Counter(later) - Counter(rec)) + sorted(at_first - set(rec))
            assert later, (first, [_diag_text(r) for r in raws[:3]])
            assert not missing, "\n".join(["heard by the probe, not in the bag:", *map(_diag_text, missing),
                                           "in the bag:", *map(_diag_text, rec)])
            continue
        # the probe (another process) may discover a publisher a little later than the recorder,
        # which subscribed first: what it heard is one unbroken, identical run of the bag's
        rec = got.get(topic, [])
        i = rec.index(raws[0]) if raws[0] in rec else -1
        assert i >= 0 and rec[i:i + len(raws)] == raws, (topic, len(rec), len(raws), i)
        assert i + len(raws) == len(rec), (topic, "the recorder lost the end")
    # every step: lockstep answers each step's joint states with (at least) one command
    steps = sum(e["steps"] for e in events if e.get("event") == "end")
    assert len(got[T.COMMAND]) >= steps and len(got[T.joint_state_topic("left")]) >= steps
    # the rest of the contract's topics the graph publishes are there too
    for t in (T.INSTRUCTION, T.perturbed(T.INSTRUCTION), T.ACTIVE_PERTURBATION, T.perturbed(T.camera_topic("cam_left_wrist"))):
        assert t in topics, t
    assert len(list(bag_dir.glob("*.mcap"))) == EPISODES  # one file per episode


def test_analysis_matches_episode_topic(graph_bag):
    from wam_apps.analysis.episodes import analyze_bag
    from wam_apps.analysis.report import success_table

    bag_dir, events, _, _ = graph_bag
    ends = [e for e in events if e.get("event") == "end"]
    assert len(ends) == EPISODES
    eps = analyze_bag(bag_dir)
    assert [(e.episode, e.success, e.steps, e.seed) for e in eps] == \
        [(e["episode"], e["success"], e["steps"], e["seed"]) for e in ends]
    for ep, end in zip(eps, ends):
        assert ep.commands == end["steps"]  # lockstep: one command per step
        assert ep.latency_ms["n"] == end["steps"]
        assert (ep.dimension, ep.level) == ("Light", 4)  # from ACTIVE_PERTURBATION
    table = success_table(eps)["policy"]
    for col in ("Light", "Total"):
        assert table[col]["episodes"] == EPISODES
        assert table[col]["successes"] == sum(bool(e["success"]) for e in ends)
    assert "Clean" not in table and table["levels"]["Light"][4]["episodes"] == EPISODES


def test_exports_to_lerobot(graph_bag, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from wam_apps.export_lerobot import export

    bag_dir, events, _, _ = graph_bag
    ends = [e for e in events if e.get("event") == "end"]
    info = export([bag_dir], tmp_path / "ds", stride=5)
    ds = LeRobotDataset("local/ds", root=tmp_path / "ds", video_backend="pyav")
    assert ds.num_episodes == EPISODES and info["fps"] == 10
    assert len(ds) == sum((e["steps"] + 4) // 5 for e in ends)
    f = ds[len(ds) // 2]
    assert f["observation.images.cam_high"].shape == (3, 48, 64)
    assert f["observation.state"].shape == (14,) and f["action"].shape == (14,)
    assert isinstance(f["task"], str) and f["task"]
