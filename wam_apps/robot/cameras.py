"""``wam-policy cameras``: the connected RealSense cameras, and a ``serials`` block to paste.

pip's pyrealsense2 ships no ``rs-enumerate-devices``; this lists serial, name and (for
recordings) the file, then prints the ``realsense_cameras.serials`` block of
``config/aloha.yaml`` with the cameras in the order found (reorder to match your rig: unplug
one camera and run again to tell them apart).
"""
from __future__ import annotations

import yaml

from wam_common import topics

from robot_io.realsense import discover


def add_arguments(p) -> None:
    p.add_argument("--playback-dir", default="", help="list the RealSense recordings in this folder instead")


def run(args) -> int:
    found = discover(args.playback_dir or None)
    if not found:
        where = f"recordings in {args.playback_dir}" if args.playback_dir else "RealSense cameras connected"
        print(f"no {where}")
        return 1
    print(f"{len(found)} camera(s):")
    for serial, info in sorted(found.items()):
        print(f"  {serial}  {info.name}" + (f"  ({info.path})" if info.path else ""))
    names = list(topics.CAMERAS + topics.OPTIONAL_CAMERAS)
    block = {names[i] if i < len(names) else f"extra_{i}": s for i, s in enumerate(sorted(found))}
    for cam in names:
        block.setdefault(cam, "")
    print("\n# config/aloha.yaml → realsense_cameras.parameters (check which camera is which):")
    print(yaml.safe_dump({"serials": block}, sort_keys=False).rstrip())
    return 0
