"""The CDR image codec against rclpy's own serializer, and malformed input (fuzzed)."""
import struct

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image

from wam_common.imageio import (ImageDecodeError, Stamp, compressed_to_array, decode_compressed, decode_image,
                                encode_compressed, encode_image, to_rgb)

pytestmark = pytest.mark.unit

CASES = [("rgb8", (48, 64, 3), np.uint8), ("bgr8", (5, 7, 3), np.uint8), ("mono8", (3, 5), np.uint8),
         ("16UC1", (4, 3), np.uint16), ("rgba8", (2, 2, 4), np.uint8), ("32FC1", (3, 3), np.float32)]


def _ros_image(a, enc, fid, sec=12, nsec=345):
    m = Image()
    m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id = sec, nsec, fid
    m.height, m.width, m.encoding, m.step = a.shape[0], a.shape[1], enc, a.strides[0]
    m.data = a.tobytes()
    return m


@pytest.mark.parametrize("enc,shape,dtype", CASES)
@pytest.mark.parametrize("fid", ["", "c", "cam_high_color_optical_frame"])
def test_matches_rclpy(enc, shape, dtype, fid):
    rng = np.random.default_rng(0)
    a = (rng.random(shape) * 200).astype(dtype)
    ref = _ros_image(a, enc, fid)
    ours = encode_image(a, enc, Stamp(12, 345), fid)
    assert deserialize_message(ours, Image) == ref
    d = decode_image(serialize_message(ref))
    assert d.encoding == enc and d.frame_id == fid and d.stamp == Stamp(12, 345)
    np.testing.assert_array_equal(d.array, a)
    assert d.array.dtype == a.dtype


def test_decode_is_zero_copy():
    a = np.arange(480 * 640 * 3, dtype=np.uint8).reshape(480, 640, 3)
    buf = bytearray(encode_image(a, "rgb8", Stamp(1, 2)))
    d = decode_image(buf)
    assert np.shares_memory(d.array, np.frombuffer(buf, np.uint8))


def test_padded_step_rows():
    m = Image()
    m.height, m.width, m.encoding, m.step = 2, 3, "rgb8", 12  # 3 bytes of row padding
    m.data = bytes(range(24))
    d = decode_image(serialize_message(m))
    assert d.array.shape == (2, 3, 3)
    assert d.array[1, 0, 0] == 12


def test_bgr_and_mono_to_rgb():
    a = np.zeros((2, 2, 3), np.uint8)
    a[..., 0] = 9
    d = decode_image(encode_image(a, "bgr8", Stamp(0, 0)))
    assert to_rgb(d)[0, 0, 2] == 9
    m = decode_image(encode_image(np.full((2, 2), 7, np.uint8), "mono8", Stamp(0, 0)))
    assert to_rgb(m).shape == (2, 2, 3)


def test_compressed_roundtrip():
    import cv2

    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    ok, png = cv2.imencode(".png", img[:, :, ::-1])
    ref = CompressedImage()
    ref.header.frame_id, ref.format, ref.data = "f", "png", png.tobytes()
    raw = encode_compressed(png.tobytes(), "png", Stamp(0, 0), "f")
    assert deserialize_message(raw, CompressedImage) == ref
    arr, enc = compressed_to_array(decode_compressed(serialize_message(ref)))
    assert enc == "rgb8" and arr[0, 0, 0] == 200


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b[:3], "truncated"),
    (lambda b: b[: len(b) - 10], "truncated"),
    (lambda b: b"\x00\x07" + b[2:], "encapsulation"),
])
def test_malformed_rejected(mutate, match):
    good = encode_image(np.zeros((4, 4, 3), np.uint8), "rgb8", Stamp(0, 0), "x")
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(mutate(good))


def test_inconsistent_fields_rejected():
    a = np.zeros((4, 4, 3), np.uint8)
    m = _ros_image(a, "rgb8", "x")
    m.step = 5  # < width*3
    with pytest.raises(ImageDecodeError, match="step"):
        decode_image(serialize_message(m))
    m = _ros_image(a, "yuv422_weird", "x")
    with pytest.raises(ImageDecodeError, match="unknown encoding"):
        decode_image(serialize_message(m))
    m = _ros_image(a, "rgb8", "x")
    m.height = 5  # data too short for the claimed size
    with pytest.raises(ImageDecodeError, match="data length"):
        decode_image(serialize_message(m))


def test_fuzz_never_crashes_or_overreads():
    rng = np.random.default_rng(1)
    good = bytearray(encode_image(np.ones((6, 5, 3), np.uint8), "rgb8", Stamp(3, 4), "frame"))
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(rng.integers(1, 6)):
            i = int(rng.integers(0, len(b)))
            b[i] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            b = b[: int(rng.integers(0, len(b)))]
        try:
            d = decode_image(bytes(b))
        except ImageDecodeError:
            continue
        # whatever decoded must lie inside the buffer
        assert d.array.nbytes <= len(b)
    # huge declared lengths are rejected, not allocated
    bad = bytearray(good)
    struct.pack_into("<I", bad, len(bad) - 90 - 4, 0xFFFFFFF0)
    with pytest.raises(ImageDecodeError):
        decode_image(bytes(bad))
