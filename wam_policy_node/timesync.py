"""Approximate time synchronisation of several streams (message_filters ApproximateTime semantics).

``message_filters`` is not installable here, so this is the same policy written out: each stream
keeps a queue of up to ``queue_size`` messages by stamp; when a message arrives, the candidate sets
are the combinations of queued messages within ``slop`` of it; the first set (nearest stamps first)
whose spread ``max - min`` is within ``slop`` is emitted and its messages leave the queues.
On top of message_filters: messages older than ``max_age`` behind the newest stamp seen are
dropped (a frozen camera never pairs with fresh joint states).
"""
from __future__ import annotations

import itertools
from typing import Any, Hashable


class ApproximateTimeSync:
    def __init__(self, keys: list[Hashable], slop_ns: int, queue_size: int = 10, max_age_ns: int | None = None):
        if not keys:
            raise ValueError("ApproximateTimeSync needs at least one stream")
        self.keys = list(keys)
        self.slop_ns = int(slop_ns)
        self.queue_size = max(1, int(queue_size))
        self.max_age_ns = max_age_ns
        self.queues: dict[Hashable, dict[int, Any]] = {k: {} for k in self.keys}
        self.newest_ns: int | None = None

    def reset(self) -> None:
        for q in self.queues.values():
            q.clear()
        self.newest_ns = None

    def add(self, key: Hashable, stamp_ns: int, msg: Any) -> dict[Hashable, tuple[int, Any]] | None:
        """Queue a message; return ``{key: (stamp_ns, msg)}`` for every stream when a set matches."""
        if key not in self.queues:
            raise KeyError(f"unknown stream {key!r}")
        stamp_ns = int(stamp_ns)
        q = self.queues[key]
        q[stamp_ns] = msg
        while len(q) > self.queue_size:
            del q[min(q)]
        self.newest_ns = stamp_ns if self.newest_ns is None else max(self.newest_ns, stamp_ns)
        if self.max_age_ns is not None:
            floor = self.newest_ns - self.max_age_ns
            for qq in self.queues.values():
                for s in [s for s in qq if s < floor]:
                    del qq[s]
            if stamp_ns not in q:
                return None
        candidates = []
        for k in self.keys:
            if k == key:
                candidates.append([stamp_ns])
                continue
            near = sorted((abs(s - stamp_ns), s) for s in self.queues[k] if abs(s - stamp_ns) <= self.slop_ns)
            if not near:
                return None
            candidates.append([s for _, s in near])
        for combo in itertools.product(*candidates):
            if max(combo) - min(combo) <= self.slop_ns:
                out = {}
                for k, s in zip(self.keys, combo):
                    out[k] = (s, self.queues[k].pop(s))
                oldest = min(combo)  # older messages can no longer form a newer set
                for qq in self.queues.values():
                    for s in [s for s in qq if s < oldest]:
                        del qq[s]
                return out
        return None
