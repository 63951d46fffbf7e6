"""One simulated ALOHA task episode by episode: the pure core the ROS node drives (no ROS).

``SimEnv(task, physical)``: ``reset(seed)`` samples the task layout (gym-aloha's seeded samplers)
and the physical perturbation for that seed, rebuilding the scene when the perturbation changes
it; ``step(action14)`` advances one control step; ``reward()`` / ``success``; ``privileged()``
is the PRIVILEGED_STATE payload; ``render(cam, h, w)`` an RGB frame; ``arm_joint_state(arm)``
the published joint state. ``world`` (sim_bridge/world.py) sets the reality this env simulates:
dynamics, cam_high's pose and FOV, colour response, sensor noise and latency (nominal: none).
"""
from __future__ import annotations

import mujoco
import numpy as np

from wam_common.config import ConfigError

from . import physical as phys
from .mujoco_aloha import START_ARM_POSE, AlohaSim
from .tasks import Task, get_task
from .world import SensorDelay, World, load_world


BACKENDS = ("mujoco", "sapien")
#: render quality → (offscreen MSAA samples, shadow map size); None = the scene XML's (gym-aloha:
#: 4 samples, 4096 px). "fast" is ~10x cheaper on a CPU (llvmpipe), at the cost of aliased edges
#: and blockier shadows than the frames gym-aloha checkpoints were trained on.
RENDER_QUALITY = {"gym_aloha": (None, None), "fast": (0, 1024)}


class SimEnv:
    """``backend``: ``mujoco`` (default; physics + EGL rendering) or ``sapien`` (SAPIEN 3 / PhysX on
    the CPU, scene converted from the same MuJoCo model; rendering only with a Vulkan device, so
    ``render=False`` for physics only). Physical perturbations that only change pixels (light,
    camera, texture) are MuJoCo-only."""

    def __init__(self, task: str, physical: str | dict | None = None, max_steps: int = 0,
                 backend: str = "mujoco", render: bool = True, quality: str = "gym_aloha",
                 world: str | dict | World | None = None):
        if backend not in BACKENDS:
            raise ConfigError(f"sim: unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
        if quality not in RENDER_QUALITY:
            raise ConfigError(f"sim: unknown render quality '{quality}' (known: {', '.join(RENDER_QUALITY)})")
        self.backend = backend
        self.render_enabled = bool(render)
        self.quality = quality
        self.task: Task = get_task(task)
        self.physical = phys.parse(physical)
        if backend == "sapien":
            visual = sorted(set(self.physical) & {"light", "camera", "texture"})
            if visual:
                raise ConfigError(f"physical: '{visual[0]}' is a MuJoCo-rendering perturbation; the sapien backend "
                                  f"supports {', '.join(sorted(set(phys.DIMENSIONS) - {'light', 'camera', 'texture'}))}")
        self.world = world if isinstance(world, World) else load_world(world)
        if backend == "sapien" and not self.world.is_nominal:
            raise ConfigError(f"world '{self.world.name}': worlds other than nominal are MuJoCo-only (backend 'sapien')")
        self._joint_delay = SensorDelay(self.world.joint_latency_steps)
        self._qpos_delay = SensorDelay(self.world.camera_latency_steps)
        self._delayed_data = None  # scratch MjData for frames rendered from a delayed state
        self._sensor_rng = self.world.sensor_rng(0)
        self.max_steps = int(max_steps) or self.task.max_steps
        self._sims: dict[str, AlohaSim] = {}
        self.sim: AlohaSim | None = None
        self.variant: phys.Variant | None = None
        self.seed = 0
        self.initial_objects: dict[str, list[float]] = {}
        self.best_reward = 0
        self.last_reward = 0

    # ---------------------------------------------------------------- episodes
    def reset(self, seed: int) -> dict:
        """Start an episode; returns the physical perturbation actually applied (for the start event)."""
        self.seed = int(seed)
        layout = {k: np.asarray(v, float) for k, v in self.task.sample_layout(self.seed).items()}
        variant = phys.sample(self.physical, self.task, self.seed, layout)
        key = variant.scene_key()
        sim = self._sims.get(key)
        if sim is None:
            spec = self.task.build_spec(False)
            variant.edit_spec(spec)
            sim = self._make_sim(spec)
            if len(self._sims) >= 4:  # bounded cache of compiled scene variants (each has GL contexts)
                old_key = next(iter(self._sims))
                self._sims.pop(old_key).close()
            self._sims[key] = sim
        if sim.backend == "mujoco":
            variant.edit_model(sim)
            self._apply_world(sim, variant)
        arm_q = variant.arm_qpos(START_ARM_POSE.copy())
        objects = {**variant.layout, **variant.distractor_poses}
        sim.reset(arm_q, objects, ctrl16=arm_q)
        if self.sim is not sim:
            self._delayed_data = None
        self.sim, self.variant = sim, variant
        self.initial_objects = {k: [float(x) for x in sim.free_pose(k)] for k in self.task.objects}
        self.best_reward = self.last_reward = 0
        self._sensor_rng = self.world.sensor_rng(self.seed)
        self._joint_delay.clear()
        self._qpos_delay.clear()
        self._observe()
        return variant.describe()

    def _apply_world(self, sim: AlohaSim, variant: phys.Variant) -> None:
        self.world.apply_dynamics(sim.model, sim.nominal_dynamics, self.task.objects, self.task.object_geoms)
        if self.world.edits_camera:
            self.apply_camera(sim, variant)

    def apply_camera(self, sim: AlohaSim, variant: phys.Variant) -> None:
        """cam_high's pose and FOV as this world has them, from the pose ``variant.edit_model`` restored
        (the nominal one, or the physical perturbation's); calibration calls it per candidate camera."""
        w = self.world
        m = sim.model
        cid = m.camera("top").id
        if variant.camera is not None:  # on top of the physical perturbation's pose (fixed mode, world frame)
            mat = np.empty(9)
            mujoco.mju_quat2Mat(mat, m.cam_quat[cid])
            pos, mat = m.cam_pos[cid].copy(), mat.reshape(3, 3)
        else:
            pos, mat, _ = sim.nominal_camera["top"]
        pos, mat, fovy = w.camera_pose(pos, mat, float(m.cam_fovy[cid]))
        m.cam_mode[cid] = mujoco.mjtCamLight.mjCAMLIGHT_FIXED
        m.cam_pos[cid] = pos
        m.cam_quat[cid] = phys._mat2quat(mat)
        m.cam_fovy[cid] = fovy

    def _observe(self) -> None:
        """Record this step's sensor values (the delayed views read them later)."""
        if self.world.joint_latency_steps or self.world.joint_noise_std:
            self._joint_delay.push({arm: self.sim.arm_joint_state(arm) for arm in ("left", "right")})
        if self.world.camera_latency_steps:
            self._qpos_delay.push(self.sim.full_qpos())

    def _make_sim(self, spec):
        if self.backend == "mujoco":
            sim = AlohaSim.from_spec(spec)
            offsamples, shadowsize = RENDER_QUALITY[self.quality]
            if offsamples is not None:  # before any Renderer (GL context) is made for this model
                sim.model.vis.quality.offsamples = offsamples
                sim.model.vis.quality.shadowsize = shadowsize
            return sim
        from .sapien_aloha import SapienAlohaSim, SapienRenderUnavailable, SapienUnavailable

        try:
            return SapienAlohaSim(spec.compile(), render=self.render_enabled)
        except (SapienUnavailable, SapienRenderUnavailable) as exc:
            raise ConfigError(f"backend 'sapien': {exc}"
                              + ("; set render.enabled: false for physics only" if self.render_enabled else "")) from None

    def step(self, action14: np.ndarray) -> int:
        self.sim.step(action14)
        self._observe()
        self.last_reward = int(self.task.reward(self.sim))
        self.best_reward = max(self.best_reward, self.last_reward)
        return self.last_reward

    @property
    def success(self) -> bool:
        return self.task.success(self.last_reward)

    # ---------------------------------------------------------------- observations
    def qpos14(self) -> np.ndarray:
        return self.sim.qpos14()

    def objects(self) -> dict[str, list[float]]:
        return {k: [float(x) for x in self.sim.free_pose(k)] for k in self.task.objects}

    def privileged(self, episode: int, step: int, stamp_ns: int, episode_start_ns: int) -> dict:
        return {
            "episode": episode, "step": step, "stamp_ns": stamp_ns, "episode_start_ns": episode_start_ns,
            "task": self.task.name, "seed": self.seed, "max_steps": self.max_steps,
            "qpos": [float(x) for x in self.sim.full_qpos()],
            "objects": self.objects(), "initial_objects": self.initial_objects,
            "reward": self.last_reward,
        }

    def arm_joint_state(self, arm: str) -> tuple[list[float], list[float], list[float]]:
        """(positions, velocities, efforts) of one arm as its sensors report them in this world
        (``joint_latency_steps`` late, positions with ``joint_noise_std`` noise)."""
        w = self.world
        if not (w.joint_latency_steps or w.joint_noise_std):
            return self.sim.arm_joint_state(arm)
        pos, vel, eff = self._joint_delay.get()[arm]
        if w.joint_noise_std:
            pos = [float(x) for x in np.asarray(pos) + self._sensor_rng.normal(0, w.joint_noise_std, len(pos))]
        return list(pos), list(vel), list(eff)

    def render(self, cam: str, height: int, width: int) -> np.ndarray:
        """A frame as this world's camera gives it (delayed state, colour response, pixel noise)."""
        data = None
        if self.world.camera_latency_steps and self.sim.backend == "mujoco":
            if self._delayed_data is None:
                self._delayed_data = mujoco.MjData(self.sim.model)
            self._delayed_data.qpos[:] = self._qpos_delay.get()
            mujoco.mj_kinematics(self.sim.model, self._delayed_data)
            mujoco.mj_camlight(self.sim.model, self._delayed_data)
            data = self._delayed_data
        img = self.sim.render(cam, height, width) if data is None else self.sim.render(cam, height, width, data=data)
        return self.world.colour_response(img, self._sensor_rng)

    def close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
