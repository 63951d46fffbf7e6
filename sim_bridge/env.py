"""One simulated ALOHA task episode by episode: the pure core the ROS node drives (no ROS).

``SimEnv(task, physical)``: ``reset(seed)`` samples the task layout (gym-aloha's seeded samplers)
and the physical perturbation for that seed, rebuilding the scene when the perturbation changes
it; ``step(action14)`` advances one control step; ``reward()`` / ``success``; ``privileged()``
is the PRIVILEGED_STATE payload; ``render(cam, h, w)`` an RGB frame.
"""
from __future__ import annotations

import numpy as np

from wam_common.config import ConfigError

from . import physical as phys
from .mujoco_aloha import START_ARM_POSE, AlohaSim
from .tasks import Task, get_task


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
                 backend: str = "mujoco", render: bool = True, quality: str = "gym_aloha"):
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
        arm_q = variant.arm_qpos(START_ARM_POSE.copy())
        objects = {**variant.layout, **variant.distractor_poses}
        sim.reset(arm_q, objects, ctrl16=arm_q)
        self.sim, self.variant = sim, variant
        self.initial_objects = {k: [float(x) for x in sim.free_pose(k)] for k in self.task.objects}
        self.best_reward = self.last_reward = 0
        return variant.describe()

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

    def render(self, cam: str, height: int, width: int) -> np.ndarray:
        return self.sim.render(cam, height, width)

    def close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
