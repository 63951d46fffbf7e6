"""Map a device's hardware clock onto the host (ROS) clock.

A camera stamps each frame with its own clock (RealSense ``hardware_clock``: milliseconds
since the device powered up). The host sees the frame later, after USB transfer and driver
latency, at ``host = hw + offset + latency`` with ``latency >= 0``. The smallest observed
``host - hw`` is therefore the best estimate of ``offset`` (a lower envelope); the envelope
may creep upwards at ``max_drift`` (the crystal drift between the clocks, ppm range) so
the estimate follows a slowly drifting device clock.

Properties (tested): a mapped stamp is never later than the host time the frame arrived
(never in the future); stamps are strictly increasing while the device clock is; a device
clock that jumps backwards or far from the estimate (reconnect, power cycle, end of a
recording) resets the estimate instead of producing stamps in the past.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MappedStamp:
    stamp_ns: int  # host-clock time the frame was captured
    offset_ns: int  # host - hw estimate used
    reset: bool  # the estimate was (re)started at this sample


#: RealSense hardware timestamps are a 32-bit microsecond counter: they wrap every ~71.6 min
RS_WRAP_NS = (1 << 32) * 1000


class HardwareClockMapper:
    """Lower-envelope offset estimator: ``stamp = hw + min(host - hw)`` with bounded creep.

    ``wrap_ns``: the device counter's period; a backwards jump of about that size is unwrapped
    (the estimate carries on) instead of restarting the estimate."""

    def __init__(self, max_drift: float = 1e-4, reset_after_ns: int = 1_000_000_000,
                 wrap_ns: int | None = RS_WRAP_NS):
        if max_drift < 0:
            raise ValueError("max_drift must be >= 0")
        self.max_drift = float(max_drift)
        self.reset_after_ns = int(reset_after_ns)
        self.wrap_ns = int(wrap_ns) if wrap_ns else None
        self._offset: int | None = None
        self._last_hw: int | None = None
        self._last_stamp: int | None = None
        self._wraps = 0
        self.resets = 0

    @property
    def offset_ns(self) -> int | None:
        return self._offset

    def reset(self) -> None:
        self._offset = self._last_hw = self._last_stamp = None
        self._wraps = 0

    def map(self, hw_ns: int, host_ns: int) -> MappedStamp:
        """Stamp for a frame with device time ``hw_ns`` that reached the host at ``host_ns``."""
        hw_ns, host_ns = int(hw_ns), int(host_ns)
        if self.wrap_ns and self._last_hw is not None:
            raw_last = self._last_hw - self._wraps * self.wrap_ns
            if raw_last - hw_ns > self.wrap_ns // 2:  # the counter wrapped (not a device restart)
                self._wraps += 1
        hw_ns += self._wraps * self.wrap_ns
        d = host_ns - hw_ns
        reset = False
        if self._offset is None or self._last_hw is None or hw_ns <= self._last_hw:
            reset = True  # first frame, or the device clock went backwards / repeated
        else:
            allowed = self._offset + int(self.max_drift * (hw_ns - self._last_hw))
            if d - allowed > self.reset_after_ns:
                reset = True  # a long silence with a jump (device replugged while the host ran on)
        if reset:
            self._offset = d
            self.resets += 1
        else:
            self._offset = min(d, allowed)
        stamp = hw_ns + self._offset
        if self._last_stamp is not None and stamp <= self._last_stamp:
            # only possible right after a reset; keep stamps strictly increasing
            stamp = min(self._last_stamp + 1, host_ns)
        self._last_hw = hw_ns
        self._last_stamp = stamp
        return MappedStamp(stamp, self._offset, reset)
