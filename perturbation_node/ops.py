"""Perturbation operations: pure numpy/OpenCV, registered by name, levels 1–5, deterministic for a seed.

Every op is an :class:`OpSpec` in :data:`OPS`. An op's ``prepare(param, rng, shape)`` draws the op's
random *field* (shadow polygon, noise image, homography, patch positions, …) from ``rng`` and returns
a function that applies it. The engine calls ``prepare`` once per episode (``resample: episode``, a
fixed field for the whole episode) or once per frame (``resample: frame``); either way the result is
a pure function of (op, level, seed, image), bit-identical for the same seed.

Targets:
- ``image``: ``fn(img HxWx3 uint8 RGB, mask HxW uint8 | None) -> HxWx3 uint8`` (new array; input untouched);
- ``state``: ``fn(positions float64 (n,)) -> (n,)`` (arm joints only; the engine picks them);
- ``language``: ``fn(text) -> text`` (see :mod:`.language`);
- ``stream``: temporal ops the engine runs itself (frame drops, latency, stamp jitter); ``prepare``
  returns the parameter.

The levels' parameters are the tables below (``python -m perturbation_node.ops`` prints them as
Markdown; docs/perturbations.md is that output). Distances in pixels are for a 640-px-wide image
and scale with the width.
"""
from __future__ import annotations

import functools
import math
import statistics
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from wam_common.config import ConfigError

LEVELS = (1, 2, 3, 4, 5)
TARGETS = ("image", "state", "language", "stream")


@dataclass(frozen=True)
class OpSpec:
    name: str
    family: str  # light | noise | blur | viewpoint | occlusion | background | temporal | state | language
    target: str
    levels: tuple  # parameter for level 1..5
    unit: str
    doc: str
    prepare: Callable[..., Any]
    needs_mask: bool = False
    random: bool = True  # False: the op draws nothing (seed has no effect)
    frame_rng: bool = False  # True: per-frame resampling passes a frame rng to fn (no re-prepare)

    def param(self, level: int) -> Any:
        check_level(self.name, level)
        return self.levels[int(level) - 1]


OPS: dict[str, OpSpec] = {}


def register_op(name: str, family: str, levels: Sequence, unit: str, doc: str, target: str = "image",
                needs_mask: bool = False, random: bool = True, frame_rng: bool = False):
    """Decorator: register ``prepare(param, rng, shape)`` under ``name`` with its 5-level table."""
    if len(levels) != 5:
        raise ValueError(f"op '{name}': needs 5 levels, got {len(levels)}")
    if target not in TARGETS:
        raise ValueError(f"op '{name}': unknown target '{target}'")

    def deco(fn):
        if name in OPS:
            raise ValueError(f"op '{name}' registered twice")
        OPS[name] = OpSpec(name, family, target, tuple(levels), unit, doc, fn, needs_mask, random, frame_rng)
        return fn

    return deco


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise ConfigError(f"unknown perturbation op '{name}' (known: {', '.join(sorted(OPS))})") from None


def check_level(name: str, level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or int(level) not in LEVELS:
        raise ConfigError(f"op '{name}': level {level!r} is not one of 1..5")
    return int(level)


def families() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in OPS.values():
        out.setdefault(spec.family, []).append(spec.name)
    return out


def stable_id(text: str) -> int:
    """A name → int that is the same in every process (Python's hash() is salted)."""
    return zlib.crc32(text.encode("utf-8"))


def make_rng(*keys: int | str) -> np.random.Generator:
    """A Generator from any number of int/str keys (seed, episode, camera, op index, stamp)."""
    ints = [stable_id(k) if isinstance(k, str) else int(k) for k in keys]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([abs(i) for i in ints])))


def prepare(name: str, level: int, seed: int | np.random.Generator, shape: tuple = ()) -> Callable:
    spec = get_op(name)
    rng = seed if isinstance(seed, np.random.Generator) else make_rng(int(seed))
    return spec.prepare(spec.param(level), rng, tuple(shape))


def apply(name: str, img: np.ndarray, level: int, seed: int, mask: np.ndarray | None = None) -> np.ndarray:
    """One-shot: the image op ``name`` at ``level`` with ``seed`` (tests, the contact sheet)."""
    spec = get_op(name)
    if spec.target != "image":
        raise ConfigError(f"op '{name}' is a {spec.target} op, not an image op")
    img = _check_image(img)
    return prepare(name, level, seed, img.shape)(img, mask)


class MaskRequired(RuntimeError):
    """An op that needs a background mask got none."""


class _NoiseBank:
    """A per-episode noise bank 1.25× the frame: episode mode uses window 0; per-frame resampling
    takes a window at a random offset (a new noise image per frame for the cost of a pointer)."""

    def __init__(self, flat: np.ndarray, shape: tuple):
        self.flat, self.shape = flat, tuple(shape)
        self.n = int(np.prod(shape))

    def window(self, rng: np.random.Generator | None) -> np.ndarray:
        off = int(rng.integers(0, self.flat.size - self.n + 1)) if rng is not None else 0
        return self.flat[off:off + self.n].reshape(self.shape)


def _bank_size(shape: tuple) -> int:
    n = int(np.prod(shape))
    return n + n // 4


def _check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image ops take HxWx3 uint8, got {img.shape} {img.dtype}")
    return img


def _scale(shape: tuple) -> float:
    return (shape[1] if len(shape) > 1 else 640) / 640.0


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) as float32 HxW arrays, cached per size (read-only)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _lut_op(lut: np.ndarray) -> Callable:
    lut = np.clip(np.round(lut), 0, 255).astype(np.uint8)
    lut = lut.reshape(1, 256, -1) if lut.ndim == 2 else lut.reshape(1, 256)

    def fn(img, mask=None, rng=None):
        return cv2.LUT(np.ascontiguousarray(img), lut)

    fn.torch = ("lut", lut)
    return fn


def _gain_op(field: np.ndarray) -> Callable:
    """Multiply by a per-pixel gain field (HxW, 0…1.99), saturating to uint8 (fixed point, 1/128 steps)."""
    q = np.clip(np.rint(field * 128.0), 0, 255).astype(np.uint8)
    q3 = np.ascontiguousarray(np.repeat(q[:, :, None], 3, axis=2))

    def fn(img, mask=None, rng=None):
        return cv2.multiply(np.ascontiguousarray(img), q3, scale=1.0 / 128.0)

    fn.torch = ("gain", q3)
    return fn


_V = np.arange(256, dtype=np.float64)

# ---------------------------------------------------------------- light


@register_op("brightness", "light", (0.2, 0.4, 0.6, 0.85, 1.1), "exposure change in stops (±, sign drawn)",
             "Global exposure: gain 2^(±stops), saturating.")
def _brightness(stops, rng, shape):
    return _lut_op(_V * 2.0 ** (_sign(rng) * stops))


@register_op("gamma", "light", (0.15, 0.3, 0.45, 0.65, 0.9), "log2 of the gamma exponent (±, sign drawn)",
             "Tone curve 255·(v/255)^γ with γ = 2^(±p).")
def _gamma(p, rng, shape):
    g = 2.0 ** (_sign(rng) * p)
    return _lut_op(255.0 * (_V / 255.0) ** g)


@register_op("contrast", "light", (0.15, 0.3, 0.45, 0.6, 0.75), "contrast change c (reduce ×(1−c) or raise ×(1+c))",
             "Contrast about mid-grey 128.")
def _contrast(c, rng, shape):
    a = 1.0 - c if rng.random() < 0.5 else 1.0 + c
    return _lut_op(128.0 + a * (_V - 128.0))


@register_op("color_temperature", "light", (0.06, 0.12, 0.18, 0.25, 0.33), "red/blue gain shift t",
             "Warm (R×(1+t), B×(1−t)) or cool (the reverse), drawn per seed.")
def _color_temperature(t, rng, shape):
    s = _sign(rng)
    lut = np.stack([_V * (1 + s * t), _V, _V * (1 - s * t)], axis=1)
    return _lut_op(lut)


@register_op("tint", "light", (0.05, 0.1, 0.15, 0.2, 0.27), "green/magenta gain shift t",
             "Green (G×(1+t), R,B×(1−t/2)) or magenta tint, drawn per seed.")
def _tint(t, rng, shape):
    s = _sign(rng)
    lut = np.stack([_V * (1 - s * t / 2), _V * (1 + s * t), _V * (1 - s * t / 2)], axis=1)
    return _lut_op(lut)


def _ramp(shape, angle: float) -> np.ndarray:
    h, w = shape[:2]
    y, x = _grid(h, w)
    proj = (x - w / 2) * math.cos(angle) + (y - h / 2) * math.sin(angle)
    m = np.abs(proj).max() or 1.0
    return proj / m  # [-1, 1]


@register_op("light_gradient", "light", (0.15, 0.3, 0.45, 0.6, 0.75), "gain swing s across the image",
             "Directional light: linear gain 1−s … 1+s along a drawn direction.")
def _light_gradient(s, rng, shape):
    return _gain_op(1.0 + s * _ramp(shape, rng.uniform(0, 2 * math.pi)))


@register_op("shadow", "light", (0.25, 0.4, 0.55, 0.7, 0.8), "fraction of light removed in the shadow",
             "Cast shadow: a drawn soft-edged quadrilateral band (~25–45% of the image) darkened.")
def _shadow(d, rng, shape):
    h, w = shape[:2]
    ang = rng.uniform(0, math.pi)
    width = rng.uniform(0.25, 0.45) * math.hypot(h, w)
    off = rng.uniform(-0.25, 0.25) * math.hypot(h, w)
    skew = rng.uniform(-0.3, 0.3)
    y, x = _grid(h, w)
    u = (x - w / 2) * math.cos(ang) + (y - h / 2) * math.sin(ang)
    v = -(x - w / 2) * math.sin(ang) + (y - h / 2) * math.cos(ang)
    centre = off + skew * v
    band = (np.abs(u - centre) < width / 2).astype(np.float32)
    k = max(3, int(0.03 * w) | 1)
    band = cv2.GaussianBlur(band, (k, k), 0)
    return _gain_op(1.0 - d * band)


# ---------------------------------------------------------------- sensor noise


@register_op("gaussian_noise", "noise", (4.0, 8.0, 14.0, 22.0, 32.0), "σ in 8-bit grey levels",
             "Additive white Gaussian noise per pixel and channel.", frame_rng=True)
def _gaussian_noise(sigma, rng, shape):
    bank = _NoiseBank(rng.standard_normal(_bank_size(shape), dtype=np.float32) * np.float32(sigma), shape)

    def fn(img, mask=None, rng=None):
        return cv2.add(np.ascontiguousarray(img), bank.window(rng), dtype=cv2.CV_8U)

    fn.torch = ("noise", bank)
    return fn


SHOT_LEVELS = 64  # shot noise's standard normal, quantised to this many equal-probability levels


@functools.lru_cache(maxsize=4)
def normal_levels(q: int) -> np.ndarray:
    """A ``q``-level stand-in for N(0, 1): the conditional means of its ``q`` equal-probability bins,
    rescaled so a uniformly drawn level has mean 0 and variance exactly 1 (read-only)."""
    nd = statistics.NormalDist()
    pdf = np.array([0.0] + [nd.pdf(nd.inv_cdf(i / q)) for i in range(1, q)] + [0.0])
    z = q * (pdf[:-1] - pdf[1:])
    z /= math.sqrt(float(np.mean(z * z)))
    z.setflags(write=False)
    return z


@register_op("shot_noise", "noise", (120.0, 60.0, 30.0, 15.0, 8.0), "photons at full white (fewer = noisier)",
             "Poisson (shot) noise, signal-dependent: σ = sqrt(v·255/peak) (Gaussian approximation, the normal "
             f"quantised to {SHOT_LEVELS} equal-probability levels: one table look-up per value).",
             frame_rng=True)
def _shot_noise(peak, rng, shape):
    """out = sat(rint(v + σ(v)·z)) with z one of :func:`normal_levels` (|z| ≤ 2.52), read from a bank
    of uint8 level codes (per-frame resampling takes a window of it, as the other noise ops). The
    256 × 64 results are precomputed per level, so a frame is one 2-D table look-up per value:
    ``cv2.calcBackProject`` over (value, code) does it in one pass with no temporaries.

    Micro-bench (480×640×3, per-frame windows of 3 cameras' banks, one OpenCV thread, median of 200
    calls; 3 processes × 3 runs in each of 2 sessions on the shared 2-core VM at load ≈ 5 and ≈ 1.5):
    0.70–0.82 ms (median 0.72), no page faults. The float kernel it replaces (σ LUT → float32 × float32
    noise → saturating add) took 2.7–3.5 ms (median 2.9) in a fresh process, where glibc hands its 8 MB
    of float32 temporaries back to the OS on every call (1 993 page faults per call; the node's CPU per
    frame, 2 ms over Gaussian noise's, says it paid that too), and 1.09–1.19 ms (median 1.14) when
    malloc keeps them (``MALLOC_TRIM_THRESHOLD_`` raised): ≈ 4× and ≈ 1.6× faster. Slower alternatives
    measured: a numpy gather ``T[(v << 6) | code]`` 1.1–1.9 ms, a σ LUT with int16 fixed point 0.7 ms
    plus 3.7 MB of temporaries.
    """
    q = SHOT_LEVELS
    bank = _NoiseBank(rng.integers(0, q, _bank_size(shape), dtype=np.uint8), shape)
    table = np.clip(np.rint(_V[:, None] + np.sqrt(_V * 255.0 / peak)[:, None] * normal_levels(q)), 0, 255)
    hist = table.astype(np.float32)  # calcBackProject's "histogram": hist[v, code] = output value
    ranges = [0, 256, 0, q]

    def fn(img, mask=None, rng=None):
        img = np.ascontiguousarray(img)
        rows = (img.shape[0], -1)
        codes = bank.window(rng).reshape(rows)
        return cv2.calcBackProject([img.reshape(rows), codes], [0, 1], hist, ranges, 1).reshape(img.shape)

    fn.torch = ("table", (table.astype(np.uint8), bank))
    return fn


@register_op("salt_pepper", "noise", (0.004, 0.01, 0.02, 0.04, 0.07), "fraction of pixels set to white/black",
             "Impulse noise (half salt, half pepper).", frame_rng=True)
def _salt_pepper(amount, rng, shape):
    h, w = shape[:2]
    u = rng.random(h * w + h * w // 4, dtype=np.float32)
    salt_all = np.flatnonzero(u < amount / 2)
    pepper_all = np.flatnonzero(u > 1 - amount / 2)
    extra = h * w // 4

    def fn(img, mask=None, rng=None):
        off = int(rng.integers(0, extra + 1)) if rng is not None else 0
        out = np.array(img, copy=True, order="C")
        flat = out.reshape(-1, 3)
        s = salt_all[(salt_all >= off) & (salt_all < off + h * w)] - off
        p = pepper_all[(pepper_all >= off) & (pepper_all < off + h * w)] - off
        flat[s] = 255
        flat[p] = 0
        return out

    return fn


@register_op("motion_blur", "noise", (5, 10, 16, 24, 34), "blur length in px (640-wide)",
             "Linear motion blur at a drawn angle (LIBERO-Plus 'motion blur').")
def _motion_blur(length, rng, shape):
    # A box of 2^k taps along the drawn direction, built by k shift-and-average steps (shifts L/2,
    # L/4, …; bilinear sub-pixel shifts; k so the taps are ≤ 2 px apart), centred: k+1 warps instead
    # of an L×L filter2D.
    h, w = shape[:2]
    n = length * _scale(shape)
    ang = rng.uniform(0, math.pi)
    ux, uy = math.cos(ang), math.sin(ang)
    k = int(min(5, max(1, math.ceil(math.log2(max(n, 2.0) / 2.0)))))
    shifts = [n / 2 ** i for i in range(1, k + 1)]
    centre = sum(shifts) / 2

    def T(dx):
        return np.float32([[1, 0, dx * ux], [0, 1, dx * uy]])

    def fn(img, mask=None, rng=None):
        out = np.ascontiguousarray(img)
        for i, s in enumerate(shifts):
            c = centre if i == len(shifts) - 1 else 0.0
            a = cv2.warpAffine(out, T(-c), (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101) if c else out
            b = cv2.warpAffine(out, T(s - c), (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            out = cv2.addWeighted(a, 0.5, b, 0.5, 0)
        return out

    return fn


@register_op("gaussian_blur", "noise", (1.0, 2.0, 3.2, 4.8, 7.0), "σ in px (640-wide)",
             "Defocus-like Gaussian blur (LIBERO-Plus 'gaussian blur').", random=False)
def _gaussian_blur(sigma, rng, shape):
    s = sigma * _scale(shape)

    def fn(img, mask=None, rng=None):
        return cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), s, borderType=cv2.BORDER_REFLECT_101)

    fn.torch = ("gblur", s)
    return fn


@register_op("zoom_blur", "noise", (1.06, 1.11, 1.16, 1.21, 1.26), "largest zoom factor averaged",
             "Zoom blur: the mean of the image and 7 centre zooms up to the factor (LIBERO-Plus / ImageNet-C); "
             "the zoomed copies are averaged at half resolution (they are blurred anyway).", random=False)
def _zoom_blur(zmax, rng, shape):
    h, w = shape[:2]
    hh, hw = max(1, h // 2), max(1, w // 2)
    zooms = np.linspace(1.0, zmax, 8)[1:]
    mats = [np.array([[z, 0, (1 - z) * hw / 2], [0, z, (1 - z) * hh / 2]], np.float32) for z in zooms]

    def fn(img, mask=None, rng=None):
        img = np.ascontiguousarray(img)
        small = cv2.resize(img, (hw, hh), interpolation=cv2.INTER_AREA)
        acc = np.zeros((hh, hw, 3), np.float32)
        for m in mats:
            cv2.accumulate(cv2.warpAffine(small, m, (hw, hh), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REFLECT_101), acc)
        zoomed = cv2.resize(acc, (w, h), interpolation=cv2.INTER_LINEAR)
        n = len(mats) + 1
        cv2.accumulate(img, zoomed)
        return cv2.convertScaleAbs(zoomed, alpha=1.0 / n)

    return fn


def plasma_fractal(rng: np.random.Generator, mapsize: int = 256, wibbledecay: float = 3.0) -> np.ndarray:
    """Diamond-square height map in [0, 1] (ImageNet-C's fog field, ported), drawn from ``rng``."""
    maparray = np.zeros((mapsize, mapsize), dtype=np.float64)
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / (maparray.max() or 1.0)


@register_op("fog", "noise", ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (3.0, 1.5), (3.5, 1.4)),
             "(fog density c0, fractal wibble decay); ImageNet-C severities with c0 raised at 4–5 to stay monotone",
             "Fog: a plasma-fractal haze added and contrast renormalised (LIBERO-Plus / ImageNet-C 'fog').")
def _fog(p, rng, shape):
    c0, decay = p
    h, w = shape[:2]
    field = plasma_fractal(rng, 256, decay).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)
    fog3 = np.repeat((c0 * 255.0 * field)[:, :, None], 3, axis=2)
    fog_max = float(c0 * 255.0)
    cache: dict[int, np.ndarray] = {}

    def fn(img, mask=None, rng=None):
        # (img + fog)·m/(m + fog_max) with m = img.max(): the fog term per m is cached (uint8)
        img = np.ascontiguousarray(img)
        m = int(img.max())
        k = m / (m + fog_max)
        fk = cache.get(m)
        if fk is None:
            fk = cache[m] = np.ascontiguousarray(np.clip(np.rint(fog3 * k), 0, 255).astype(np.uint8))
        return cv2.addWeighted(img, k, fk, 1.0, 0)

    return fn


@register_op("glass_blur", "noise", ((0.8, 1.0, 1), (1.0, 2.0, 1), (1.3, 2.5, 2), (1.6, 3.5, 2), (2.0, 4.5, 3)),
             "(σ px, max displacement px, iterations), 640-wide",
             "Frosted glass: blur, local random pixel displacement, blur (LIBERO-Plus / ImageNet-C 'glass blur').")
def _glass_blur(p, rng, shape):
    sigma, delta, iters = p
    h, w = shape[:2]
    s = _scale(shape)
    gy, gx = _grid(h, w)
    maps = []
    for it in range(3):  # always draw 3 fields so the levels share them (nested, monotone)
        u = rng.uniform(-1.0, 1.0, (2, h, w)).astype(np.float32)
        if it < iters:
            dx, dy = np.rint(u[0] * delta * s), np.rint(u[1] * delta * s)
            maps.append(cv2.convertMaps(gx + dx, gy + dy, cv2.CV_16SC2))

    def fn(img, mask=None, rng=None):
        out = cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), sigma * s)
        for m1, m2 in maps:
            out = cv2.remap(out, m1, m2, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
        return cv2.GaussianBlur(out, (0, 0), sigma * s)

    return fn


@register_op("jpeg", "noise", (60, 35, 20, 12, 7), "JPEG quality (lower = worse)",
             "JPEG compression artefacts (encode/decode at the quality).", random=False)
def _jpeg(q, rng, shape):
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(q)]

    def fn(img, mask=None, rng=None):
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), params)
        if not ok:
            raise RuntimeError("JPEG encode failed")
        return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])

    return fn


# ---------------------------------------------------------------- viewpoint

HFOV_DEG = 69.0  # RealSense D435/D405 colour


def intrinsics(shape, hfov_deg: float = HFOV_DEG) -> np.ndarray:
    h, w = shape[:2]
    f = (w / 2) / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float64)


def rotation_homography(shape, yaw: float, pitch: float, roll: float, zoom: float = 1.0) -> np.ndarray:
    """H = K' R K⁻¹ for a camera rotating by (yaw, pitch, roll) degrees and zooming by ``zoom``."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    k = intrinsics(shape)
    k2 = k.copy()
    k2[0, 0] *= zoom
    k2[1, 1] *= zoom
    return k2 @ (rz @ rx @ ry) @ np.linalg.inv(k)


def _warp_op(hmat, shape):
    h, w = shape[:2]

    def fn(img, mask=None, rng=None):
        return cv2.warpPerspective(np.ascontiguousarray(img), hmat, (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT_101)

    fn.torch = ("warp", hmat)
    return fn


def _axis_op(axis: str):
    def prep(deg, rng, shape):
        a = _sign(rng) * deg
        ang = {"yaw": (a, 0, 0), "pitch": (0, a, 0), "roll": (0, 0, a)}[axis]
        return _warp_op(rotation_homography(shape, *ang), shape)

    return prep


for _axis in ("yaw", "pitch", "roll"):
    register_op(f"camera_{_axis}", "viewpoint", (1.0, 2.0, 3.0, 4.0, 5.0), "degrees (sign drawn)",
                f"Camera {_axis} by homography K·R·K⁻¹ (hfov {HFOV_DEG}°); ≤5° as RoboTwin 2.0-Plus.")(_axis_op(_axis))


@register_op("camera_zoom", "viewpoint", (1.03, 1.06, 1.09, 1.12, 1.15), "focal-length factor",
             "Camera moved closer (distance ×0.87–0.97 ≈ RoboTwin 2.0-Plus ×0.85–1.0).", random=False)
def _camera_zoom(z, rng, shape):
    return _warp_op(rotation_homography(shape, 0, 0, 0, z), shape)


@register_op("viewpoint", "viewpoint", ((1.0, 1.03), (2.0, 1.06), (3.0, 1.09), (4.0, 1.12), (5.0, 1.15)),
             "(max degrees per axis, max zoom)",
             "Combined yaw+pitch+roll (each ±[0.5,1]×max, drawn) and zoom (1+[0.5,1]×(max−1)).")
def _viewpoint(p, rng, shape):
    deg, zmax = p
    frac = rng.uniform(0.5, 1.0, 3) * np.where(rng.random(3) < 0.5, -1.0, 1.0)
    z = 1.0 + (zmax - 1.0) * rng.uniform(0.5, 1.0)
    return _warp_op(rotation_homography(shape, *(deg * frac), z), shape)


# ---------------------------------------------------------------- occlusion / background


@register_op("occlusion", "occlusion", (0.02, 0.05, 0.09, 0.14, 0.2), "fraction of the image covered",
             "1–3 drawn opaque rectangles (solid colour with texture), total area as given.")
def _occlusion(frac, rng, shape):
    h, w = shape[:2]
    n = int(rng.integers(1, 4))
    aspects = rng.uniform(0.5, 2.0, n)
    shares = rng.dirichlet(np.ones(n))
    centres = rng.uniform(0.15, 0.85, (n, 2))
    colours = rng.integers(0, 256, (n, 3))
    tex = rng.integers(-25, 26, (h, w, 1)).astype(np.int16)
    fill = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), bool)
    for i in range(n):
        area = frac * shares[i] * h * w
        bw = int(round(math.sqrt(area * aspects[i])))
        bh = int(round(math.sqrt(area / aspects[i])))
        x0 = int(np.clip(centres[i, 0] * w - bw / 2, 0, max(0, w - bw)))
        y0 = int(np.clip(centres[i, 1] * h - bh / 2, 0, max(0, h - bh)))
        mask[y0:y0 + bh, x0:x0 + bw] = True
        fill[y0:y0 + bh, x0:x0 + bw] = np.clip(colours[i] + tex[y0:y0 + bh, x0:x0 + bw], 0, 255)
    idx = np.flatnonzero(mask)
    vals = fill.reshape(-1, 3)[idx]

    def fn(img, mask_=None, rng=None):
        out = np.array(img, copy=True, order="C")
        out.reshape(-1, 3)[idx] = vals
        return out

    fn.torch = ("paste", (idx, vals))
    return fn


def background_texture(rng: np.random.Generator, shape) -> np.ndarray:
    """A drawn procedural texture: checkerboard, stripes or smooth colour noise (HxWx3 uint8)."""
    h, w = shape[:2]
    kind = int(rng.integers(0, 3))
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    y, x = np.mgrid[0:h, 0:w]
    if kind == 0:
        cell = int(rng.integers(16, 64) * _scale(shape)) or 1
        sel = ((x // cell + y // cell) % 2).astype(bool)
    elif kind == 1:
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(20, 60) * _scale(shape)
        sel = (np.sin((x * math.cos(ang) + y * math.sin(ang)) * 2 * math.pi / period) > 0)
    else:
        small = rng.random((max(2, h // 32), max(2, w // 32), 3)).astype(np.float32)
        return np.ascontiguousarray((cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8))
    out = np.where(sel[:, :, None], c1, c2).astype(np.uint8)
    return np.ascontiguousarray(out)


@register_op("background", "background", (0.2, 0.4, 0.6, 0.8, 1.0), "blend weight of the new texture",
             "Background replacement where the mask (mono8, nonzero = background) says so: a drawn "
             "checker/stripe/noise texture blended in. Needs the mask topic; without one the frame passes clean.",
             needs_mask=True)
def _background(alpha, rng, shape):
    tex = background_texture(rng, shape)

    def fn(img, mask=None, rng=None):
        if mask is None:
            raise MaskRequired("op 'background' needs a background mask")
        if mask.shape[:2] != img.shape[:2]:
            raise ValueError(f"op 'background': mask {mask.shape[:2]} does not match image {img.shape[:2]}")
        img = np.ascontiguousarray(img)
        blend = cv2.addWeighted(img, 1.0 - alpha, tex, alpha, 0) if alpha < 1.0 else tex
        out = img.copy()
        cv2.copyTo(blend, np.ascontiguousarray(mask, dtype=np.uint8), out)
        return out

    return fn


# ---------------------------------------------------------------- temporal (run by the engine)


def _param(p, rng, shape):
    return p


register_op("frame_drop", "temporal", (0.05, 0.1, 0.2, 0.3, 0.5), "probability a frame is dropped",
            "Realtime: the frame is not published. Lockstep: the previous frame's pixels are republished "
            "under the new stamp (the policy sees a stale frame; the step does not stall).",
            target="stream")(_param)
register_op("latency", "temporal", (20.0, 40.0, 80.0, 120.0, 200.0), "extra latency in ms",
            "The frame published at stamp t carries the newest image captured at or before t − latency "
            "(stamp kept), as a camera that stamps on arrival.", target="stream")(_param)
register_op("stamp_jitter", "temporal", (1.0, 2.0, 4.0, 8.0, 15.0), "σ of header-stamp noise in ms",
            "Gaussian noise on the header stamp (clipped ±2.5σ). Not allowed in lockstep (steps wait for exact stamps).",
            target="stream")(_param)

# ---------------------------------------------------------------- state


@register_op("joint_noise", "state", (0.005, 0.01, 0.02, 0.04, 0.08), "σ in rad (clipped ±2.25σ)",
             "Zero-mean Gaussian noise on the 6 arm joints of each JointState (grippers untouched).",
             target="state")
def _joint_noise(sigma, rng, shape):
    n = rng.standard_normal(shape).clip(-2.25, 2.25) * sigma

    def fn(q):
        return np.asarray(q, dtype=np.float64) + n

    return fn


@register_op("joint_bias", "state", (0.01, 0.02, 0.04, 0.07, 0.1), "bias magnitude in rad per joint (signs drawn)",
             "A constant offset per arm joint (calibration error).", target="state")
def _joint_bias(mag, rng, shape):
    b = mag * rng.uniform(0.5, 1.0, shape) * np.where(rng.random(shape) < 0.5, -1.0, 1.0)

    def fn(q):
        return np.asarray(q, dtype=np.float64) + b

    return fn


# ---------------------------------------------------------------- language (see language.py)


def _language_op(kind: str):
    def prep(level_param, rng, shape):
        from .language import rewrite

        seed = int(rng.integers(0, 2**63 - 1))

        def fn(text: str, nouns: Sequence[str] = ()) -> str:
            return rewrite(text, kind, level_param, seed, nouns)

        return fn

    return prep


for _kind, _doc in (
    ("paraphrase", "Template paraphrase (more indirect wording with level) plus synonyms."),
    ("synonym", "Replace `level` words/phrases by synonyms from the bank."),
    ("reorder", "Reorder: level 1 swaps the first two clauses (\"B, after you A\") or fronts a prepositional "
                "phrase (drawn); level ≥ 2 does both (short instructions saturate)."),
    ("distractor", "Append `level` distractor clauses that mention no task object."),
    ("typo", "Insert typos (swap/drop/double/neighbour key) in non-object words: 1, 2, 4, 6, 9 typos."),
):
    register_op(_kind, "language", (1, 2, 3, 4, 5) if _kind != "typo" else (1, 2, 4, 6, 9),
                "rewrite strength" if _kind != "typo" else "number of typos", _doc,
                target="language")(_language_op(_kind))


# ---------------------------------------------------------------- docs


def parameter_table() -> str:
    """Markdown: every op with its family, target, unit and level 1–5 parameters."""
    lines = ["| op | family | target | parameter | L1 | L2 | L3 | L4 | L5 | what it does |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for spec in sorted(OPS.values(), key=lambda s: (s.family, s.name)):
        cells = [str(v) for v in spec.levels]
        lines.append(f"| `{spec.name}` | {spec.family} | {spec.target} | {spec.unit} | " + " | ".join(cells)
                     + f" | {spec.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(parameter_table())
