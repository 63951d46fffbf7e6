"""SAPIEN 3 (PhysX) backend behind :class:`sim_bridge.mujoco_aloha.AlohaSim`'s interface.

The scene is *converted from the compiled MuJoCo model* of the task (gym-aloha's bimanual
ViperX XML, plus any objects / distractors a task or a perturbation added), so both backends
share one source of truth: each arm becomes a fixed-base articulation (one link per MuJoCo body
with a joint; jointless bodies merge into their parent), collision meshes are MuJoCo's compiled
convex meshes (written once as OBJ files), masses/inertias/joint axes/limits come from the
model, and the position actuators become PhysX joint drives with the same stiffness and force
limits. Free bodies become dynamic actors, the table a static one. Shapes keep their MuJoCo geom
names, so task rewards (contact pairs by geom name) work unchanged.

Physics runs on the CPU (``PhysxCpuSystem``). Rendering needs a Vulkan device: with
``render=True`` a render system and cameras at the MuJoCo camera poses are created; where no
Vulkan device exists that raises :class:`SapienRenderUnavailable` with the reason.

Differences from MuJoCo that matter (measured in bench/sim_experts.py --backend sapien): PhysX
joint drives are implicit PD (we add damping = 0.05·kp; MuJoCo's position actuators have none and
rely on joint frictionloss, which PhysX has no equivalent of), contacts use PhysX's solver,
so the MuJoCo-planned expert trajectories do not transfer one to one.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import mujoco
import numpy as np

from wam_common import aloha
from wam_common.topics import DT

from .mujoco_aloha import CAMERA_MAP, action_to_ctrl, qpos16_to_state14

ARMS = ("vx300s_left", "vx300s_right")
DRIVE_DAMPING = 0.05  # × stiffness


class SapienUnavailable(RuntimeError):
    """SAPIEN is not installed (``pip install sapien==3.0.3``)."""


class SapienRenderUnavailable(RuntimeError):
    """No Vulkan device for SAPIEN's renderer."""


def _import_sapien():
    try:
        import sapien  # noqa: PLC0415
    except ImportError as exc:
        raise SapienUnavailable(f"the sapien backend needs SAPIEN 3 (pip install sapien==3.0.3): {exc}") from None
    return sapien


def _mesh_cache() -> Path:
    d = Path(tempfile.gettempdir()) / "wam_sapien_meshes"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _mesh_obj(m: mujoco.MjModel, mesh_id: int) -> str:
    """The compiled MuJoCo mesh (its frame, its vertices) as an OBJ file; cached by content."""
    va, vn = m.mesh_vertadr[mesh_id], m.mesh_vertnum[mesh_id]
    fa, fn = m.mesh_faceadr[mesh_id], m.mesh_facenum[mesh_id]
    verts = m.mesh_vert[va:va + vn]
    faces = m.mesh_face[fa:fa + fn]
    digest = hashlib.sha1(verts.tobytes() + faces.tobytes()).hexdigest()[:16]
    path = _mesh_cache() / f"{digest}.obj"
    if not path.exists():
        lines = [f"v {x:.7f} {y:.7f} {z:.7f}" for x, y, z in verts]
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
        tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
    return str(path)


def _quat_x_to(axis: np.ndarray) -> np.ndarray:
    """Quaternion (wxyz) rotating +x onto ``axis`` (SAPIEN joints act about their frame's x axis)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    x = np.array([1.0, 0, 0])
    c = float(np.dot(x, a))
    if c > 1 - 1e-9:
        return np.array([1.0, 0, 0, 0])
    if c < -1 + 1e-9:
        return np.array([0.0, 0, 0, 1])  # 180° about z
    v = np.cross(x, a)
    q = np.array([1 + c, *v])
    return q / np.linalg.norm(q)


def _mul(p1, q1, p2, q2):
    """Compose poses (p1,q1)∘(p2,q2)."""
    r = np.empty(3)
    mujoco.mju_rotVecQuat(r, np.asarray(p2, float), np.asarray(q1, float))
    q = np.empty(4)
    mujoco.mju_mulQuat(q, np.asarray(q1, float), np.asarray(q2, float))
    return np.asarray(p1, float) + r, q


class SapienAlohaSim:
    """Same methods as ``AlohaSim`` (reset/step/qpos14/arm_joint_state/contacts/free_pose/render)."""

    backend = "sapien"

    def __init__(self, model: mujoco.MjModel, render: bool = False):
        sapien = _import_sapien()
        from sapien import physx  # noqa: PLC0415

        self.sapien = sapien
        self.model = model
        self.n_sub = max(1, int(round(DT / model.opt.timestep)))
        systems = [physx.PhysxCpuSystem()]
        self._render_error = None
        if render:
            try:
                systems.append(sapien.render.RenderSystem())
            except Exception as exc:  # noqa: BLE001 - no Vulkan device
                raise SapienRenderUnavailable(f"SAPIEN rendering needs a Vulkan device: {exc}") from None
        self.rendering = render
        self.scene = sapien.Scene(systems)
        self.scene.set_timestep(float(model.opt.timestep))
        self.material = physx.PhysxMaterial(1.0, 1.0, 0.0)
        self._shape_names: dict = {}
        self.time = 0.0
        m = model
        self._body_names = [m.body(i).name for i in range(m.nbody)]
        # ---- arms
        self.arms = []
        self._joints = []  # active joints in MuJoCo qpos order (per arm 8)
        for arm in ARMS:
            art, joints = self._build_arm(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, arm))
            self.arms.append(art)
            self._joints.append(joints)
        # ---- static world geoms (table) and free bodies (task objects, distractors)
        self.actors: dict[str, object] = {}
        self._build_world()
        # ---- drives from MuJoCo's position actuators
        self._drives = []  # (joint, arm index, dof index) in actuator order
        for a in range(m.nu):
            jid = m.actuator_trnid[a, 0]
            jname = m.joint(jid).name
            arm_i = 0 if jname.startswith(ARMS[0]) else 1
            names = [j.name for j in self._joints[arm_i]]
            joint = self._joints[arm_i][names.index(jname)]
            kp = float(m.actuator_gainprm[a, 0])
            flim = float(m.actuator_forcerange[a, 1]) if m.actuator_forcelimited[a] else 1e6
            joint.set_drive_properties(kp, DRIVE_DAMPING * kp, flim, "force")
            self._drives.append(joint)
        self._ctrl = np.zeros(m.nu)
        self.cameras: dict[str, object] = {}
        if render:
            self._build_lights()
            self._build_cameras()

    # ------------------------------------------------------------------ building
    def _add_geoms(self, builder, gids, frames, collision=True, visual=False):
        m = self.model
        recs = []
        for gid, (p, q) in zip(gids, frames):
            gtype = m.geom_type[gid]
            name = m.geom(gid).name
            pose = self.sapien.Pose(p, q)
            collides = collision and (m.geom_contype[gid] or m.geom_conaffinity[gid])
            if gtype == mujoco.mjtGeom.mjGEOM_MESH:
                path = _mesh_obj(m, m.geom_dataid[gid])
                if collides:
                    builder.add_convex_collision_from_file(path, pose=pose, material=self.material)
                if visual:
                    mat = self.sapien.render.RenderMaterial(base_color=list(m.geom_rgba[gid]))
                    builder.add_visual_from_file(path, pose=pose, material=mat)
            elif gtype == mujoco.mjtGeom.mjGEOM_BOX:
                if collides:
                    builder.add_box_collision(pose, m.geom_size[gid].copy(), material=self.material)
                if visual:
                    builder.add_box_visual(pose, m.geom_size[gid].copy(), material=list(m.geom_rgba[gid][:3]))
            elif gtype == mujoco.mjtGeom.mjGEOM_SPHERE:
                if collides:
                    builder.add_sphere_collision(pose, float(m.geom_size[gid][0]), material=self.material)
                if visual:
                    builder.add_sphere_visual(pose, float(m.geom_size[gid][0]), material=list(m.geom_rgba[gid][:3]))
            elif gtype == mujoco.mjtGeom.mjGEOM_CYLINDER:
                # MuJoCo cylinders run along z, SAPIEN's along x
                qz = np.empty(4)
                mujoco.mju_mulQuat(qz, np.asarray(q, float), np.array([np.sqrt(0.5), 0, np.sqrt(0.5), 0]))
                cp = self.sapien.Pose(p, qz)
                r, h = float(m.geom_size[gid][0]), float(m.geom_size[gid][1])
                if collides:
                    builder.add_cylinder_collision(cp, r, h, material=self.material)
                if visual:
                    builder.add_cylinder_visual(cp, r, h, material=list(m.geom_rgba[gid][:3]))
            else:
                continue
            if collides:
                recs.append(name)
        return recs

    def _subtree_geoms(self, body: int, stop_at_joint: bool):
        """Geoms of ``body`` and of its jointless descendants, with poses in ``body``'s frame."""
        m = self.model
        out_g, out_f = [], []

        def visit(b, p, q):
            for g in range(m.body_geomadr[b], m.body_geomadr[b] + m.body_geomnum[b]):
                out_g.append(g)
                out_f.append(_mul(p, q, m.geom_pos[g], m.geom_quat[g]))
            for c in range(m.nbody):
                if m.body_parentid[c] == b and c != b and (not stop_at_joint or m.body_jntnum[c] == 0):
                    cp, cq = _mul(p, q, m.body_pos[c], m.body_quat[c])
                    visit(c, cp, cq)

        visit(body, np.zeros(3), np.array([1.0, 0, 0, 0]))
        return out_g, out_f

    def _build_arm(self, root: int):
        sapien, m = self.sapien, self.model
        ab = self.scene.create_articulation_builder()
        # root link: the arm base body (fixed), placed at its world pose
        root_lb = ab.create_link_builder()
        root_lb.set_name(m.body(root).name)
        g, f = self._subtree_geoms(root, stop_at_joint=True)
        names = self._add_geoms(root_lb, g, f, visual=self.rendering)
        root_lb.set_mass_and_inertia(1.0, sapien.Pose(), [0.01, 0.01, 0.01])
        root_lb.set_joint_properties("fixed", [], sapien.Pose(), sapien.Pose())
        ab.set_initial_pose(sapien.Pose(m.body_pos[root], m.body_quat[root]))
        builders = {root: (root_lb, names)}
        order = []

        def find_link_parent(b):
            p = m.body_parentid[b]
            offset_p, offset_q = m.body_pos[b].copy(), m.body_quat[b].copy()
            while p not in builders:  # a jointless intermediate body: fold its pose in
                offset_p, offset_q = _mul(m.body_pos[p], m.body_quat[p], offset_p, offset_q)
                p = m.body_parentid[p]
            return p, offset_p, offset_q

        def descend(b):
            for c in range(m.nbody):
                if m.body_parentid[c] != b or c == b:
                    continue
                if m.body_jntnum[c] == 1:
                    parent, pp, pq = find_link_parent(c)
                    lb = ab.create_link_builder(builders[parent][0])
                    lb.set_name(m.body(c).name)
                    jid = m.body_jntadr[c]
                    jq = _quat_x_to(m.jnt_axis[jid])
                    in_child = sapien.Pose(m.jnt_pos[jid], jq)
                    jp, jq2 = _mul(pp, pq, m.jnt_pos[jid], jq)
                    in_parent = sapien.Pose(jp, jq2)
                    jtype = "revolute" if m.jnt_type[jid] == mujoco.mjtJoint.mjJNT_HINGE else "prismatic"
                    limits = [list(m.jnt_range[jid])] if m.jnt_limited[jid] else [[-np.inf, np.inf]]
                    lb.set_joint_properties(jtype, limits, in_parent, in_child, friction=0.0,
                                            damping=float(m.dof_damping[m.jnt_dofadr[jid]]))
                    lb.set_joint_name(m.joint(jid).name)
                    gg, ff = self._subtree_geoms(c, stop_at_joint=True)
                    nm = self._add_geoms(lb, gg, ff, visual=self.rendering)
                    mass = float(m.body_mass[c]) + sum(float(m.body_mass[x]) for x in range(m.nbody)
                                                       if m.body_parentid[x] == c and m.body_jntnum[x] == 0)
                    lb.set_mass_and_inertia(max(mass, 1e-3), sapien.Pose(m.body_ipos[c], m.body_iquat[c]),
                                            np.maximum(m.body_inertia[c], 1e-6))
                    builders[c] = (lb, nm)
                    order.append(m.joint(jid).name)
                descend(c)

        descend(root)
        art = ab.build(fix_root_link=True)
        art.set_name(m.body(root).name)
        for link in art.get_links():
            lb, nm = next(v for k, v in builders.items() if m.body(k).name == link.name)
            for shape, name in zip(link.get_collision_shapes(), nm):
                self._shape_names[shape] = name
        active = [j.name for j in art.get_active_joints()]
        by_name = dict(zip(active, art.get_active_joints()))
        joints = [by_name[n] for n in order]
        self._perm = getattr(self, "_perm", [])
        self._perm.append(np.array([active.index(n) for n in order]))  # ours[i] = physx[perm[i]]
        return art, joints

    def _build_world(self):
        sapien, m = self.sapien, self.model
        arm_ids = {mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, a) for a in ARMS}
        for b in range(1, m.nbody):
            if m.body_parentid[b] != 0 or b in arm_ids or m.body_mocapid[b] >= 0:
                continue
            free = m.body_jntnum[b] == 1 and m.jnt_type[m.body_jntadr[b]] == mujoco.mjtJoint.mjJNT_FREE
            g, f = self._subtree_geoms(b, stop_at_joint=False)
            if not g:
                continue
            builder = self.scene.create_actor_builder()
            names = self._add_geoms(builder, g, f, visual=self.rendering)
            if free:
                builder.set_mass_and_inertia(float(m.body_mass[b]), sapien.Pose(m.body_ipos[b], m.body_iquat[b]),
                                             np.maximum(m.body_inertia[b], 1e-6))
                actor = builder.build(name=m.body(b).name)
            else:
                actor = builder.build_static(name=m.body(b).name)
            actor.set_pose(sapien.Pose(m.body_pos[b], m.body_quat[b]))
            comp = actor.find_component_by_type(sapien.physx.PhysxRigidBaseComponent)
            for shape, name in zip(comp.get_collision_shapes(), names):
                self._shape_names[shape] = name
            self.actors[m.body(b).name] = actor

    def _build_lights(self):
        """MuJoCo's headlight ambient and directional lights, as SAPIEN lights."""
        m = self.model
        self.scene.set_ambient_light(list(np.asarray(m.vis.headlight.ambient, float)))
        for li in range(m.nlight):
            self.scene.add_directional_light(list(m.light_dir[li]), list(m.light_diffuse[li]),
                                             shadow=bool(m.light_castshadow[li]))

    def _build_cameras(self):
        sapien, m = self.sapien, self.model
        d = mujoco.MjData(m)
        from .mujoco_aloha import START_ARM_POSE

        d.qpos[:16] = START_ARM_POSE
        mujoco.mj_forward(m, d)
        mj_to_sapien = np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]], float)  # columns: sapien x,y,z in mj cam frame
        for ros_cam, mj_cam in CAMERA_MAP.items():
            cid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, mj_cam)
            if cid < 0:
                continue
            rot = d.cam_xmat[cid].reshape(3, 3) @ mj_to_sapien
            q = np.empty(4)
            mujoco.mju_mat2Quat(q, rot.reshape(9))
            world = sapien.Pose(d.cam_xpos[cid], q)
            body = m.cam_bodyid[cid]
            fovy = float(np.deg2rad(m.cam_fovy[cid]))
            if body == 0:
                cam = self.scene.add_camera(ros_cam, 640, 480, fovy, 0.01, 10)
                cam.entity.set_pose(world)
                self.cameras[ros_cam] = (cam, None, None)
            else:
                # mounted on an arm link (the MuJoCo body frame is the link frame): pose relative to
                # the body, from MuJoCo at the same configuration
                link_name = m.body(body).name
                link = next(lk for art in self.arms for lk in art.get_links() if lk.name == link_name)
                rel = sapien.Pose(d.xpos[body], d.xquat[body]).inv() * world
                self.cameras[ros_cam] = (None, link, (rel, fovy))

    # ------------------------------------------------------------------ state
    def reset(self, arm_qpos16, objects, ctrl16=None) -> None:
        sapien = self.sapien
        q = np.asarray(arm_qpos16, float)
        for i, art in enumerate(self.arms):
            physx_q = np.zeros(8, np.float32)
            physx_q[self._perm[i]] = q[8 * i:8 * i + 8]
            art.set_qpos(physx_q)
            art.set_qvel(np.zeros(8, np.float32))
        ctrl = q if ctrl16 is None else np.asarray(ctrl16, float)
        self._set_ctrl(ctrl)
        for name, pose in objects.items():
            a = self.actors[name]
            a.set_pose(sapien.Pose(pose[:3], pose[3:7]))
            body = a.find_component_by_type(sapien.physx.PhysxRigidDynamicComponent)
            if body is not None:
                body.set_linear_velocity([0, 0, 0])
                body.set_angular_velocity([0, 0, 0])
        self.time = 0.0

    def _set_ctrl(self, ctrl16) -> None:
        self._ctrl = np.asarray(ctrl16, float)
        for joint, target in zip(self._drives, self._ctrl):
            joint.set_drive_target(float(target))

    def step(self, action14) -> None:
        self._set_ctrl(action_to_ctrl(action14))
        self.step_ctrl()

    def step_ctrl(self) -> None:
        for _ in range(self.n_sub):
            self.scene.step()
        self.time += DT

    def q16(self) -> np.ndarray:
        return np.concatenate([np.asarray(a.get_qpos(), float)[p] for a, p in zip(self.arms, self._perm)])

    def v16(self) -> np.ndarray:
        return np.concatenate([np.asarray(a.get_qvel(), float)[p] for a, p in zip(self.arms, self._perm)])

    def full_qpos(self) -> np.ndarray:
        """MuJoCo-layout qpos: 16 arm joints, then each free body's [x y z qw qx qy qz]."""
        parts = [self.q16()]
        for name in self._free_bodies():
            parts.append(self.free_pose(name))
        return np.concatenate(parts)

    def _free_bodies(self):
        m = self.model
        out = []
        for j in range(m.njnt):
            if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
                out.append(m.body(m.jnt_bodyid[j]).name)
        return out

    def qpos14(self) -> np.ndarray:
        return qpos16_to_state14(self.q16())

    def arm_joint_state(self, arm: str):
        o = 0 if arm == "left" else 8
        q, v = self.q16()[o:o + 8], self.v16()[o:o + 8]
        f = np.concatenate([np.asarray(a.get_qf(), float)[p] for a, p in zip(self.arms, self._perm)])[o:o + 8]
        grip_joint = aloha.gripper_joint_unnormalize(aloha.gripper_position_normalize(q[6]))
        span = aloha.PUPPET_GRIPPER_POSITION_OPEN - aloha.PUPPET_GRIPPER_POSITION_CLOSE
        jspan = aloha.PUPPET_GRIPPER_JOINT_OPEN - aloha.PUPPET_GRIPPER_JOINT_CLOSE
        pos = [float(x) for x in q[:6]] + [float(grip_joint), float(q[6]), float(q[7])]
        vel = [float(x) for x in v[:6]] + [float(v[6] / span * jspan), float(v[6]), float(v[7])]
        eff = [float(x) for x in f[:6]] + [float(f[6]), float(f[6]), float(f[7])]
        return pos, vel, eff

    def free_pose(self, body: str) -> np.ndarray:
        if body not in self.actors:
            raise KeyError(f"no body '{body}' in the scene")
        p = self.actors[body].get_pose()
        return np.concatenate([p.p, p.q]).astype(float)

    def set_free_pose(self, body: str, pose7) -> None:
        self.actors[body].set_pose(self.sapien.Pose(pose7[:3], pose7[3:7]))

    def contacts(self) -> set[tuple[str, str]]:
        """Geom-name pairs touching now (both orders; separation ≤ 1 mm)."""
        out = set()
        for c in self.scene.get_contacts():
            if not any(pt.separation <= 1e-3 for pt in c.points):
                continue
            a = self._shape_names.get(c.shapes[0])
            b = self._shape_names.get(c.shapes[1])
            if a and b:
                out.add((a, b))
                out.add((b, a))
        return out

    # ------------------------------------------------------------------ rendering
    def render(self, cam: str, height: int, width: int) -> np.ndarray:
        if not self.rendering:
            raise SapienRenderUnavailable("this SAPIEN scene was built without rendering (render=False)")
        entry = self.cameras.get(cam)
        if entry is None:
            raise KeyError(f"no camera '{cam}'")
        sc = self.scene
        camera, link, rel = entry
        if camera is None or camera.width != width or camera.height != height:
            fovy = rel[1] if rel else camera.fovy
            if camera is not None:
                pose = camera.entity.get_pose()
                sc.remove_camera(camera)
            camera = sc.add_camera(cam, width, height, fovy, 0.01, 10)
            if link is None:
                camera.entity.set_pose(pose)
            self.cameras[cam] = (camera, link, rel)
        if link is not None:
            camera.entity.set_pose(link.entity.get_pose() * rel[0])
        sc.update_render()
        camera.take_picture()
        rgba = camera.get_picture("Color")
        return (np.clip(rgba[..., :3], 0, 1) * 255).astype(np.uint8)

    def close(self) -> None:
        self.scene = None
