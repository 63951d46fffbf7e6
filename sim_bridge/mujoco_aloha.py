"""MuJoCo physics and rendering on the gym-aloha bimanual ViperX scenes (plain ``mujoco``, no dm_control).

Conventions match gym-aloha 0.1.5 (``gym_aloha/tasks/sim.py``) exactly so a checkpoint trained there
runs unchanged:

- 14-dim action ``[left 6 joints (rad), left gripper 0..1, right 6, right gripper 0..1]``; a gripper
  value is un-normalised to a finger position with the puppet constants and sent as ``[g, -g]`` to
  the two finger position actuators; arm joints go straight to their position actuators.
- one control step = DT 0.02 s = ``round(DT / timestep)`` physics sub-steps, stepped the way
  dm_control's ``Physics.step`` does it (``mj_step2`` → ``mj_step(n-1)`` → ``mj_step1``).
- reset: ``mj_resetData``; arm qpos and ctrl = START_ARM_POSE; object poses; ``mj_forward``.
- state: arm joints + normalised left-finger position per arm.
- cameras: the scene's ``top`` view is ``cam_high``; the vx300s models' ``left_wrist`` /
  ``right_wrist`` cameras are ``cam_left_wrist`` / ``cam_right_wrist``.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # headless: read by mujoco at import
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from wam_common import aloha  # noqa: E402
from wam_common.topics import DT  # noqa: E402

#: START_ARM_POSE of gym-aloha / ACT: 16 qpos (per arm: 6 joints, left finger, right finger)
START_ARM_POSE = np.array([0, -0.96, 1.16, 0, -0.3, 0, 0.02239, -0.02239,
                           0, -0.96, 1.16, 0, -0.3, 0, 0.02239, -0.02239])
#: ROS camera name → MuJoCo camera name
CAMERA_MAP = {"cam_high": "top", "cam_left_wrist": "left_wrist", "cam_right_wrist": "right_wrist",
              "cam_low": "angle"}
FINGER_GEOMS = {"left": ("vx300s_left/10_left_gripper_finger", "vx300s_left/10_right_gripper_finger"),
                "right": ("vx300s_right/10_left_gripper_finger", "vx300s_right/10_right_gripper_finger")}


def gym_aloha_assets() -> Path:
    import gym_aloha

    return Path(gym_aloha.__file__).resolve().parent / "assets"


def action_to_ctrl(action14: np.ndarray) -> np.ndarray:
    """14-dim normalised command → the 16 actuator controls (gym-aloha ``before_step``)."""
    a = np.asarray(action14, dtype=np.float64)
    lg = aloha.gripper_position_unnormalize(a[6])
    rg = aloha.gripper_position_unnormalize(a[13])
    return np.concatenate([a[:6], [lg, -lg], a[7:13], [rg, -rg]])


def qpos16_to_state14(q16: np.ndarray) -> np.ndarray:
    q = np.asarray(q16)
    return np.concatenate([q[:6], [aloha.gripper_position_normalize(q[6])],
                           q[8:14], [aloha.gripper_position_normalize(q[14])]])


class AlohaSim:
    """One compiled scene: step 14-dim commands, read state, render cameras, read contacts."""

    backend = "mujoco"

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        self.data = mujoco.MjData(model)
        self.n_sub = max(1, int(round(DT / model.opt.timestep)))
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._geom_names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, i) or "" for i in range(model.ngeom)]
        self.nu = model.nu
        # nominal values of what physical perturbations edit, restored before each episode's edits
        self.nominal = {k: getattr(model, k).copy() for k in (
            "light_diffuse", "light_specular", "light_dir", "light_pos", "light_castshadow",
            "cam_mode", "cam_pos", "cam_quat", "cam_fovy", "geom_rgba")}
        # nominal dynamics, restored before a world's edits (sim_bridge/world.py)
        self.nominal_dynamics = {k: getattr(model, k).copy() for k in (
            "actuator_gainprm", "actuator_biasprm", "dof_damping", "dof_frictionloss", "body_mass",
            "body_inertia", "geom_friction")}
        self.nominal_headlight = (model.vis.headlight.ambient.copy(), model.vis.headlight.diffuse.copy())
        self.nominal_camera = self._camera_poses()

    def _camera_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """World pose and target point of each world-fixed camera at the start pose (mode resolved)."""
        m = self.model
        d = mujoco.MjData(m)
        d.qpos[:16] = START_ARM_POSE
        mujoco.mj_forward(m, d)
        out = {}
        for i in range(m.ncam):
            if m.cam_bodyid[i] != 0:
                continue  # wrist cameras ride on the arms
            tb = m.cam_targetbodyid[i]
            target = d.xpos[tb].copy() if tb >= 0 else d.cam_xpos[i] - d.cam_xmat[i].reshape(3, 3)[:, 2]
            out[m.camera(i).name] = (d.cam_xpos[i].copy(), d.cam_xmat[i].reshape(3, 3).copy(), target)
        return out

    def upload_texture(self, tex_id: int) -> None:
        """Push an edited ``model.tex_data`` texture to every live renderer's GL context."""
        for r in self._renderers.values():
            r._gl_context.make_current()
            mujoco.mjr_uploadTexture(self.model, r._mjr_context, tex_id)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec: mujoco.MjSpec) -> "AlohaSim":
        return cls(spec.compile())

    # ------------------------------------------------------------------ state
    def reset(self, arm_qpos16: np.ndarray, objects: dict[str, np.ndarray], ctrl16: np.ndarray | None = None) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[:16] = arm_qpos16
        d.ctrl[:16] = START_ARM_POSE if ctrl16 is None else ctrl16
        for name, pose in objects.items():
            self.set_free_pose(name, pose)
        mujoco.mj_forward(m, d)

    def _joint_adr(self, body: str) -> int:
        bid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)
        if bid < 0:
            raise KeyError(f"no body '{body}' in the scene")
        jid = self.model.body_jntadr[bid]
        if jid < 0 or self.model.jnt_type[jid] != mujoco.mjtJoint.mjJNT_FREE:
            raise KeyError(f"body '{body}' has no free joint")
        return int(self.model.jnt_qposadr[jid])

    def set_free_pose(self, body: str, pose7) -> None:
        adr = self._joint_adr(body)
        self.data.qpos[adr:adr + 7] = pose7

    def free_pose(self, body: str) -> np.ndarray:
        adr = self._joint_adr(body)
        return self.data.qpos[adr:adr + 7].copy()

    def step(self, action14: np.ndarray) -> None:
        """Apply one 14-dim command for one control step (DT)."""
        self.data.ctrl[:16] = action_to_ctrl(action14)
        self.step_ctrl()

    def step_ctrl(self) -> None:
        """One control step with the controls already in ``data.ctrl`` (dm_control legacy step)."""
        m, d = self.model, self.data
        mujoco.mj_step2(m, d)
        if self.n_sub > 1:
            mujoco.mj_step(m, d, self.n_sub - 1)
        mujoco.mj_step1(m, d)

    @property
    def time(self) -> float:
        return float(self.data.time)

    def qpos14(self) -> np.ndarray:
        return qpos16_to_state14(self.data.qpos[:16])

    def full_qpos(self) -> np.ndarray:
        return self.data.qpos.copy()

    def qvel14(self) -> np.ndarray:
        v = self.data.qvel
        span = aloha.PUPPET_GRIPPER_POSITION_OPEN - aloha.PUPPET_GRIPPER_POSITION_CLOSE
        return np.concatenate([v[:6], [v[6] / span], v[8:14], [v[14] / span]])

    def arm_joint_state(self, arm: str) -> tuple[list[float], list[float], list[float]]:
        """(positions, velocities, efforts) for ``aloha.JOINT_STATE_NAMES`` of one arm."""
        o = 0 if arm == "left" else 8
        q = self.data.qpos[o:o + 8]
        v = self.data.qvel[o:o + 8]
        f = self.data.qfrc_actuator[o:o + 8]
        grip_joint = aloha.gripper_joint_unnormalize(aloha.gripper_position_normalize(q[6]))
        pos = [float(x) for x in q[:6]] + [float(grip_joint), float(q[6]), float(q[7])]
        span = aloha.PUPPET_GRIPPER_POSITION_OPEN - aloha.PUPPET_GRIPPER_POSITION_CLOSE
        jspan = aloha.PUPPET_GRIPPER_JOINT_OPEN - aloha.PUPPET_GRIPPER_JOINT_CLOSE
        vel = [float(x) for x in v[:6]] + [float(v[6] / span * jspan), float(v[6]), float(v[7])]
        eff = [float(x) for x in f[:6]] + [float(f[6]), float(f[6]), float(f[7])]
        return pos, vel, eff

    def contacts(self) -> set[tuple[str, str]]:
        """Geom-name pairs ``(geom1, geom2)`` in contact now, in MuJoCo's order (as gym-aloha tests them)."""
        out = set()
        names = self._geom_names
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            a, b = names[c.geom1], names[c.geom2]
            out.add((a, b))
        return out

    # ------------------------------------------------------------------ rendering
    def renderer(self, height: int, width: int) -> mujoco.Renderer:
        key = (int(height), int(width))
        r = self._renderers.get(key)
        if r is None:
            r = mujoco.Renderer(self.model, height=key[0], width=key[1])
            self._renderers[key] = r
        return r

    def render(self, cam: str, height: int, width: int, data: mujoco.MjData | None = None) -> np.ndarray:
        """RGB uint8 HxWx3 from the ROS camera ``cam`` (or a MuJoCo camera name); ``data``: another
        state of this model to render (e.g. a delayed one), default the live state."""
        r = self.renderer(height, width)
        r.update_scene(self.data if data is None else data, camera=CAMERA_MAP.get(cam, cam))
        return r.render()

    def close(self) -> None:
        for r in self._renderers.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001 - a dead GL context at exit
                pass
        self._renderers.clear()
