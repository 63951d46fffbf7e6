"""The SAPIEN 3 backend (PhysX on the CPU, scene converted from the MuJoCo model) behind the same interface.

Skipped where SAPIEN is not installed (optional: requirements-sapien.txt). Its cameras need a Vulkan
device: the camera test renders on a GPU machine and skips with the reason elsewhere.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sapien", reason="SAPIEN not installed (pip install --no-deps -r requirements-sapien.txt)")

from sim_bridge.env import SimEnv  # noqa: E402
from sim_bridge.experts import make_expert  # noqa: E402
from wam_common.config import ConfigError  # noqa: E402


def _rollout(env: SimEnv, seed: int) -> tuple[bool, int]:
    ex = make_expert(env.task.name)
    env.reset(seed)
    ex.reset(env.privileged(0, 0, 0, 0))
    for k in range(env.max_steps):
        env.step(ex.actions(k, 1)[0])
        if env.success:
            return True, k + 1
    return False, env.max_steps


@pytest.mark.unit
@pytest.mark.parametrize("task", ["transfer_cube", "insertion", "lift_beam"])
def test_expert_succeeds_on_sapien_physics(task):
    env = SimEnv(task, backend="sapien", render=False)
    try:
        ok, steps = _rollout(env, 1)
        assert ok, f"{task}: expert failed on SAPIEN (best reward {env.best_reward})"
        q = env.privileged(0, steps, 0, 0)["qpos"]
        assert len(q) == 16 + 7 * len(env.task.objects)
    finally:
        env.close()


@pytest.mark.unit
def test_same_interface_state_and_contacts():
    mj, sp = SimEnv("transfer_cube"), SimEnv("transfer_cube", backend="sapien", render=False)
    try:
        for env in (mj, sp):
            env.reset(2)
            hold = env.qpos14()
            for _ in range(30):
                env.step(hold)
        # same start state held by the position drives, the cube settles on the table in both
        assert np.allclose(mj.qpos14(), sp.qpos14(), atol=0.03), (mj.qpos14(), sp.qpos14())
        assert np.allclose(mj.sim.free_pose("box")[:3], sp.sim.free_pose("box")[:3], atol=0.005)
        assert ("red_box", "table") in sp.sim.contacts()
        pos, vel, eff = sp.sim.arm_joint_state("left")
        assert len(pos) == len(vel) == len(eff) == 9
    finally:
        mj.close()
        sp.close()


@pytest.mark.unit
def test_physical_robot_and_layout_on_sapien_visual_ones_rejected():
    env = SimEnv("transfer_cube", {"robot": 3, "layout": 2}, backend="sapien", render=False)
    info = env.reset(4)
    assert info["layout"]["distractors"] == 2 and "distractor_1" in env.sim.actors
    env.close()
    with pytest.raises(ConfigError, match="light"):
        SimEnv("transfer_cube", {"light": 2}, backend="sapien", render=False)


@pytest.mark.unit
@pytest.mark.gpu  # SAPIEN's cameras render through Vulkan on a GPU
def test_sapien_cameras_render_or_skip_without_vulkan():
    try:
        env = SimEnv("transfer_cube", backend="sapien", render=True)
        env.reset(0)
    except ConfigError as exc:
        if "Vulkan" in str(exc) or "vulkan" in str(exc) or "render" in str(exc):
            pytest.skip(f"no Vulkan device for SAPIEN rendering: {exc}")
        raise
    try:
        for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist"):
            img = env.render(cam, 240, 320)
            assert img.shape == (240, 320, 3) and img.dtype == np.uint8
            assert img.std() > 5, f"{cam} renders a flat image"
    finally:
        env.close()


@pytest.mark.ros
def test_sapien_node_in_lockstep(probe, domain_id):
    from sim_driver import ExpertDriver, start_sim

    drv = ExpertDriver(probe, "transfer_cube")
    sim = start_sim(domain_id, backend="sapien", render={"enabled": False}, seed=6)
    try:
        ends = drv.wait_event("end", timeout=600)
        assert ends, sim.log("sim_bridge")[-2000:]
    finally:
        sim.stop()
    start = drv.wait_event("start")[0]
    assert start["backend"] == "sapien" and start["cameras"] == []
    assert ends[0]["success"] and ends[0]["reason"] == "success", ends[0]
    assert not any(drv.images.values())
