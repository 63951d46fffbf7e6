"""Our plain-mujoco sim vs gym-aloha's own dm_control env: bit-identical states, rewards and cam_high frames.

This is what "a checkpoint trained on gym-aloha runs unchanged" rests on: same XML, same reset, same
action → control mapping, same sub-stepping, same cameras. gym-aloha's env renders three 480×640
views every step, so its task is driven here through dm_control's ``control.Environment`` directly
with rendering left to the comparisons.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

import sim_bridge  # noqa: F401  (MUJOCO_GL before mujoco loads)
from sim_bridge.env import SimEnv
from sim_bridge.experts import make_expert

pytestmark = pytest.mark.unit


def _gym_env(task: str):
    from dm_control import mujoco as dm_mujoco
    from dm_control.rl import control
    from gym_aloha.constants import ASSETS_DIR, DT
    from gym_aloha.tasks import sim as gsim

    cls = gsim.TransferCubeTask if task == "transfer_cube" else gsim.InsertionTask

    class StateOnly(cls):
        def get_observation(self, physics):
            return collections.OrderedDict(qpos=self.get_qpos(physics))

    physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / f"bimanual_viperx_{task}.xml"))
    return control.Environment(physics, StateOnly(), float("inf"), control_timestep=DT, n_sub_steps=None,
                               flat_observation=False)


@pytest.mark.parametrize("task,seed", [("transfer_cube", 3), ("insertion", 11)])
def test_bit_identical_to_gym_aloha(task, seed):
    from gym_aloha.tasks import sim as gsim
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    gsim.BOX_POSE[0] = sample_box_pose(seed) if task == "transfer_cube" else np.concatenate(sample_insertion_pose(seed))
    gym = _gym_env(task)
    ts = gym.reset()
    ours = SimEnv(task)
    ours.reset(seed)
    try:
        assert np.array_equal(ts.observation["qpos"], ours.qpos14())
        assert np.array_equal(gym.physics.render(480, 640, camera_id="top"), ours.render("cam_high", 480, 640))
        expert = make_expert(task)
        expert.reset(ours.privileged(0, 0, 0, 0))
        for k in range(ours.max_steps):
            a = expert.actions(k, 1)[0]
            ts = gym.step(a)
            ours.step(a)
            assert np.array_equal(ts.observation["qpos"], ours.qpos14()), f"state differs at step {k}"
            assert ts.reward == ours.last_reward, f"reward differs at step {k}"
            if ts.reward == 4:
                break
        assert ours.success
        assert np.array_equal(gym.physics.render(480, 640, camera_id="top"), ours.render("cam_high", 480, 640))
    finally:
        ours.close()
