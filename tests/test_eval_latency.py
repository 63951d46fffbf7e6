"""`wam-policy eval` with inference latency in sim time over DDS (the expert: no cameras, cheap): the sync
strategy holds while each chunk is in flight — exactly ``d`` held steps per chunk, counted from the
policy's statuses — and the latency table and plot carry success, stalls, seam jumps and time to success."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wam_apps.evaluation.results import ResultStore

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
suite:
  name: latency_mini
  task: transfer_cube
  episodes: 1
  seed: 700
  clean: false
  levels: [2, 5]
  dimensions:
    Latency:
      values: {2: 0.1, 5: 0.8}
      sim: {wam_policy_node: {latency: {fixed_s: "{value}"}}}
  strategies:
    sync: {strategy: sync, execute_steps: 20}
"""


def _sync_stalls(steps: int, d: int, execute: int = 20) -> int:
    """Hand-worked: sync waits d steps for each chunk, then plays ``execute`` actions; over ``steps`` steps."""
    full, rest = divmod(steps, d + execute)
    return full * d + min(d, rest)


def test_latency_eval_table_over_dds(tmp_path):
    suite = tmp_path / "latency_mini.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "wam_apps.cli", "eval", "--policy", "expert", "--suite", str(suite),
                           "--out", str(out), "--bags", "none"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["configuration"]: r for r in ResultStore(out).rows()}
    assert set(rows) == {"latency_2", "latency_5"}
    for conf, d in (("latency_2", 5), ("latency_5", 40)):
        r = rows[conf]
        assert r["policy"] == "expert+sync" and r["status_complete"], r
        assert r["stall_steps"] == _sync_stalls(r["steps"], d), conf
        assert r["seam_jump_max"] > 0
        # the safety layer's tallies: every stall a hold while the chunk is in flight, nothing trimmed or rejected,
        # one chunk per sync cycle of d + 20 steps
        assert r["holds"] == {"no_action": r["stall_steps"]} and r["chunks_trimmed"] == r["chunks_rejected"] == 0, r
        assert r["chunks_used"] == -(-max(0, r["steps"] - d) // (d + 20)), r
        assert (r["time_to_success_s"] is not None) == r["success"]
    assert rows["latency_5"]["stall_steps"] > rows["latency_2"]["stall_steps"]
    view = json.loads((out / "latency.json").read_text())["expert+sync"]
    assert [p["latency_s"] for p in view["points"]] == [0.1, 0.8]
    md = (out / "latency.md").read_text()
    for col in ("stall steps / episode", "seam jump max / mean (rad)", "time to success (s)", "latency_5 (0.8 s)"):
        assert col in md
    assert (out / "latency.png").stat().st_size > 0
    assert "stall steps / episode" in proc.stdout  # the eval prints the latency table too
