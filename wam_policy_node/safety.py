"""The safety filter between the runtime and the motors (pure numpy, on by default).

- chunks: any NaN/inf, or any joint beyond its vx300s limit by more than ``reject_tolerance``
  (or a gripper outside ``[gripper_min, gripper_max]`` by more than it) → the whole chunk is
  rejected and the arm holds (:attr:`Hold.NAN_CHUNK` / :attr:`Hold.OUT_OF_LIMITS_CHUNK`);
- commands: clipped to the joint limits (minus ``limit_margin``) and the gripper range, and the
  per-step change limited to ``max_joint_velocity`` / ``max_gripper_velocity`` × dt;
- whole chunks as trajectories (``chunk.*``, :mod:`.chunk_check`): velocity / acceleration / jerk,
  the seam to the command being executed and a collision check of the commanded path with the
  robot's MuJoCo model → the chunk is trimmed to its safe prefix or rejected
  (:attr:`Hold.SEAM_JUMP` / :attr:`Hold.DYNAMICS_CHUNK` / :attr:`Hold.COLLISION_CHUNK`);
- tracking (``tracking.*``, :mod:`.tracking`): the measured joints far from the command for too long
  (blocked arm, dead motor) → :attr:`Hold.TRACKING_ERROR` naming the joint, latched for the episode;
- holds (repeat the last command, or the measured state before the first one): e-stop (latched),
  bad state, stale observation, missing camera, inference error / timeout, rejected chunk, no
  action available (:class:`Hold`, the one list of reasons). The node logs each hold and publishes it
  on /diagnostics.
"""
from __future__ import annotations

from enum import StrEnum

import numpy as np

from wam_common import aloha
from wam_common.schema import Param, defaults
from wam_common.topics import DT, STATE_DIM

from . import chunk_check, tracking

PARAMS = {
    "enabled": Param(True, "clip commands to the joint limits, rate-limit them and reject bad chunks "
                     "(false: only NaN/inf chunks are rejected)"),
    "dry_run": Param(False, "publish the commands on SHADOW_COMMAND only: the arms never move"),
    "max_joint_velocity": Param(6.0, "largest arm joint speed a command may ask for (rad/s per joint)",
                                range=(0.0, None), dynamic=True),
    "max_gripper_velocity": Param(12.0, "largest gripper speed a command may ask for (normalised units/s)",
                                  range=(0.0, None), dynamic=True),
    "gripper_min": Param(0.0, "lowest gripper command (normalised units, 0..1)", dynamic=True),
    "gripper_max": Param(1.0, "highest gripper command (normalised units, 0..1)", dynamic=True),
    "limit_margin": Param(0.0, "margin kept inside the vx300s joint limits when clipping (rad)", range=(0.0, None),
                          dynamic=True),
    "reject_tolerance": Param(0.2, "a chunk with a joint beyond its limit by more than this is rejected and the arm "
                              "holds (rad; normalised units for the grippers)", range=(0.0, None), dynamic=True),
    "stale_obs_s": Param(0.5, "realtime: hold when the newest synced observation is older than this (s)",
                         range=(0.0, None), dynamic=True),
    "inference_timeout_s": Param(2.0, "realtime: hold when an inference runs longer than this with no action "
                                 "left (s)", range=(0.0, None), dynamic=True),
    "chunk": chunk_check.PARAMS,
    "tracking": tracking.PARAMS,
}
DEFAULTS = defaults(PARAMS)

ARM = np.arange(STATE_DIM) % 7 != 6
GRIP = ~ARM


class Hold(StrEnum):
    """Why the arm holds: every reason the controller and the safety filter give (POLICY_STATUS ``hold`` and
    ``rejected``, /diagnostics), most important first. A ``str``: statuses serialise, print and compare as
    the plain reason (``Hold.ESTOP == "estop"``), so bags and their readers see the same strings."""

    ESTOP = "estop"  # the e-stop is engaged (latched until released)
    BAD_STATE = "bad_state"  # the joint state is missing, not (14,) or not finite
    TRACKING_ERROR = "tracking_error"  # a joint far from its command for longer than tracking.window_s (latched)
    STALE_OBS = "stale_obs"  # realtime: no synced observation, or the newest is older than stale_obs_s
    MISSING_CAMERA = "missing_camera"  # the caller has no (fresh) frame of a camera the backend needs
    NAN_CHUNK = "nan_chunk"  # the chunk holds a NaN/inf: rejected
    OUT_OF_LIMITS_CHUNK = "out_of_limits_chunk"  # a joint beyond its limit by > reject_tolerance, or not (H, 14)
    SEAM_JUMP = "seam_jump"  # the chunk's first future action jumps from the command being executed: rejected
    DYNAMICS_CHUNK = "dynamics_chunk"  # the chunk asks for a velocity / acceleration / jerk over chunk.*: trimmed
    COLLISION_CHUNK = "collision_chunk"  # the commanded path hits the table, the other arm or the frame: trimmed
    INFERENCE_ERROR = "inference_error"  # backend.infer raised, or returned no ActionChunk
    OBSERVE_ERROR = "observe_error"  # backend.observe raised (a hold while no chunk covers the step)
    INFERENCE_TIMEOUT = "inference_timeout"  # realtime: an inference runs past inference_timeout_s, no action left
    NO_ACTION = "no_action"  # no chunk covers the step (none yet, or the last one ended)


class SafetyFilter:
    def __init__(self, cfg: dict | None = None, dt: float = DT):
        c = dict(DEFAULTS)
        c.update(cfg or {})
        if c["gripper_min"] >= c["gripper_max"]:
            raise ValueError(f"key 'safety.gripper_min' ({c['gripper_min']}) must be below 'safety.gripper_max' "
                             f"({c['gripper_max']})")
        self.cfg = c
        self.enabled = bool(c["enabled"])
        m = float(c["limit_margin"])
        lo = np.tile(np.append(aloha.ARM_LOWER + m, c["gripper_min"]), 2)
        hi = np.tile(np.append(aloha.ARM_UPPER - m, c["gripper_max"]), 2)
        self.lower, self.upper = lo, hi
        self.max_step = np.where(ARM, float(c["max_joint_velocity"]), float(c["max_gripper_velocity"])) * dt
        self.tol = float(c["reject_tolerance"])
        # whole-chunk checks and the tracking watchdog belong to the limits: off with safety.enabled false
        self.chunk = chunk_check.ChunkChecker({**(c["chunk"] or {}), **({} if self.enabled else {"enabled": False})},
                                              dt)
        self.tracking = dict(tracking.DEFAULTS, **(c["tracking"] or {}))
        if not self.enabled:
            self.tracking["enabled"] = False

    def check_chunk(self, actions: np.ndarray) -> Hold | None:
        """None if the chunk may be used, else the hold reason."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != STATE_DIM:
            return Hold.OUT_OF_LIMITS_CHUNK
        if not np.all(np.isfinite(a)):
            return Hold.NAN_CHUNK
        if not self.enabled:
            return None
        if np.any(a < self.lower - self.tol) or np.any(a > self.upper + self.tol):
            return Hold.OUT_OF_LIMITS_CHUNK
        return None

    def state_ok(self, state: np.ndarray | None) -> bool:
        return state is not None and np.shape(state) == (STATE_DIM,) and bool(np.all(np.isfinite(state)))

    def filter(self, action: np.ndarray, ref: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """Clip to limits and rate-limit against ``ref`` (the last command or the state).

        Returns (command, clamped)."""
        a = np.asarray(action, dtype=np.float64)
        if not np.isfinite(a).all():  # never reaches the motors (chunks are checked, this is a backstop)
            raise ValueError("non-finite action reached the safety filter")
        if not self.enabled:
            return a.copy(), False
        out = np.clip(a, self.lower, self.upper)
        if ref is not None and np.isfinite(ref).all():
            out = np.clip(out, ref - self.max_step, ref + self.max_step)
        clamped = bool((np.abs(out - a) > 1e-12).any())
        return out, clamped

    def hold(self, last_cmd: np.ndarray | None, state: np.ndarray | None) -> np.ndarray | None:
        """The command that holds the arm: the last command, else the measured state (clipped)."""
        if last_cmd is not None:
            return np.asarray(last_cmd, dtype=np.float64).copy()
        if self.state_ok(state):
            return np.clip(np.asarray(state, dtype=np.float64), self.lower, self.upper)
        return None
