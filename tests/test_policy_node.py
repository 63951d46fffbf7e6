"""wam_policy_node as a real process in lockstep, driven by a probe playing the sim's side."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float64MultiArray, String

from policy_sim import HOME, LockstepSim
from rosutil import wait_for
from wam_common import aloha, topics
from wam_common.graph import Graph, NodeSpec
from wam_common.imageio import Stamp, encode_image
from wam_common.launcher import GraphRunner

pytestmark = pytest.mark.ros


def start_policy(domain_id, params: dict, tmp_path, use_sim_time: bool = True) -> GraphRunner:
    base = {"lockstep": True, "backend": {"type": "synthetic"}}
    for k, v in params.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    g = Graph("policy_test", [NodeSpec("wam_policy_node", "wam_policy_node", base)], use_sim_time=use_sim_time)
    return GraphRunner(g, domain_id=domain_id, log_dir=tmp_path / "logs").start()


def statuses(probe):
    return [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]


def safety_diag(probe) -> dict:
    """The values of the node's newest "safety" diagnostics status (the probe listens to /diagnostics)."""
    for arr in reversed(probe.decoded(topics.DIAGNOSTICS, DiagnosticArray)):
        for st in arr.status:
            if st.name.endswith(": safety"):
                return {kv.key: kv.value for kv in st.values}
    return {}


def expected_synthetic(anchor, stamps_from_t0_s, amp=0.1, period=2.0):
    wave = amp * np.sin(2 * np.pi * np.asarray(stamps_from_t0_s) / period)
    out = anchor[None, :] + wave[:, None]
    out[:, 6], out[:, 13] = anchor[6], anchor[13]
    return out


@pytest.fixture
def sim(probe):
    probe.listen(topics.POLICY_STATUS, String)
    probe.listen(topics.DIAGNOSTICS, DiagnosticArray)
    return LockstepSim(probe)


def test_lockstep_one_command_per_step_and_exact_frames(sim, probe, domain_id, tmp_path):
    runner = start_policy(domain_id, {"backend": {"type": "synthetic", "synthetic": {"horizon": 8}},
                                      "runtime": {"strategy": "sync"}}, tmp_path)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = sim.run_episode(0, 30, camera_every=3, cameras_last=True)
        cmds += sim.run_episode(1, 10, camera_every=3, cameras_last=False)
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= 40, 10)
        time.sleep(0.5)  # negative check: no status beyond the 40 steps' arrives meanwhile
        assert len(sim.commands) == 40 + sim.resends * 0 or len(sim.commands) >= 40
        st = statuses(probe)
        steps = [s for s in st if s.get("published")]
        assert len(steps) == 40  # exactly one command (and one status) per step
        assert all(s["hold"] is None for s in steps), [s for s in steps if s["hold"]][:3]
        # a chunk of 8 every 8 steps; each computed on the frames stamped exactly at a camera step
        inferred = [s for s in steps if s["inferred"]]
        assert [s["step"] for s in inferred] == [0, 8, 16, 24, 0, 8]
        for s in inferred:
            want = s["t_ns"] if s["step"] % 3 == 0 else s["t_ns"] - (s["step"] % 3) * 20_000_000
            assert set(s["image_stamps_ns"].values()) == {want}, s
        assert [s["chunk_index"] for s in steps[:10]] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
        # the commands are the synthetic trajectory of the episode (anchored at its first state)
        exp = expected_synthetic(HOME, np.arange(30) * 0.02)
        np.testing.assert_allclose(np.array(cmds[:30]), exp, atol=1e-9)
        assert all(np.all(np.isfinite(c)) and c.shape == (14,) for c in cmds)
        assert runner.dead() == {}
    finally:
        runner.stop()


def test_bad_images_are_rejected_and_never_crash(sim, probe, domain_id, tmp_path):
    runner = start_policy(domain_id, {"backend": {"type": "synthetic", "synthetic": {"horizon": 5}},
                                      "sync": {"lockstep_wait_s": 1.0}}, tmp_path)
    bad_pub = probe.publisher(topics.perturbed(topics.camera_topic("cam_high")), Image)

    def garbage(sim_, k):
        st = Stamp.from_ns(sim_.t_ns)
        if k % 5 == 1:  # wrong encoding, wrong size, truncated bytes, at the stamp of a real frame
            for raw in (encode_image(np.zeros((48, 64), np.uint16), "16UC1", st),
                        encode_image(np.zeros((10, 20, 3), np.uint8), "rgb8", st),
                        encode_image(np.zeros((48, 64, 3), np.uint8), "rgb8", st)[:-100],
                        b"\x00\x01\x00\x00garbage"):
                bad_pub.publish(raw)
                time.sleep(0.05)  # pacing: each bad frame its own arrival (the node's reader keeps the last 2)

    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = sim.run_episode(0, 20, camera_every=1, before_each_step=garbage)
        assert len(cmds) == 20 and all(np.all(np.isfinite(c)) for c in cmds)
        # the sim's start event names its render size: that size is the expected one from the first frame
        cmds = sim.run_episode(1, 6, camera_every=1, before_each_step=garbage, event_extra={"width": 64, "height": 48})
        assert len(cmds) == 6
        assert runner.dead() == {}
        assert wait_for(lambda: "rejected image on camera 'cam_high'" in runner.log("wam_policy_node"), 10)
        log = runner.log("wam_policy_node")
        assert "16UC1" in log and "differs from the expected" in log
    finally:
        runner.stop()


@pytest.mark.parametrize("inject,reason", [("nan_chunk", "nan_chunk"), ("out_of_limits", "out_of_limits_chunk"),
                                           ("error", "inference_error")])
def test_bad_chunks_hold(sim, probe, domain_id, tmp_path, inject, reason):
    runner = start_policy(domain_id, {"backend": {"type": "synthetic", "synthetic": {
        "horizon": 5, "inject": inject, "inject_every": 2}}, "runtime": {"strategy": "sync"}}, tmp_path)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = np.array(sim.run_episode(0, 16, camera_every=1))
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= 16, 10)
        st = [s for s in statuses(probe) if s.get("published")]
        holds = [s["step"] for s in st if s["hold"] == reason]
        # chunk 1 (steps 0-4) is good; chunk 2 is bad → hold, retried every step (calls 3 good...)
        assert holds and holds[0] == 5, [(s["step"], s["hold"]) for s in st]
        for s in st:
            if s["hold"]:
                i = s["step"]
                np.testing.assert_array_equal(cmds[i], cmds[i - 1])  # a hold repeats the last command
        assert np.all(np.isfinite(cmds))
        assert np.all(cmds[:, 1] < aloha.ARM_UPPER[1] + 1e-9)
        diags = probe.decoded(topics.DIAGNOSTICS, DiagnosticArray)
        assert any(st_.message == f"HOLD: {reason}" for d in diags for st_ in d.status)
        assert runner.dead() == {}
    finally:
        runner.stop()


@pytest.mark.parametrize("policy", ["reject", "trim"])
def test_a_colliding_chunk_is_rejected_or_trimmed_and_said_on_diagnostics(sim, probe, domain_id, tmp_path, policy):
    """Every 2nd synthetic chunk drives the left gripper down through the table (a smooth path: only the collision
    check can tell). reject: the chunk is dropped and the arm holds (collision_chunk); trim: its safe prefix runs.
    Either way no command sent puts an arm into the table, and /diagnostics says what happened."""
    from wam_policy_node.chunk_check import ChunkChecker

    runner = start_policy(domain_id, {"backend": {"type": "synthetic", "synthetic": {
        "horizon": 20, "inject": "collision", "inject_every": 2}}, "runtime": {"strategy": "sync"},
        "safety": {"chunk": {"policy": policy}}}, tmp_path)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = np.array(sim.run_episode(0, 26, camera_every=1))
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= 26, 10)
        st = [s for s in statuses(probe) if s.get("published")]
        checked = [s for s in st if s.get("chunk_check")]
        assert checked and checked[0]["step"] == 20, [(s["step"], s["hold"], s.get("chunk_check")) for s in st]
        first = checked[0]
        assert first["chunk_check"]["reason"] == "collision_chunk" and "table" in first["chunk_check"]["detail"]
        if policy == "reject":
            assert first["hold"] == "collision_chunk" and first["rejected"] == "collision_chunk"
            np.testing.assert_array_equal(cmds[20], cmds[19])  # the hold repeats the last command
        else:
            assert first["hold"] is None and first["trimmed"] == "collision_chunk"
            assert first["chunk_check"]["result"] == "trimmed" and "trimmed to its first" in first["chunk_check"]["detail"]
        chk = ChunkChecker()
        assert [i for i, c in enumerate(cmds) if chk.collisions(c)] == []
        key = f"chunks.{'rejected' if policy == 'reject' else 'trimmed'}.collision_chunk"
        assert wait_for(lambda: int(safety_diag(probe).get(key, 0)) >= 1, 5), safety_diag(probe)
        assert "table" in safety_diag(probe)["last_chunk_check"]
        if policy == "reject":
            diags = probe.decoded(topics.DIAGNOSTICS, DiagnosticArray)
            assert any(st_.message == "HOLD: collision_chunk" for d in diags for st_ in d.status)
        assert f"chunk {'rejected' if policy == 'reject' else 'trimmed'} (collision_chunk)" in runner.log("wam_policy_node")
        assert runner.dead() == {}
    finally:
        runner.stop()


def test_estop_latches_via_topic_and_service(sim, probe, domain_id, tmp_path):
    runner = start_policy(domain_id, {"backend": {"type": "synthetic", "synthetic": {"horizon": 50}}}, tmp_path)
    estop = probe.publisher(topics.ESTOP, Bool, latched=True)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = sim.run_episode(0, 5)
        estop.publish(Bool(data=True))
        assert wait_for(lambda: safety_diag(probe).get("estop") == "True", 10), runner.log("wam_policy_node")
        held = sim.run_episode(1, 5)  # new episode: the e-stop stays engaged (latched)
        for c in held:
            np.testing.assert_allclose(c, np.clip(sim.state, -10, 10))
        assert all(np.array_equal(held[0], c) for c in held)
        estop.publish(Bool(data=False))
        assert wait_for(lambda: safety_diag(probe).get("estop") == "False", 10), runner.log("wam_policy_node")
        moving = sim.run_episode(2, 5)
        assert not np.allclose(moving[0], moving[-1])
        st = [s for s in statuses(probe) if s.get("published")]
        assert [s["hold"] for s in st[5:10]] == ["estop"] * 5 and st[10]["hold"] is None
        assert len(cmds) == 5
        # the std_srvs/SetBool service engages and releases it too
        from std_srvs.srv import SetBool

        cli = probe.node.create_client(SetBool, "/wam_policy_node/estop")
        assert cli.wait_for_service(timeout_sec=20)

        def call(on):
            fut = cli.call_async(SetBool.Request(data=on))
            assert wait_for(fut.done, 20) and fut.result().success

        call(True)
        stopped = sim.run_episode(3, 3)
        assert all(np.array_equal(stopped[0], c) for c in stopped)
        call(False)
        assert not np.allclose(*sim.run_episode(4, 5)[::4])
        st = [s for s in statuses(probe) if s.get("published")]
        assert [s["hold"] for s in st[15:18]] == ["estop"] * 3 and st[18]["hold"] is None
    finally:
        runner.stop()


def test_dry_run_publishes_only_to_shadow(probe, domain_id, tmp_path):
    probe.listen(topics.SHADOW_COMMAND, Float64MultiArray)
    probe.listen(topics.COMMAND, Float64MultiArray)
    sim = LockstepSim(probe)
    runner = start_policy(domain_id, {"safety": {"dry_run": True}}, tmp_path)
    try:
        assert wait_for(lambda: sim.pub_js["left"].get_subscription_count() > 0, 20)
        assert wait_for(lambda: probe.node.count_publishers(topics.SHADOW_COMMAND) > 0, 20)
        sim.publish_step(0, 0, sim.t_ns, 1, False)
        assert wait_for(lambda: probe.count(topics.SHADOW_COMMAND) >= 1, 20), runner.log("wam_policy_node")
        assert probe.count(topics.COMMAND) == 0
        assert probe.node.count_publishers(topics.COMMAND) == 0
    finally:
        runner.stop()


def test_bad_config_exits_with_one_line(domain_id, tmp_path):
    runner = start_policy(domain_id, {"backend": {"type": "no_such_backend"}}, tmp_path)
    try:
        assert wait_for(lambda: runner.dead(), 30)
        assert runner.dead()["wam_policy_node"] == 2
        assert "backend.type" in runner.log("wam_policy_node") and "no_such_backend" in runner.log("wam_policy_node")
    finally:
        runner.stop()


def test_lockstep_missing_camera_holds(probe, domain_id, tmp_path):
    probe.listen(topics.POLICY_STATUS, String)
    sim = LockstepSim(probe, cameras=["cam_high", "cam_left_wrist"])  # cam_right_wrist never comes
    runner = start_policy(domain_id, {"backend": {"type": "synthetic", "synthetic": {"horizon": 5}},
                                      "sync": {"lockstep_wait_s": 0.3}}, tmp_path)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = sim.run_episode(0, 3, resend_s=5.0)
        for c in cmds:
            np.testing.assert_allclose(c, HOME, atol=1e-9)  # a hold: the measured state
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= 3, 10)
        assert [s["hold"] for s in statuses(probe)] == ["missing_camera"] * 3
        assert "no frame at step" in runner.log("wam_policy_node")
        assert runner.dead() == {}
    finally:
        runner.stop()
