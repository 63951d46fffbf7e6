"""Calibration: fit a world's arm dynamics to recorded joint trajectories (pure numpy + mujoco, no ROS).

Given recorded episodes (:class:`Recording`: task, seed, the command applied at each step, the joint
state published at each step), :func:`calibrate` replays each episode's commands *open loop* in
the MuJoCo ALOHA (``SimEnv.reset(seed)``: the same layout and start pose, then one command per
control step, as the sim_bridge node applies them) and fits, per joint (both arms alike, as a world
config has them), the three dynamics parameters of :class:`sim_bridge.world.World`:

- ``actuator_gain`` (× the position actuator's kp),
- ``joint_damping`` (added viscous damping),
- ``frictionloss`` (× the joint's dry friction),

minimising the summed squared joint-position error between the replay and the recording.

Method: Levenberg–Marquardt on the open-loop residuals with a *block-diagonal* finite-difference
Jacobian. A position-servoed joint's trajectory depends mostly on its own loop: perturbing one
parameter kind on all seven joints at once and reading joint j's residual change as ∂r_j/∂θ_j
costs 3 rollouts per iteration instead of 21 (the neglected cross-joint terms only slow the
convergence: at a zero-residual fit every block's gradient vanishes whatever the coupling).
Steps are accepted on the *full* objective, and a rejected step raises the damping.

Sensors: a recording's joint states can be late (``joint_latency_steps``: the state published at
step k is the state of step k − L) and noisy. L is estimated by the shift (0…``max_latency``) that
minimises the replay error, before the fit and again on every better replay (a soft loop lags like
a late sensor), and once more at the end (the fit is redone if it changed);
the joint noise σ from the recording itself (robust spread of the second difference of the arm
joints, ÷ √6). Both go into the calibrated world's ``sensors``; everything a joint trajectory
cannot tell (camera, colour, image noise, object mass / friction) is taken from the base world.

Identifiability is reported, not assumed: each parameter's standard error comes from the final
full Jacobian with the prior (σ̂² (JᵀJ + prior)⁻¹), checked by two replays ±3 SE along its profile
direction: where the objective rises less than a linear model says (dry friction, contacts, a
trade-off) the SE is widened to match. It stays a local figure; bench/calibration_spread.py
measures the spread of one-episode fits. A joint that does
not move enough (its commands span less than ``min_excitation`` rad in both arms) cannot be
calibrated and is an error unless left out of ``joints`` (it then keeps the base world's values).
A fit that does not converge, does not reduce the error beyond what fitting noise does, or lands
on a bound raises :class:`CalibrationFailed` naming why.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from wam_common.topics import STATE_DIM

from .env import SimEnv
from .world import JOINTS_PER_ARM, World

KINDS = ("actuator_gain", "joint_damping", "frictionloss")
#: parameter bounds (a fit that ends on one is reported as not converged)
BOUNDS = {"actuator_gain": (0.05, 10.0), "joint_damping": (0.0, 50.0), "frictionloss": (0.0, 10.0)}
#: finite-difference steps (gain and friction are multipliers ~1; damping in N·m·s/rad ~0..3)
FD_STEP = {"actuator_gain": 0.03, "joint_damping": 0.2, "frictionloss": 0.06}
#: a weak Gaussian prior around the base world's values (in noise units it weighs like one sample):
#: it keeps a parameter the recording cannot tell apart (e.g. a friction that never saturates) at
#: the base value instead of letting it drift to a bound; a parameter is *identified* when its
#: posterior standard error is under half its prior's
PRIOR_STD = {"actuator_gain": 0.5, "joint_damping": 2.0, "frictionloss": 1.0}
#: the gripper's residual is in normalised finger position (0 closed … 1 open), the arm joints' in rad
GRIPPER = 6


def fit_failure(cost_before: float, cost_after: float, n_params: int, on_bound: list[str], *, fit: str,
                error: str, base: str, data: str) -> str | None:
    """Why a fit is not to be trusted, or None: it must lower the noise-unit cost beyond what fitting
    ``n_params`` parameters to pure noise does (~P, χ² with P dof; the gain must pass ≈ its 99.9 % point,
    P + 3.1·√(2P)), and end off its bounds (``on_bound``: the parameters that did not)."""
    need = n_params + 3.1 * np.sqrt(2.0 * n_params)
    if not cost_after < cost_before - need:
        return (f"{fit} did not reduce the {error} beyond what fitting noise does ({cost_after:.5g} vs "
                f"{cost_before:.5g} with {base}, in noise units; a significant gain is > {need:.0f}): the base "
                f"world already explains the {data}")
    if on_bound:
        return f"the {fit} ended on a bound: {', '.join(on_bound)} (the model cannot explain the {data})"
    return None


class CalibrationFailed(RuntimeError):
    """The fit did not give a world worth writing; ``str()`` says why, ``result`` is the fit as it
    ended (None when it never started)."""

    def __init__(self, why: str, result: "Result | None" = None):
        super().__init__(why)
        self.result = result


@dataclass
class Recording:
    """One recorded episode: ``commands[k]`` applied at step k (NaN row: none recorded, the previous
    one is held as the sim does), ``measured[k]`` the 14-dim joint state published at step k;
    ``frames[k]``: the camera image (HxWx3 uint8) published at step k, where the recording has one
    (sim_bridge/calibration_camera.py fits the camera to them)."""
    name: str
    task: str
    seed: int
    commands: np.ndarray
    measured: np.ndarray
    frames: dict = field(default_factory=dict)

    def __post_init__(self):
        self.commands = np.asarray(self.commands, dtype=float)
        self.measured = np.asarray(self.measured, dtype=float)
        if self.commands.ndim != 2 or self.commands.shape[1] != STATE_DIM or self.measured.shape != self.commands.shape:
            raise ValueError(f"{self.name}: commands {self.commands.shape} and joint states {self.measured.shape} "
                             f"must both be (steps, {STATE_DIM})")
        if not np.all(np.isfinite(self.measured)):
            raise ValueError(f"{self.name}: joint states hold NaN/inf values")
        shapes = {np.shape(f) for f in self.frames.values()}
        if len(shapes) > 1 or any(len(s) != 3 or s[2] != 3 for s in shapes):
            raise ValueError(f"{self.name}: camera frames must all be HxWx3 of one size, got {sorted(shapes)}")
        bad = [k for k in self.frames if not 0 <= k < len(self.measured)]
        if bad:
            raise ValueError(f"{self.name}: camera frame at step {bad[0]} outside the recording's {len(self.measured)} steps")

    @property
    def steps(self) -> int:
        return len(self.measured)


@dataclass
class Result:
    world: World
    params: dict                   # kind → (7,) fitted values
    stderr: dict                   # kind → (7,) standard errors (NaN: not fitted)
    fitted: list[str]              # joint names fitted
    latency_steps: int
    noise_std: float
    rms_before: np.ndarray         # (14,) replay error per joint with the base world's dynamics
    rms_after: np.ndarray          # (14,) with the calibrated dynamics
    cost_before: float
    cost_after: float
    identified: dict               # kind → (7,) bool: posterior SE < half the prior's (the data pinned it)
    chi2_dof: float                # cost_after / degrees of freedom (residuals in noise units: ≈ 1 at a good fit)
    iterations: int
    rollouts: int
    converged: bool
    message: str
    history: list = field(default_factory=list)

    def summary(self) -> dict:
        names = [f"{a}_{j}" for a in ("left", "right") for j in JOINTS_PER_ARM]
        return {
            "converged": self.converged, "message": self.message, "iterations": self.iterations,
            "rollouts": self.rollouts, "joints_fitted": self.fitted,
            "params": {k: [float(x) for x in v] for k, v in self.params.items()},
            "stderr": {k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in self.stderr.items()},
            "identified": {k: [bool(x) for x in v] for k, v in self.identified.items()},
            "joint_latency_steps": self.latency_steps, "joint_noise_std": self.noise_std,
            "cost_before": self.cost_before, "cost_after": self.cost_after, "chi2_dof": self.chi2_dof,
            "rms_before": dict(zip(names, map(float, self.rms_before))),
            "rms_after": dict(zip(names, map(float, self.rms_after))),
            "history": self.history,
        }


def estimate_noise_std(recordings: list[Recording]) -> float:
    """Joint-position noise σ of the recordings: 1.4826·MAD of the arm joints' second difference
    / √6 (white noise of σ gives a second difference of σ√6; smooth motion adds little at 50 Hz)."""
    d2 = [np.diff(r.measured[:, np.r_[0:6, 7:13]], n=2, axis=0).ravel() for r in recordings if r.steps >= 3]
    if not d2:
        return 0.0
    a = np.concatenate(d2)
    return float(1.4826 * np.median(np.abs(a - np.median(a))) / np.sqrt(6.0))


def joint_noise(recordings: list[Recording], floor: float = 1e-3) -> np.ndarray:
    """(14,) per-joint noise σ (both arms pooled; the gripper in its normalised units), at least
    ``floor``: the residual weights (a noisy gripper must not drown the arm joints)."""
    d2 = np.concatenate([np.diff(r.measured, n=2, axis=0) for r in recordings if r.steps >= 3])
    d2 = np.concatenate([d2[:, :7], d2[:, 7:]])
    s = 1.4826 * np.median(np.abs(d2 - np.median(d2, axis=0)), axis=0) / np.sqrt(6.0)
    s = np.maximum(s, floor)
    return np.concatenate([s, s])


def excitation(recordings: list[Recording]) -> np.ndarray:
    """(7,) the larger of the two arms' command spans per joint (rad; the gripper in 0..1 units)."""
    c = np.concatenate([r.commands for r in recordings])
    span = np.nanmax(c, axis=0) - np.nanmin(c, axis=0)
    return np.maximum(span[:7], span[7:])


def _shift(states: np.ndarray, lat: int) -> np.ndarray:
    """What a sensor ``lat`` steps late publishes at each step (the first state until then)."""
    if lat == 0:
        return states
    idx = np.maximum(np.arange(len(states)) - lat, 0)
    return states[idx]


class Replayer:
    """Open-loop replays of recordings under candidate dynamics (one physics-only SimEnv per task)."""

    def __init__(self, recordings: list[Recording], base: World, quality: str = "gym_aloha"):
        self.recordings = recordings
        # the base world without sensor effects (replays read the true state) or camera edits
        self.base = dataclasses.replace(base, joint_noise_std=0.0, joint_latency_steps=0, image_noise_std=0.0,
                                        camera_latency_steps=0, camera_offset=np.zeros(3),
                                        camera_rotation_deg=np.zeros(3), fovy_scale=1.0)
        self.envs = {t: SimEnv(t, render=False, world=self.base, quality=quality) for t in sorted({r.task for r in recordings})}
        self.rollouts = 0
        self.weight = 1.0 / joint_noise(recordings)

    def world(self, theta: np.ndarray) -> World:
        return dataclasses.replace(self.base, actuator_gain=theta[0].copy(), joint_damping=theta[1].copy(),
                                   frictionloss=theta[2].copy())

    def rollout(self, rec: Recording, theta: np.ndarray, full: bool = False) -> np.ndarray:
        """(steps, 14) true states x_0 … x_{n−1}: x_0 after reset(seed), x_{k+1} after command k;
        ``full``: the whole qpos (objects too; what a camera frame is rendered from) instead."""
        env = self.envs[rec.task]
        env.world = self.world(theta)
        env.reset(rec.seed)
        sim = env.sim
        get = sim.full_qpos if full else sim.qpos14
        out = np.empty((rec.steps, sim.model.nq if full else STATE_DIM))
        out[0] = get()
        hold = sim.qpos14()
        for k in range(rec.steps - 1):
            c = rec.commands[k]
            if np.all(np.isfinite(c)):
                hold = c
            sim.step(hold)
            out[k + 1] = get()
        self.rollouts += 1
        if not np.all(np.isfinite(out)):
            out[:] = np.nan  # the physics blew up under these parameters: an infinite cost
        return out

    def states(self, theta: np.ndarray) -> list[np.ndarray]:
        return [self.rollout(r, theta) for r in self.recordings]

    def residuals(self, states: list[np.ndarray], lat: int) -> np.ndarray:
        """(Σ steps, 14) replay − recording, the replay seen through a sensor ``lat`` steps late, in
        units of each joint's noise σ (:func:`joint_noise`)."""
        return np.concatenate([_shift(s, lat) - r.measured for s, r in zip(states, self.recordings)]) * self.weight

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _block_cost(res: np.ndarray) -> np.ndarray:
    """(7,) squared error per joint (both arms)."""
    c = np.nansum(res ** 2, axis=0) + np.where(np.isnan(res).any(axis=0), np.inf, 0.0)
    return c[:7] + c[7:]


def best_latency(rep: Replayer, states: list[np.ndarray], max_latency: int) -> int:
    costs = [float(_block_cost(rep.residuals(states, lat)).sum()) for lat in range(max_latency + 1)]
    return int(np.argmin(costs))


def calibrate(recordings: list[Recording], base: World | None = None, joints: list[str] | None = None,
              max_iter: int = 40, tol: float = 1e-4, max_latency: int = 5, min_excitation: float = 0.05,
              name: str = "calibrated", description: str = "", log=None) -> Result:
    """Fit actuator gain, joint damping and friction loss per joint (see the module doc).

    ``joints``: the joint names fitted (default all seven); the others keep the base world's values.
    Raises ValueError for unusable input, :class:`CalibrationFailed` when the fit fails."""
    if not recordings:
        raise ValueError("no recorded episodes to calibrate from")
    base = base or World()
    joints = list(JOINTS_PER_ARM) if joints is None else list(joints)
    unknown = [j for j in joints if j not in JOINTS_PER_ARM]
    if unknown or not joints:
        raise ValueError(f"unknown joint '{unknown[0] if unknown else ''}' (joints: {', '.join(JOINTS_PER_ARM)})")
    fit = np.array([j in joints for j in JOINTS_PER_ARM])
    span = excitation(recordings)
    still = [f"{JOINTS_PER_ARM[j]} (commands span {span[j]:.3g})" for j in range(7) if fit[j] and not span[j] >= min_excitation]
    if still:
        raise CalibrationFailed(f"too little excitation to calibrate {', '.join(still)}: every fitted joint must move "
                                f"≥ {min_excitation} rad in the recordings; record episodes that move it, or leave it "
                                f"out (--joints) to keep the base world's values")
    say = log or (lambda s: None)
    rep = Replayer(recordings, base)
    try:
        return _fit(rep, base, fit, max_iter, tol, max_latency, name, description, say)
    finally:
        rep.close()


def _fit(rep: Replayer, base: World, fit: np.ndarray, max_iter: int, tol: float, max_latency: int, name: str,
         description: str, say) -> Result:
    lo = np.array([[BOUNDS[k][0]] for k in KINDS])
    hi = np.array([[BOUNDS[k][1]] for k in KINDS])
    h = np.array([[FD_STEP[k]] for k in KINDS])
    theta0 = np.stack([base.actuator_gain, base.joint_damping, base.frictionloss]).astype(float)
    theta0 = np.clip(theta0, lo, hi)
    states0 = rep.states(theta0)
    lat = best_latency(rep, states0, max_latency)
    noise = estimate_noise_std(rep.recordings)
    res0 = rep.residuals(states0, lat)
    cost_before = float(_block_cost(res0).sum())
    rms_before = np.sqrt(np.nanmean(res0 ** 2, axis=0))
    say(f"base world '{base.name}': replay error {cost_before:.5g} (joint latency {lat} steps, noise σ ≈ {noise:.4g})")
    history = [{"iteration": 0, "cost": cost_before, "latency": lat}]

    idx = [(p, j) for p in range(3) for j in np.flatnonzero(fit)]  # the fitted parameters, in order
    prior_w = np.array([1.0 / PRIOR_STD[KINDS[p]] for p, _ in idx])

    def prior_res(theta: np.ndarray) -> np.ndarray:
        return np.array([theta[p, j] - theta0[p, j] for p, j in idx]) * prior_w

    def objective(theta: np.ndarray, res: np.ndarray) -> float:
        return float(_block_cost(res).sum() + np.sum(prior_res(theta) ** 2))

    def jacobian(theta: np.ndarray, res: np.ndarray, full: bool) -> np.ndarray:
        """(rows·14, len(idx)) finite differences; block mode: one rollout per kind (all joints at once,
        joint j's residual columns read as ∂/∂θ_j, other entries 0), full mode: one per parameter."""
        J = np.zeros((res.size, len(idx)))
        col = {pj: i for i, pj in enumerate(idx)}
        groups = [[pj] for pj in idx] if full else [[pj for pj in idx if pj[0] == p] for p in range(3)]
        for g in groups:
            tp, steps = theta.copy(), {}
            for p, j in g:
                steps[(p, j)] = -h[p, 0] if theta[p, j] + h[p, 0] > hi[p, 0] else h[p, 0]
                tp[p, j] += steps[(p, j)]
            d = rep.residuals(rep.states(tp), lat) - res
            for p, j in g:
                if full:
                    J[:, col[(p, j)]] = d.ravel() / steps[(p, j)]
                else:
                    m = np.zeros_like(d)
                    m[:, [j, j + 7]] = d[:, [j, j + 7]]
                    J[:, col[(p, j)]] = m.ravel() / steps[(p, j)]
        return J

    theta, states, res = theta0.copy(), states0, res0
    cost = objective(theta, res)
    converged, it, J, why, lat_changes = False, 0, None, "", 0
    for _refit in range(2):
        full, lam = False, 1e-2
        while True:
            it += 1
            if it > max_iter:
                why = f"the fit did not converge in {max_iter} iterations (error {cost:.5g}, still falling)"
                break
            J = jacobian(theta, res, full)
            A = J.T @ J + np.diag(prior_w ** 2)
            g = J.T @ np.nan_to_num(res.ravel()) + prior_w * prior_res(theta)
            D = np.diag(np.maximum(np.diag(A), 1e-12))
            accepted, rel = False, 0.0
            for _ in range(8):
                try:
                    delta = -np.linalg.solve(A + lam * D, g)
                except np.linalg.LinAlgError:
                    lam *= 4.0
                    continue
                trial = theta.copy()
                for i, (p, j) in enumerate(idx):
                    trial[p, j] += delta[i]
                trial = np.clip(trial, lo, hi)
                st = rep.states(trial)
                rt = rep.residuals(st, lat)
                ct = objective(trial, rt)
                if ct < cost:
                    accepted = True
                    rel = (cost - ct) / max(cost, 1e-300)
                    theta, states, res, cost = trial, st, rt, ct
                    lam = max(lam / 3.0, 1e-7)
                    # a soft loop lags like a late sensor: the latency first chosen on the base world's
                    # replay can be too long, so it is re-chosen on every better replay (shifts are free)
                    new_lat = best_latency(rep, states, max_latency)
                    if new_lat != lat and lat_changes < 4:
                        say(f"joint latency re-estimated: {new_lat} steps (was {lat})")
                        lat, lat_changes = new_lat, lat_changes + 1
                        res = rep.residuals(states, lat)
                        cost, rel = objective(theta, res), 1.0
                    break
                lam *= 4.0
            history.append({"iteration": it, "jacobian": "full" if full else "block", "cost": cost, "lambda": lam,
                            "latency": lat, "theta": [[round(float(x), 5) for x in row] for row in theta]})
            say(f"iteration {it} ({'full' if full else 'block'} Jacobian): error {cost:.5g} (λ {lam:.2g}); "
                f"per joint {np.round(_block_cost(res), 1).tolist()}")
            stalled = not accepted or (rel < 1e-2 and not full)
            if stalled and not full:  # the block approximation ran out: go on with the full Jacobian
                full, lam = True, 1e-2
                continue
            if not accepted or rel < tol:
                converged = True
                break
        if why:
            break
        new_lat = best_latency(rep, states, max_latency)
        if new_lat == lat:
            break
        say(f"joint latency re-estimated on the calibrated replay: {new_lat} steps (was {lat}); fitting again")
        lat = new_lat
        res = rep.residuals(states, lat)
        cost = objective(theta, res)
        converged = False

    # the base world's error at the final latency (what calibration is compared against)
    res0 = rep.residuals(states0, lat)
    cost_before = float(_block_cost(res0).sum())
    rms_before = np.sqrt(np.nanmean(res0 ** 2, axis=0)) / rep.weight
    rms_after = np.sqrt(np.nanmean(res ** 2, axis=0)) / rep.weight
    stderr = np.full((3, 7), np.nan)
    data_cost = float(_block_cost(res).sum())
    dof = max(res.size - len(idx), 1)
    chi2_dof = data_cost / dof  # residuals are in noise units: ≈ 1 when the model explains the recording to its noise
    if J is not None and not full:
        J = jacobian(theta, res, True)
    if J is not None:
        s2 = max(chi2_dof, 1.0)
        cov = s2 * np.linalg.pinv(J.T @ J + np.diag(prior_w ** 2))
        final = objective(theta, res)
        for i, (p, j) in enumerate(idx):
            se = float(np.sqrt(max(cov[i, i], 0.0)))
            # check the linearisation: ±3 SE along the parameter's profile direction (the others follow
            # as the covariance says) must raise the objective by 9·s² if the model were linear; where it
            # rises less (friction, contacts, a trade-off), widen the SE to what the rise says
            if se > 0 and not why:
                step = 3.0 * cov[:, i] / se
                rises = []
                for sign in (1.0, -1.0):
                    trial = theta.copy()
                    for m, (pp, jj) in enumerate(idx):
                        trial[pp, jj] += sign * step[m]
                    if np.any(trial < lo) or np.any(trial > hi):
                        continue
                    rises.append(objective(trial, rep.residuals(rep.states(trial), lat)) - final)
                if rises and min(rises) < 9.0 * s2:
                    se *= float(np.sqrt(9.0 * s2 / max(min(rises), 1e-3)))
            stderr[p, j] = se
    identified = np.zeros((3, 7), bool)
    for p, j in idx:
        identified[p, j] = stderr[p, j] < 0.5 * PRIOR_STD[KINDS[p]]
    on_bound = [f"{KINDS[p]}[{JOINTS_PER_ARM[j]}] = {theta[p, j]:g}" for p in range(3) for j in np.flatnonzero(fit)
                if (theta[p, j] >= hi[p, 0] - 1e-9) or (theta[p, j] <= lo[p, 0] + 1e-9 and lo[p, 0] > 0)]
    if not why and not np.isfinite(cost):
        why = "the replay diverged (NaN states) under every candidate"
    why = why or fit_failure(cost_before, data_cost, len(idx), on_bound, fit="calibration", error="replay error",
                             base=f"the base world '{base.name}'", data="recording")
    world = dataclasses.replace(base, name=name, description=description, actuator_gain=theta[0].copy(),
                                joint_damping=theta[1].copy(), frictionloss=theta[2].copy(),
                                joint_latency_steps=int(lat), joint_noise_std=round(noise, 6))
    result = Result(world=world, params={k: theta[p].copy() for p, k in enumerate(KINDS)},
                    stderr={k: stderr[p] for p, k in enumerate(KINDS)},
                    fitted=[JOINTS_PER_ARM[j] for j in np.flatnonzero(fit)], latency_steps=int(lat), noise_std=noise,
                    rms_before=rms_before, rms_after=rms_after, cost_before=cost_before, cost_after=data_cost,
                    chi2_dof=chi2_dof, identified={k: identified[p] for p, k in enumerate(KINDS)},
                    iterations=it, rollouts=rep.rollouts, converged=converged and not why,
                    message=why or f"converged after {it} iterations", history=history)
    if why:
        raise CalibrationFailed(why, result)
    return result


def replay_error(recordings: list[Recording], world: World, latency: int | None = None) -> np.ndarray:
    """(14,) RMS open-loop replay error per joint of ``world``'s dynamics (``latency``: that of the
    recordings' sensors; default the world's ``joint_latency_steps``)."""
    rep = Replayer(recordings, world)
    try:
        theta = np.stack([world.actuator_gain, world.joint_damping, world.frictionloss]).astype(float)
        res = rep.residuals(rep.states(theta), world.joint_latency_steps if latency is None else latency)
        return np.sqrt(np.nanmean(res ** 2, axis=0)) / rep.weight
    finally:
        rep.close()
