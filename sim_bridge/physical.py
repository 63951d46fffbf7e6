"""Physical perturbations only a simulator can make (placeholder: nominal only; ops land next)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wam_common.config import ConfigError

DIMENSIONS: dict[str, object] = {}


def parse(spec) -> dict[str, int]:
    if spec is None or spec == "" or spec == "none" or spec == {}:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, _, lvl = part.partition(":")
            items.append((name.strip(), lvl.strip() or "3"))
    out = {}
    for name, lvl in items:
        if name not in DIMENSIONS:
            raise ConfigError(f"physical: unknown perturbation '{name}' (known: {', '.join(sorted(DIMENSIONS)) or 'none'})")
        try:
            level = int(lvl)
        except (TypeError, ValueError):
            raise ConfigError(f"physical: level of '{name}' must be an integer 0..5, got {lvl!r}") from None
        if not 0 <= level <= 5:
            raise ConfigError(f"physical: level of '{name}' must be 0..5, got {level}")
        out[name] = level
    return out


@dataclass
class Variant:
    layout: dict
    distractor_poses: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def scene_key(self) -> str:
        return "nominal"

    def edit_spec(self, spec) -> None:
        pass

    def edit_model(self, model) -> None:
        pass

    def arm_qpos(self, q16: np.ndarray) -> np.ndarray:
        return q16

    def describe(self) -> dict:
        return dict(self.info)


def sample(parsed: dict[str, int], task, seed: int, layout: dict) -> Variant:
    return Variant(layout=layout)
