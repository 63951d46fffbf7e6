"""The torch path of the image ops (GPU when there is one): the same random fields as
:mod:`perturbation_node.ops`, applied with torch on ``device``.

``ops.prepare`` draws an op's field with numpy (so seeds mean the same on every device) and tags
the function it returns with ``fn.torch = (kind, data)``; :func:`to_torch` turns that into a
torch function ``HxWx3 uint8 tensor → HxWx3 uint8 tensor`` on ``device``. Kinds: ``lut`` (light
tone curves; bit-identical), ``gain`` (gradient, shadow; ±1 rounding), ``noise`` (Gaussian;
±1), ``table`` (shot noise, a (value, noise code) table; bit-identical), ``gblur`` (Gaussian
blur, separable conv), ``warp`` (viewpoint homographies, ``grid_sample``), ``paste`` (occlusion;
bit-identical). Other ops have no torch path: the engine runs them with numpy/OpenCV.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import ops


def _lut(data, device):
    import torch

    lut = torch.as_tensor(np.asarray(data).reshape(256, -1), dtype=torch.uint8, device=device)
    if lut.shape[1] == 1:
        flat = lut[:, 0]
        return lambda img: flat[img.long()]
    flat = lut.flatten()  # index v*3 + c
    offs = torch.arange(3, device=device)
    return lambda img: flat[img.long() * 3 + offs]


def _gain(q3, device):
    import torch

    q = torch.as_tensor(q3, dtype=torch.int32, device=device)

    def fn(img):
        p = img.int() * q
        r = (p + 64) >> 7
        r -= (((p & 127) == 64) & ((r & 1) == 1)).int()  # round half to even, as OpenCV
        return r.clamp_(0, 255).to(torch.uint8)

    return fn


def _noise(bank, device):
    import torch

    noise = torch.as_tensor(bank.window(None), device=device)
    return lambda img: (img.float() + noise).round_().clamp_(0, 255).to(torch.uint8)


def _table(data, device):
    import torch

    table, bank = data  # (256, q) uint8 output per (value, noise code); the episode's window of codes
    q = table.shape[1]
    flat = torch.as_tensor(np.ascontiguousarray(table).reshape(-1), device=device)
    codes = torch.as_tensor(bank.window(None), device=device).long()
    return lambda img: flat[img.long() * q + codes]


def _gauss_kernel(sigma: float, device):
    import torch

    k = int(round(sigma * 3 * 2 + 1)) | 1  # OpenCV's size for 8-bit images
    x = torch.arange(k, dtype=torch.float32, device=device) - (k - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum(), k


def _gblur(sigma, device):
    import torch
    import torch.nn.functional as F

    g, k = _gauss_kernel(float(sigma), device)
    kx = g.view(1, 1, 1, k).repeat(3, 1, 1, 1)
    ky = g.view(1, 1, k, 1).repeat(3, 1, 1, 1)
    pad = k // 2

    def fn(img):
        x = img.permute(2, 0, 1).unsqueeze(0).float()
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kx, groups=3)
        x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), ky, groups=3)
        return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8)

    return fn


def _warp(hmat, device, shape):
    import torch
    import torch.nn.functional as F

    h, w = shape[:2]
    hinv = np.linalg.inv(np.asarray(hmat, np.float64))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs, ys, np.ones_like(xs)], -1) @ hinv.T
    sx, sy = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    grid = np.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], -1)[None].astype(np.float32)
    g = torch.as_tensor(grid, device=device)

    def fn(img):
        x = img.permute(2, 0, 1).unsqueeze(0).float()
        y = F.grid_sample(x, g, mode="bilinear", padding_mode="reflection", align_corners=True)
        return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8)

    return fn


def _paste(data, device):
    import torch

    idx, vals = data
    i = torch.as_tensor(idx, dtype=torch.long, device=device)
    v = torch.as_tensor(vals, dtype=torch.uint8, device=device)

    def fn(img):
        out = img.clone()
        out.view(-1, 3)[i] = v
        return out

    return fn


def to_torch(fn: Callable, device: str, shape: tuple) -> Callable | None:
    """The torch version of a prepared numpy op, or None when the op has no torch path."""
    tag = getattr(fn, "torch", None)
    if tag is None:
        return None
    kind, data = tag
    if kind == "lut":
        return _lut(data, device)
    if kind == "gain":
        return _gain(data, device)
    if kind == "noise":
        return _noise(data, device)
    if kind == "table":
        return _table(data, device)
    if kind == "gblur":
        return _gblur(data, device)
    if kind == "warp":
        return _warp(data, device, shape)
    if kind == "paste":
        return _paste(data, device)
    return None


def prepare(name: str, level: int, seed: int, shape: tuple, device: str = "cpu") -> Callable:
    fn = to_torch(ops.prepare(name, level, seed, shape), device, shape)
    if fn is None:
        raise ValueError(f"op '{name}' has no torch path (torch ops: {', '.join(sorted(TORCH_OPS))})")
    return fn


def _torch_ops() -> list[str]:
    out = []
    for name, spec in ops.OPS.items():
        if spec.target == "image" and not spec.needs_mask:
            if getattr(ops.prepare(name, 1, 0, (8, 8, 3)), "torch", None) is not None:
                out.append(name)
    return sorted(out)


TORCH_OPS = _torch_ops()
