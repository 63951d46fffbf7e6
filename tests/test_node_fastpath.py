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


# -- the per-step safety path (controller._command / _gate): the same numbers with fewer array ops -----------
def _old_tracking_update(w, t_ns, state, command):
    """TrackingWatchdog.update before the all-tracking fast path (the reference)."""
    from wam_policy_node.tracking import ARM, JOINT_NAMES, Trip

    err = np.asarray(state, dtype=np.float64) - np.asarray(command, dtype=np.float64)
    off = np.where(ARM, np.abs(err), -err) > w.threshold
    w.worst = np.maximum(w.worst, np.abs(err))
    w._since = np.where(off, np.where(w._since < 0, t_ns, w._since), -1)
    late = off & (t_ns - w._since >= w.window_ns)
    if not late.any():
        return None
    j = int(np.argmax(np.where(late, t_ns - w._since, -1)))
    return Trip(JOINT_NAMES[j], j, float(err[j]), (t_ns - w._since[j]) / 1e9)


@pytest.mark.unit
def test_tracking_watchdog_fast_path_is_the_same_watchdog():
    """Steps that track, joints that stop tracking, trips, recoveries: trips, ``worst`` and ``_since`` are the
    reference's at every step."""
    from wam_policy_node.tracking import TrackingWatchdog

    rng = np.random.default_rng(5)
    new, ref = TrackingWatchdog(), TrackingWatchdog()
    cmd = np.zeros(14)
    for k in range(400):
        t = k * 20_000_000
        scale = 0.05 if (k // 40) % 2 == 0 else 0.6  # stretches that track and stretches that do not
        state = cmd + rng.normal(0, scale, 14)
        a, b = new.update(t, state, cmd), _old_tracking_update(ref, t, state, cmd)
        assert a == b, k
        assert np.array_equal(new.worst, ref.worst) and np.array_equal(new._since, ref._since), k
        if a is not None:
            new.reset()
            ref.reset()
    assert TrackingWatchdog().update(0, np.zeros(14), None) is None


@pytest.fixture(scope="module")
def safety_filter():
    from wam_common.schema import defaults
    from wam_policy_node import safety

    return safety.SafetyFilter(defaults(safety.PARAMS))


@pytest.mark.unit
def test_command_collision_in_place_qpos_is_the_chunk_path(safety_filter):
    """The per-command backstop writes the command's qpos in place: the contacts (and the frame test) are those
    of the (1, 14) path through ``qpos``, for free commands and for commands into the table or out of the frame."""
    chk = safety_filter.chunk
    assert chk.enabled and chk.model is not None
    rng = np.random.default_rng(2)
    home = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
    hits = 0
    for k in range(60):
        cmd = home + rng.normal(0, 0.2 + 0.03 * k, 14)
        new = chk.collisions(cmd)
        q_new = chk.data.qpos.copy()
        old = chk.collisions(cmd[None])  # (1, 14): the chunk path's qpos
        assert new == old, k
        assert np.array_equal(q_new, chk.data.qpos) and np.array_equal(q_new, chk.qpos(cmd)[0]), k
        hits += bool(new)
    assert 0 < hits < 60  # both kinds of command were checked


@pytest.mark.unit
def test_safety_filter_is_the_clip_it_was(safety_filter):
    rng = np.random.default_rng(3)
    f = safety_filter
    for _ in range(200):
        a, ref = rng.normal(0, 1.5, 14), rng.normal(0, 1.5, 14)
        want = np.clip(np.clip(a, f.lower, f.upper), ref - f.max_step, ref + f.max_step)
        out, clamped = f.filter(a, ref)
        assert np.array_equal(out, want) and clamped == bool(np.any(np.abs(want - a) > 1e-12))
    ref = np.full(14, np.nan)  # a non-finite reference: limits only
    out, _ = f.filter(a, ref)
    assert np.array_equal(out, np.clip(a, f.lower, f.upper))
    with pytest.raises(ValueError, match="non-finite action"):
        f.filter(np.full(14, np.inf), None)


@pytest.mark.unit
def test_command_msg_carries_the_same_doubles():
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Float64MultiArray

    from wam_common import aloha
    from wam_policy_node.node import command_msg

    cmd = np.random.default_rng(4).normal(0, 1, 14)
    cmd[3] = -0.0
    m = deserialize_message(serialize_message(command_msg(cmd, 123)), Float64MultiArray)
    assert np.array(m.data).tobytes() == cmd.tobytes()  # bit for bit (the sign of a zero too)
    assert aloha.command_answers(m.layout) == 123 and m.layout.dim[0].size == 14
    assert command_msg(cmd[::-1]).data.tolist() == [float(v) for v in cmd[::-1]]  # a strided view
