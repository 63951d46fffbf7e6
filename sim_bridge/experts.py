"""Scripted experts with privileged state (the interface in docs/GRAPH_CONTRACT.md).

``make_expert(task).reset(privileged)`` plans the episode the way ACT's scripted demos are made:
end-effector waypoints from the initial object poses (ACT's ``PickAndTransferPolicy`` /
``InsertionPolicy`` numbers for the gym-aloha tasks), executed open-loop in the task's mocap
end-effector twin scene, recording the joint trajectory (grippers from the commanded finger
position). ``actions(step, horizon)`` then returns that joint trajectory as 14-dim commands —
what ACT replays in the joint-space env. Pure numpy + mujoco, no ROS.
"""
from __future__ import annotations

from typing import Callable

import mujoco
import numpy as np

from wam_common import aloha

from .mujoco_aloha import START_ARM_POSE, AlohaSim
from .tasks import BEAM_HALF, get_task

#: gym-aloha's initial mocap poses (aligned with START_ARM_POSE), [x y z qw qx qy qz]
INIT_MOCAP_LEFT = np.array([-0.31718881, 0.5, 0.29525084, 1, 0, 0, 0])
INIT_MOCAP_RIGHT = np.array([0.31718881, 0.49999888, 0.29525084, 1, 0, 0, 0])

#: a stiffer weld than the XML's (0.25 0.25 0.001): with MuJoCo 3.x the soft weld loses against the
#: joints' frictionloss and the gripper stops ~5 cm short of ACT's grasp poses
WELD_SOLIMP = [0.9, 0.95, 0.001, 0.5, 2]

Waypoint = dict  # {"t": int, "xyz": (3,), "quat": (4,), "gripper": 0..1}
Plan = Callable[[np.ndarray, np.ndarray, dict], tuple[list[Waypoint], list[Waypoint]]]
PLANS: dict[str, Plan] = {}


def register_plan(task: str):
    def deco(fn: Plan) -> Plan:
        PLANS[task] = fn
        return fn

    return deco


def quat_mul(a, b) -> np.ndarray:
    out = np.empty(4)
    mujoco.mju_mulQuat(out, np.asarray(a, float), np.asarray(b, float))
    return out


def axis_quat(axis, degrees: float) -> np.ndarray:
    out = np.empty(4)
    mujoco.mju_axisAngle2Quat(out, np.asarray(axis, float), np.deg2rad(degrees))
    return out


def _wp(t, xyz, quat, gripper) -> Waypoint:
    return {"t": t, "xyz": np.asarray(xyz, float), "quat": np.asarray(quat, float), "gripper": float(gripper)}


@register_plan("transfer_cube")
def plan_transfer_cube(init_l, init_r, objects):
    box_xyz = np.asarray(objects["box"])[:3]
    pick = quat_mul(init_r[3:], axis_quat([0, 1, 0], -60))
    meet_left = axis_quat([1, 0, 0], 90)
    meet = np.array([0, 0.5, 0.25])
    left = [
        _wp(0, init_l[:3], init_l[3:], 0),
        _wp(100, meet + [-0.1, 0, -0.02], meet_left, 1),
        _wp(260, meet + [0.02, 0, -0.02], meet_left, 1),
        _wp(310, meet + [0.02, 0, -0.02], meet_left, 0),
        _wp(360, meet + [-0.1, 0, -0.02], [1, 0, 0, 0], 0),
        _wp(400, meet + [-0.1, 0, -0.02], [1, 0, 0, 0], 0),
    ]
    right = [
        _wp(0, init_r[:3], init_r[3:], 0),
        _wp(90, box_xyz + [0, 0, 0.08], pick, 1),
        _wp(130, box_xyz + [0, 0, -0.015], pick, 1),
        _wp(170, box_xyz + [0, 0, -0.015], pick, 0),
        _wp(200, meet + [0.05, 0, 0], pick, 0),
        _wp(220, meet, pick, 0),
        _wp(310, meet, pick, 1),
        _wp(360, meet + [0.1, 0, 0], pick, 1),
        _wp(400, meet + [0.1, 0, 0], pick, 1),
    ]
    return left, right


@register_plan("insertion")
def plan_insertion(init_l, init_r, objects):
    peg = np.asarray(objects["peg"])[:3]
    socket = np.asarray(objects["socket"])[:3]
    pick_r = quat_mul(init_r[3:], axis_quat([0, 1, 0], -60))
    pick_l = quat_mul(init_r[3:], axis_quat([0, 1, 0], 60))
    meet = np.array([0, 0.5, 0.15])
    lift_right = 0.00715
    left = [
        _wp(0, init_l[:3], init_l[3:], 0),
        _wp(120, socket + [0, 0, 0.08], pick_l, 1),
        _wp(170, socket + [0, 0, -0.03], pick_l, 1),
        _wp(220, socket + [0, 0, -0.03], pick_l, 0),
        _wp(285, meet + [-0.1, 0, 0], pick_l, 0),
        _wp(340, meet + [-0.05, 0, 0], pick_l, 0),
        _wp(400, meet + [-0.05, 0, 0], pick_l, 0),
    ]
    right = [
        _wp(0, init_r[:3], init_r[3:], 0),
        _wp(120, peg + [0, 0, 0.08], pick_r, 1),
        _wp(170, peg + [0, 0, -0.03], pick_r, 1),
        _wp(220, peg + [0, 0, -0.03], pick_r, 0),
        _wp(285, meet + [0.1, 0, lift_right], pick_r, 0),
        _wp(340, meet + [0.05, 0, lift_right], pick_r, 0),
        _wp(400, meet + [0.05, 0, lift_right], pick_r, 0),
    ]
    return left, right


@register_plan("lift_beam")
def plan_lift_beam(init_l, init_r, objects):
    beam = np.asarray(objects["beam"])[:3]
    grasp = BEAM_HALF[0] - 0.06  # grasp 6 cm in from each tip (as ACT grasps the 12 cm peg at its centre)
    end_l = beam + [-grasp, 0, 0]
    end_r = beam + [grasp, 0, 0]
    pick_r = quat_mul(init_r[3:], axis_quat([0, 1, 0], -60))
    pick_l = quat_mul(init_r[3:], axis_quat([0, 1, 0], 60))
    up = np.array([0, 0, 0.13])
    left = [
        _wp(0, init_l[:3], init_l[3:], 0),
        _wp(110, end_l + [0, 0, 0.08], pick_l, 1),
        _wp(160, end_l + [0, 0, -0.03], pick_l, 1),
        _wp(210, end_l + [0, 0, -0.03], pick_l, 0),
        _wp(300, end_l + up, pick_l, 0),
        _wp(400, end_l + up, pick_l, 0),
    ]
    right = [
        _wp(0, init_r[:3], init_r[3:], 0),
        _wp(110, end_r + [0, 0, 0.08], pick_r, 1),
        _wp(160, end_r + [0, 0, -0.03], pick_r, 1),
        _wp(210, end_r + [0, 0, -0.03], pick_r, 0),
        _wp(300, end_r + up, pick_r, 0),
        _wp(400, end_r + up, pick_r, 0),
    ]
    return left, right


def interpolate(traj: list[Waypoint], t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Linear interpolation of xyz, quat (as ACT: component-wise) and gripper at step ``t``."""
    if t >= traj[-1]["t"]:
        w = traj[-1]
        return w["xyz"], w["quat"], w["gripper"]
    for a, b in zip(traj, traj[1:]):
        if a["t"] <= t < b["t"]:
            f = (t - a["t"]) / (b["t"] - a["t"])
            return (a["xyz"] + (b["xyz"] - a["xyz"]) * f, a["quat"] + (b["quat"] - a["quat"]) * f,
                    a["gripper"] + (b["gripper"] - a["gripper"]) * f)
    w = traj[0]
    return w["xyz"], w["quat"], w["gripper"]


#: control steps between the knots of the expert's action noise (linearly interpolated between knots)
NOISE_KNOT_STEPS = 50


def action_noise(seed: int, noise_seed: int, std: float, steps: int) -> np.ndarray:
    """(steps, 14) smooth joint-target noise: every arm joint gets N(0, std) rad knots every
    NOISE_KNOT_STEPS steps, linearly interpolated (a slow drift, not white noise a position
    controller would average away); grippers get none. Seeded by (episode seed, noise_seed), so
    the same episode spec gets the same noise in every world."""
    out = np.zeros((steps, 14))
    if std <= 0 or steps <= 0:
        return out
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(noise_seed) & 0xFFFFFFFF, 0xAC7])
    n_knots = steps // NOISE_KNOT_STEPS + 2
    knots = rng.normal(0.0, std, (n_knots, 12))
    t = np.arange(steps) / NOISE_KNOT_STEPS
    arm = np.stack([np.interp(t, np.arange(n_knots), knots[:, j]) for j in range(12)], axis=1)
    out[:, :6], out[:, 7:13] = arm[:, :6], arm[:, 6:]
    return out


class ScriptedExpert:
    """Plans at :meth:`reset`; :meth:`actions` slices the planned joint trajectory.

    ``action_noise`` > 0 (rad) adds :func:`action_noise` to the arm joints: a graded family of
    weaker "policies" whose success falls with the noise (config/policies/expert_noise_*.yaml)."""

    def __init__(self, task: str, action_noise: float = 0.0, noise_seed: int = 0):
        if not np.isfinite(action_noise) or action_noise < 0:
            raise ValueError(f"expert: action_noise must be ≥ 0 rad, got {action_noise}")
        self.noise_std = float(action_noise)
        self.noise_seed = int(noise_seed)
        self.task = get_task(task)
        if task not in PLANS:
            raise KeyError(f"no scripted expert for task '{task}' (have: {', '.join(sorted(PLANS))})")
        self.plan = PLANS[task]
        self._ee: AlohaSim | None = None
        self.trajectory = np.zeros((0, 14))
        self.ee_max_reward = 0

    def _ee_sim(self) -> AlohaSim:
        if self._ee is None:
            sim = AlohaSim.from_spec(self.task.build_spec(True))
            weld = sim.model.eq_type == mujoco.mjtEq.mjEQ_WELD
            sim.model.eq_solimp[weld] = WELD_SOLIMP
            self._ee = sim
        return self._ee

    def reset(self, privileged: dict) -> None:
        """Plan from the episode's first privileged-state message (``initial_objects``, ``qpos``)."""
        objects = privileged.get("initial_objects") or privileged.get("objects")
        if not objects:
            raise ValueError("privileged state has no 'initial_objects' / 'objects'")
        missing = [o for o in self.task.objects if o not in objects]
        if missing:
            raise ValueError(f"privileged state lacks object '{missing[0]}' for task '{self.task.name}'")
        objects = {k: np.asarray(v, float) for k, v in objects.items()}
        steps = int(privileged.get("max_steps") or self.task.max_steps)
        self.trajectory = self.rollout(objects, steps)
        if self.noise_std > 0:
            seed = privileged.get("seed")
            if seed is None:
                raise ValueError("expert: action_noise needs the episode 'seed' in the privileged state")
            self.trajectory = self.trajectory + action_noise(int(seed), self.noise_seed, self.noise_std, steps)

    def rollout(self, objects: dict[str, np.ndarray], steps: int) -> np.ndarray:
        """Run the waypoint plan in the end-effector twin; return (steps, 14) joint commands."""
        sim = self._ee_sim()
        m, d = sim.model, sim.data
        left, right = self.plan(INIT_MOCAP_LEFT, INIT_MOCAP_RIGHT, objects)
        mujoco.mj_resetData(m, d)
        d.qpos[:16] = START_ARM_POSE
        d.mocap_pos[0], d.mocap_quat[0] = INIT_MOCAP_LEFT[:3], INIT_MOCAP_LEFT[3:]
        d.mocap_pos[1], d.mocap_quat[1] = INIT_MOCAP_RIGHT[:3], INIT_MOCAP_RIGHT[3:]
        close = aloha.PUPPET_GRIPPER_POSITION_CLOSE
        d.ctrl[:4] = [close, -close, close, -close]
        for name in self.task.objects:
            sim.set_free_pose(name, objects[name])
        mujoco.mj_forward(m, d)
        out = np.empty((steps, 14))
        best = 0
        for t in range(steps):
            q = d.qpos[:16]
            out[t, :6], out[t, 7:13] = q[:6], q[8:14]
            out[t, 6] = aloha.gripper_position_normalize(d.ctrl[0])
            out[t, 13] = aloha.gripper_position_normalize(d.ctrl[2])
            lx, lq, lg = interpolate(left, t)
            rx, rq, rg = interpolate(right, t)
            d.mocap_pos[0], d.mocap_quat[0] = lx, lq
            d.mocap_pos[1], d.mocap_quat[1] = rx, rq
            gl = aloha.gripper_position_unnormalize(lg)
            gr = aloha.gripper_position_unnormalize(rg)
            d.ctrl[:4] = [gl, -gl, gr, -gr]
            sim.step_ctrl()
            best = max(best, self.task.reward(sim))
        self.ee_max_reward = best
        return out

    def actions(self, step: int, horizon: int) -> np.ndarray:
        """Joint commands for steps ``step … step+horizon-1`` (the last one held past the plan's end)."""
        if len(self.trajectory) == 0:
            raise RuntimeError("Expert.actions() before reset()")
        idx = np.clip(np.arange(int(step), int(step) + int(horizon)), 0, len(self.trajectory) - 1)
        return self.trajectory[idx].copy()

    def close(self) -> None:
        if self._ee is not None:
            self._ee.close()


def make_expert(task: str, action_noise: float = 0.0, noise_seed: int = 0) -> ScriptedExpert:
    return ScriptedExpert(task, action_noise=action_noise, noise_seed=noise_seed)
