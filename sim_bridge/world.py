"""Worlds: one MuJoCo ALOHA, several physical realities (a documented *reality gap*).

A world config (``config/worlds/<name>.yaml``) says how a world differs from the nominal gym-aloha
model; ``nominal`` changes nothing. The ``cousin`` world stands in for the real robot in parity
studies (docs/sim_bridge.md → *Worlds*): the same scene and the same commands, with other
dynamics, another camera and other sensors. sim_bridge's ``world`` parameter picks one.

Every key is optional (missing = nominal). Per-joint values are a scalar (all joints) or a list
of 7 (waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate, gripper), the same for
both arms::

    world:
      name: cousin
      dynamics:
        actuator_gain: [0.8, 0.75, 0.8, 1, 1, 1, 1]   # × the position actuators' kp (gainprm, biasprm)
        joint_damping: [2, 3, 2, 0.2, 0.2, 0.1, 0]    # N·m·s/rad, added to the model's (0)
        frictionloss: 1.2                             # × the joints' frictionloss (fingers: the gripper entry)
        object_mass: 1.5                              # × the task objects' mass and inertia
        object_friction: 0.7                          # × the task objects' sliding friction
      camera:                                         # cam_high (the world-fixed ``top`` camera)
        position_offset_m: [0.01, -0.02, 0.0]         # world frame
        rotation_deg: [1.0, -1.5, 0.5]                # yaw (world z), pitch (camera x), roll (optical axis)
        fovy_scale: 1.03
      colour:                                         # every camera: out = 255·(gain·(in/255)^gamma) + offset
        gain: [1.05, 0.97, 0.9]
        gamma: 1.1
        offset: [4, 0, -3]
      sensors:
        joint_noise_std: 0.002                        # rad, on published joint positions
        image_noise_std: 3.0                          # on 0..255 pixel values
        joint_latency_steps: 1                        # joint states published this many control steps late
        camera_latency_steps: 2                       # frames rendered from the state this many steps ago

Noise is seeded from the episode seed (``world.sensor_rng(seed)``): a world is as deterministic
per seed as the nominal one. Pure numpy + mujoco.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import mujoco
import numpy as np

from wam_common.config import ConfigError, load_yaml, resolve_config

JOINTS_PER_ARM = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
#: qpos/dof/actuator index of each of the 7 per-arm entries (the gripper = both fingers), per arm
ARM_OFFSETS = {"left": 0, "right": 8}

KEYS = {
    "name": None, "description": None,
    "dynamics": {"actuator_gain", "joint_damping", "frictionloss", "object_mass", "object_friction"},
    "camera": {"position_offset_m", "rotation_deg", "fovy_scale"},
    "colour": {"gain", "gamma", "offset"},
    "sensors": {"joint_noise_std", "image_noise_std", "joint_latency_steps", "camera_latency_steps"},
}


def _per_joint(where: str, val, default: float) -> np.ndarray:
    if val is None:
        return np.full(7, float(default))
    a = np.asarray(val, dtype=float)
    if a.ndim == 0:
        a = np.full(7, float(a))
    if a.shape != (7,):
        raise ConfigError(f"world: {where} must be a number or a list of 7 ({', '.join(JOINTS_PER_ARM)}), "
                          f"got {len(a)} values")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ConfigError(f"world: {where} must be finite and ≥ 0, got {a.tolist()}")
    return a


def _vec(where: str, val, n: int, default: float) -> np.ndarray:
    if val is None:
        return np.full(n, float(default))
    a = np.asarray(val, dtype=float)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise ConfigError(f"world: {where} must be a number or a list of {n} finite numbers, got {val!r}")
    return a


def _scalar(where: str, val, default: float, lo: float = 0.0) -> float:
    if val is None:
        return float(default)
    try:
        x = float(val)
    except (TypeError, ValueError):
        raise ConfigError(f"world: {where} must be a number, got {val!r}") from None
    if not np.isfinite(x) or x < lo:
        raise ConfigError(f"world: {where} must be ≥ {lo}, got {x}")
    return x


@dataclass(eq=False)
class World:
    name: str = "nominal"
    description: str = ""
    actuator_gain: np.ndarray = field(default_factory=lambda: np.ones(7))
    joint_damping: np.ndarray = field(default_factory=lambda: np.zeros(7))
    frictionloss: np.ndarray = field(default_factory=lambda: np.ones(7))
    object_mass: float = 1.0
    object_friction: float = 1.0
    camera_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    camera_rotation_deg: np.ndarray = field(default_factory=lambda: np.zeros(3))
    fovy_scale: float = 1.0
    colour_gain: np.ndarray = field(default_factory=lambda: np.ones(3))
    colour_gamma: float = 1.0
    colour_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    joint_noise_std: float = 0.0
    image_noise_std: float = 0.0
    joint_latency_steps: int = 0
    camera_latency_steps: int = 0

    # ----------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, d: dict | None) -> "World":
        d = dict(d or {})
        if "world" in d and len(d) == 1:
            d = dict(d["world"] or {})
        for key, sub in d.items():
            if key not in KEYS:
                raise ConfigError(f"world: unknown key '{key}' (known: {', '.join(KEYS)})")
            if KEYS[key] is not None:
                if not isinstance(sub, dict):
                    raise ConfigError(f"world: '{key}' must be a mapping")
                for k in sub:
                    if k not in KEYS[key]:
                        raise ConfigError(f"world: unknown key '{key}.{k}' (known: {', '.join(sorted(KEYS[key]))})")
        dyn, cam = d.get("dynamics") or {}, d.get("camera") or {}
        col, sen = d.get("colour") or {}, d.get("sensors") or {}
        lat = {}
        for k in ("joint_latency_steps", "camera_latency_steps"):
            v = sen.get(k, 0)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 50:
                raise ConfigError(f"world: sensors.{k} must be an integer 0..50, got {v!r}")
            lat[k] = v
        return cls(
            name=str(d.get("name") or "unnamed"), description=str(d.get("description") or ""),
            actuator_gain=_per_joint("dynamics.actuator_gain", dyn.get("actuator_gain"), 1.0),
            joint_damping=_per_joint("dynamics.joint_damping", dyn.get("joint_damping"), 0.0),
            frictionloss=_per_joint("dynamics.frictionloss", dyn.get("frictionloss"), 1.0),
            object_mass=_scalar("dynamics.object_mass", dyn.get("object_mass"), 1.0, lo=1e-3),
            object_friction=_scalar("dynamics.object_friction", dyn.get("object_friction"), 1.0, lo=1e-3),
            camera_offset=_vec("camera.position_offset_m", cam.get("position_offset_m"), 3, 0.0),
            camera_rotation_deg=_vec("camera.rotation_deg", cam.get("rotation_deg"), 3, 0.0),
            fovy_scale=_scalar("camera.fovy_scale", cam.get("fovy_scale"), 1.0, lo=0.1),
            colour_gain=_vec("colour.gain", col.get("gain"), 3, 1.0),
            colour_gamma=_scalar("colour.gamma", col.get("gamma"), 1.0, lo=0.05),
            colour_offset=_vec("colour.offset", col.get("offset"), 3, 0.0),
            joint_noise_std=_scalar("sensors.joint_noise_std", sen.get("joint_noise_std"), 0.0),
            image_noise_std=_scalar("sensors.image_noise_std", sen.get("image_noise_std"), 0.0),
            **lat,
        )

    def to_dict(self) -> dict:
        """The world config (``config/worlds/*.yaml`` form; what calibration writes)."""
        r = lambda a: [round(float(x), 6) for x in a]  # noqa: E731
        return {"world": {
            "name": self.name, "description": self.description,
            "dynamics": {"actuator_gain": r(self.actuator_gain), "joint_damping": r(self.joint_damping),
                         "frictionloss": r(self.frictionloss), "object_mass": self.object_mass,
                         "object_friction": self.object_friction},
            "camera": {"position_offset_m": r(self.camera_offset), "rotation_deg": r(self.camera_rotation_deg),
                       "fovy_scale": self.fovy_scale},
            "colour": {"gain": r(self.colour_gain), "gamma": self.colour_gamma, "offset": r(self.colour_offset)},
            "sensors": {"joint_noise_std": self.joint_noise_std, "image_noise_std": self.image_noise_std,
                        "joint_latency_steps": self.joint_latency_steps,
                        "camera_latency_steps": self.camera_latency_steps},
        }}

    # ----------------------------------------------------------------- what differs
    def params(self) -> dict:
        """What the world sets (its config less name and description): compare worlds with this."""
        d = self.to_dict()["world"]
        return {k: v for k, v in d.items() if k not in ("name", "description")}

    @property
    def is_nominal(self) -> bool:
        return self.params() == World().params()

    @property
    def edits_dynamics(self) -> bool:
        return not (np.all(self.actuator_gain == 1) and np.all(self.joint_damping == 0)
                    and np.all(self.frictionloss == 1) and self.object_mass == 1 and self.object_friction == 1)

    @property
    def edits_image(self) -> bool:
        return not (np.all(self.colour_gain == 1) and self.colour_gamma == 1 and np.all(self.colour_offset == 0)
                    and self.image_noise_std == 0)

    @property
    def edits_camera(self) -> bool:
        return not (np.all(self.camera_offset == 0) and np.all(self.camera_rotation_deg == 0) and self.fovy_scale == 1)

    def sensor_rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x3021D])

    # ----------------------------------------------------------------- model edits
    def apply_dynamics(self, model: mujoco.MjModel, nominal: dict, object_bodies: tuple[str, ...],
                       object_geoms: tuple[str, ...]) -> None:
        """Write this world's dynamics into ``model`` from the ``nominal`` arrays (idempotent)."""
        for key in ("actuator_gainprm", "actuator_biasprm", "dof_damping", "dof_frictionloss", "body_mass",
                    "body_inertia", "geom_friction"):
            getattr(model, key)[...] = nominal[key]
        for off in ARM_OFFSETS.values():
            for j in range(7):
                idx = [off + j] if j < 6 else [off + 6, off + 7]  # the gripper: both finger slides
                for i in idx:
                    model.actuator_gainprm[i, 0] *= self.actuator_gain[j]
                    model.actuator_biasprm[i, 1] *= self.actuator_gain[j]
                    model.dof_damping[i] += self.joint_damping[j]
                    model.dof_frictionloss[i] *= self.frictionloss[j]
        for b in object_bodies:
            bid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, b)
            if bid >= 0:
                model.body_mass[bid] *= self.object_mass
                model.body_inertia[bid] *= self.object_mass
        for g in object_geoms:
            gid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, g)
            if gid >= 0:
                model.geom_friction[gid, 0] *= self.object_friction

    def camera_pose(self, pos: np.ndarray, mat: np.ndarray, fovy: float) -> tuple[np.ndarray, np.ndarray, float]:
        """cam_high's nominal world pose → this world's (extrinsics offset + rotation, FOV scale)."""
        from .physical import _rot

        yaw, pitch, roll = self.camera_rotation_deg
        q = _rot([0, 0, 1], yaw) @ _rot(mat[:, 0], pitch)
        return pos + self.camera_offset, q @ mat @ _rot([0, 0, 1], roll), fovy * self.fovy_scale

    # ----------------------------------------------------------------- stream edits
    def colour_response(self, img: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """uint8 HxWx3 → this camera's colour response and pixel noise."""
        if not self.edits_image:
            return img
        x = img.astype(np.float32) / 255.0
        if self.colour_gamma != 1:
            x = np.power(x, self.colour_gamma, dtype=np.float32)
        x = x * self.colour_gain.astype(np.float32) * 255.0 + self.colour_offset.astype(np.float32)
        if self.image_noise_std > 0 and rng is not None:
            x = x + rng.normal(0, self.image_noise_std, x.shape).astype(np.float32)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_world(name_or_path: str | dict | None) -> World:
    """``"nominal"``, ``"cousin"``, a path to a world YAML, a mapping, or None / "" (nominal)."""
    if name_or_path is None or name_or_path == "" or name_or_path == {}:
        return World()
    if isinstance(name_or_path, dict):
        return World.from_dict(name_or_path)
    path = resolve_config(str(name_or_path), "worlds")
    data = load_yaml(path)
    if "world" not in data:
        raise ConfigError(f"{path}: a world config has a top-level 'world:' mapping")
    try:
        return World.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class SensorDelay:
    """A ring of the last ``steps + 1`` values: ``get()`` is the value ``steps`` pushes ago (the oldest
    one until that many exist)."""

    def __init__(self, steps: int):
        self.buf: collections.deque = collections.deque(maxlen=int(steps) + 1)

    def clear(self) -> None:
        self.buf.clear()

    def push(self, value) -> None:
        self.buf.append(value)

    def get(self):
        return self.buf[0]
