"""The policy node's frame path without copies (issue #22 item 4): a camera message's pixels go from the
serialized buffer to the model's float tensor with no copy of our own where torch can share them, and the
result is bit-identical to the copying path it replaced, for every colour encoding and a padded row step."""
from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image

from wam_common.imageio import decode_image, to_rgb

torch = pytest.importorskip("torch")

from wam_policy_node.backends.lerobot import _frame_tensor  # noqa: E402

# Tiers: the conversion tests are `unit`; the backend test builds a tiny LeRobot ACT on CPU (no tier, as in
# tests/test_policy_lerobot.py: too slow for make test-unit); the CUDA one is `gpu`.
H, W = 6, 10
COLOUR = [("rgb8", 3), ("bgr8", 3), ("rgba8", 4), ("bgra8", 4), ("8UC3", 3)]


def _raw(enc: str, ch: int, pad: int = 0, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A serialized sensor_msgs/Image (``pad`` bytes after each row) and its pixels."""
    px = np.random.default_rng(seed).integers(0, 256, (H, W, ch), dtype=np.uint8)
    m = Image()
    m.height, m.width, m.encoding, m.step = H, W, enc, W * ch + pad
    rows = np.concatenate([px.reshape(H, W * ch), np.full((H, pad), 0xAB, np.uint8)], axis=1)
    m.data = rows.tobytes()
    return serialize_message(m), px


def _old(img: np.ndarray):
    """The path before: a writable C-contiguous copy of every frame, then .float().div_(255)."""
    t = torch.from_numpy(np.require(img, np.uint8, ["C", "W"]))
    return t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def _new(img: np.ndarray):
    return torch.div(_frame_tensor(torch, img).permute(2, 0, 1).unsqueeze(0), 255.0)


@pytest.mark.unit
@pytest.mark.parametrize("pad", [0, 4])
@pytest.mark.parametrize("enc,ch", COLOUR)
def test_frame_to_tensor_is_bit_identical_for_every_encoding(enc, ch, pad):
    raw, px = _raw(enc, ch, pad)
    rgb = to_rgb(decode_image(raw))
    want = {"rgb8": px, "8UC3": px, "bgr8": px[:, :, ::-1], "rgba8": px[:, :, :3], "bgra8": px[:, :, 2::-1]}[enc]
    assert np.array_equal(rgb, want)
    old, new = _old(rgb), _new(rgb)
    assert new.dtype == old.dtype == torch.float32 and new.shape == old.shape == (1, 3, H, W)
    assert torch.equal(new, old) and new.stride() == old.stride()


def _inside(t, buf: bytes) -> bool:
    a = np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
    return a <= t.data_ptr() < a + len(buf)


@pytest.mark.unit
def test_an_rgb8_frame_is_shared_not_copied():
    """rgb8 (and 8UC3) without row padding: the tensor is the message buffer itself; the buffer stays
    untouched by the conversion (it is read-only: torch only reads it)."""
    raw, px = _raw("rgb8", 3)
    before = bytes(raw)
    rgb = to_rgb(decode_image(raw))
    assert not rgb.flags.writeable
    t = _frame_tensor(torch, rgb)
    assert _inside(t, raw) and torch.equal(t, torch.from_numpy(px))
    _new(rgb)
    assert raw == before


@pytest.mark.unit
@pytest.mark.parametrize("enc,ch,pad", [("bgr8", 3, 0), ("rgba8", 4, 0), ("rgb8", 3, 4)])
def test_a_frame_torch_cannot_share_is_copied(enc, ch, pad):
    """Reversed channels, a channel slice, a padded row: copied (torch takes no negative or gapped strides)."""
    raw, _ = _raw(enc, ch, pad)
    rgb = to_rgb(decode_image(raw))
    t = _frame_tensor(torch, rgb)
    assert not _inside(t, raw) and t.is_contiguous() and torch.equal(t, torch.from_numpy(np.ascontiguousarray(rgb)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("enc,ch", COLOUR)
def test_one_op_conversion_is_bit_identical_on_cuda(enc, ch):
    rgb = to_rgb(decode_image(_raw(enc, ch, seed=3)[0]))
    t = torch.from_numpy(np.ascontiguousarray(rgb)).cuda()
    old = t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    assert torch.equal(torch.div(t.permute(2, 0, 1).unsqueeze(0), 255.0), old)


def test_the_backend_batch_is_the_copying_paths(tmp_path):
    """The lerobot backend's batch from read-only message frames (rgb8 shared, bgr8 copied once) equals the
    batch the copying path built, bit for bit, after LeRobot's pre-processor; and the chunk is the same
    whether the frames are message views or writable copies."""
    from wam_policy_node.backends import Observation, make_backend
    from wam_policy_node.zoo import save_random_policy

    h, w = 48, 64
    cams = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    d = save_random_policy("act", tmp_path / "act", size="tiny", image_size=(h, w))
    b = make_backend("lerobot", {"path": str(d), "device": "cpu", "warmup": 0, "torch_threads": 1})
    rng = np.random.default_rng(1)
    frames = {}
    for i, c in enumerate(cams):
        m = Image()
        m.height, m.width, m.encoding, m.step = h, w, ("bgr8" if i == 1 else "rgb8"), w * 3
        m.data = rng.integers(0, 256, (h, w, 3), dtype=np.uint8).tobytes()
        frames[c] = to_rgb(decode_image(serialize_message(m)))
    assert not any(f.flags.writeable for f in frames.values())
    obs = Observation(1_000_000_000, frames, rng.normal(0, 0.3, 14), "x", step=0)
    new = b.batch(obs)
    old = b._preprocess({f"observation.images.{c}": _old(frames[c]) for c in cams}, obs)
    assert set(new) == set(old)
    for k, v in new.items():
        assert (torch.equal(v, old[k]) if isinstance(v, torch.Tensor) else v == old[k]), k
    a = b.infer(obs).actions
    copies = Observation(1_000_000_000, {c: np.array(f) for c, f in frames.items()}, obs.state, "x", step=0)
    assert np.array_equal(a, b.infer(copies).actions)
