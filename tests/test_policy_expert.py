"""The expert backend through the real node, closing the loop with the real sim_bridge process."""
from __future__ import annotations

import json

import numpy as np
import pytest
from std_msgs.msg import Float64MultiArray, String

from rosutil import wait_for
from wam_common import topics
from wam_common.graph import Graph, NodeSpec
from wam_common.launcher import GraphRunner

pytestmark = pytest.mark.ros


def test_expert_backend_closes_the_loop_in_lockstep(probe, domain_id, tmp_path):
    probe.listen(topics.EPISODE, String, latched=True)
    probe.listen(topics.COMMAND, Float64MultiArray, depth=1000)
    probe.listen(topics.PRIVILEGED_STATE, String, depth=1000)
    probe.listen(topics.POLICY_STATUS, String, depth=1000)
    g = Graph("policy_expert", [
        NodeSpec("sim_bridge", "sim_bridge", {"task": "transfer_cube", "clock": "lockstep", "seed": 3,
                                              "render": {"width": 96, "height": 72, "camera_every": 25},
                                              "start_delay_s": 3.0}),
        NodeSpec("wam_policy_node", "wam_policy_node", {"lockstep": True, "backend": {"type": "expert"},
                                                        "observation": {"input_prefix": ""},
                                                        "runtime": {"strategy": "rtc", "replan_steps": 20}}),
    ], use_sim_time=True)
    runner = GraphRunner(g, domain_id=domain_id, log_dir=tmp_path / "logs").start()
    try:
        def ended():
            return any(json.loads(m.data)["event"] == "end" for m in probe.decoded(topics.EPISODE, String))

        assert wait_for(ended, 240), runner.log("sim_bridge")[-2000:] + runner.log("wam_policy_node")[-2000:]
        end = [json.loads(m.data) for m in probe.decoded(topics.EPISODE, String)
               if json.loads(m.data)["event"] == "end"][0]
        assert end["reason"] == "success" and end["success"], end
        assert runner.dead() == {}
        st = [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]
        assert len(st) == end["steps"] and all(s["hold"] is None for s in st)
        assert [s["step"] for s in st] == list(range(end["steps"]))
        # the commands are the expert's own plan, chunk by chunk
        from sim_bridge.experts import make_expert

        priv0 = json.loads(probe.decoded(topics.PRIVILEGED_STATE, String)[0].data)  # plans from initial_objects
        ex = make_expert("transfer_cube")
        ex.reset(priv0)
        want = ex.actions(0, end["steps"])
        cmds = np.array([m.data for m in probe.decoded(topics.COMMAND, Float64MultiArray)])
        assert cmds.shape == (end["steps"], 14)
        # ... through the safety filter (the plan's first steps move faster than max_joint_velocity)
        from wam_policy_node.safety import SafetyFilter

        sf, exp, ref = SafetyFilter(), [], cmds[0]  # step 0 is the start pose (ref = measured state)
        for a in want:
            ref, _ = sf.filter(a, ref)
            exp.append(ref)
        np.testing.assert_allclose(cmds, np.array(exp), atol=1e-9)
        clamped = sum(bool(s["clamped"]) for s in st)
        assert clamped < end["steps"] // 4, clamped
    finally:
        runner.stop(order=["wam_policy_node"])
