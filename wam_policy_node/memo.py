"""A small LRU memo for per-prompt work (tokenizing, text encoding) shared by the backend and the engines."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable


def lru_memo(fn: Callable, size: int, on_hit: Callable = lambda v: v) -> tuple[Callable, OrderedDict]:
    """``fn(text)`` remembered for the ``size`` most recent texts (a str or a list of them); ``on_hit``
    maps a stored result to what the caller gets. Returns the wrapper and its cache."""
    cache: OrderedDict = OrderedDict()

    def memo(text):
        key = text if isinstance(text, str) else tuple(text)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = fn(text)
            if len(cache) > size:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return on_hit(hit)

    return memo, cache
