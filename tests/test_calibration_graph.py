"""Calibration against a bag the real graph recorded: one scripted-expert episode of transfer_cube in
the cousin world (``wam-policy eval --world cousin``: sim_bridge, the expert policy node and the
recorder over DDS), then ``wam-policy calibrate`` on it — the cousin's hidden arm dynamics come
back, and the calibrated sim replays the episode as well as the cousin itself does.

Tolerance: a parameter the recording identifies (posterior standard error under half its prior's)
must be within 4 standard errors of the truth. The SE is the Gauss–Newton one of the noise-unit
residuals (the cousin's sensors: σ 0.003 rad, one step late), so 4 SE fails a correct fit with
< 1e-4 odds per parameter under a linearised model; the run is seeded, so the outcome does not
vary between runs. The parameters this episode must identify (it moves every joint): every
actuator gain, the shoulder's damping and friction loss. The rest are reported, not tested: dry
friction that never saturates in the recorded motion (most joints) changes no trajectory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wam_apps.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    ev = _cli("eval", "--suite", "parity", "--policy", "expert_noise_000", "--episodes", "1", "--seed", "0",
              "--world", "cousin", "--out", str(out / "run"))
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    bags = sorted(p.parent for p in (out / "run").rglob("metadata.yaml"))
    assert len(bags) == 1, bags
    cal = _cli("calibrate", str(bags[0]), "--reference", "cousin", "--name", "cousin_fit", "--out", str(out / "cal"))
    assert cal.returncode == 0, cal.stdout[-3000:] + cal.stderr[-3000:]
    return out / "cal", json.loads((out / "cal" / "calibration.json").read_text())


def test_the_cousins_hidden_dynamics_come_back(calibrated):
    from sim_bridge.calibration import KINDS
    from sim_bridge.world import load_world

    out, rep = calibrated
    truth = load_world("cousin")
    assert rep["converged"] and rep["episodes"] == 1 and rep["task"] == "transfer_cube"
    # the sensors: one step late, σ 0.003 rad
    assert rep["joint_latency_steps"] == 1
    assert rep["joint_noise_std"] == pytest.approx(0.003, rel=0.2)
    for k in KINDS:
        fit, se, ident = (np.array(rep[x][k], dtype=float) for x in ("params", "stderr", "identified"))
        true = getattr(truth, k)
        bad = [(j, fit[j], true[j], se[j]) for j in range(7) if ident[j] and not abs(fit[j] - true[j]) <= 4 * se[j]]
        assert not bad, (k, bad)
    assert all(rep["identified"]["actuator_gain"])
    assert rep["identified"]["joint_damping"][1] and rep["identified"]["frictionloss"][1]
    # the world config written is the fit, with the base (nominal) world's camera, colour and objects
    w = load_world(str(out / "world.yaml"))
    assert w.name == "cousin_fit" and w.joint_latency_steps == 1
    for k in KINDS:
        np.testing.assert_allclose(getattr(w, k), rep["params"][k], atol=1e-6)
    assert w.object_mass == 1.0 and not w.edits_camera and not w.edits_image


def test_the_calibrated_sim_replays_the_episode_like_the_cousin(calibrated):
    _, rep = calibrated
    err = rep["replay_error_mean_rad"]
    assert err["calibrated"] < 0.5 * err["base"]
    assert err["calibrated"] <= 1.1 * err["reference"]
    assert rep["chi2_dof"] < 1.2
