"""Inference latency in sim time (lockstep): a chunk computed from the observation of step ``t``
becomes available to the chunk runtime at step ``t + d``.

``d = ceil(latency_s / dt)`` control steps, where ``latency_s`` comes from (node parameters
``latency.*``):

- ``fixed_s`` — the same delay for every inference;
- a distribution — ``mean_s`` with Gaussian ``jitter_s`` (standard deviation), floored at
  ``min_s``, plus with probability ``tail_p`` an extra ``tail_s`` (a stall of the engine);
- ``profile`` — a named profile of a real engine measured here (``config/latency/<name>.yaml``,
  each citing the JSON in ``docs/results/`` its numbers come from): the distribution with
  ``mean_s`` = the measured p50, ``jitter_s`` = (p99 − p50) / 2.326 (a normal's p99) and
  ``min_s`` = the measured minimum.

Draws come from a generator seeded per episode with ``(latency.seed, episode seed)``, one draw per
inference in order: in lockstep the same seeds give the same delays, hence the same commands, on
any machine. Nothing configured (the defaults) = no model: every chunk is available at once, as
before. The controller (:mod:`.controller`) keeps at most one inference in flight, like the
realtime worker: while it is, the sim keeps stepping and the runtime commands from what it has.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wam_common.config import ConfigError, load_yaml, resolve_config
from wam_common.schema import Param, defaults

Z99 = 2.326348  # the standard normal's 99th percentile

PARAMS = {
    "fixed_s": Param(0.0, "lockstep: every chunk becomes available this long (sim time) after its observation; "
                     "0 = at once", range=(0.0, 60.0)),
    "mean_s": Param(0.0, "lockstep: a latency distribution's mean (s; 0 = no distribution)", range=(0.0, 60.0)),
    "jitter_s": Param(0.0, "lockstep: the distribution's Gaussian standard deviation (s)", range=(0.0, 60.0)),
    "min_s": Param(0.0, "lockstep: the distribution's floor (s)", range=(0.0, 60.0)),
    "tail_p": Param(0.0, "lockstep: probability that an inference is a tail event", range=(0.0, 1.0)),
    "tail_s": Param(0.0, "lockstep: latency a tail event adds (s)", range=(0.0, 60.0)),
    "profile": Param("", "lockstep: a measured engine's latency (config/latency/<name>.yaml, e.g. pi05-h200); "
                     "\"\" = none"),
    "seed": Param(0, "lockstep: latency draws are seeded with (seed, the episode's seed)", range=(0, None)),
}
DEFAULTS = defaults(PARAMS)


def steps_for(latency_s: float, dt: float) -> int:
    """Control steps until a chunk whose inference took ``latency_s`` is available (0 = the same step)."""
    if latency_s <= 0:
        return 0
    return int(math.ceil(latency_s / dt - 1e-9))


@dataclass(frozen=True)
class Profile:
    """A measured engine latency (config/latency/<name>.yaml)."""

    name: str
    p50_s: float
    p99_s: float
    min_s: float
    description: str
    source: str  # docs/results/<file>.json
    at: list  # path inside it to the measured numbers
    fields: dict  # profile key (p50_ms, ...) → key of the measured numbers

    @property
    def jitter_s(self) -> float:
        return max(0.0, self.p99_s - self.p50_s) / Z99


def load_profile(name: str) -> Profile:
    """The named profile; ConfigError naming the key when it is unknown or malformed."""
    try:
        path = resolve_config(name, "latency")
    except ConfigError:
        raise ConfigError(f"key 'latency.profile': no latency profile '{name}' (config/latency/{name}.yaml; known: "
                          f"{', '.join(profile_names()) or 'none'})") from None
    p = load_yaml(path).get("profile")
    if not isinstance(p, dict) or not isinstance(p.get("p50_ms"), (int, float)):
        raise ConfigError(f"{path}: needs a mapping 'profile' with a number 'p50_ms'")
    p50 = float(p["p50_ms"]) / 1e3
    p99 = float(p.get("p99_ms", p["p50_ms"])) / 1e3
    lo = float(p.get("min_ms", p["p50_ms"])) / 1e3
    if not (0 < lo <= p50 <= p99) or not p.get("source"):
        raise ConfigError(f"{path}: needs 0 < min_ms <= p50_ms <= p99_ms and a 'source' (the JSON in docs/results/)")
    return Profile(str(p.get("name", name)), p50, p99, lo, str(p.get("description", "")), str(p["source"]),
                   list(p.get("at") or []), dict(p.get("fields") or {}))


def profile_names() -> list[str]:
    from wam_common.config import config_dir

    d = config_dir() / "latency"
    return sorted(f.stem for f in d.glob("*.yaml")) if d.is_dir() else []


class LatencyModel:
    """Per-inference latency draws (seconds and control steps), seeded per episode."""

    def __init__(self, fixed_s: float = 0.0, mean_s: float = 0.0, jitter_s: float = 0.0, min_s: float = 0.0,
                 tail_p: float = 0.0, tail_s: float = 0.0, seed: int = 0, name: str = ""):
        vals = dict(fixed_s=fixed_s, mean_s=mean_s, jitter_s=jitter_s, min_s=min_s, tail_p=tail_p, tail_s=tail_s)
        for k, v in vals.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"key 'latency.{k}': must be a finite number >= 0, got {v!r}")
        if tail_p > 1:
            raise ConfigError(f"key 'latency.tail_p': a probability (0..1), got {tail_p}")
        if fixed_s > 0 and (mean_s > 0 or jitter_s > 0 or tail_p > 0):
            raise ConfigError("key 'latency.fixed_s': give either a fixed latency or a distribution (mean_s, "
                              "jitter_s, tail_p), not both")
        if mean_s <= 0 and (jitter_s > 0 or tail_p > 0):
            raise ConfigError("key 'latency.mean_s': a distribution (jitter_s, tail_p) needs its mean_s > 0")
        self.fixed_s, self.mean_s, self.jitter_s, self.min_s = float(fixed_s), float(mean_s), float(jitter_s), float(min_s)
        self.tail_p, self.tail_s, self.seed, self.name = float(tail_p), float(tail_s), int(seed), name
        self.reset(None)

    @classmethod
    def from_config(cls, cfg: dict | None) -> "LatencyModel | None":
        """The model the ``latency.*`` parameters describe, or None when none is (every default)."""
        c = dict(DEFAULTS)
        c.update(cfg or {})
        bad = sorted(set(c) - set(DEFAULTS))
        if bad:
            raise ConfigError(f"key 'latency.{bad[0]}': unknown (known: {', '.join(DEFAULTS)})")
        if c["profile"]:
            others = [k for k in ("fixed_s", "mean_s", "jitter_s", "min_s", "tail_p", "tail_s") if c[k]]
            if others:
                raise ConfigError(f"key 'latency.{others[0]}': a named profile ('{c['profile']}') sets the latency "
                                  "itself; leave the other latency keys at 0")
            p = load_profile(str(c["profile"]))
            return cls(mean_s=p.p50_s, jitter_s=p.jitter_s, min_s=p.min_s, seed=c["seed"], name=p.name)
        if c["fixed_s"] <= 0 and c["mean_s"] <= 0:
            if c["jitter_s"] or c["tail_p"] or c["tail_s"] or c["min_s"]:
                raise ConfigError("key 'latency.mean_s': jitter/min/tail need a distribution mean_s > 0")
            return None
        name = f"fixed {c['fixed_s']:g} s" if c["fixed_s"] > 0 else f"mean {c['mean_s']:g} s"
        return cls(c["fixed_s"], c["mean_s"], c["jitter_s"], c["min_s"], c["tail_p"], c["tail_s"], c["seed"], name)

    def reset(self, episode_seed: int | None) -> None:
        """A new episode: the draws restart from ``(seed, episode_seed)``."""
        key = [self.seed] if episode_seed is None else [self.seed, int(episode_seed) & 0xFFFFFFFFFFFFFFFF]
        self._rng = np.random.default_rng(key)

    def sample_s(self) -> float:
        """The next inference's latency (seconds of sim time)."""
        if self.fixed_s > 0:
            return self.fixed_s
        # always draw both numbers: the sequence of draws does not depend on the outcome
        z, u = self._rng.standard_normal(), self._rng.random()
        s = max(self.min_s, self.mean_s + self.jitter_s * z)
        return s + (self.tail_s if u < self.tail_p else 0.0)

    def sample_steps(self, dt: float) -> int:
        return steps_for(self.sample_s(), dt)

    def describe(self) -> str:
        return self.name
