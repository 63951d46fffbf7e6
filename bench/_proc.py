"""Helpers the benchmarks share (imported as ``from _proc import ...``: a script's folder is on sys.path)."""
from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


#: zoo kinds that resize camera frames themselves, on their device (π0/π0.5 and SmolVLA with pad,
#: FastWAM per camera): the node's ``observation.resize: [0, 0]`` sends frames as published
SELF_RESIZING = ("pi0", "pi05", "smolvla", "fastwam", "xvla")  # xvla: resize_imgs_with_padding on its device


def lerobot_mode(mode: str) -> dict:
    """A bench job's MODE (eager | fast | compile) → the lerobot backend's ``engine``/``compile`` keys."""
    return {"engine": "fast" if mode == "fast" else "eager", "compile": "reduce-overhead" if mode == "compile" else ""}
