"""Tracking watchdog: the measured joints must follow the commands (pure numpy, no ROS).

A joint whose measured position stays further than ``threshold`` from the command sent before the
measurement, for longer than ``window_s`` without a break, trips the watchdog: a blocked arm, a dead
or overloaded motor, a wrong calibration, or a joint state that froze while the commands moved on.
The controller then holds (:attr:`~.safety.Hold.TRACKING_ERROR`, naming the joint) its last command —
not the measured pose, which a frozen sensor can put far from the arm: a jump there would be the
fast move the safety filter exists to prevent — latched until the next episode or an e-stop release.

Grippers have their own threshold and window and count only one way: a gripper commanded *more open*
than it is (it cannot open: blocked, dead). Commanded more closed than it is, it is closing on an
object and cannot track by design.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wam_common.schema import Param, defaults
from wam_common.topics import STATE_DIM

from .chunk_check import ARM, GRIP, JOINT_NAMES

PARAMS = {
    "enabled": Param(True, "hold when a joint cannot follow its command (tracking watchdog)"),
    "threshold": Param(0.35, "arm joint: distance between the measured position and the command that counts as "
                       "not tracking (rad)", range=(0.0, None), dynamic=True),
    "window_s": Param(0.5, "arm joint: how long it may not track before the arm holds (s)", range=(0.0, None),
                      dynamic=True),
    "gripper_threshold": Param(0.5, "gripper: how much more open the command may be than the measured gripper "
                               "(normalised units; closing on an object never counts)", range=(0.0, None),
                               dynamic=True),
    "gripper_window_s": Param(1.0, "gripper: how long it may not open before the arm holds (s)", range=(0.0, None),
                              dynamic=True),
}
DEFAULTS = defaults(PARAMS)


class Trip(NamedTuple):
    joint: str  # e.g. "left/elbow"
    index: int  # 0..13 in the state/command
    error: float  # measured - command (rad; normalised units for a gripper)
    duration_s: float  # how long it has not tracked

    def describe(self) -> str:
        unit = "units" if GRIP[self.index] else "rad"
        return (f"joint {self.joint} does not follow its command: measured {self.error:+.3f} {unit} from it for "
                f"{self.duration_s:.2f} s")


class TrackingWatchdog:
    def __init__(self, cfg: dict | None = None):
        c = dict(DEFAULTS)
        c.update(cfg or {})
        self.enabled = bool(c["enabled"])
        self.threshold = np.where(ARM, float(c["threshold"]), float(c["gripper_threshold"]))
        self.window_ns = (np.where(ARM, float(c["window_s"]), float(c["gripper_window_s"])) * 1e9).astype(np.int64)
        self.reset()

    def reset(self) -> None:
        self._since = np.full(STATE_DIM, -1, np.int64)  # when each joint stopped tracking (-1: tracking)
        self.worst = np.zeros(STATE_DIM)  # largest |error| seen per joint since the reset (for the status)

    def update(self, t_ns: int, state: np.ndarray, command: np.ndarray | None) -> Trip | None:
        """The measured ``state`` at ``t_ns`` against the ``command`` sent before it; a :class:`Trip` for the
        joint that has not tracked the longest once one is past its window."""
        if not self.enabled or command is None:
            return None
        err = np.asarray(state, dtype=np.float64) - np.asarray(command, dtype=np.float64)
        mag = np.abs(err)
        off = np.where(ARM, mag, -err) > self.threshold  # gripper: only commanded-more-open counts
        self.worst = np.maximum(self.worst, mag)
        if not off.any():  # every joint tracks (the usual step): nothing is late
            self._since.fill(-1)
            return None
        self._since = np.where(off, np.where(self._since < 0, t_ns, self._since), -1)
        late = off & (t_ns - self._since >= self.window_ns)
        if not late.any():
            return None
        j = int(np.argmax(np.where(late, t_ns - self._since, -1)))
        return Trip(JOINT_NAMES[j], j, float(err[j]), (t_ns - self._since[j]) / 1e9)
