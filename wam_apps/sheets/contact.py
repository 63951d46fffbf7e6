"""``wam-policy contact-sheet``: a PNG of each sim task × each physical perturbation at levels 1, 3, 5.

One block of rows per task, one row per perturbation dimension, columns: nominal, then the
levels. Frames are rendered by the same SimEnv the sim_bridge node runs (after a few settling
steps holding the start pose), so the sheet shows exactly what a policy sees.

    wam-policy contact-sheet [-o docs/images/sim_contact_sheet.png] [--camera cam_high] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wam_common.config import ConfigError

DEFAULT_OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "images" / "sim_contact_sheet.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default=str(DEFAULT_OUTPUT), help="output PNG (default: docs/images/sim_contact_sheet.png)")
    p.add_argument("--tasks", default="", help="comma-separated tasks (default: all)")
    p.add_argument("--dimensions", default="", help="comma-separated perturbations (default: all)")
    p.add_argument("--levels", default="1,3,5", help="levels shown (default 1,3,5)")
    p.add_argument("--camera", default="cam_high", help="camera (cam_high, cam_left_wrist, cam_right_wrist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cell-width", type=int, default=256, help="cell width in px (height = 3/4 of it)")
    p.add_argument("--settle-steps", type=int, default=10, help="steps held at the start pose before the frame")


def _label(img: np.ndarray, text: str, scale: float = 0.45) -> np.ndarray:
    import cv2

    img = np.ascontiguousarray(img)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (0, 0), (tw + 6, th + 8), (0, 0, 0), -1)
    cv2.putText(img, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def render_cell(task: str, physical: dict, seed: int, camera: str, h: int, w: int, settle: int) -> np.ndarray:
    from sim_bridge.env import SimEnv

    env = SimEnv(task, physical or None)
    try:
        env.reset(seed)
        hold = env.qpos14()
        for _ in range(settle):
            env.step(hold)
        return env.render(camera, h, w).copy()
    finally:
        env.close()


def build_sheet(tasks, dims, levels, seed=0, camera="cam_high", cell_w=256, settle=10) -> np.ndarray:
    cell_h = cell_w * 3 // 4
    rows = []
    for task in tasks:
        nominal = render_cell(task, {}, seed, camera, cell_h, cell_w, settle)
        for dim in dims:
            cells = [_label(nominal, f"{task} / nominal")]
            for lvl in levels:
                img = render_cell(task, {dim: lvl}, seed, camera, cell_h, cell_w, settle)
                cells.append(_label(img, f"{dim} {lvl}"))
            rows.append(np.concatenate(cells, axis=1))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))  # gap between tasks
    return np.concatenate(rows[:-1], axis=0)


def run(args) -> int:
    import cv2

    from sim_bridge import physical
    from sim_bridge.tasks import TASKS

    tasks = [t for t in args.tasks.split(",") if t] or list(TASKS)
    dims = [d for d in args.dimensions.split(",") if d] or list(physical.DIMENSIONS)
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"contact-sheet: unknown task '{t}' (known: {', '.join(TASKS)})")
    for d in dims:
        physical.parse({d: 1})  # names the bad key
    try:
        levels = [int(x) for x in args.levels.split(",") if x]
    except ValueError:
        raise ConfigError(f"contact-sheet: --levels must be integers, got '{args.levels}'") from None
    for lvl in levels:
        if not 1 <= lvl <= 5:
            raise ConfigError(f"contact-sheet: level {lvl} not in 1..5")
    sheet = build_sheet(tasks, dims, levels, args.seed, args.camera, args.cell_width, args.settle_steps)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]}: {len(tasks)} tasks x {len(dims)} perturbations x levels {levels})")
    return 0
