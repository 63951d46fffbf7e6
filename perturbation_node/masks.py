"""Background masks for the ``background`` op (``topics.background_mask_topic(cam)``: mono8, 255 =
background) from MuJoCo's segmentation rendering — what a sim publishes next to each camera.

    r = mujoco.Renderer(model, height, width); r.enable_segmentation_rendering()
    r.update_scene(data, camera=...); mask = background_mask(model, r.render(), ("vx300s", "box"))
"""
from __future__ import annotations

import numpy as np


def background_mask(model, seg: np.ndarray, foreground: tuple[str, ...]) -> np.ndarray:
    """mono8 mask (255 = background) from a segmentation render (HxWx2: object id, object type).

    A pixel is foreground when it shows a geom whose root body's name starts with one of
    ``foreground`` (the robot, the task objects); table, floor, walls and empty space are background."""
    import mujoco

    gid, otype = seg[..., 0], seg[..., 1]
    is_geom = (otype == int(mujoco.mjtObj.mjOBJ_GEOM)) & (gid >= 0)
    roots = model.body_rootid[model.geom_bodyid]
    fg_root = np.array([any(model.body(int(r)).name.startswith(f) for f in foreground) for r in roots], bool)
    fg = is_geom & fg_root[np.clip(gid, 0, model.ngeom - 1)]
    return np.where(fg, 0, 255).astype(np.uint8)
