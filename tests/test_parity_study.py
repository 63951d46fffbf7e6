"""The paired mode end to end on the real graph: the expert family's same episode specs in the
nominal and the cousin world (`wam-policy eval --world`), paired by episode id by
`wam-policy parity-study` into its report; bad input (a real episode with no sim twin, runs of
different tasks, resuming into another world's folder) is a clear error naming the problem."""
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
POLICIES = ["--policy", "expert_noise_000", "--policy", "expert_noise_060"]


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "wam_apps.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ))
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for world in ("nominal", "cousin"):
        out[world] = tmp_path_factory.mktemp(world)
        _cli("eval", "--suite", "parity", *POLICIES, "--episodes", "2", "--seed", "3", "--bags", "none",
             "--world", world, "--out", str(out[world]))
    return out


def test_paired_runs_give_a_parity_report(runs, tmp_path):
    sim, real = ResultStore(runs["nominal"]).rows(), ResultStore(runs["cousin"]).rows()
    assert {r["world"] for r in sim} == {"nominal"} and {r["world"] for r in real} == {"cousin"}
    ids = lambda rows: sorted((r["policy"], r["seed"]) for r in rows)  # noqa: E731
    assert ids(sim) == ids(real) == [("expert_noise_000", 3), ("expert_noise_000", 4),
                                     ("expert_noise_060", 3), ("expert_noise_060", 4)]
    # the exact expert succeeds in both worlds (the cousin's gap is within what it tolerates)
    assert all(r["success"] for r in sim + real if r["policy"] == "expert_noise_000")
    manifest = json.loads((runs["cousin"] / "manifest.json").read_text())
    assert manifest["world"] == "cousin" and manifest["world_config"]["dynamics"]["actuator_gain"][1] < 1
    out = tmp_path / "study"
    proc = _cli("parity-study", str(runs["nominal"]), str(runs["cousin"]), "--out", str(out), "--n-real", "2",
                "--subsamples", "0", "--bootstrap", "200")
    res = json.loads((out / "parity_study.json").read_text())
    assert (out / "parity_study.png").stat().st_size > 10_000 and "Pearson r" in (out / "parity_study.md").read_text()
    assert res["worlds"] == {"sim": "nominal", "real": "cousin"}
    for r in sim:
        row = res["policies"][r["policy"]]
        assert row["paired_episodes"] == 2 and row["sim"]["episodes"] == row["sim_all"]["episodes"] == 2
    for pol in ("expert_noise_000", "expert_noise_060"):
        want = sum(r["success"] for r in real if r["policy"] == pol)
        assert res["policies"][pol]["real"]["successes"] == want
        assert res["policies"][pol]["at_n"] is None and "too few episodes" in res["policies"][pol]["note"]
    assert res["mmrv"]["lo"] <= res["mmrv"]["estimate"] <= res["mmrv"]["hi"]
    assert "report:" in proc.stdout


def test_bad_pairs_are_clear_errors(runs, tmp_path):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    rows = ResultStore(runs["cousin"]).rows()
    extra = dict(rows[0], seed=99)
    (lonely / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + [extra]))
    proc = _cli("parity-study", str(runs["nominal"]), str(lonely), "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2
    assert f"episode policy={extra['policy']} configuration=clean task=transfer_cube seed=99" in proc.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "episodes.jsonl").write_text("".join(json.dumps(dict(r, task="insertion")) + "\n" for r in rows))
    proc = _cli("parity-study", str(runs["nominal"]), str(other), check=False)
    assert proc.returncode == 2 and "different tasks" in proc.stderr
    # resuming a nominal run's folder in another world would mix the worlds
    proc = _cli("eval", "--suite", "parity", *POLICIES, "--episodes", "2", "--seed", "3", "--world", "cousin",
                "--out", str(runs["nominal"]), check=False)
    assert proc.returncode == 2 and "holds episodes of world 'nominal'" in proc.stderr


def test_several_runs_per_side_are_merged(runs, tmp_path):
    """A camera policy's run beside the expert family's: `--sim-run` / `--real-run` merge more runs of a side
    into one study (the same report as one run holding them all); an episode in two runs is an error."""
    split = {}
    for world in ("nominal", "cousin"):
        for pol in ("expert_noise_000", "expert_noise_060"):
            d = tmp_path / f"{world}_{pol}"
            d.mkdir()
            rows = [r for r in ResultStore(runs[world]).rows() if r["policy"] == pol]
            (d / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            split[world, pol] = str(d)
    common = ["--n-real", "2", "--subsamples", "0", "--bootstrap", "200"]
    _cli("parity-study", str(runs["nominal"]), str(runs["cousin"]), "--out", str(tmp_path / "one"), *common)
    _cli("parity-study", split["nominal", "expert_noise_000"], split["cousin", "expert_noise_000"],
         "--sim-run", split["nominal", "expert_noise_060"], "--real-run", split["cousin", "expert_noise_060"],
         "--out", str(tmp_path / "two"), *common)
    one, two = (json.loads((tmp_path / n / "parity_study.json").read_text()) for n in ("one", "two"))
    assert two["policies"] == one["policies"] and two["pearson"] == one["pearson"] and two["mmrv"] == one["mmrv"]
    assert two["runs"]["sim"] == [split["nominal", "expert_noise_000"], split["nominal", "expert_noise_060"]]
    proc = _cli("parity-study", str(runs["nominal"]), str(runs["cousin"]), "--sim-run",
                split["nominal", "expert_noise_060"], "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2
    assert "sim episode policy=expert_noise_060 configuration=clean task=transfer_cube seed=3 is in two runs" in proc.stderr
