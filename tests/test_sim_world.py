"""Worlds (sim_bridge/world.py) on the real MuJoCo core: nominal changes nothing, the cousin's
reality gap lands in the model as configured (and does not compound over resets), its sensors are
late and noisy as configured, its camera and colour response change the frames; bad world configs
are clear errors; the expert's action noise is seeded per episode spec."""
from __future__ import annotations

import numpy as np
import pytest

from sim_bridge.env import SimEnv
from sim_bridge.experts import action_noise
from sim_bridge.world import World, load_world
from wam_common.config import ConfigError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def envs():
    nom, cous = SimEnv("transfer_cube", world="nominal"), SimEnv("transfer_cube", world="cousin")
    yield nom, cous
    nom.close()
    cous.close()


def test_nominal_changes_nothing_and_cousin_applies_its_gap(envs):
    nom, cous = envs
    plain = SimEnv("transfer_cube", render=False)
    plain.reset(3)
    nom.reset(3)
    for key in plain.sim.nominal_dynamics:
        assert np.array_equal(getattr(plain.sim.model, key), getattr(nom.sim.model, key)), key
    w = load_world("cousin")
    for _ in range(2):  # a second reset must not compound the edits
        cous.reset(3)
        m = cous.sim.model
        assert m.actuator_gainprm[1, 0] == pytest.approx(1600 * w.actuator_gain[1])
        assert m.actuator_biasprm[9, 1] == pytest.approx(-1600 * w.actuator_gain[1])
        assert m.dof_damping[2] == pytest.approx(w.joint_damping[2])
        assert m.dof_frictionloss[8] == pytest.approx(50 * w.frictionloss[0])
        assert m.body("box").mass[0] == pytest.approx(0.05 * w.object_mass)
        assert m.geom("red_box").friction[0] == pytest.approx(w.object_friction)
    plain.close()


def test_cousin_sensors_are_late_noisy_and_its_camera_differs(envs):
    nom, cous = envs
    w = load_world("cousin")
    for env in (nom, cous):
        env.reset(5)
    truth = []
    cmd = np.array([0.2, -0.8, 1.0, 0, -0.3, 0, 0.5] * 2)
    for _ in range(4):
        truth.append(cous.sim.arm_joint_state("left")[0])
        cous.step(cmd)
        nom.step(cmd)
    pos = np.array(cous.arm_joint_state("left")[0])
    late = np.array(truth[-w.joint_latency_steps])  # the state joint_latency_steps control steps ago
    assert np.abs(pos - late).max() < 6 * w.joint_noise_std and np.abs(pos - late).max() > 0
    assert np.abs(pos - np.array(cous.sim.arm_joint_state("left")[0])).max() > 10 * w.joint_noise_std
    assert nom.arm_joint_state("left") == nom.sim.arm_joint_state("left")
    a, b = nom.render("cam_high", 96, 128), cous.render("cam_high", 96, 128)
    assert a.shape == b.shape and np.mean(np.abs(a.astype(int) - b.astype(int))) > 5
    # same world, same seed → the same frames and noise
    cous.reset(5)
    again = SimEnv("transfer_cube", world="cousin")
    again.reset(5)
    assert np.array_equal(cous.render("cam_high", 96, 128), again.render("cam_high", 96, 128))
    again.close()


def test_bad_world_configs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="dynamics.stiffness"):
        World.from_dict({"world": {"dynamics": {"stiffness": 2}}})
    with pytest.raises(ConfigError, match="actuator_gain must be a number or a list of 7"):
        World.from_dict({"dynamics": {"actuator_gain": [1, 2]}})
    with pytest.raises(ConfigError, match="joint_latency_steps"):
        World.from_dict({"sensors": {"joint_latency_steps": -1}})
    with pytest.raises(ConfigError, match="no such config 'nowhere'"):
        load_world("nowhere")
    bad = tmp_path / "w.yaml"
    bad.write_text("dynamics: {}\n")
    with pytest.raises(ConfigError, match="top-level 'world:'"):
        load_world(str(bad))
    with pytest.raises(ConfigError, match="MuJoCo-only"):
        SimEnv("transfer_cube", backend="sapien", render=False, world="cousin")
    cousin = load_world("cousin")
    assert World.from_dict(cousin.to_dict()).params() == cousin.params() and not cousin.is_nominal
    assert load_world("nominal").is_nominal


def test_expert_action_noise_is_seeded_by_the_episode_spec():
    a, b = action_noise(7, 0, 0.03, 400), action_noise(7, 0, 0.03, 400)
    assert np.array_equal(a, b) and a.shape == (400, 14)
    assert not np.array_equal(a, action_noise(8, 0, 0.03, 400))
    assert not np.array_equal(a, action_noise(7, 1, 0.03, 400))
    assert np.all(a[:, [6, 13]] == 0)  # grippers untouched
    assert 0.02 < a[:, :6].std() < 0.04  # ≈ σ (interpolated knots)
    assert np.abs(np.diff(a, axis=0)).max() < 0.01  # a slow drift, not white noise
    assert not action_noise(7, 0, 0.0, 400).any()
