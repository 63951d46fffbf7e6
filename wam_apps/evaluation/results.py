"""Per-episode evaluation results: an append-only JSONL store (what makes ``eval`` resumable).

One row per finished episode::

    {"policy": "expert", "configuration": "light_3", "dimension": "Light", "level": 3,
     "task": "transfer_cube", "seed": 100007, "success": true, "steps": 312, "reason": "success",
     "infer_ms_mean": 0.4, "stalls": 0, "latency_ms_mean": 3.1, "bag": "..."}

Rows are written (flushed and fsynced) as episodes end, by whichever process ran them; an
interrupted run loses at most the episodes in flight. :func:`outcomes_from_bags` recomputes
the outcomes independently from the EPISODE events recorded in bags.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Iterable

ROWS = "episodes.jsonl"


def episode_key(row: dict) -> tuple:
    return (row["policy"], row["configuration"], row["task"], int(row["seed"]))


class ResultStore:
    def __init__(self, out_dir: str | os.PathLike):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / ROWS

    def append(self, row: dict) -> None:
        line = json.dumps(row, sort_keys=True) + "\n"
        with open(self.path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            fcntl.flock(fh, fcntl.LOCK_UN)

    def rows(self) -> list[dict]:
        """All rows, the last one winning per episode key; a torn last line (crash) is skipped."""
        if not self.path.exists():
            return []
        out: dict[tuple, dict] = {}
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
                out[episode_key(row)] = row
            except (ValueError, KeyError):
                continue
        return list(out.values())

    def done(self) -> set[tuple]:
        return {episode_key(r) for r in self.rows()}


def outcomes_from_bags(bags: Iterable[str | os.PathLike]) -> dict[tuple[str, int], bool]:
    """(task, seed) → success, from the ``/sim/episode`` end events recorded in the bags."""
    from rosbags.highlevel import AnyReader

    from wam_common import topics

    out: dict[tuple[str, int], bool] = {}
    for bag in bags:
        files = sorted(Path(bag).rglob("*.mcap")) if Path(bag).is_dir() else [Path(bag)]
        if not files:
            continue
        with AnyReader(files) as reader:
            conns = [c for c in reader.connections if c.topic == topics.EPISODE]
            for conn, _, raw in reader.messages(connections=conns):
                ev = json.loads(reader.deserialize(raw, conn.msgtype).data)
                if ev.get("event") == "end":
                    out[(ev["task"], int(ev["seed"]))] = bool(ev["success"])
    return out
