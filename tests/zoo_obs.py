"""Observations for the zoo's tiny checkpoints: three cameras of seeded random pixels."""
from __future__ import annotations

import numpy as np

from wam_policy_node.backends import Observation

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def random_obs(seed: int, stamp_ns: int = 1_000_000_000, prompt: str = "pick up the cube") -> Observation:
    rng = np.random.default_rng(seed)
    imgs = {c: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for c in CAMS}
    return Observation(stamp_ns, imgs, np.zeros(14), prompt)
