"""``wam-policy perturb-sheet IMAGE_OR_BAG``: a PNG contact sheet of perturbation ops × levels.

Rows are ops (default: every image op), columns the clean frame and levels 1–5 at one seed.
The source frame is an image file (PNG/JPEG), a rosbag2 bag (folder, ``.mcap`` or ``.db3``; the
``--index``-th message on ``--topic``), ``--sim TASK`` (a frame rendered by sim_bridge, with a
background mask from MuJoCo's segmentation so ``background`` shows too) or ``--synthetic``.
Without a mask, ``background`` is drawn with a mask of the dominant colour (sheet only).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from wam_common import topics
from wam_common.config import ConfigError

from perturbation_node import ops
from perturbation_node.masks import background_mask


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="image file (png/jpg) or rosbag2 bag (folder, .mcap, .db3)")
    p.add_argument("--sim", metavar="TASK", help="render the first frame of a sim_bridge task instead")
    p.add_argument("--synthetic", action="store_true", help="use a synthetic test scene instead")
    p.add_argument("--camera", default="cam_high", help="camera for --sim and the default bag topic")
    p.add_argument("--topic", default="", help="bag topic (default: the camera's raw topic)")
    p.add_argument("--index", type=int, default=0, help="which message of the topic (default 0)")
    p.add_argument("--mask", help="background mask image (nonzero = background)")
    p.add_argument("--ops", default="", help="comma-separated ops or families (default: every image op)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cell-width", type=int, default=192, help="width of one cell in px")
    p.add_argument("-o", "--output", default="perturb_sheet.png", help="output PNG")


def synthetic_scene(h: int = 480, w: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """A table-top-like test frame and its background mask."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[:] = (90, 110, 140)
    table = y > h * 0.45
    img[table] = np.stack([150 + 20 * np.sin(x / 23), 120 + 0 * x, 90 + 0 * x], -1)[table]
    mask = np.zeros((h, w), np.uint8)
    mask[...] = 255
    out = img.clip(0, 255).astype(np.uint8)
    for (cx, cy, r, col) in ((int(w * .35), int(h * .62), int(h * .09), (220, 40, 40)),):
        cv2.rectangle(out, (cx - r, cy - r), (cx + r, cy + r), col, -1)
        cv2.rectangle(mask, (cx - r, cy - r), (cx + r, cy + r), 0, -1)
    for side in (0.15, 0.85):  # two "arms"
        pts = np.array([[w * side, 0], [w * side + 30, 0], [w * 0.5 + (side - .5) * 120, h * .55],
                        [w * 0.5 + (side - .5) * 120 - 30, h * .55]], np.int32)
        cv2.fillConvexPoly(out, pts, (60, 60, 60))
        cv2.fillConvexPoly(mask, pts, 0)
    return out, mask


def sim_frame(task: str, cam: str, h: int = 480, w: int = 640, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A rendered sim frame and its background mask (geoms of the world body / no geom = background)."""
    import mujoco

    from sim_bridge.env import SimEnv
    from sim_bridge.mujoco_aloha import CAMERA_MAP

    env = SimEnv(task)
    try:
        env.reset(seed)
        rgb = np.ascontiguousarray(env.render(cam, h, w))
        sim = env.sim
        r = mujoco.Renderer(sim.model, height=h, width=w)
        try:
            r.enable_segmentation_rendering()
            r.update_scene(sim.data, camera=CAMERA_MAP.get(cam, cam))
            seg = r.render()
        finally:
            r.close()
        return rgb, background_mask(sim.model, seg, foreground=("vx300s",) + tuple(env.task.objects))
    finally:
        env.close()


def dominant_colour_mask(img: np.ndarray) -> np.ndarray:
    q = (img // 32).reshape(-1, 3).astype(np.int32)
    keys = q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]
    top = np.bincount(keys).argmax()
    return (keys == top).reshape(img.shape[:2]).astype(np.uint8) * 255


def load_source(args) -> tuple[np.ndarray, np.ndarray | None, str]:
    if args.synthetic:
        img, mask = synthetic_scene()
        return img, mask, "synthetic scene"
    if args.sim:
        img, mask = sim_frame(args.sim, args.camera, seed=args.seed)
        return img, mask, f"sim {args.sim} / {args.camera}"
    if not args.source:
        raise ConfigError("perturb-sheet: give IMAGE_OR_BAG, --sim TASK or --synthetic")
    src = Path(args.source)
    if not src.exists():
        raise ConfigError(f"perturb-sheet: no such file or bag '{src}'")
    if src.is_file() and src.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
        bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConfigError(f"perturb-sheet: cannot read image '{src}'")
        return np.ascontiguousarray(bgr[:, :, ::-1]), None, src.name
    return _from_bag(src, args.topic or topics.camera_topic(args.camera), args.index)


def _from_bag(path: Path, topic: str, index: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    from rosbags.highlevel import AnyReader

    from wam_common.imageio import ImageDecodeError, decode_image, to_rgb

    if path.is_file() and path.suffix in (".mcap", ".db3"):
        path = path.parent  # a rosbag2 storage file: open its bag folder (metadata.yaml)
    try:
        reader = AnyReader([path])
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types
        raise ConfigError(f"perturb-sheet: cannot open bag '{path}' ({exc})") from None
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            have = ", ".join(sorted({c.topic for c in reader.connections if c.msgtype.endswith("/Image")}))
            raise ConfigError(f"perturb-sheet: topic '{topic}' not in bag (image topics: {have or 'none'})")
        for k, (_, stamp, raw) in enumerate(reader.messages(connections=conns)):
            if k == index:
                try:
                    return np.ascontiguousarray(to_rgb(decode_image(raw))), None, f"{path.name} {topic} #{k}"
                except ImageDecodeError as exc:
                    raise ConfigError(f"perturb-sheet: message {k} on '{topic}' is not a colour image ({exc})") from None
        raise ConfigError(f"perturb-sheet: topic '{topic}' has fewer than {index + 1} messages")
    finally:
        reader.close()


def select_ops(spec: str) -> list[str]:
    image_ops = [n for n, s in ops.OPS.items() if s.target == "image"]
    if not spec:
        return image_ops
    fams = ops.families()
    out: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item in fams:
            out += [n for n in fams[item] if ops.OPS[n].target == "image"]
        elif ops.get_op(item).target != "image":
            raise ConfigError(f"perturb-sheet: op '{item}' is a {ops.OPS[item].target} op (no picture)")
        else:
            out.append(item)
    return out


def _label(cell: np.ndarray, text: str) -> None:
    scale = max(0.35, cell.shape[1] / 480)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(cell, (0, 0), (tw + 6, th + 8), (0, 0, 0), -1)
    cv2.putText(cell, text, (3, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def make_sheet(img: np.ndarray, names: list[str], seed: int = 0, mask: np.ndarray | None = None,
               cell_width: int = 192) -> np.ndarray:
    """RGB contact sheet: one row per op, columns clean, L1..L5 (perturbed at full size, then shrunk)."""
    h, w = img.shape[:2]
    cw = int(cell_width)
    ch = int(round(h * cw / w))
    if mask is None:
        mask = dominant_colour_mask(img)
    rows = []
    for name in names:
        cells = []
        clean = cv2.resize(img, (cw, ch), interpolation=cv2.INTER_AREA)
        _label(clean, name)
        cells.append(clean)
        for level in ops.LEVELS:
            out = ops.apply(name, img, level, seed, mask=mask)
            cell = cv2.resize(out, (cw, ch), interpolation=cv2.INTER_AREA)
            _label(cell, f"L{level} {ops.OPS[name].levels[level - 1]}")
            cells.append(cell)
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def run(args) -> int:
    img, mask, what = load_source(args)
    if args.mask:
        m = cv2.imread(args.mask, cv2.IMREAD_GRAYSCALE)
        if m is None or m.shape != img.shape[:2]:
            raise ConfigError(f"perturb-sheet: mask '{args.mask}' unreadable or not {img.shape[1]}x{img.shape[0]}")
        mask = m
    names = select_ops(args.ops)
    sheet = make_sheet(img, names, args.seed, mask, args.cell_width)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.ascontiguousarray(sheet[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise ConfigError(f"perturb-sheet: cannot write '{out}'")
    print(f"{out}: {len(names)} ops x levels 1-5 from {what} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perturb-sheet", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
