"""Zero-copy CDR codec for ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage``.

Nodes subscribe with ``raw=True`` and get the serialized CDR bytes; :func:`decode_image`
parses the header and returns a numpy *view* into those bytes (no pixel copy).
:func:`encode_image` serializes straight from a numpy array; rclpy publishes the bytes as-is.
The layout is XCDR1 little-endian as written by rmw_fastrtps (checked against
``rclpy.serialization`` in the tests). Anything malformed raises :class:`ImageDecodeError`
and never reads past the buffer.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

_ENCAP_LE = b"\x00\x01\x00\x00"
_ENCAP_BE = b"\x00\x00\x00\x00"

#: encoding → (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "mono16": (np.dtype("<u2"), 1),
    "16UC1": (np.dtype("<u2"), 1),
    "32FC1": (np.dtype("<f4"), 1),
}
MAX_DIM = 1 << 15  # 32768 px per side: far above any camera, bounds allocations


class ImageDecodeError(ValueError):
    """A serialized image that cannot be parsed (truncated, inconsistent, unknown encoding)."""


@dataclass(frozen=True)
class Stamp:
    sec: int
    nanosec: int

    @property
    def ns(self) -> int:
        return self.sec * 1_000_000_000 + self.nanosec

    @classmethod
    def from_ns(cls, ns: int) -> "Stamp":
        return cls(int(ns // 1_000_000_000), int(ns % 1_000_000_000))


@dataclass
class DecodedImage:
    stamp: Stamp
    frame_id: str
    encoding: str
    array: np.ndarray  # H×W×C (C omitted for one channel), read-only view into the CDR buffer


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: memoryview):
        self.buf, self.pos, self.end = buf, 4, len(buf)  # after the encapsulation header

    def align(self, n: int) -> None:
        rem = (self.pos - 4) % n
        if rem:
            self.pos += n - rem

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise ImageDecodeError(f"truncated buffer: need {n} bytes at offset {self.pos}, have {self.end - self.pos}")

    def u32(self) -> int:
        self.align(4)
        self.need(4)
        (v,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return v

    def i32(self) -> int:
        self.align(4)
        self.need(4)
        (v,) = struct.unpack_from("<i", self.buf, self.pos)
        self.pos += 4
        return v

    def u8(self) -> int:
        self.need(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def string(self, limit: int = 4096) -> str:
        n = self.u32()
        if n == 0:  # tolerated: some writers emit 0 for ""
            return ""
        if n > limit:
            raise ImageDecodeError(f"string length {n} exceeds {limit}")
        self.need(n)
        raw = bytes(self.buf[self.pos : self.pos + n - 1])  # drop the NUL
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImageDecodeError(f"string is not UTF-8: {exc}") from None

    def blob(self) -> memoryview:
        n = self.u32()
        self.need(n)
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view


def _reader(data: bytes | bytearray | memoryview) -> _Reader:
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    if len(buf) < 4:
        raise ImageDecodeError(f"truncated buffer: {len(buf)} bytes, no CDR header")
    if bytes(buf[:2]) != _ENCAP_LE[:2]:
        if bytes(buf[:2]) == _ENCAP_BE[:2]:
            raise ImageDecodeError("big-endian CDR is not supported")
        raise ImageDecodeError(f"unknown CDR encapsulation {bytes(buf[:4]).hex()}")
    return _Reader(buf)


def _header(r: _Reader) -> tuple[Stamp, str]:
    sec = r.i32()
    nsec = r.u32()
    if nsec >= 1_000_000_000:
        raise ImageDecodeError(f"header.stamp.nanosec {nsec} out of range")
    return Stamp(sec, nsec), r.string()


def decode_image(data: bytes | bytearray | memoryview) -> DecodedImage:
    """Parse a serialized sensor_msgs/Image into a zero-copy numpy view."""
    r = _reader(data)
    stamp, frame_id = _header(r)
    height, width = r.u32(), r.u32()
    encoding = r.string(64)
    is_bigendian = r.u8()
    step = r.u32()
    pixels = r.blob()
    if encoding not in ENCODINGS:
        raise ImageDecodeError(f"unknown encoding '{encoding}' (known: {', '.join(ENCODINGS)})")
    if not (0 < height <= MAX_DIM and 0 < width <= MAX_DIM):
        raise ImageDecodeError(f"bad size {width}x{height}")
    dtype, ch = ENCODINGS[encoding]
    if is_bigendian and dtype.itemsize > 1:
        raise ImageDecodeError("big-endian pixel data is not supported")
    row = width * ch * dtype.itemsize
    if step < row:
        raise ImageDecodeError(f"step {step} < width*channels*size {row}")
    if len(pixels) != step * height:
        raise ImageDecodeError(f"data length {len(pixels)} != step*height {step * height}")
    flat = np.frombuffer(pixels, dtype=np.uint8)
    rows = flat.reshape(height, step)[:, :row]
    arr = rows.view(dtype).reshape((height, width, ch) if ch > 1 else (height, width))
    return DecodedImage(stamp, frame_id, encoding, arr)


def _pad(n: int, a: int) -> int:
    return (a - n % a) % a


def _string(s: str, pos: int) -> tuple[bytes, int]:
    """Serialize a CDR string starting at stream offset ``pos`` (after encapsulation)."""
    raw = s.encode("utf-8") + b"\x00"
    pad = _pad(pos, 4)
    out = b"\x00" * pad + struct.pack("<I", len(raw)) + raw
    return out, pos + len(out)


def _header_bytes(stamp: Stamp, frame_id: str) -> tuple[list[bytes], int]:
    parts = [struct.pack("<iI", stamp.sec, stamp.nanosec)]
    fid, pos = _string(frame_id, 8)
    parts.append(fid)
    return parts, pos


def encode_image(array: np.ndarray, encoding: str, stamp: Stamp, frame_id: str = "") -> bytes:
    """Serialize a numpy image as sensor_msgs/Image CDR (one copy of the pixels into the message)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding '{encoding}'")
    dtype, ch = ENCODINGS[encoding]
    arr = np.asarray(array)
    if arr.dtype != dtype:
        if arr.dtype.kind == dtype.kind and arr.dtype.itemsize == dtype.itemsize:
            arr = arr.astype(dtype)
        else:
            raise ValueError(f"array dtype {arr.dtype} does not match encoding {encoding} ({dtype})")
    if arr.ndim == 2 and ch == 1:
        h, w = arr.shape
    elif arr.ndim == 3 and arr.shape[2] == ch:
        h, w = arr.shape[:2]
    else:
        raise ValueError(f"array shape {arr.shape} does not match encoding {encoding} ({ch} channels)")
    step = w * ch * dtype.itemsize
    parts, pos = _header_bytes(stamp, frame_id)
    parts.append(b"\x00" * _pad(pos, 4) + struct.pack("<II", h, w))
    pos += _pad(pos, 4) + 8
    enc, pos = _string(encoding, pos)
    parts.append(enc)
    parts.append(b"\x00")  # is_bigendian
    pos += 1
    pad = _pad(pos, 4)
    parts.append(b"\x00" * pad + struct.pack("<II", step, h * step))
    parts.append(np.ascontiguousarray(arr).tobytes() if not arr.flags.c_contiguous else arr.data)
    return _ENCAP_LE + b"".join(parts)


@dataclass
class DecodedCompressed:
    stamp: Stamp
    frame_id: str
    format: str
    data: memoryview


def decode_compressed(data: bytes | bytearray | memoryview) -> DecodedCompressed:
    """Parse a serialized sensor_msgs/CompressedImage (payload stays a view)."""
    r = _reader(data)
    stamp, frame_id = _header(r)
    fmt = r.string(256)
    payload = r.blob()
    return DecodedCompressed(stamp, frame_id, fmt, payload)


def encode_compressed(payload: bytes, fmt: str, stamp: Stamp, frame_id: str = "") -> bytes:
    parts, pos = _header_bytes(stamp, frame_id)
    s, pos = _string(fmt, pos)
    parts.append(s)
    parts.append(b"\x00" * _pad(pos, 4) + struct.pack("<I", len(payload)))
    parts.append(payload)
    return _ENCAP_LE + b"".join(parts)


def compressed_to_array(msg: DecodedCompressed) -> tuple[np.ndarray, str]:
    """Decode a jpeg/png CompressedImage to (array, encoding): rgb8 for colour, mono8/16UC1 for one channel."""
    import cv2

    fmt = msg.format.lower()
    if not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ImageDecodeError(f"unsupported compressed format '{msg.format}'")
    w, h = compressed_size(msg.data)  # checked before any pixel is allocated
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageDecodeError(f"cannot decode {msg.format} payload of {len(buf)} bytes ({w}x{h} in its header)")
    if img.dtype not in (np.uint8, np.uint16) or (img.ndim == 3 and img.dtype != np.uint8):
        raise ImageDecodeError(f"unsupported {msg.format} pixels: {img.dtype} with {img.shape[2:] or 1} channel(s)")
    if img.ndim == 2:
        return img, ("16UC1" if img.dtype == np.uint16 else "mono8")
    if img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.shape[2] != 3:
        raise ImageDecodeError(f"unsupported {msg.format} pixels: {img.shape[2]} channels")
    return np.ascontiguousarray(img[:, :, ::-1]), "rgb8"


MAX_PIXELS = 1 << 26  # 67 Mpx (8192x8192): far above any camera; bounds a compressed image's allocation
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_chunks(data) -> None:
    """Every PNG chunk's length fits the payload, up to IEND (a length past the end made libpng spin for
    seconds on an 860-byte input: found by bench/fuzz.py)."""
    n, i = len(data), 8
    while True:
        if i + 8 > n:
            raise ImageDecodeError(f"PNG payload ends at offset {n} without an IEND chunk")
        (length,) = struct.unpack(">I", bytes(data[i:i + 4]))
        kind = bytes(data[i + 4:i + 8])
        if i + 12 + length > n:
            raise ImageDecodeError(f"PNG chunk {kind!r} at offset {i} claims {length} bytes, {n - i - 12} left")
        if kind == b"IEND":
            return
        i += 12 + length


def compressed_size(data) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR or a JPEG's SOF marker, without decoding; ImageDecodeError for a
    payload that is neither, a truncated header or a size over ``MAX_DIM`` per side / ``MAX_PIXELS``."""
    b = bytes(data[:65536]) if len(data) > 65536 else bytes(data)
    if b.startswith(_PNG):
        if len(b) < 24 or b[12:16] != b"IHDR":
            raise ImageDecodeError("PNG payload without an IHDR header")
        w, h = struct.unpack(">II", b[16:24])
        _png_chunks(data)
    elif b.startswith(b"\xff\xd8"):
        i, w, h = 2, None, None
        while i + 4 <= len(b):
            if b[i] != 0xFF:
                raise ImageDecodeError(f"JPEG payload: no marker at offset {i}")
            marker = b[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            (seg,) = struct.unpack(">H", b[i + 2:i + 4])
            if marker in _JPEG_SOF:
                if i + 9 > len(b):
                    break
                h, w = struct.unpack(">HH", b[i + 5:i + 9])
                break
            if marker == 0xDA or seg < 2:  # scan data before any frame header, or a bad length
                break
            i += 2 + seg
        if w is None:
            raise ImageDecodeError("JPEG payload without a frame header (SOF) in its first 64 KiB")
    else:
        raise ImageDecodeError(f"payload is neither PNG nor JPEG (starts {b[:8].hex() or 'empty'})")
    if not (0 < w <= MAX_DIM and 0 < h <= MAX_DIM) or w * h > MAX_PIXELS:
        raise ImageDecodeError(f"compressed image size {w}x{h} is out of range (max {MAX_DIM} per side, "
                               f"{MAX_PIXELS} pixels)")
    return int(w), int(h)


def to_rgb(img: DecodedImage) -> np.ndarray:
    """An HxWx3 uint8 RGB array from any colour/mono 8-bit encoding (a view for rgb8)."""
    a, e = img.array, img.encoding
    if e in ("rgb8", "8UC3"):
        return a
    if e == "bgr8":
        return a[:, :, ::-1]
    if e == "rgba8":
        return a[:, :, :3]
    if e == "bgra8":
        return a[:, :, 2::-1]
    if e in ("mono8", "8UC1"):
        return np.repeat(a[:, :, None], 3, axis=2)
    raise ImageDecodeError(f"encoding '{e}' is not a colour image")
