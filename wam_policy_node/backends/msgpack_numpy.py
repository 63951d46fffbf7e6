"""NumPy arrays over msgpack, byte-compatible with ``openpi_client.msgpack_numpy``.

An ndarray travels as ``{b"__ndarray__": True, b"data": bytes, b"dtype": str, b"shape": tuple}``,
a numpy scalar as ``{b"__npgeneric__": True, b"data": item, b"dtype": str}``.
"""
from __future__ import annotations

import functools

import msgpack
import numpy as np


def pack_array(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"unsupported dtype: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _dtype(obj) -> np.dtype:
    try:
        dt = np.dtype(obj[b"dtype"])
    except (KeyError, TypeError, ValueError, SyntaxError) as exc:
        raise ValueError(f"msgpack-numpy: bad dtype {obj.get(b'dtype')!r}: {exc}") from None
    if dt.kind in ("V", "O", "c") or dt.hasobject:
        raise ValueError(f"msgpack-numpy: unsupported dtype {dt}")
    return dt


def unpack_array(obj):
    """The inverse of :func:`pack_array`; a malformed array header (bad dtype, a shape the data does not
    fill) raises ValueError naming it."""
    if b"__ndarray__" in obj:
        dt, data, shape = _dtype(obj), obj.get(b"data"), obj.get(b"shape")
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"msgpack-numpy: array data must be bytes, got {type(data).__name__}")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"msgpack-numpy: array shape must be non-negative integers, got {shape!r}")
        n = 1
        for d in shape:
            n *= d
        if n * dt.itemsize != len(data):
            raise ValueError(f"msgpack-numpy: a {dt} array of shape {tuple(shape)} needs {n * dt.itemsize} bytes, "
                             f"got {len(data)}")
        return np.ndarray(buffer=data, dtype=dt, shape=tuple(shape))
    if b"__npgeneric__" in obj:
        dt = _dtype(obj)
        try:
            return dt.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"msgpack-numpy: bad {dt} scalar {obj.get(b'data')!r}: {exc}") from None
    return obj


Packer = functools.partial(msgpack.Packer, default=pack_array)
packb = functools.partial(msgpack.packb, default=pack_array)
unpackb = functools.partial(msgpack.unpackb, object_hook=unpack_array)
