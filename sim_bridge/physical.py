"""Physical perturbations only a simulator can make, levels 1–5, seeded (registry keyed by name).

The study's dimensions (LIBERO-Plus / RoboTwin 2.0-Plus, see shared/DESIGN.md):

- ``light``: intensity ×U(1 ± 0.15·l), colour tint ±0.06·l per channel, directions turned by up to
  8°·l, shadows from every light at l ≥ 3, ambient headlight ×U(1 ± 0.12·l).
- ``camera`` (cam_high): distance ×U(1 − 0.03·l, 1) (×0.85–1.0 at l = 5), orbit yaw / pitch and roll
  each up to ±l° (5° at l = 5), field of view ×(1 ± 0.02·l).
- ``robot``: initial arm joints + N(0, σ) clipped to ±c with σ = 0.1·l/3, c = 0.225·l/3 (level 3 is
  the study's σ = 0.1 rad clipped ±0.225); with probability l/5 a gripper starts at an extreme
  (fully open or closed).
- ``layout``: task objects displaced by up to 1.2·l cm in x/y, plus l distractor objects
  (random colour, kept ≥ 8 cm from the task objects).
- ``texture``: the table top gets a seeded procedural texture (checker / stripes / noise / blobs)
  in random colours, blended with the nominal grey by l/5.

Chosen by the sim_bridge ``physical`` parameter (``"light:3"``, ``"camera:5,robot:2"``); sampled
at each reset from the episode seed, independently per dimension, and reported in the episode
start event. Level 0 (or "none") is nominal. Pure numpy + mujoco.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import mujoco
import numpy as np

from wam_common.config import ConfigError

LEVELS = range(0, 6)
DIMENSIONS: tuple[str, ...] = ("light", "camera", "robot", "layout", "texture")
MAX_DISTRACTORS = 5
TEX_SIZE = 256
TABLE_TOP = {"center": (0.0, 0.6), "half": (0.6096, 0.381)}  # gym-aloha tabletop.stl, z = 0 on top


def parse(spec) -> dict[str, int]:
    """``"light:3,camera:2"`` / ``{"light": 3}`` / ``""`` → ``{dimension: level}`` (ConfigError naming the key)."""
    if spec is None or spec == "" or spec == "none" or spec == {}:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, _, lvl = part.partition(":")
            items.append((name.strip(), lvl.strip() or "3"))
    out: dict[str, int] = {}
    for name, lvl in items:
        if name not in DIMENSIONS:
            raise ConfigError(f"physical: unknown perturbation '{name}' (known: {', '.join(DIMENSIONS)})")
        try:
            level = int(lvl)
        except (TypeError, ValueError):
            raise ConfigError(f"physical: level of '{name}' must be an integer 0..5, got {lvl!r}") from None
        if level not in LEVELS:
            raise ConfigError(f"physical: level of '{name}' must be 0..5, got {level}")
        if level > 0:
            out[name] = level
    return out


def _rng(seed: int, dim: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, DIMENSIONS.index(dim), 0x5EED])


def _rot(axis, deg: float) -> np.ndarray:
    q = np.empty(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, float), np.deg2rad(deg))
    m = np.empty(9)
    mujoco.mju_quat2Mat(m, q)
    return m.reshape(3, 3)


def _mat2quat(mat: np.ndarray) -> np.ndarray:
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat, dtype=float).reshape(9))
    return q


# --------------------------------------------------------------------------- the sampled variant
@dataclass
class Variant:
    """One episode's perturbation: what to add to the scene, how to edit the compiled model, the
    initial arm pose and object layout, and a JSON-able description."""

    layout: dict[str, np.ndarray]
    levels: dict[str, int] = field(default_factory=dict)
    distractor_poses: dict[str, np.ndarray] = field(default_factory=dict)
    distractor_rgba: list = field(default_factory=list)
    light: dict | None = None
    camera: dict | None = None
    robot: dict | None = None
    texture: np.ndarray | None = None  # (TEX_SIZE, TEX_SIZE, 3) uint8
    info: dict = field(default_factory=dict)

    # -- scene structure (compiled once per key, then cached by SimEnv)
    def scene_key(self) -> str:
        return f"d{len(self.distractor_poses)}-t{int(self.texture is not None)}"

    def edit_spec(self, spec: mujoco.MjSpec) -> None:
        if self.texture is not None:
            add_table_texture(spec)
        for i in range(len(self.distractor_poses)):
            add_distractor(spec, i)

    # -- per-episode values on the compiled model
    def edit_model(self, sim) -> None:
        m = sim.model
        nominal = sim.nominal
        for key, val in nominal.items():
            getattr(m, key)[...] = val
        m.vis.headlight.ambient[:] = sim.nominal_headlight[0]
        m.vis.headlight.diffuse[:] = sim.nominal_headlight[1]
        if self.light is not None:
            apply_light(m, self.light)
        if self.camera is not None:
            apply_camera(sim, self.camera)
        for i, rgba in enumerate(self.distractor_rgba):
            m.geom(f"distractor_{i}").rgba[:] = rgba
        if self.texture is not None:
            tex = m.texture("wam_table_tex")
            adr, n = int(tex.adr[0]), TEX_SIZE * TEX_SIZE * 3
            m.tex_data[adr:adr + n] = self.texture.reshape(-1)
            sim.upload_texture(tex.id)

    def arm_qpos(self, q16: np.ndarray) -> np.ndarray:
        if self.robot is not None:
            q16 = q16.copy()
            q16[:6] += self.robot["left_noise"]
            q16[8:14] += self.robot["right_noise"]
            for arm, off in (("left", 6), ("right", 14)):
                g = self.robot["grippers"][arm]
                if g is not None:
                    q16[off], q16[off + 1] = g, -g
        return q16

    def describe(self) -> dict:
        return dict(self.info)


# --------------------------------------------------------------------------- scene edits
def add_table_texture(spec: mujoco.MjSpec) -> None:
    spec.add_texture(name="wam_table_tex", type=mujoco.mjtTexture.mjTEXTURE_2D,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_FLAT, width=TEX_SIZE, height=TEX_SIZE,
                     rgb1=[0.2, 0.2, 0.2], rgb2=[0.2, 0.2, 0.2])
    mat = spec.add_material(name="wam_table_mat")
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "wam_table_tex"
    table = spec.body("table")
    hx, hy = TABLE_TOP["half"]
    # a visual-only skin on the table top (the mesh has no texture coordinates)
    table.add_geom(name="wam_table_skin", type=mujoco.mjtGeom.mjGEOM_BOX, size=[hx, hy, 0.0005],
                   pos=[0, 0, 0.0005], contype=0, conaffinity=0, group=1, material="wam_table_mat",
                   rgba=[1, 1, 1, 1])


def add_distractor(spec: mujoco.MjSpec, i: int) -> None:
    shapes = [(mujoco.mjtGeom.mjGEOM_BOX, [0.018, 0.018, 0.018]),
              (mujoco.mjtGeom.mjGEOM_CYLINDER, [0.02, 0.025, 0]),
              (mujoco.mjtGeom.mjGEOM_SPHERE, [0.022, 0, 0]),
              (mujoco.mjtGeom.mjGEOM_BOX, [0.03, 0.012, 0.012]),
              (mujoco.mjtGeom.mjGEOM_CYLINDER, [0.015, 0.04, 0])]
    gtype, size = shapes[i % len(shapes)]
    body = spec.worldbody.add_body(name=f"distractor_{i}", pos=[0.5 + 0.1 * i, 1.5, 0.05])
    body.explicitinertial = True
    body.ipos = [0, 0, 0]
    body.iquat = [1, 0, 0, 0]
    body.mass = 0.05
    body.inertia = [0.002, 0.002, 0.002]
    j = body.add_freejoint(name=f"distractor_{i}_joint")
    j.frictionloss = 0.01
    body.add_geom(name=f"distractor_{i}", type=gtype, size=size, rgba=[0.5, 0.5, 0.5, 1], condim=4,
                  friction=[1, 0.005, 0.0001])


def distractor_half_height(i: int) -> float:
    return [0.018, 0.025, 0.022, 0.012, 0.04][i % 5]


# --------------------------------------------------------------------------- model edits
def apply_light(m: mujoco.MjModel, p: dict) -> None:
    for li in range(m.nlight):
        m.light_diffuse[li] = np.clip(m.light_diffuse[li] * p["intensity"] * np.asarray(p["color"]), 0, 1)
        m.light_specular[li] = np.clip(m.light_specular[li] * p["intensity"], 0, 1)
        d = _rot(p["axes"][li], p["turn_deg"][li]) @ m.light_dir[li]
        m.light_dir[li] = d / np.linalg.norm(d)
        if p["shadows"]:
            m.light_castshadow[li] = 1
    m.vis.headlight.ambient[:] = np.clip(np.asarray(m.vis.headlight.ambient) * p["ambient"], 0, 1)
    m.vis.headlight.diffuse[:] = np.clip(np.asarray(m.vis.headlight.diffuse) * p["ambient"], 0, 1)


def apply_camera(sim, p: dict) -> None:
    """Orbit cam_high about its target, scale its distance, roll it, scale its FOV (fixed mode)."""
    m = sim.model
    cam = m.camera(p["mj_camera"])
    pos0, mat0, target = sim.nominal_camera[p["mj_camera"]]
    q = _rot([0, 0, 1], p["yaw_deg"]) @ _rot(mat0[:, 0], p["pitch_deg"])
    pos = target + q @ (pos0 - target) * p["distance"]
    mat = q @ mat0 @ _rot([0, 0, 1], p["roll_deg"])
    m.cam_mode[cam.id] = mujoco.mjtCamLight.mjCAMLIGHT_FIXED
    m.cam_pos[cam.id] = pos  # world body: parent frame = world
    m.cam_quat[cam.id] = _mat2quat(mat)
    m.cam_fovy[cam.id] = p["fovy"]


# --------------------------------------------------------------------------- samplers (registry)
Sampler = Callable[[Variant, int, np.random.Generator, object], None]
SAMPLERS: dict[str, Sampler] = {}


def register(name: str):
    def deco(fn: Sampler) -> Sampler:
        SAMPLERS[name] = fn
        return fn

    return deco


@register("light")
def _light(v: Variant, level: int, rng: np.random.Generator, task) -> None:
    n = 3  # gym-aloha scene lights
    p = {"intensity": float(rng.uniform(1 - 0.15 * level, 1 + 0.15 * level)),
         "color": (1 + rng.uniform(-0.06, 0.06, 3) * level).round(4).tolist(),
         "turn_deg": rng.uniform(-8 * level, 8 * level, n).round(3).tolist(),
         "axes": [(lambda a: (a / np.linalg.norm(a)).round(4).tolist())(rng.normal(size=3)) for _ in range(n)],
         "shadows": level >= 3,
         "ambient": float(rng.uniform(1 - 0.12 * level, 1 + 0.12 * level))}
    v.light = p
    v.info["light"] = {"level": level, "intensity": round(p["intensity"], 3), "color": p["color"],
                       "turn_deg": p["turn_deg"], "shadows": p["shadows"], "ambient": round(p["ambient"], 3)}


@register("camera")
def _camera(v: Variant, level: int, rng: np.random.Generator, task) -> None:
    a = float(level)
    p = {"mj_camera": "top", "distance": float(rng.uniform(1 - 0.03 * level, 1.0)),
         "yaw_deg": float(rng.uniform(-a, a)), "pitch_deg": float(rng.uniform(-a, a)),
         "roll_deg": float(rng.uniform(-a, a)), "fov_scale": float(rng.uniform(1 - 0.02 * level, 1 + 0.02 * level))}
    p["fovy"] = 78.0 * p["fov_scale"]
    v.camera = p
    v.info["camera"] = {"level": level, "camera": "cam_high",
                        **{k: round(p[k], 4) for k in ("distance", "yaw_deg", "pitch_deg", "roll_deg", "fovy")}}


@register("robot")
def _robot(v: Variant, level: int, rng: np.random.Generator, task) -> None:
    sigma, clip = 0.1 * level / 3, 0.225 * level / 3
    noise = np.clip(rng.normal(0, sigma, 12), -clip, clip)
    grippers = {}
    for arm in ("left", "right"):
        extreme = rng.random() < level / 5
        pick = rng.choice([0.021, 0.057])  # finger slide limits: closed / open
        grippers[arm] = float(pick) if extreme else None
    v.robot = {"left_noise": noise[:6], "right_noise": noise[6:], "grippers": grippers}
    v.info["robot"] = {"level": level, "sigma": round(sigma, 4), "clip": round(clip, 4),
                       "noise": noise.round(4).tolist(),
                       "grippers": {a: (None if g is None else ("open" if g > 0.04 else "closed"))
                                    for a, g in grippers.items()}}


@register("layout")
def _layout(v: Variant, level: int, rng: np.random.Generator, task) -> None:
    shift = 0.012 * level
    moved = {}
    for name, pose in v.layout.items():
        d = rng.uniform(-shift, shift, 2)
        pose = pose.copy()
        pose[:2] += d
        v.layout[name] = pose
        moved[name] = d.round(4).tolist()
    taken = [p[:2] for p in v.layout.values()]
    cx, cy = TABLE_TOP["center"]
    for i in range(min(level, MAX_DISTRACTORS)):
        for _ in range(200):
            xy = rng.uniform([cx - 0.25, 0.35], [cx + 0.25, 0.7])
            if all(np.linalg.norm(xy - t) > 0.08 for t in taken):
                break
        taken.append(xy)
        yaw = rng.uniform(0, np.pi)
        pose = np.array([xy[0], xy[1], distractor_half_height(i) + 0.002, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
        v.distractor_poses[f"distractor_{i}"] = pose
        v.distractor_rgba.append(np.concatenate([rng.uniform(0.1, 0.95, 3), [1.0]]))
    v.info["layout"] = {"level": level, "displacement_m": moved, "distractors": len(v.distractor_poses)}


@register("texture")
def _texture(v: Variant, level: int, rng: np.random.Generator, task) -> None:
    kind = ["checker", "stripes", "noise", "blobs"][int(rng.integers(4))]
    c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    n = TEX_SIZE
    yy, xx = np.mgrid[0:n, 0:n] / n
    if kind == "checker":
        k = int(rng.integers(4, 16))
        mask = ((np.floor(xx * k) + np.floor(yy * k)) % 2).astype(float)
    elif kind == "stripes":
        k, ang = int(rng.integers(5, 25)), rng.uniform(0, np.pi)
        mask = (np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * k * 2 * np.pi) > 0).astype(float)
    elif kind == "noise":
        small = rng.uniform(0, 1, (16, 16))
        mask = np.kron(small, np.ones((n // 16, n // 16)))
    else:
        mask = np.zeros((n, n))
        for _ in range(12):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.12)
            mask = np.maximum(mask, ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(float))
    pattern = mask[..., None] * c1 + (1 - mask[..., None]) * c2
    alpha = level / 5
    img = (1 - alpha) * 0.2 + alpha * pattern
    v.texture = np.clip(img * 255, 0, 255).astype(np.uint8)
    v.info["texture"] = {"level": level, "kind": kind, "colors": [c1.round(3).tolist(), c2.round(3).tolist()],
                         "blend": alpha}


def sample(parsed: dict[str, int], task, seed: int, layout: dict) -> Variant:
    """The perturbation for this episode seed (independent streams per dimension)."""
    v = Variant(layout={k: np.asarray(p, float).copy() for k, p in layout.items()}, levels=dict(parsed))
    for dim in DIMENSIONS:  # fixed order: the variant never depends on how the spec was written
        level = parsed.get(dim, 0)
        if level:
            SAMPLERS[dim](v, level, _rng(seed, dim), task)
    return v
