"""Sim task registry (keyed by name): scene, seeded reset, reward/success, time limit, prompt.

``transfer_cube`` and ``insertion`` are gym-aloha's tasks (same XML, same seeded layouts via
``gym_aloha.utils.sample_box_pose`` / ``sample_insertion_pose``, same contact-pair rewards,
max reward 4 = success, 400 steps as in ACT / LeRobot). ``lift_beam`` is ours: a 24 cm beam
lies across the table; both arms grasp one end each and lift it level above 10 cm.

Add a task with :func:`register_task`; :func:`get_task` raises a ``KeyError`` naming the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import mujoco
import numpy as np

from .mujoco_aloha import FINGER_GEOMS, AlohaSim, gym_aloha_assets


@dataclass
class Task:
    """A task: ``build_spec(ee)`` the scene (``ee``: the mocap end-effector twin the scripted experts
    plan in); ``sample_layout(seed)`` object poses; ``reward(sim)`` 0..max_reward."""

    name: str
    prompt: str
    objects: tuple[str, ...]  # free-joint bodies, in qpos order
    build_spec: Callable[[bool], mujoco.MjSpec]
    sample_layout: Callable[[int | None], dict[str, np.ndarray]]
    reward: Callable[[AlohaSim], int]
    max_reward: int = 4
    max_steps: int = 400
    #: geoms of the task objects (physical perturbations recolour / avoid them)
    object_geoms: tuple[str, ...] = field(default_factory=tuple)

    def success(self, reward: int) -> bool:
        return reward >= self.max_reward


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown sim task '{name}' (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]


# ---------------------------------------------------------------------------- transfer_cube
def _spec(name: str, edit: Callable[[mujoco.MjSpec], None] | None = None) -> Callable[[bool], mujoco.MjSpec]:
    """gym-aloha's ``bimanual_viperx_<name>.xml`` (or ``..._end_effector_<name>.xml``), optionally edited."""

    def build(ee: bool = False) -> mujoco.MjSpec:
        xml = f"bimanual_viperx_end_effector_{name}.xml" if ee else f"bimanual_viperx_{name}.xml"
        spec = mujoco.MjSpec.from_file(str(gym_aloha_assets() / xml))
        if edit is not None:
            edit(spec)
        return spec

    return build


def _transfer_layout(seed):
    from gym_aloha.utils import sample_box_pose

    return {"box": sample_box_pose(seed)}


def _transfer_reward(sim: AlohaSim) -> int:
    c = sim.contacts()
    touch_left = ("red_box", FINGER_GEOMS["left"][0]) in c
    touch_right = ("red_box", FINGER_GEOMS["right"][1]) in c
    touch_table = ("red_box", "table") in c
    reward = 0
    if touch_right:
        reward = 1
    if touch_right and not touch_table:
        reward = 2
    if touch_left:
        reward = 3
    if touch_left and not touch_table:
        reward = 4
    return reward


register_task(Task(
    name="transfer_cube",
    prompt="Pick up the red cube with the right arm and transfer it to the left arm.",
    objects=("box",),
    build_spec=_spec("transfer_cube"),
    sample_layout=_transfer_layout,
    reward=_transfer_reward,
    object_geoms=("red_box",),
))


# ---------------------------------------------------------------------------- insertion
def _insertion_layout(seed):
    from gym_aloha.utils import sample_insertion_pose

    peg, socket = sample_insertion_pose(seed)
    return {"peg": peg, "socket": socket}


_SOCKET = ("socket-1", "socket-2", "socket-3", "socket-4")


def _insertion_reward(sim: AlohaSim) -> int:
    c = sim.contacts()
    touch_right = ("red_peg", FINGER_GEOMS["right"][1]) in c
    touch_left = any((s, FINGER_GEOMS["left"][0]) in c for s in _SOCKET)
    peg_table = ("red_peg", "table") in c
    socket_table = any((s, "table") in c for s in _SOCKET)
    peg_socket = any(("red_peg", s) in c for s in _SOCKET)
    pin = ("red_peg", "pin") in c
    reward = 0
    if touch_left and touch_right:
        reward = 1
    if touch_left and touch_right and not peg_table and not socket_table:
        reward = 2
    if peg_socket and not peg_table and not socket_table:
        reward = 3
    if pin:
        reward = 4
    return reward


register_task(Task(
    name="insertion",
    prompt="Insert the red peg into the blue socket.",
    objects=("peg", "socket"),
    build_spec=_spec("insertion"),
    sample_layout=_insertion_layout,
    reward=_insertion_reward,
    object_geoms=("red_peg",) + _SOCKET + ("pin",),
))


# ---------------------------------------------------------------------------- lift_beam
BEAM_HALF = np.array([0.12, 0.012, 0.012])
BEAM_LIFT_Z = 0.10  # success: beam centre above this, both grippers on it, level, off the table


def _beam_edit(spec: mujoco.MjSpec) -> None:
    spec.delete(spec.body("box"))
    for key in list(spec.keys):
        spec.delete(key)  # the keyframe's qpos size no longer matches
    body = spec.worldbody.add_body(name="beam", pos=[0, 0.5, 0.05])
    body.explicitinertial = True
    body.ipos = [0, 0, 0]
    body.iquat = [1, 0, 0, 0]
    body.mass = 0.08
    body.inertia = [0.002, 0.002, 0.002]  # as gym-aloha's objects: heavy damping of tumbling
    joint = body.add_freejoint(name="beam_joint")
    joint.frictionloss = 0.01
    body.add_geom(name="beam", type=mujoco.mjtGeom.mjGEOM_BOX, size=list(BEAM_HALF), rgba=[0.1, 0.7, 0.2, 1],
                  condim=4, solimp=[2, 1, 0.01, 0.5, 2], solref=[0.01, 1], friction=[1, 0.005, 0.0001])


def _beam_layout(seed):
    rng = np.random.RandomState(seed)
    xyz = rng.uniform([-0.05, 0.45, BEAM_HALF[2] + 0.005], [0.05, 0.6, BEAM_HALF[2] + 0.005])
    return {"beam": np.concatenate([xyz, [1.0, 0, 0, 0]])}


def _beam_reward(sim: AlohaSim) -> int:
    c = sim.contacts()
    def touch(a, b):
        return (a, b) in c or (b, a) in c

    touch_left = any(touch("beam", g) for g in FINGER_GEOMS["left"])
    touch_right = any(touch("beam", g) for g in FINGER_GEOMS["right"])
    on_table = touch("beam", "table")
    pose = sim.free_pose("beam")
    # beam axis tilt: z component of the body x-axis
    w, x, y, z = pose[3:]
    axis_z = 2 * (x * z - w * y)
    reward = 0
    if touch_left or touch_right:
        reward = 1
    if touch_left and touch_right:
        reward = 2
    if touch_left and touch_right and not on_table:
        reward = 3
    if reward == 3 and pose[2] > BEAM_LIFT_Z and abs(axis_z) < 0.25:
        reward = 4
    return reward


register_task(Task(
    name="lift_beam",
    prompt="Lift the green beam with both arms and hold it level.",
    objects=("beam",),
    build_spec=_spec("transfer_cube", _beam_edit),
    sample_layout=_beam_layout,
    reward=_beam_reward,
    object_geoms=("beam",),
))
