"""`wam-policy eval --robot`: a real perturbation_node process stands for the robot's graph; the
operator's keys come on stdin. Stream-level profiles are switched on the live node, the labels
become rows, discarded episodes are rerun, and the EPISODE events reach the graph."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from std_msgs.msg import String

from rosutil import wait_for
from wam_common import topics
from wam_apps.evaluation.results import ResultStore

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]


def test_robot_eval_with_operator_labels(tmp_path, domain_id, probe):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    node = subprocess.Popen([sys.executable, "-m", "perturbation_node.node"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    probe.listen(topics.EPISODE, String, latched=True)
    probe.listen(topics.ACTIVE_PERTURBATION, String, latched=True)
    try:
        assert wait_for(lambda: probe.count(topics.ACTIVE_PERTURBATION) >= 1, 60), "perturbation_node did not come up"
        # smoke on a robot: clean, noise_3, language_3, light_3 (stream-level) and layout_3 (operator-set)
        keys = ["", "y",        # clean: success
                "", "x", "", "n",  # noise_3: discarded (setup problem), rerun, failure
                "", "y",        # language_3
                "", "n",        # light_3
                "", "y"]        # layout_3
        out = tmp_path / "robot"
        proc = subprocess.run([sys.executable, "-m", "wam_apps.cli", "eval", "--robot", "--suite", "smoke",
                               "--episodes", "1", "--policy", "my_policy", "--out", str(out)],
                              input="\n".join(keys) + "\n", capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = {r["configuration"]: r for r in ResultStore(out).rows()}
        assert {k: v["success"] for k, v in rows.items()} == {
            "clean": True, "noise_3": False, "language_3": True, "light_3": False, "layout_3": True}
        assert rows["noise_3"]["label"] == "failure"
        assert "displace the objects" in proc.stdout  # the operator was told what to set up for layout
        table = json.loads((out / "results.json").read_text())["my_policy"]
        assert table["Total"]["successes"] == 2 and table["Total"]["episodes"] == 4
        # the graph saw every start/end (the discarded one too), labels included
        assert wait_for(lambda: sum('"end"' in m.data for m in probe.decoded(topics.EPISODE, String)) >= 6, 30), \
            ([m.data for m in probe.decoded(topics.EPISODE, String)], proc.stdout[-1500:])
        ends = [json.loads(m.data) for m in probe.decoded(topics.EPISODE, String) if '"end"' in m.data]
        assert [e["label"] for e in ends] == ["success", "discard", "failure", "success", "failure", "success"]
        # the stream-level profiles were switched on the live node
        active = " ".join(m.data for m in probe.decoded(topics.ACTIVE_PERTURBATION, String))
        assert "noise" in active and "language" in active
    finally:
        node.terminate()
        node.wait(timeout=20)
