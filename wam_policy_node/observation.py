"""Topics → model inputs: which camera feeds which model image key, resize-with-pad, state layout.

``resize_with_pad`` keeps the aspect ratio (never squashes) and pads with black, centred — the
same result as openpi's ``image_tools.resize_with_pad``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from wam_common.schema import Param, defaults
from wam_common.topics import CAMERAS

LAYOUTS = ("aloha14",)

PARAMS = {
    "input_prefix": Param("/perturbed", "read the camera, joint-state and instruction topics under this prefix "
                          "(\"\" = the raw sensor topics)"),
    "cameras": Param(list(CAMERAS), "the cameras (topic names) the policy uses"),
    "image_keys": Param(list(CAMERAS), "the model's image key for each camera, in the same order"),
    "resize": Param([0, 0], "[height, width] the frames are resized to with padding; [0, 0] = as published"),
    "state_layout": Param("aloha14", "the state vector: [left 6 joints, left gripper 0..1, right 6, right gripper "
                          "0..1]", choices=LAYOUTS),
}
DEFAULTS = defaults(PARAMS)


def resize_with_pad(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an HxWxC uint8 image to fit ``height`` x ``width`` keeping its aspect ratio, zero-padded."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(img)
    ratio = max(w / width, h / height)
    nh, nw = max(1, int(round(h / ratio))), max(1, int(round(w / ratio)))
    nh, nw = min(nh, height), min(nw, width)
    interp = cv2.INTER_AREA if ratio > 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    out = np.zeros((height, width, img.shape[2] if img.ndim == 3 else 1), dtype=img.dtype)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


@dataclass
class ObservationMap:
    cameras: list[str]
    image_keys: list[str]
    resize: tuple[int, int] | None

    @classmethod
    def from_config(cls, cfg: dict) -> "ObservationMap":
        c = dict(DEFAULTS)
        c.update(cfg or {})
        cams, keys = list(c["cameras"]), list(c["image_keys"])
        if not cams:
            raise ValueError("key 'observation.cameras' must list at least one camera")
        if len(keys) != len(cams):
            raise ValueError(f"key 'observation.image_keys' must have one key per camera ({len(cams)}), got {len(keys)}")
        size = [int(v) for v in c["resize"]]
        if len(size) != 2 or min(size) < 0:
            raise ValueError(f"key 'observation.resize' must be [height, width], got {c['resize']}")
        if c["state_layout"] not in LAYOUTS:
            raise ValueError(f"key 'observation.state_layout': unknown layout '{c['state_layout']}' "
                             f"(known: {', '.join(LAYOUTS)})")
        return cls(cams, keys, tuple(size) if min(size) > 0 else None)

    def images(self, frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Camera frames (HxWx3 uint8 RGB) → model image dict, resized with pad when configured."""
        out = {}
        for cam, key in zip(self.cameras, self.image_keys):
            img = frames[cam]
            out[key] = resize_with_pad(img, *self.resize) if self.resize else img
        return out


def state14(left7: np.ndarray, right7: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(left7, np.float64), np.asarray(right7, np.float64)])
