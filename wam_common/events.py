"""EPISODE events (``/sim/episode``, std_msgs/String JSON) as every reader checks them.

``parse_episode_event(text)`` → the event dict, or :class:`EventError` naming what is wrong: not JSON,
not an object, no string ``event``, or a known field of the wrong type (``episode``/``seed`` non-negative
integers, ``stamp_ns`` an integer, ``width``/``height`` positive integers up to ``MAX_SIDE``). Unknown
fields pass: the sim may announce more than a reader uses. The contract: docs/GRAPH_CONTRACT.md.
"""
from __future__ import annotations

import json
from typing import Any

MAX_TEXT = 1 << 20  # characters: an event is a few hundred
MAX_SIDE = 1 << 15  # as wam_common.imageio.MAX_DIM


class EventError(ValueError):
    """An EPISODE message that is not a valid event (the message says why)."""


def _int(ev: dict, key: str, lo: int | None = None, hi: int | None = None, none_ok: bool = False) -> None:
    if key not in ev or (none_ok and ev[key] is None):
        return
    v = ev[key]
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f" in [{lo}, {hi}]" if hi is not None else f" >= {lo}" if lo is not None else ""
        raise EventError(f"key '{key}' must be an integer{rng}, got {json.dumps(v)[:60]}")


def parse_episode_event(text: Any) -> dict:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(f"not UTF-8: {exc}") from None
    if not isinstance(text, str):
        raise EventError(f"an event is JSON text, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise EventError(f"{len(text)} characters: longer than {MAX_TEXT}")
    try:
        ev = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise EventError(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(ev, dict):
        raise EventError(f"not a JSON object with key 'event' (got {type(ev).__name__})")
    if not isinstance(ev.get("event"), str):
        raise EventError("not a JSON object with a string key 'event'")
    _int(ev, "episode", 0)
    _int(ev, "seed", 0, none_ok=True)
    _int(ev, "stamp_ns")
    _int(ev, "width", 1, MAX_SIDE, none_ok=True)
    _int(ev, "height", 1, MAX_SIDE, none_ok=True)
    if (ev.get("width") is None) != (ev.get("height") is None):
        raise EventError("keys 'width' and 'height' come together (the render size), got one of them")
    return ev
