"""The launcher's params files and the node entry wrapper, on real processes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rosutil import wait_for
from wam_common.launcher import params_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_params_file_has_no_yaml_aliases():
    shared = [1.0, 2.0]
    text = params_yaml("n", {"a": shared, "b": {"c": shared}})
    assert "&" not in text and "*" not in text  # rcl refuses anchors/aliases
    assert yaml.safe_load(text) == {"/n": {"ros__parameters": {"a": [1.0, 2.0], "b": {"c": [1.0, 2.0]}}}}


@pytest.mark.ros
@pytest.mark.skipif(shutil.which("chrt") is None or os.geteuid() != 0, reason="needs chrt and root")
def test_node_started_from_a_realtime_parent_runs_time_shared(domain_id):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    proc = subprocess.Popen(["chrt", "-f", "10", sys.executable, "-m", "perturbation_node.node"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert os.sched_getscheduler(proc.pid) == os.SCHED_FIFO or proc.poll() is None
        # once the node is up, it (and every thread it made) is back on SCHED_OTHER
        tasks = Path(f"/proc/{proc.pid}/task")
        assert wait_for(lambda: len(list(tasks.iterdir())) > 3, 60)
        assert wait_for(lambda: all(os.sched_getscheduler(int(t.name)) == os.SCHED_OTHER for t in tasks.iterdir()), 30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
