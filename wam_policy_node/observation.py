"""Topics → model inputs: which camera feeds which model image key, resize-with-pad, state layout.

``resize_with_pad`` keeps the aspect ratio (never squashes) and pads with black, centred — what
openpi's ``openpi_client.image_tools.resize_with_pad`` does (there: PIL bilinear, sizes truncated;
here: OpenCV, area interpolation when shrinking, sizes rounded — a pixel row of difference at most).

``fit_image`` is the check every model input goes through where the checkpoint states the image size it
was trained at (a LeRobot checkpoint's ``input_features``): a frame of another size is resized with pad
to it (``image_mismatch: resize``, logged by the caller) or refused with an :class:`ImageSizeError` naming
the image, both sizes and the option (``refuse``) — never fed to the model at a different resolution.
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


IMAGE_MISMATCH = ("resize", "refuse")


class ImageSizeError(ValueError):
    """An image whose size or layout is not the one the model takes (the message says which and why)."""


def resize_to(img, hw: tuple[int, int] | None, mode: str = "pad", interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """A uint8 HxWx3 image at ``hw`` = (height, width): as it is when it has that size (or ``hw`` is None), else
    ``mode`` "pad" (:func:`resize_with_pad`) or "stretch" (a plain resize with ``interpolation``) — how a remote
    model's published client sizes its images."""
    img = np.asarray(img, np.uint8)
    if hw is None or img.shape[:2] == tuple(hw):
        return np.ascontiguousarray(img)
    h, w = hw
    if mode == "pad":
        return resize_with_pad(img, h, w)
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=interpolation)


def fit_image(key: str, img, want_hw: tuple[int, int] | None, mode: str = "resize") -> tuple[np.ndarray, bool]:
    """Check one HxWx3 uint8 model input against the (height, width) the checkpoint expects.

    Returns ``(image, resized)``: the image as it is when it has that size (or ``want_hw`` is None), else
    resized with pad to it (``mode`` "resize"); ``mode`` "refuse" raises :class:`ImageSizeError` instead.
    A frame that is no HxWx3 uint8 image at all raises :class:`ImageSizeError` in either mode."""
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ImageSizeError(f"image '{key}' must be HxWx3 uint8 (RGB), got {a.dtype} {a.shape}")
    if min(a.shape[:2]) < 1:
        raise ImageSizeError(f"image '{key}' is empty ({a.shape[1]}x{a.shape[0]})")
    if want_hw is None or tuple(a.shape[:2]) == tuple(want_hw):
        return a, False
    h, w = (int(v) for v in want_hw)
    if mode == "refuse":
        raise ImageSizeError(f"image '{key}' is {a.shape[1]}x{a.shape[0]} (WxH) but the checkpoint was trained at "
                             f"{w}x{h}; refused (image_mismatch: refuse; 'resize' resizes with pad)")
    if mode != "resize":
        raise ImageSizeError(f"image_mismatch must be one of {', '.join(IMAGE_MISMATCH)}, got {mode!r}")
    return resize_with_pad(a, h, w), True


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
