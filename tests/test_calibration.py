"""``wam-policy calibrate``: recorded episodes → the sim's arm dynamics (sim_bridge/calibration.py).

Unit tier: bags written message for message as sim_bridge publishes them (tests/calibration_bags.py)
— step alignment, bad input, and fits that must fail and write nothing. The recovery of the
cousin world's hidden parameters from a bag the real graph recorded is tests/test_calibration_graph.py."""
from __future__ import annotations

import numpy as np
import pytest

from calibration_bags import write_sim_bag
from wam_common import topics as T

pytestmark = pytest.mark.unit


def _cli(capsys, *args):
    from wam_apps.cli import main

    rc = main(["calibrate", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def cousin_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "cousin"
    eps = write_sim_bag(path, "transfer_cube", [3, 4], world="cousin", steps=60, resend_every=7)
    return path, eps


def test_episodes_are_read_step_aligned(cousin_bag, tmp_path):
    from sim_bridge.calibration import estimate_noise_std
    from wam_apps.analysis.calibrate import recordings_from_bag

    path, eps = cousin_bag
    recs = recordings_from_bag(path)
    assert [(r.task, r.seed, r.steps) for r in recs] == [("transfer_cube", 3, 60), ("transfer_cube", 4, 60)]
    for r, (cmds, truth, published) in zip(recs, eps):
        np.testing.assert_array_equal(r.commands, cmds)      # resent steps read once, commands by their label
        np.testing.assert_allclose(r.measured, published, atol=1e-12)
        # the cousin's sensors: one step late and noisy (σ 0.003 rad on the arm joints)
        lag = r.measured[2:, :6] - truth[1:-1, :6]
        assert 0.002 < lag.std() < 0.004
    assert estimate_noise_std(recs) == pytest.approx(0.003, rel=0.2)
    # unlabelled (realtime-style) commands: the newest one logged before the next step's joint states
    write_sim_bag(tmp_path / "rt", "transfer_cube", [3], steps=30, labelled=False)
    rec = recordings_from_bag(tmp_path / "rt")[0]
    np.testing.assert_array_equal(rec.commands, eps[0][0][:30])
    assert recordings_from_bag(path, max_steps=25)[1].steps == 25


def test_bad_bags_are_clear_errors(cousin_bag, tmp_path, capsys):
    path, _ = cousin_bag
    rc, _, err = _cli(capsys, tmp_path / "nope", "--out", tmp_path / "o")
    assert rc == 2 and "nope" in err and "does not exist" in err
    write_sim_bag(tmp_path / "nocmd", "transfer_cube", [0], steps=25, policy="hold",
                  topics=[T.EPISODE, T.joint_state_topic("left"), T.joint_state_topic("right")])
    rc, _, err = _cli(capsys, tmp_path / "nocmd", "--out", tmp_path / "o")
    assert rc == 2 and "nocmd" in err and "no commands" in err
    write_sim_bag(tmp_path / "noev", "transfer_cube", [0], steps=25, policy="hold",
                  topics=[T.COMMAND, T.joint_state_topic("left"), T.joint_state_topic("right")])
    rc, _, err = _cli(capsys, tmp_path / "noev", "--out", tmp_path / "o")
    assert rc == 2 and "noev" in err and "episode events" in err
    write_sim_bag(tmp_path / "short", "transfer_cube", [0], steps=10, policy="hold")
    rc, _, err = _cli(capsys, tmp_path / "short", "--out", tmp_path / "o")
    assert rc == 2 and "short episode 0" in err and "only 10 consecutive steps" in err
    write_sim_bag(tmp_path / "phys", "transfer_cube", [0], steps=25, policy="hold", physical={"light": 2})
    rc, _, err = _cli(capsys, tmp_path / "phys", "--out", tmp_path / "o")
    assert rc == 2 and "phys episode 0" in err and "physical perturbation" in err
    write_sim_bag(tmp_path / "ins", "insertion", [0], steps=25, policy="hold")
    rc, _, err = _cli(capsys, path, tmp_path / "ins", "--out", tmp_path / "o")
    assert rc == 2 and "mix tasks" in err and "cousin episode 0" in err and "ins episode 0" in err
    rc, _, err = _cli(capsys, path, "--joints", "elbow,knee", "--out", tmp_path / "o")
    assert rc == 2 and "knee" in err
    # the camera fit asked for, from bags that recorded no cam_high images
    rc, _, err = _cli(capsys, path, "--camera", "--out", tmp_path / "o")
    assert rc == 2 and "cousin" in err and "no cam_high images" in err
    rc, _, err = _cli(capsys, path, "--no-dynamics", "--out", tmp_path / "o")
    assert rc == 2 and "no cam_high images" in err
    rc, _, err = _cli(capsys, path, "--no-dynamics", "--no-camera", "--out", tmp_path / "o")
    assert rc == 2 and "nothing to fit" in err
    assert not (tmp_path / "o").exists()


def test_a_fit_that_fails_says_why_and_writes_nothing(cousin_bag, tmp_path, capsys):
    path, _ = cousin_bag
    # a joint that never moves cannot be calibrated
    write_sim_bag(tmp_path / "still", "transfer_cube", [0], steps=30, policy="hold")
    rc, _, err = _cli(capsys, tmp_path / "still", "--out", tmp_path / "o1")
    assert rc == 3 and "too little excitation" in err and "waist" in err and "nothing written" in err
    assert not (tmp_path / "o1").exists()
    # out of iterations
    rc, _, err = _cli(capsys, path, "--max-iter", "1", "--out", tmp_path / "o2")
    assert rc == 3 and "did not converge in 1 iterations" in err and "nothing written" in err
    assert not (tmp_path / "o2").exists()
    # nothing to gain: the base world already is the bags' world
    rc, _, err = _cli(capsys, path, "--base", "cousin", "--out", tmp_path / "o3")
    assert rc == 3 and "did not reduce the replay error" in err and "nothing written" in err
    assert not (tmp_path / "o3").exists()
