"""Which camera frame sizes the policy node accepts, without ROS.

The size a camera's frames must have is, first found: the configured ``observation.expected_size``,
the one the EPISODE start event announces (``width``/``height``), else the one learnt from the
camera's first frame. A learnt size may itself have come from an odd frame: ``ADOPT_AFTER`` frames
in a row of another size replace it. Learnt sizes are forgotten at each episode start.
"""
from __future__ import annotations


class FrameSizeError(ValueError):
    """A frame of a size the policy does not take (the message says why)."""


class FrameSizeGate:
    MIN_SIDE = 8  # frames with a shorter side are rejected
    ADOPT_AFTER = 3  # frames in a row of another size that replace a learnt size

    def __init__(self, expected_size=(0, 0)):
        exp = [int(v) for v in expected_size]
        self.configured = tuple(exp) if len(exp) == 2 and min(exp) > 0 else None  # (h, w) or None
        self.announced: tuple[int, int] | None = None  # by the latest EPISODE start event
        self.learnt: dict[str, tuple[int, int]] = {}  # camera → (h, w) of its first accepted frame
        self._odd: dict[str, tuple[tuple[int, int], int]] = {}  # camera → (other size, frames in a row)

    def announce(self, ev: dict) -> None:
        """An EPISODE start event: its ``height``/``width`` (when given) is the size from now on."""
        try:
            self.announced = (int(ev["height"]), int(ev["width"])) if ev.get("height") else None
        except (TypeError, ValueError, KeyError, OverflowError):
            self.announced = None

    def reset(self) -> None:
        """A new episode: learnt sizes are forgotten."""
        self.learnt.clear()
        self._odd.clear()

    def check(self, cam: str, h: int, w: int) -> bool:
        """Accept a ``h`` x ``w`` frame of ``cam`` (True when its size was just adopted: the node says so)
        or raise :class:`FrameSizeError`."""
        fixed = self.configured or self.announced
        want = fixed or self.learnt.get(cam)
        if min(h, w) < self.MIN_SIDE:
            raise FrameSizeError(f"size {w}x{h} is too small")
        adopted = False
        if want is not None and (h, w) != tuple(want):
            size, n = self._odd.get(cam, (None, 0))
            n = n + 1 if size == (h, w) else 1
            if fixed or n < self.ADOPT_AFTER:
                if not fixed:
                    self._odd[cam] = ((h, w), n)
                raise FrameSizeError(f"size {w}x{h} differs from the expected {want[1]}x{want[0]}")
            self.learnt[cam] = (h, w)
            adopted = True
        self._odd.pop(cam, None)
        self.learnt.setdefault(cam, (h, w))
        return adopted
