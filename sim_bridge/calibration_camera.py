"""Camera calibration: fit cam_high's pose, lens, colour response and image sensor to recorded frames.

The dynamics fit (sim_bridge/calibration.py) replays each recorded episode's commands open loop from
its seed; this module reuses that replay (:class:`~sim_bridge.calibration.Replayer`, with the whole
qpos kept) and renders cam_high at the replayed state of each recorded frame's step, through the
sim_bridge's rendering path (``SimEnv.apply_camera`` for the pose, ``AlohaSim.render`` at the
recorded image size and render quality), then fits the parameters of :class:`sim_bridge.world.World`
that turn those renders into the recorded frames:

- geometry (7): ``camera.position_offset_m`` (3, m, world frame), ``camera.rotation_deg`` (yaw,
  pitch, roll) and ``camera.fovy_scale`` — Levenberg–Marquardt with forward finite differences
  (one render of every frame per parameter, steps of about half a block: a rendered edge moves in
  whole pixels, so smaller steps see the cost's staircase), coarse to fine on box-blurred,
  downsampled images (``levels``: 16×, 8×, 4× blocks; the coarse level widens the basin to tens of
  pixels of misalignment). cam_high looks straight down, so yaw and roll turn the image alike: roll
  is held at the base value and yaw carries the in-plane rotation (see ``FREE``);
- colour (7): ``colour.gain`` (3), ``gamma``, ``offset`` (3): out = 255·gain·(in/255)^gamma + offset.
  For a given gamma the model is linear in gain and offset per channel — and so is the block
  average — so they are solved by linear least squares, gamma by a bounded 1-D search, at every
  geometry iterate (trial geometries are scored with their own best colour; the finite-difference
  Jacobian holds the iterate's colour, as a re-solved gamma search would add its own jitter). The
  colour written is the finest level's: at full resolution the edges' sub-pixel misalignment dilutes
  the gain (measured: −7 % on aliased renders);
- ``sensors.camera_latency_steps``: the frame published at step k is rendered from the state of step
  k − L; L is the shift (0…``max_latency``) with the least error, chosen after the coarse level and
  again at the end (the fine level is refitted if it changed);
- ``sensors.image_noise_std``: the robust spread (1.4826·MAD) of the full-resolution residual, the
  rounding to integers (variance 1/12) taken out.

Which frames: the scene in a frame is the replayed arms *and* the task objects; the replay keeps the
base world's object mass and friction (a joint trajectory does not tell them), so once the grippers
touch the cube the replayed cube can sit elsewhere than the recorded one. Only frames from before the
replayed objects move (≤ ``still_m`` from where the seed put them) are used: there the scene is fully
determined by the seed and the replayed arm joints (open-loop replay error ≈ the joint sensor noise,
well under a pixel at cam_high), so the residual is camera, colour and noise alone — a cleaner choice
than a robust loss, which would also down-weight the arm edges that carry the latency. Saturated
pixels (a recorded value under 12 or over 243 in a block: the black background, clipped by a
negative offset plus noise) are masked per channel, from the recorded frame only, so the mask does
not change with the candidate.

Identifiability is reported like the dynamics part: local standard errors from the final full
Jacobian (all 14 parameters, the colour held fixed for the geometry columns), σ̂² (JᵀJ)⁻¹ with σ̂²
the residual variance. A parameter is *identified* when its SE is under a tenth of ``SCALE`` (a
plausible mounting / lens / white-balance error). A fit that does not converge, ends on a bound, or
does not lower the error beyond what fitting noise does raises :class:`CalibrationFailed`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import mujoco
import numpy as np

from .calibration import CalibrationFailed, Recording, Replayer, fit_failure
from .world import World

CAMERA = "cam_high"
GEOMETRY = ("offset_x", "offset_y", "offset_z", "yaw", "pitch", "roll", "fovy_scale")
COLOUR = ("gain_r", "gain_g", "gain_b", "gamma", "offset_r", "offset_g", "offset_b")
PARAMS = GEOMETRY + COLOUR
#: finite-difference steps of the geometry (m, deg, ×): ~1 px of image motion at cam_high
GEOM_STEP = np.array([0.002, 0.002, 0.002, 0.15, 0.15, 0.15, 0.004])
GEOM_LO = np.array([-0.1, -0.1, -0.1, -10.0, -10.0, -10.0, 0.7])
GEOM_HI = np.array([0.1, 0.1, 0.1, 10.0, 10.0, 10.0, 1.4])
GAIN_BOUNDS, GAMMA_BOUNDS, OFFSET_BOUNDS = (0.2, 5.0), (0.3, 3.0), (-80.0, 80.0)
#: a plausible error of each parameter (m, deg, ×, gain, gamma, pixel values): identified = SE < SCALE / 10
SCALE = np.array([0.02] * 3 + [2.0] * 3 + [0.05] + [0.1] * 3 + [0.1] + [5.0] * 3)
SATURATED = (12.0, 243.0)
#: the geometry parameters fitted: cam_high looks straight down (its optical axis is world −z), so a yaw
#: about world z and a roll about the optical axis turn the image alike — only yaw + roll shows (their
#: split moves the image by a tilt of pitch·sin(roll), < 0.2 px here). Roll is held at the base
#: value and the fitted yaw carries the in-plane rotation.
FREE = np.array([0, 1, 2, 3, 4, 6])


@dataclass
class CameraResult:
    world: World
    values: np.ndarray            # (14,) PARAMS
    stderr: np.ndarray            # (14,)
    identified: np.ndarray        # (14,) bool
    base_values: np.ndarray       # (14,) the base world's
    latency_steps: int
    latency_costs: list           # error per latency 0..max at the last sweep (pixel units², Σ)
    noise_std: float
    frames: list                  # (recording name, step) of the frames used
    rms_before: float             # RMS residual (pixel values, full resolution, unmasked pixels)
    rms_after: float
    cost_before: float            # Σ squared residual at the finest level, in noise units
    cost_after: float
    renders: int
    iterations: int
    converged: bool
    message: str
    history: list = field(default_factory=list)
    nominal_pose: tuple = ()      # cam_high's nominal (pos, mat, fovy), for reprojection()
    shape: tuple = ()             # (h, w) of the frames

    def summary(self) -> dict:
        def f(x):
            return None if not np.isfinite(x) else float(x)
        return {
            "converged": self.converged, "message": self.message, "iterations": self.iterations,
            "renders": self.renders, "frames": [f"{n} step {k}" for n, k in self.frames],
            "params": {p: float(v) for p, v in zip(PARAMS, self.values)},
            "stderr": {p: f(v) for p, v in zip(PARAMS, self.stderr)},
            "identified": {p: bool(v) for p, v in zip(PARAMS, self.identified)},
            "base": {p: float(v) for p, v in zip(PARAMS, self.base_values)},
            "camera_latency_steps": self.latency_steps, "latency_costs": self.latency_costs,
            "image_noise_std": self.noise_std, "rms_before": self.rms_before, "rms_after": self.rms_after,
            "cost_before": self.cost_before, "cost_after": self.cost_after, "history": self.history,
        }


def project_points(world: World, nominal_pose: tuple, points: np.ndarray, shape: tuple) -> np.ndarray:
    """(n, 2) pixel (u, v) of world points through ``world``'s cam_high (MuJoCo's pinhole: x right,
    y up, looking along −z, ``fovy`` the vertical field of view)."""
    pos, mat, fovy = world.camera_pose(*nominal_pose)
    h, w = shape
    p = (np.asarray(points, float) - pos) @ mat
    f = 0.5 * h / np.tan(np.deg2rad(fovy) / 2.0)
    return np.stack([w / 2.0 + f * p[:, 0] / -p[:, 2], h / 2.0 - f * p[:, 1] / -p[:, 2]], axis=1)


def reprojection_px(a: World, b: World, nominal_pose: tuple, shape: tuple) -> dict:
    """How far apart two worlds' cam_high put the same points, in pixels of ``shape``: a grid on the
    table (z 0) and at gripper height (z 0.25 m) over the part of the workspace both see. This is what
    the policy sees of a camera error, whatever parameters (a trade-off of offset and tilt) carry it."""
    x, y, z = np.meshgrid(np.linspace(-0.45, 0.45, 10), np.linspace(0.2, 1.0, 9), [0.0, 0.25], indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    ua, ub = project_points(a, nominal_pose, pts, shape), project_points(b, nominal_pose, pts, shape)
    h, w = shape
    inside = np.all((ua >= 0) & (ua < [w, h]) & (ub >= 0) & (ub < [w, h]), axis=1)
    d = np.linalg.norm(ua[inside] - ub[inside], axis=1)
    return {"points": int(inside.sum()), "mean_px": float(d.mean()) if len(d) else float("nan"),
            "max_px": float(d.max()) if len(d) else float("nan")}


def world_values(w: World) -> np.ndarray:
    return np.r_[w.camera_offset, w.camera_rotation_deg, w.fovy_scale, w.colour_gain, w.colour_gamma,
                 w.colour_offset].astype(float)


def downsample(x: np.ndarray, f: int) -> np.ndarray:
    """(…, H, W, C) → (…, H//f, W//f, C): f×f block means (a box blur sampled every f pixels)."""
    if f == 1:
        return x
    h, w = x.shape[-3] // f, x.shape[-2] // f
    x = x[..., :h * f, :w * f, :]
    return x.reshape(*x.shape[:-3], h, f, w, f, x.shape[-1]).mean(axis=(-4, -2))


def colour_model(raw: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """World.colour_response without noise, rounding or clipping (float): raw 0..255 renders."""
    return 255.0 * colour[:3] * np.power(raw / 255.0, colour[3]) + colour[4:]


class _Level:
    """The recorded frames at one pyramid level: block means and the unsaturated-block mask."""

    def __init__(self, rec: np.ndarray, f: int):
        self.f = f
        self.rec = downsample(rec.astype(np.float64), f)
        lo, hi = SATURATED
        ok = ((rec >= lo) & (rec <= hi)).astype(np.float64)
        self.mask = downsample(ok, f) > 1.0 - 1e-9   # every pixel of the block unsaturated, per channel

    def residual(self, raw: np.ndarray, colour: np.ndarray) -> np.ndarray:
        pred = downsample(colour_model(raw, colour), self.f)
        return (self.rec - pred)[self.mask]

    def solve_colour(self, raw: np.ndarray) -> tuple[np.ndarray, float]:
        """Gain and offset by linear least squares per channel, gamma by a bounded 1-D search."""
        from scipy.optimize import minimize_scalar

        x = raw / 255.0
        masks = [self.mask[..., c] for c in range(3)]
        b = [self.rec[..., c][masks[c]] for c in range(3)]

        def solve(gamma: float):
            a_all = downsample(255.0 * np.power(x, gamma), self.f)
            gain, off, cost = np.empty(3), np.empty(3), 0.0
            for c in range(3):
                a = a_all[..., c][masks[c]]
                A = np.stack([a, np.ones_like(a)], axis=1)
                sol, *_ = np.linalg.lstsq(A, b[c], rcond=None)
                gain[c], off[c] = sol
                cost += float(np.sum((b[c] - A @ sol) ** 2))
            return cost, gain, off

        r = minimize_scalar(lambda g: solve(g)[0], bounds=GAMMA_BOUNDS, method="bounded", options={"xatol": 1e-4})
        cost, gain, off = solve(float(r.x))
        return np.r_[gain, float(r.x), off], cost


class _Renderer:
    """Renders the chosen frames' replayed states through a candidate camera (sim_bridge's path)."""

    def __init__(self, rep: Replayer, items: list, states: dict, shape: tuple[int, int]):
        self.rep, self.items, self.states, self.shape = rep, items, states, shape
        self.data = {t: mujoco.MjData(env.sim.model) for t, env in rep.envs.items()}
        self.renders = 0

    def __call__(self, geometry: np.ndarray, latency: int) -> np.ndarray:
        h, w = self.shape
        out = np.empty((len(self.items), h, w, 3), np.float64)
        posed = set()
        for i, (rec, k) in enumerate(self.items):
            env = self.rep.envs[rec.task]
            if rec.task not in posed:
                env.variant.edit_model(env.sim)  # the nominal camera back, then the candidate on top
                env.world = dataclasses.replace(env.world, camera_offset=geometry[:3].copy(),
                                                camera_rotation_deg=geometry[3:6].copy(), fovy_scale=float(geometry[6]))
                env.apply_camera(env.sim, env.variant)
                posed.add(rec.task)
            d = self.data[rec.task]
            d.qpos[:] = self.states[rec.name][max(k - latency, 0)]
            mujoco.mj_kinematics(env.sim.model, d)
            mujoco.mj_camlight(env.sim.model, d)
            out[i] = env.sim.render(CAMERA, h, w, data=d)
            self.renders += 1
        return out


def select_frames(recordings: list[Recording], states: dict, max_frames: int, still_m: float,
                  first_object_qpos: int) -> list:
    """Up to ``max_frames`` (recording, step) pairs, spread evenly over each recording's frames from
    before its replayed objects moved, round-robin over the recordings."""
    per = []
    for r in recordings:
        q = states[r.name][:, first_object_qpos:]
        settled, first = 0, len(q)
        if q.shape[1]:
            # the objects are spawned above the table and drop onto it during the first steps: the frames
            # count from when they rest (moving < 0.1 mm per step for 3 steps) until they move again
            v = np.r_[np.abs(np.diff(q, axis=0)).max(axis=1), np.inf]
            rest = np.flatnonzero(np.convolve(v < 1e-4, np.ones(3), "valid") == 3)
            if not len(rest):
                per.append([])
                continue
            settled = int(rest[0])
            moved = np.abs(q[settled:] - q[settled]).max(axis=1) > still_m
            first = settled + (int(np.argmax(moved)) if moved.any() else len(q) - settled)
        ks = sorted(k for k in r.frames if settled <= k < first)
        per.append([(r, k) for k in ks])
    want = [[] for _ in per]
    n = min(max_frames, sum(len(p) for p in per))
    i = 0
    while sum(map(len, want)) < n:
        if len(want[i]) < len(per[i]):
            want[i].append(None)
        i = (i + 1) % len(per)
    out = []
    for p, w in zip(per, want):
        if w:
            idx = np.unique(np.round(np.linspace(0, len(p) - 1, len(w))).astype(int))
            out += [p[j] for j in idx]
    return out


def calibrate_camera(recordings: list[Recording], world: World, base: World | None = None, max_frames: int = 12,
                     levels: tuple[int, ...] = (16, 8, 4), max_iter: int = 30, tol: float = 1e-3,
                     max_latency: int = 5, still_m: float = 0.002, quality: str = "gym_aloha",
                     min_frames: int = 3, log=None) -> CameraResult:
    """Fit cam_high's geometry, colour response, latency and image noise (see the module doc).

    ``world``: the dynamics the recordings are replayed with (the calibrated world, or the base one
    when dynamics are not fitted); its camera / colour / image sensor are the fit's starting point
    unless ``base`` gives another. Returns ``world`` with the camera part replaced.
    Raises ValueError for unusable input, :class:`CalibrationFailed` when the fit fails."""
    say = log or (lambda s: None)
    recs = [r for r in recordings if r.frames]
    if not recs:
        raise ValueError(f"no {CAMERA} frames in the recordings: the camera fit needs bags that recorded {CAMERA} "
                         f"(sim_bridge render.cameras) — or leave the camera out")
    shapes = {next(iter(r.frames.values())).shape for r in recs}
    if len(shapes) > 1:
        raise ValueError(f"{CAMERA} frames of different sizes in the recordings: {sorted(shapes)}")
    h, w, _ = shapes.pop()
    start = base or world
    if max_latency < 0 or not levels or any(int(f) < 1 for f in levels):
        raise ValueError("max_latency must be ≥ 0 and levels ≥ 1")
    rep = Replayer(recs, world, quality=quality)
    try:
        theta = np.stack([world.actuator_gain, world.joint_damping, world.frictionloss]).astype(float)
        states = {r.name: rep.rollout(r, theta, full=True) for r in recs}
        items = select_frames(recs, states, max_frames, still_m, first_object_qpos=16)
        if len(items) < min_frames:
            raise CalibrationFailed(f"only {len(items)} {CAMERA} frames from before the replayed objects move (need "
                                    f"≥ {min_frames}): the camera fit needs frames of the scene the seed alone "
                                    f"determines; record episodes with frames from their start")
        say(f"camera fit: {len(items)} {CAMERA} frames ({w}x{h}) from before the objects move, "
            f"{len(recs)} episodes")
        render = _Renderer(rep, items, states, (h, w))
        rec = np.stack([r.frames[k] for r, k in items])
        sim = next(iter(rep.envs.values())).sim
        pos, mat, _ = sim.nominal_camera["top"]
        pose = (pos.copy(), mat.copy(), float(sim.nominal["cam_fovy"][sim.model.camera("top").id]))
        try:
            result = _fit(render, rec, world, start, items, levels, max_iter, tol, max_latency, say)
        except CalibrationFailed as exc:
            if exc.result is not None:
                exc.result.nominal_pose, exc.result.shape = pose, (h, w)
            raise
        result.nominal_pose, result.shape = pose, (h, w)
        return result
    finally:
        rep.close()


def _fit(render: _Renderer, rec: np.ndarray, world: World, start: World, items: list, levels, max_iter: int,
         tol: float, max_latency: int, say) -> CameraResult:
    base_vals = world_values(start)
    g = np.clip(base_vals[:7].copy(), GEOM_LO, GEOM_HI)
    lat = int(start.camera_latency_steps)
    lvls = {f: _Level(rec, f) for f in sorted(set(levels) | {1})}
    history: list = []
    it_total, converged_all, why = 0, True, ""

    def sweep(level: _Level, g: np.ndarray) -> tuple[int, list]:
        costs = [level.solve_colour(render(g, L))[1] for L in range(max_latency + 1)]
        return int(np.argmin(costs)), [float(c) for c in costs]

    def project(level: _Level, g: np.ndarray, L: int, colour: np.ndarray | None = None):
        raw = render(g, L)
        if colour is None:
            colour, _ = level.solve_colour(raw)
        return level.residual(raw, colour), colour, raw

    def lm(level: _Level, g: np.ndarray, L: int):
        nonlocal it_total
        r, colour, raw = project(level, g, L)
        cost = float(r @ r)
        lam, converged = 1e-3, False
        # difference steps of about half a block: a rendered edge moves in whole (sub-sampled) pixels, so
        # a much smaller step sees the cost's staircase instead of its slope
        hstep = GEOM_STEP * max(level.f / 2.0, 1.0) * (240.0 / render.shape[0])
        for _ in range(max_iter):
            it_total += 1
            J = np.empty((r.size, len(FREE)))
            for c, i in enumerate(FREE):
                gp = g.copy()
                step = hstep[i] if g[i] + hstep[i] <= GEOM_HI[i] else -hstep[i]
                gp[i] += step
                # the colour held at this iterate's solution: a re-solved gamma search would add its own
                # jitter to the difference; the colour is re-solved at every trial geometry instead
                J[:, c] = (project(level, gp, L, colour)[0] - r) / step
            A, grad = J.T @ J, J.T @ r
            D = np.diag(np.maximum(np.diag(A), 1e-12))
            accepted, rel, delta = False, 0.0, np.zeros(7)
            for _ in range(6):
                try:
                    delta = np.zeros(7)
                    delta[FREE] = -np.linalg.solve(A + lam * D, grad)
                except np.linalg.LinAlgError:
                    lam *= 4.0
                    continue
                trial = np.clip(g + delta, GEOM_LO, GEOM_HI)
                rt, ct_colour, rawt = project(level, trial, L)
                ct = float(rt @ rt)
                if ct < cost:
                    accepted, rel = True, (cost - ct) / max(cost, 1e-300)
                    delta = trial - g
                    g, r, colour, raw, cost = trial, rt, ct_colour, rawt, ct
                    lam = max(lam / 3.0, 1e-7)
                    break
                lam *= 4.0
            history.append({"level": level.f, "iteration": it_total, "cost": cost, "lambda": lam, "latency": L,
                            "geometry": [round(float(x), 5) for x in g], "colour": [round(float(x), 4) for x in colour]})
            say(f"camera level {level.f}x iteration {it_total}: error {cost:.6g} (λ {lam:.2g}) geometry "
                f"{np.round(g, 4).tolist()} colour {np.round(colour, 3).tolist()}")
            if not accepted or (rel < tol and np.all(np.abs(delta) < 0.5 * hstep)):
                converged = True
                break
        return g, colour, raw, cost, converged

    # the starting point's error at the finest level (base camera, base colour, base latency)
    fine = lvls[min(levels)]
    raw0 = render(g, lat)
    r_before = fine.residual(raw0, base_vals[7:])
    full_before = lvls[1].residual(raw0, base_vals[7:])
    # a first latency from the starting camera at the coarsest level (arm motion shows even through a
    # misaligned camera), chosen again after the coarsest level and at the end
    lat, latency_costs = sweep(lvls[max(levels)], g)
    say(f"camera latency (starting camera): {lat} steps (errors per latency {np.round(latency_costs, 1).tolist()})")
    for n, f in enumerate(sorted(levels, reverse=True)):
        g, colour, raw, cost, ok = lm(lvls[f], g, lat)
        converged_all &= ok
        if not ok:
            why = f"the camera fit did not converge in {max_iter} iterations at the {f}x level (error {cost:.5g})"
            break
        if n == 0 or f == min(levels):
            new, latency_costs = sweep(lvls[f], g)
            say(f"camera latency: {new} steps (errors per latency {np.round(latency_costs, 1).tolist()})")
            if new != lat:
                lat = new
                if f == min(levels):  # refit the fine level at the new latency
                    g, colour, raw, cost, ok = lm(lvls[f], g, lat)
                    if not ok:
                        why = f"the camera fit did not converge in {max_iter} iterations after the latency changed"
                        break
    # image noise: robust spread of the full-resolution residual (rounding taken out)
    res1 = lvls[1].residual(raw, colour)
    mad = 1.4826 * float(np.median(np.abs(res1 - np.median(res1))))
    noise = float(np.sqrt(max(mad ** 2 - 1.0 / 12.0, 0.0)))
    # costs in noise units at the finest fitted level (a block mean of f² pixels has σ/f)
    sig = max(noise, 0.5) / fine.f
    r_after = fine.residual(raw, colour)
    cost_before, cost_after = float(r_before @ r_before) / sig ** 2, float(r_after @ r_after) / sig ** 2
    # standard errors: the full Jacobian (geometry by renders, the colour held fixed; colour by differences)
    vals = np.r_[g, colour]
    J = np.zeros((r_after.size, 14))
    for i in FREE:
        gp = g.copy()
        step = GEOM_STEP[i] if g[i] + GEOM_STEP[i] <= GEOM_HI[i] else -GEOM_STEP[i]
        gp[i] += step
        J[:, i] = (fine.residual(render(gp, lat), colour) - r_after) / step
    for i in range(7):
        cp = colour.copy()
        step = 1e-3 if i < 4 else 0.05
        cp[i] += step
        J[:, 7 + i] = (fine.residual(raw, cp) - r_after) / step
    s2 = float(r_after @ r_after) / max(r_after.size - 14, 1)
    cols = np.r_[FREE, np.arange(7, 14)]
    cov = s2 * np.linalg.pinv(J[:, cols].T @ J[:, cols])
    stderr = np.full(14, np.nan)
    stderr[cols] = np.sqrt(np.maximum(np.diag(cov), 0.0))
    identified = np.where(np.isfinite(stderr), stderr, np.inf) < SCALE / 10.0
    lo = np.r_[GEOM_LO, [GAIN_BOUNDS[0]] * 3, GAMMA_BOUNDS[0], [OFFSET_BOUNDS[0]] * 3]
    hi = np.r_[GEOM_HI, [GAIN_BOUNDS[1]] * 3, GAMMA_BOUNDS[1], [OFFSET_BOUNDS[1]] * 3]
    span = hi - lo
    on_bound = [f"{p} = {v:g}" for i, (p, v, a, b, s) in enumerate(zip(PARAMS, vals, lo, hi, span))
                if i in cols and (v <= a + 1e-4 * s or v >= b - 1e-4 * s)]
    if not why and lat == max_latency and max_latency > 0:
        on_bound.append(f"camera_latency_steps = {lat} (the largest tried)")
    why = why or fit_failure(cost_before, cost_after, 15, on_bound, fit="camera fit", error="image error",
                             base="the base camera and colour", data="frames")
    new_world = dataclasses.replace(
        world, camera_offset=np.round(g[:3], 6), camera_rotation_deg=np.round(g[3:6], 6),
        fovy_scale=round(float(g[6]), 6), colour_gain=np.round(colour[:3], 6), colour_gamma=round(float(colour[3]), 6),
        colour_offset=np.round(colour[4:], 6), image_noise_std=round(noise, 4), camera_latency_steps=int(lat))
    result = CameraResult(
        world=new_world, values=vals, stderr=stderr, identified=identified, base_values=base_vals,
        latency_steps=int(lat), latency_costs=latency_costs, noise_std=noise,
        frames=[(r.name, int(k)) for r, k in items],
        rms_before=float(np.sqrt(np.mean(full_before ** 2))), rms_after=float(np.sqrt(np.mean(res1 ** 2))),
        cost_before=cost_before, cost_after=cost_after, renders=render.renders, iterations=it_total,
        converged=converged_all and not why, message=why or f"converged after {it_total} iterations",
        history=history)
    if why:
        raise CalibrationFailed(why, result)
    return result
