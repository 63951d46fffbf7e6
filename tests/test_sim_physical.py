"""Physical perturbations (pure core, real MuJoCo + EGL rendering): parsing, seeding, visible effect."""
from __future__ import annotations

import numpy as np
import pytest

from sim_bridge import physical
from sim_bridge.env import SimEnv
from wam_common.config import ConfigError

H, W = 96, 128


def _frame(env: SimEnv, seed: int, cam: str = "cam_high") -> tuple[np.ndarray, dict]:
    info = env.reset(seed)
    return env.render(cam, H, W).copy(), info


@pytest.fixture(scope="module")
def nominal():
    env = SimEnv("transfer_cube")
    img, info = _frame(env, 0)
    env.close()
    assert info == {}
    return img


@pytest.mark.unit
def test_parse_and_errors():
    assert physical.parse("") == {} and physical.parse("none") == {} and physical.parse(None) == {}
    assert physical.parse("light:3, camera:5") == {"light": 3, "camera": 5}
    assert physical.parse({"robot": 2, "layout": 0}) == {"robot": 2}
    for bad, key in (("wobble:2", "wobble"), ("light:9", "light"), ("light:x", "light")):
        with pytest.raises(ConfigError, match=key):
            physical.parse(bad)


@pytest.mark.unit
@pytest.mark.parametrize("dim", physical.DIMENSIONS)
def test_each_dimension_is_seeded_and_visible(dim, nominal):
    env = SimEnv("transfer_cube", f"{dim}:3")
    a, info_a = _frame(env, 7)
    b, info_b = _frame(env, 7)
    c, info_c = _frame(env, 8)
    n0, _ = _frame(SimEnv("transfer_cube", f"{dim}:0"), 0)
    env.close()
    assert info_a == info_b and info_a[dim]["level"] == 3
    assert info_a != info_c
    assert np.array_equal(a, b), "same seed must render the same frame"
    assert np.array_equal(n0, nominal), "level 0 is nominal"
    changed = int((np.abs(a.astype(int) - nominal.astype(int)).max(axis=2) > 8).sum())
    assert changed > 60, f"{dim}:3 barely changes cam_high ({changed} pixels changed)"


@pytest.mark.unit
def test_levels_grow_and_nominal_is_restored(nominal):
    env = SimEnv("transfer_cube", "camera:5,light:5")
    diffs = []
    for lvl in (1, 5):
        env.physical = physical.parse(f"camera:{lvl},light:{lvl}")
        img, _ = _frame(env, 3)
        diffs.append(np.abs(img.astype(int) - nominal.astype(int)).mean())
    env.physical = {}
    back, info = _frame(env, 0)
    env.close()
    assert diffs[0] < diffs[1]
    assert info == {} and np.array_equal(back, nominal), "a cached scene must return to nominal"


@pytest.mark.unit
def test_robot_init_noise_and_layout():
    env = SimEnv("transfer_cube", "robot:3,layout:4")
    info = env.reset(11)
    q = env.sim.data.qpos[:16]
    noise = np.array(info["robot"]["noise"])
    assert np.all(np.abs(noise) <= 0.225 + 1e-9) and np.std(noise) > 0.02
    from sim_bridge.mujoco_aloha import START_ARM_POSE

    assert np.allclose(q[:6] - START_ARM_POSE[:6], noise[:6], atol=1e-4)
    assert info["layout"]["distractors"] == 4
    poses = [env.sim.free_pose(f"distractor_{i}") for i in range(4)]
    box = env.sim.free_pose("box")
    assert all(np.linalg.norm(p[:2] - box[:2]) > 0.079 for p in poses)
    for _ in range(50):
        env.step(env.qpos14())  # distractors settle on the table, nothing explodes
    assert all(0 < env.sim.free_pose(f"distractor_{i}")[2] < 0.1 for i in range(4))
    env.close()


@pytest.mark.ros
def test_contact_sheet_command(tmp_path):
    import subprocess
    import sys

    import cv2

    out = tmp_path / "sheet.png"
    cmd = [sys.executable, "-m", "wam_apps.cli", "contact-sheet", "-o", str(out), "--tasks", "transfer_cube,lift_beam",
           "--dimensions", "light,layout", "--levels", "1,5", "--cell-width", "64", "--settle-steps", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    # 2 tasks x 2 dims rows of 48 px (+ one 6 px gap), 1 nominal + 2 level columns of 64 px
    assert img.shape == (4 * 48 + 6, 3 * 64, 3)
    bad = subprocess.run(cmd[:4] + ["--dimensions", "wobble", "-o", str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "wobble" in bad.stderr


@pytest.mark.unit
def test_fast_render_quality_is_close_to_gym_aloha(nominal):
    env = SimEnv("transfer_cube", quality="fast")
    img, _ = _frame(env, 0)
    env.close()
    d = np.abs(img.astype(int) - nominal.astype(int))
    assert 0 < d.mean() < 3, d.mean()  # different (no MSAA, smaller shadow map), yet the same scene
    with pytest.raises(ConfigError, match="quality"):
        SimEnv("transfer_cube", quality="ultra")
