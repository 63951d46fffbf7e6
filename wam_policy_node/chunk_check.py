"""Whole-chunk safety: a chunk checked as a trajectory with the robot's own model before it is used.

Pure (numpy + mujoco, no ROS). :class:`ChunkChecker` looks at every action of a chunk:

- dynamics: per arm joint the velocity, acceleration and jerk of the commanded path (finite
  differences at the control period), per gripper the velocity (a gripper command steps by design);
- collision: the commanded joint path through the ALOHA MuJoCo model the sim loads (gym-aloha's
  ``bimanual_viperx_transfer_cube.xml``, or ``safety.chunk.model``): for each action the joints are
  set, ``mj_kinematics`` + ``mj_collision`` run on a private ``MjData`` (no physics stepping), and a
  contact between an arm and the table, an arm and the other arm, or an arm and the frame counts
  when it penetrates deeper than ``collision_margin``. Contacts inside one arm (adjacent links, the
  two fingers) are not checked (they touch at rest), nor are the task objects (free bodies: a
  gripper closing on the cube is the task, not a collision). The frame (the ALOHA cage; the gym-aloha
  MJCF has none) is its inner bounds ``frame``: an arm geom's bounding sphere leaving them counts.
  The tabletop mesh is collided as its bounding box (the same slab, and far cheaper).

The seam (the jump from the command being executed to the chunk's first future action) needs the
controller's state: :meth:`ChunkChecker.seam`. :class:`Verdict` keeps the first violation per action
so the controller can cut the chunk to its safe prefix from the first *future* action on
(``policy: trim``) or drop it (``policy: reject``).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wam_common import aloha
from wam_common.schema import Param, defaults
from wam_common.topics import ARM_JOINTS, ARMS, DT, STATE_DIM

POLICIES = ("trim", "reject")

PARAMS = {
    "enabled": Param(True, "check each chunk as a trajectory (dynamics, seam, collisions) before it is used"),
    "policy": Param("trim", "a chunk that fails: trim (keep its safe prefix; reject when no future action is "
                    "safe) or reject (drop it whole)", choices=POLICIES),
    "max_velocity": Param(30.0, "arm joint speed a chunk may ask for (rad/s); faster fails the chunk (commands "
                          "are still clamped to safety.max_joint_velocity)", range=(0.0, None), dynamic=True),
    "max_gripper_velocity": Param(20.0, "gripper speed a chunk may ask for (normalised units/s)",
                                  range=(0.0, None), dynamic=True),
    "max_acceleration": Param(800.0, "arm joint acceleration a chunk may ask for (rad/s^2)", range=(0.0, None),
                              dynamic=True),
    "max_jerk": Param(30000.0, "arm joint jerk a chunk may ask for (rad/s^3)", range=(0.0, None), dynamic=True),
    "max_seam": Param(0.5, "largest jump of an arm joint from the command being executed to the chunk's first "
                      "future action (rad)", range=(0.0, None), dynamic=True),
    "max_gripper_seam": Param(0.6, "largest gripper jump at the seam (normalised units)", range=(0.0, None),
                              dynamic=True),
    "collision": Param(True, "check the commanded path for collisions (arms vs table, other arm, frame)"),
    "collision_margin": Param(0.01, "penetration a contact may have before it counts (m): the position "
                              "controllers press a finger a little into the table when grasping",
                              range=(0.0, None), dynamic=True),
    "allow_finger_contact": Param(True, "the fingers of the two grippers may touch each other (a handover); "
                                  "a finger against the other arm's links still counts"),
    "collision_stride": Param(1, "check every n-th action of the chunk for collisions (and its last one)",
                              range=(1, None), dynamic=True),
    "frame": Param([-1.0, 0.0, -0.25, 1.0, 1.2, 0.75], "the frame's inner bounds [x0, y0, z0, x1, y1, z1] in the "
                   "model's world frame (m): side, back/front walls and the top; [] = no frame", kind="double[]"),
    "model": Param("", "MJCF of the robot ('' = gym-aloha's bimanual_viperx_transfer_cube.xml, what the sim "
                   "loads)"),
}
DEFAULTS = defaults(PARAMS)

ARM = np.arange(STATE_DIM) % 7 != 6
GRIP = ~ARM
#: "left/waist", ..., "left/gripper", "right/waist", ...: the 14 entries of a state/command
JOINT_NAMES = tuple(f"{arm}/{j}" for arm in ARMS for j in (*ARM_JOINTS, "gripper"))

OK, DYNAMICS, COLLISION = 0, 1, 2


def default_model_path() -> Path:
    """The MJCF the sim loads for the ALOHA (gym-aloha's transfer_cube scene: both vx300s arms and the table)."""
    try:
        import gym_aloha
    except ImportError:
        raise ValueError("key 'safety.chunk.model': gym_aloha (whose ALOHA MJCF is the default model) is not "
                         "installed: set the path of the robot's MJCF, or safety.chunk.collision: false") from None
    return Path(gym_aloha.__file__).resolve().parent / "assets" / "bimanual_viperx_transfer_cube.xml"


@functools.cache
def _mujoco():
    os.environ.setdefault("MUJOCO_GL", "egl")  # read at import; no rendering here
    import mujoco

    return mujoco


def _static_meshes_as_boxes(spec, m) -> None:
    """A static mesh (the tabletop) becomes its bounding box in the spec: the same slab for a table, and a
    box-mesh test costs a fraction of a mesh-mesh one (MuJoCo collides a mesh's convex hull anyway)."""
    mujoco = _mujoco()
    for g in spec.geoms:
        i = m.geom(g.name).id if g.name else -1
        if i < 0 or g.type != mujoco.mjtGeom.mjGEOM_MESH:
            continue
        if m.body_weldid[m.geom_bodyid[i]] != 0 or not (m.geom_contype[i] or m.geom_conaffinity[i]):
            continue  # moves with a joint, or collides with nothing
        center, half = m.geom_aabb[i][:3], m.geom_aabb[i][3:]
        g.type = mujoco.mjtGeom.mjGEOM_BOX
        g.size = list(half)
        g.pos = list(np.asarray(g.pos) + _rotate(np.asarray(g.quat, float), center))
        g.meshname = ""


def _rotate(quat: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.empty(3)
    _mujoco().mju_rotVecQuat(out, np.asarray(v, float), quat / np.linalg.norm(quat))
    return out


@functools.lru_cache(maxsize=4)
def _collision_model(path: str, frame: tuple[float, ...], allow_fingers: bool = True):
    """The model compiled once per (file, frame): arm geoms split in two collision groups that collide with the
    table, the frame and each other only; every other geom (task objects) off. Returns (model, meta)."""
    mujoco = _mujoco()
    if not Path(path).is_file():
        raise ValueError(f"key 'safety.chunk.model': no MJCF file at '{path}'")
    try:
        spec = mujoco.MjSpec.from_file(path)
    except Exception as exc:  # noqa: BLE001 - mujoco's parse errors: one clear config error
        raise ValueError(f"key 'safety.chunk.model': cannot load '{path}': {exc}") from None
    if frame and (len(frame) != 6 or not all(frame[i] < frame[i + 3] for i in range(3))):
        raise ValueError(f"key 'safety.chunk.frame' must be [x0, y0, z0, x1, y1, z1] with x0 < x1, y0 < y1, z0 < z1, "
                         f"got {list(frame)}")
    m = spec.compile()
    _static_meshes_as_boxes(spec, m)
    m = spec.compile()
    names = [m.geom(i).name for i in range(m.ngeom)]
    root = [m.body(int(m.body_rootid[m.geom_bodyid[i]])).name for i in range(m.ngeom)]
    free_roots = {int(m.body_rootid[m.jnt_bodyid[j]]) for j in range(m.njnt) if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE}
    side = {}
    fingers = {i for i in range(m.ngeom) if m.body(int(m.geom_bodyid[i])).name.endswith("finger_link")}
    # collision bits: 1 table, 2 left arm, 4 right arm, 8 left fingers, 16 right fingers (each arm's links and
    # fingers meet the table and the other arm; the two arms' fingers each other only if not allow_fingers)
    fl, fr = (1 | 4 | 16, 1 | 2 | 8) if not allow_fingers else (1 | 4, 1 | 2)
    bits = {("left", False): (2, 1 | 4 | 16), ("left", True): (8, fl),
            ("right", False): (4, 1 | 2 | 8), ("right", True): (16, fr)}
    for arm in ARMS:
        if f"vx300s_{arm}" not in root:
            raise ValueError(f"key 'safety.chunk.model': '{path}' has no body 'vx300s_{arm}' (the {arm} arm)")
    for i in range(m.ngeom):
        was = bool(m.geom_contype[i] or m.geom_conaffinity[i])
        rid = int(m.body_rootid[m.geom_bodyid[i]])
        if root[i] in ("vx300s_left", "vx300s_right") and was:
            side[i] = root[i].split("_")[1]
            m.geom_contype[i], m.geom_conaffinity[i] = bits[(side[i], i in fingers)]
        elif was and rid not in free_roots and root[i] not in ("vx300s_left", "vx300s_right"):
            m.geom_contype[i], m.geom_conaffinity[i] = 1, 0  # the table: collides with the arms only
        else:
            m.geom_contype[i], m.geom_conaffinity[i] = 0, 0  # task objects, visual geoms
    # where each of the 14 command entries goes in qpos (a gripper drives both fingers: [g, -g])
    qadr, fadr = [], []
    for arm in ARMS:
        for j in ARM_JOINTS:
            qadr.append(int(m.jnt_qposadr[m.joint(f"vx300s_{arm}/{j}").id]))
        fadr.append((int(m.jnt_qposadr[m.joint(f"vx300s_{arm}/left_finger").id]),
                     int(m.jnt_qposadr[m.joint(f"vx300s_{arm}/right_finger").id])))
    # a scene this small is faster without the BVH mid phase (8 -> 5 us per mj_collision)
    m.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_MIDPHASE
    arm_geoms = np.array(sorted(side))
    return m, {"names": names, "qadr": np.array(qadr), "fadr": fadr, "arm_geoms": arm_geoms,
               "rbound": m.geom_rbound[arm_geoms].copy(), "frame": np.array(frame, float).reshape(2, 3) if frame else None}


@dataclass
class Verdict:
    """What :meth:`ChunkChecker.check` found: per action the first failure (``OK``, ``DYNAMICS``, ``COLLISION``)
    and a description of each failing action."""

    codes: np.ndarray
    details: dict[int, str] = field(default_factory=dict)
    start: int = 0  # actions before it were not checked for collisions (never executed)
    collision_checked: int = 0  # actions put through the collision check
    collision_stop: int | None = None  # the first colliding action (the check stops there)

    def first(self, start: int = 0) -> int | None:
        """Index of the first failing action at or after ``start`` (None: the rest is safe)."""
        bad = np.flatnonzero(self.codes[start:])
        return int(bad[0]) + start if bad.size else None


class ChunkChecker:
    def __init__(self, cfg: dict | None = None, dt: float = DT):
        c = dict(DEFAULTS)
        c.update(cfg or {})
        if c["policy"] not in POLICIES:
            raise ValueError(f"key 'safety.chunk.policy': '{c['policy']}' is not one of {', '.join(POLICIES)}")
        self.cfg, self.dt = c, float(dt)
        self.enabled = bool(c["enabled"])
        self.policy = c["policy"]
        self.max_vel = np.where(ARM, float(c["max_velocity"]), float(c["max_gripper_velocity"]))
        self.max_acc, self.max_jerk = float(c["max_acceleration"]), float(c["max_jerk"])
        # the limits as bounds on the plain n-th differences of the path (limit * dt^n); inf: not checked
        self._lim = (self.max_vel * self.dt, np.where(ARM, self.max_acc, np.inf) * self.dt ** 2,
                     np.where(ARM, self.max_jerk, np.inf) * self.dt ** 3)
        self.max_seam = np.where(ARM, float(c["max_seam"]), float(c["max_gripper_seam"]))
        self.margin = float(c["collision_margin"])
        self.stride = max(1, int(c["collision_stride"]))
        self.model = self.data = None
        if self.enabled and c["collision"]:
            path = str(c["model"] or default_model_path())
            self.model, self._meta = _collision_model(path, tuple(float(v) for v in c["frame"]),
                                                      bool(c["allow_finger_contact"]))
            self.data = _mujoco().MjData(self.model)  # private: only this checker's thread uses it

    # -- dynamics ----------------------------------------------------------------------------
    def _dynamics(self, a: np.ndarray, v: Verdict, start: int = 0) -> None:
        """Finite differences of the path from ``start`` on (a difference reaching back before it is not played:
        the seam test covers the step from the executed command to action ``start``)."""
        if len(a) - start < 2:
            return
        # limits per difference order as (14,) arrays (acceleration and jerk: arm joints only), one pass each
        d = a[start:]
        for order, lim, what, unit in ((1, self._lim[0], "velocity", "/s"), (2, self._lim[1], "acceleration", "/s^2"),
                                       (3, self._lim[2], "jerk", "/s^3")):
            # a difference of order n reaching back before ``start`` is not played: only those within the path
            d = np.diff(d, axis=0)
            if not len(d):
                break
            over = np.abs(d) > lim
            if not over.any():
                continue
            for r in np.flatnonzero(over.any(axis=1)):
                i = int(r) + order + start  # the action that completes the offending difference
                if v.codes[i] == OK:
                    rate = np.abs(d[r]) / lim
                    j = int(np.argmax(np.where(over[r], rate, 0)))
                    v.codes[i] = DYNAMICS
                    v.details[i] = (f"{what} of {JOINT_NAMES[j]} at action {i}: {abs(d[r, j]) / self.dt ** order:.3g} "
                                    f"{'rad' if ARM[j] else 'units'}{unit} > {lim[j] / self.dt ** order:.3g}")

    # -- collisions --------------------------------------------------------------------------
    def qpos(self, actions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The model's qpos for each 14-dim command of ``actions`` (H, 14): arm joints as commanded, each gripper
        as its two finger positions ``[g, -g]`` (sim_bridge's ``action_to_ctrl``). ``out``: an (H, nq) array to
        write into (the per-command backstop passes a view of ``self.data.qpos``: no array built per command)."""
        a = np.atleast_2d(np.asarray(actions, dtype=np.float64))
        meta = self._meta
        q = np.empty((len(a), self.model.nq)) if out is None else out
        q[:] = self.model.qpos0
        q[:, meta["qadr"]] = a[:, ARM]
        for k, (lf, rf) in enumerate(meta["fadr"]):
            g = aloha.gripper_position_unnormalize(a[:, 7 * k + 6])
            q[:, lf], q[:, rf] = g, -g
        return q

    def _contacts(self, q: np.ndarray | None) -> list[tuple[str, str, float]]:
        """Forward kinematics and the contacts at one qpos (None: the one already in ``self.data``): the counted
        ones as (geom, other, penetration m)."""
        mujoco = _mujoco()
        m, d = self.model, self.data
        if q is not None:
            d.qpos[:] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_collision(m, d)
        if not d.ncon:
            return []
        dist = d.contact.dist[: d.ncon]
        names = self._meta["names"]
        return [(names[d.contact.geom1[i]], names[d.contact.geom2[i]], float(-dist[i]))
                for i in np.flatnonzero(dist < -self.margin)]

    def _outside_frame(self, xpos: np.ndarray) -> np.ndarray:
        """For poses' arm geom centres (N, G, 3): how far each geom's bounding sphere leaves the frame's inner
        bounds (N, G), in m (<= 0: inside)."""
        lo, hi = self._meta["frame"]
        r = self._meta["rbound"][:, None]
        return np.maximum(lo - (xpos - r), (xpos + r) - hi).max(axis=2)

    def collisions(self, action: np.ndarray) -> list[tuple[str, str, float]]:
        """The counted contacts of one 14-dim command: (geom, other geom or 'frame', penetration m)."""
        if np.shape(action) == (STATE_DIM,):
            self.qpos(action, out=self.data.qpos[None])
            hits = self._contacts(None)
        else:
            hits = self._contacts(self.qpos(action)[0])
        if self._meta["frame"] is not None:
            g = self._meta["arm_geoms"]
            out = self._outside_frame(self.data.geom_xpos[g][None])[0]
            hits += [(self._meta["names"][g[i]], "frame", float(out[i])) for i in np.flatnonzero(out > self.margin)]
        return hits

    def command_collision(self, command: np.ndarray) -> str | None:
        """The one command about to be sent, checked like a chunk's action: a description of its deepest contact
        (or of leaving the frame), else None. None too when the collision check is off."""
        if not self.enabled or self.model is None:
            return None
        hits = self.collisions(command)
        if not hits:
            return None
        g1, g2, depth = max(hits, key=lambda h: h[2])
        return f"{g1} with {g2} ({depth * 1e3:.0f} mm deep)"

    def _collide(self, a: np.ndarray, v: Verdict, start: int) -> None:
        """Walk the path from ``start``; stop at the first colliding action (the chunk is cut there). The frame
        test runs on all the walked poses at once."""
        idx = list(range(start, len(a), self.stride))
        if idx and idx[-1] != len(a) - 1:
            idx.append(len(a) - 1)
        q = self.qpos(a)
        mujoco = _mujoco()
        m, d, meta = self.model, self.data, self._meta
        kinematics, collision, margin = mujoco.mj_kinematics, mujoco.mj_collision, -self.margin
        frame = meta["frame"] is not None
        g = meta["arm_geoms"]
        xpos = np.empty((len(idx), m.ngeom, 3))
        gxpos = d.geom_xpos  # a view: copied whole (a memcpy), the arm geoms picked after
        hit, n = None, 0
        for i in idx:
            d.qpos[:] = q[i]
            kinematics(m, d)
            collision(m, d)
            if frame:
                xpos[n] = gxpos
            n += 1
            if d.ncon and d.contact.dist[: d.ncon].min() < margin:
                hits = self._contacts(q[i])
                hit = (i, max(hits, key=lambda h: h[2]))
                break
        v.collision_checked += n
        walked = idx[:n]
        if frame and n:
            out = self._outside_frame(xpos[:n, g])
            rows = np.flatnonzero((out > self.margin).any(axis=1))
            if rows.size and (hit is None or walked[rows[0]] < hit[0]):
                r = int(rows[0])
                j = int(np.argmax(out[r]))
                hit = (walked[r], (meta["names"][g[j]], "frame", float(out[r, j])))
        if hit is None:
            return
        i, (g1, g2, depth) = hit
        k0 = idx.index(i)
        first = idx[k0 - 1] + 1 if k0 > 0 and self.stride > 1 else i  # unchecked actions in between: unsafe too
        for k in range(first, len(a)):
            if v.codes[k] == OK:
                v.codes[k] = COLLISION
                v.details[k] = f"collision at action {i}: {g1} with {g2} ({depth * 1e3:.0f} mm deep)"
        v.collision_stop = i

    # -- the chunk ---------------------------------------------------------------------------
    def check(self, actions: np.ndarray, start: int = 0) -> Verdict:
        """Check a finite (H, 14) chunk from action ``start`` on (actions before it are never executed)."""
        a = np.asarray(actions, dtype=np.float64)
        v = Verdict(np.zeros(len(a), np.int8), start=int(start))
        if not self.enabled:
            return v
        self._dynamics(a, v, start)
        if self.model is not None:
            self._collide(a, v, start)
        return v

    def seam(self, first_action: np.ndarray, executing: np.ndarray | None) -> str | None:
        """A description of the jump from the command being executed to the chunk's first future action when
        it is larger than ``max_seam`` / ``max_gripper_seam``, else None."""
        if not self.enabled or executing is None:
            return None
        jump = np.abs(np.asarray(first_action, dtype=np.float64) - np.asarray(executing, dtype=np.float64))
        over = jump > self.max_seam
        if not over.any():
            return None
        j = int(np.argmax(np.where(over, jump / self.max_seam, 0)))
        return (f"seam jump of {JOINT_NAMES[j]}: {jump[j]:.3g} {'rad' if ARM[j] else 'units'} from the command "
                f"being executed > {self.max_seam[j]:.3g}")
