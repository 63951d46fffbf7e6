"""perturbation_node's pure core: ops × levels, language rewrites, profiles, the engine.

Every image op at every level: shape and dtype kept, bit-identical for the same seed, and a
measured change (mean absolute difference to the clean image) that rises strictly with level.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from perturbation_node import ops
from perturbation_node.engine import Perturber
from perturbation_node.language import object_nouns, rewrite
from perturbation_node.profiles import available, load_profile, parse_profile
from wam_common import aloha, topics
from wam_common.config import ConfigError

pytestmark = pytest.mark.unit

IMAGE_OPS = sorted(n for n, s in ops.OPS.items() if s.target == "image")
LANG_OPS = sorted(n for n, s in ops.OPS.items() if s.target == "language")
STATE_OPS = sorted(n for n, s in ops.OPS.items() if s.target == "state")
INSTRUCTIONS = ["Pick up the red cube with the right arm and transfer it to the left arm.",
                "Insert the peg into the socket with both arms.",
                "Insert the red peg into the blue socket.",
                "Lift the green beam with both arms and hold it level.",
                "Grab the blue cup, then place it onto the plate."]


def scene(h: int = 240, w: int = 320, seed: int = 5) -> np.ndarray:
    """A smooth synthetic scene with two objects (a stand-in for a camera frame)."""
    r = np.random.default_rng(seed)
    small = r.random((6, 8, 3)).astype(np.float32)
    img = (cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 200 + 20).astype(np.uint8)
    cv2.circle(img, (w * 15 // 32, h * 5 // 12), h // 6, (200, 30, 30), -1)
    cv2.rectangle(img, (w * 5 // 8, h * 5 // 8), (w * 25 // 32, h * 7 // 8), (30, 200, 60), -1)
    return img


def bg_mask(img: np.ndarray) -> np.ndarray:
    m = np.zeros(img.shape[:2], np.uint8)
    m[: img.shape[0] // 2] = 255
    return m


IMG = scene()
MASK = bg_mask(IMG)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_registry_covers_the_issue():
    fams = ops.families()
    for fam, must in {
        "light": {"brightness", "gamma", "contrast", "color_temperature", "tint", "light_gradient", "shadow"},
        "noise": {"gaussian_noise", "shot_noise", "salt_pepper", "motion_blur", "gaussian_blur", "zoom_blur", "fog",
                  "glass_blur", "jpeg"},
        "viewpoint": {"camera_yaw", "camera_pitch", "camera_roll", "camera_zoom", "viewpoint"},
        "occlusion": {"occlusion"}, "background": {"background"},
        "temporal": {"frame_drop", "latency", "stamp_jitter"}, "state": {"joint_noise", "joint_bias"},
        "language": {"paraphrase", "synonym", "reorder", "distractor", "typo"},
    }.items():
        assert must <= set(fams[fam]), (fam, fams.get(fam))
    for spec in ops.OPS.values():
        assert len(spec.levels) == 5 and spec.unit and spec.doc
    table = ops.parameter_table()
    assert all(f"`{n}`" in table for n in ops.OPS)


@pytest.mark.parametrize("name", IMAGE_OPS)
def test_image_op_levels_monotone_deterministic_shape(name):
    diffs = []
    for level in ops.LEVELS:
        a = ops.apply(name, IMG, level, seed=11, mask=MASK)
        b = ops.apply(name, IMG, level, seed=11, mask=MASK)
        assert a.shape == IMG.shape and a.dtype == np.uint8
        assert np.array_equal(a, b), f"{name}@{level} not bit-identical for the same seed"
        diffs.append(mad(a, IMG))
    assert diffs[0] > 0.05, (name, diffs)
    assert all(d2 > d1 for d1, d2 in zip(diffs, diffs[1:])), f"{name}: change not rising with level: {diffs}"


@pytest.mark.parametrize("name", [n for n in IMAGE_OPS if ops.OPS[n].random])
def test_random_image_ops_depend_on_the_seed(name):
    outs = [ops.apply(name, IMG, 3, seed=s, mask=MASK) for s in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:]), name


@pytest.mark.parametrize("name", IMAGE_OPS)
def test_image_op_leaves_input_alone_and_takes_readonly_views(name):
    buf = IMG.copy()
    view = np.frombuffer(buf.tobytes(), np.uint8).reshape(IMG.shape)  # read-only, like decode_image
    assert not view.flags.writeable
    ops.apply(name, view, 4, seed=3, mask=MASK)
    assert np.array_equal(buf, IMG)


@pytest.mark.parametrize("shape", [(480, 640, 3), (240, 320, 3), (31, 17, 3)])
def test_image_ops_other_sizes(shape):
    img = scene(shape[0], shape[1]) if shape[0] > 40 else np.full(shape, 100, np.uint8)
    for name in IMAGE_OPS:
        out = ops.apply(name, img, 5, seed=1, mask=np.full(shape[:2], 255, np.uint8))
        assert out.shape == shape and out.dtype == np.uint8, name


def test_frame_resampled_noise_changes_per_frame_and_is_reproducible():
    for name in ("gaussian_noise", "shot_noise", "salt_pepper"):
        fn = ops.prepare(name, 3, 5, IMG.shape)
        a = fn(IMG, None, ops.make_rng(1, 2, "cam", 0, 111))
        b = fn(IMG, None, ops.make_rng(1, 2, "cam", 0, 222))
        a2 = ops.prepare(name, 3, 5, IMG.shape)(IMG, None, ops.make_rng(1, 2, "cam", 0, 111))
        assert not np.array_equal(a, b) and np.array_equal(a, a2), name


def test_shot_noise_matches_the_gaussian_approximation_per_value():
    """Per grey value v, shot noise's output has mean v and std σ(v) = sqrt(v·255/peak) (Gaussian
    approximation of Poisson noise), for the episode window and for per-frame windows alike; checked
    where v ± 2.6σ stays inside 0…255 (its levels reach ±2.52σ), so saturation does not bias it."""
    vals = np.arange(4, 253, 4)
    img = np.ascontiguousarray(np.broadcast_to(vals[:, None, None], (vals.size, 8192, 3)).astype(np.uint8))
    for level in (1, 2, 3, 4):
        peak = ops.get_op("shot_noise").param(level)
        fn = ops.prepare("shot_noise", level, 7, img.shape)
        sigma = np.sqrt(vals * 255.0 / peak)
        inside = (vals - 2.6 * sigma >= 0) & (vals + 2.6 * sigma <= 255)
        assert inside.sum() >= 3, (level, vals[inside])
        for frame_rng in (None, ops.make_rng(7, 0, "cam_high", 0, 123)):
            d = fn(img, None, frame_rng).astype(np.float64) - vals[:, None, None]
            mean, std = d.mean(axis=(1, 2))[inside], d.std(axis=(1, 2))[inside]
            s = sigma[inside]
            assert np.all(np.abs(std / s - 1) < 0.03), (level, vals[inside], std / s)
            assert np.all(np.abs(mean) < 0.03 * s + 0.05), (level, vals[inside], mean)
    # near saturation the output is clipped, never wrapped: v = 250 only gets darker on average
    bright = np.full((64, 64, 3), 250, np.uint8)
    out = ops.apply("shot_noise", bright, 5, seed=1)
    assert out.min() < 200 and out.mean() < 250


def test_viewpoint_stays_within_five_degrees():
    spec = ops.get_op("viewpoint")
    assert spec.levels[-1][0] <= 5.0
    for axis in ("yaw", "pitch", "roll"):
        assert max(ops.get_op(f"camera_{axis}").levels) <= 5.0
    # 5° yaw moves the image centre by f·tan(5°) pixels
    h = ops.rotation_homography((480, 640), 5.0, 0, 0)
    c = h @ np.array([320, 240, 1.0])
    f = ops.intrinsics((480, 640))[0, 0]
    assert abs(abs(c[0] / c[2] - 320) - f * np.tan(np.radians(5))) < 1e-6


def test_background_needs_a_mask():
    with pytest.raises(ops.MaskRequired):
        ops.apply("background", IMG, 3, seed=1)
    out = ops.apply("background", IMG, 5, seed=1, mask=MASK)
    assert np.array_equal(out[IMG.shape[0] // 2:], IMG[IMG.shape[0] // 2:])  # foreground untouched
    assert mad(out[: IMG.shape[0] // 2], IMG[: IMG.shape[0] // 2]) > 5


def test_unknown_op_and_level_are_named():
    with pytest.raises(ConfigError, match="'nope'"):
        ops.get_op("nope")
    for bad in (0, 6, 2.5, "3", True):
        with pytest.raises(ConfigError, match="level"):
            ops.apply("brightness", IMG, bad, seed=0)
    with pytest.raises(ValueError, match="HxWx3"):
        ops.apply("brightness", IMG[:, :, 0], 1, seed=0)


@pytest.mark.parametrize("name", STATE_OPS)
def test_state_ops(name):
    q = np.linspace(-1, 1, 6)
    deltas = []
    for level in ops.LEVELS:
        a = ops.prepare(name, level, 9, q.shape)(q)
        b = ops.prepare(name, level, 9, q.shape)(q)
        assert np.array_equal(a, b) and a.shape == q.shape
        deltas.append(np.abs(a - q).mean())
    assert all(d2 > d1 > 0 for d1, d2 in zip(deltas, deltas[1:])), deltas


# ---------------------------------------------------------------- language


def _words(t: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+", t.lower())


def _edit(a: str, b: str) -> int:
    wa, wb = _words(a), _words(b)
    d = list(range(len(wb) + 1))
    for i, x in enumerate(wa, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(wb, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


@pytest.mark.parametrize("kind", LANG_OPS)
@pytest.mark.parametrize("text", INSTRUCTIONS)
def test_language_rewrites_deterministic_keep_nouns(kind, text):
    nouns = object_nouns(text)
    assert nouns
    outs = []
    for level in ops.LEVELS:
        fn = ops.prepare(kind, level, 42, ())
        a, b = fn(text, nouns), ops.prepare(kind, level, 42, ())(text, nouns)
        assert a == b, (kind, level)
        assert a != text, (kind, level, a)
        for n in nouns + [w for w in ("left", "right", "both") if w in _words(text)]:
            assert _words(a).count(n) >= _words(text).count(n), (kind, level, n, a)
        outs.append(a)
    if kind in ("distractor", "typo", "paraphrase"):
        dist = [_edit(text, o) if kind != "typo" else _edit(" ".join(text), " ".join(o)) for o in outs]
        assert all(d2 >= d1 for d1, d2 in zip(dist, dist[1:])) and dist[-1] > dist[0], (kind, dist, outs)
    if kind == "reorder":
        for o in outs:
            assert set(_words(text)) - {"and", "then"} <= set(_words(o)), o  # joints may become "after"


def test_language_seed_matters_and_bad_input_passes():
    outs = {rewrite(INSTRUCTIONS[0], "paraphrase", 4, s) for s in range(8)}
    assert len(outs) > 1
    assert rewrite("", "typo", 3, 1) == ""
    with pytest.raises(ValueError, match="'shout'"):
        rewrite("hi there", "shout", 1, 1)


# ---------------------------------------------------------------- profiles


def test_shipped_profiles_load_at_every_level():
    names = available()
    for must in ("clean", "camera", "robot", "language", "light", "background", "noise", "paper"):
        assert must in names
    for n in names:
        for level in ops.LEVELS:
            p = load_profile(f"{n}@{level}")
            for e in [e for lst in p.cameras.values() for e in lst] + p.state + p.language:
                assert e.level == level
    paper = load_profile("paper")
    assert [p.dimension for p in paper.suite] == ["clean", "camera", "robot", "language", "light", "background",
                                                  "noise"]
    assert paper.entry_for_episode(8).name == "camera"


@pytest.mark.parametrize("data,match", [
    ({"cameras": {"all": [{"op": "brightnes"}]}, "level": 1}, "'brightnes'"),
    ({"cameras": {"all": [{"op": "brightness", "level": 9}]}}, "level 9"),
    ({"cameras": {"cam_top": [{"op": "brightness", "level": 1}]}}, "cam_top"),
    ({"cameras": {"all": [{"op": "joint_noise", "level": 1}]}}, "joint_noise"),
    ({"state": [{"op": "brightness", "level": 1}]}, "brightness"),
    ({"cameras": {"all": [{"op": "brightness"}]}}, "level"),
    ({"resample": "sometimes"}, "resample"),
    ({"colour": 1}, "colour"),
    ({"cameras": {"all": [{"op": "fog", "level": 1, "strength": 2}]}}, "strength"),
])
def test_profile_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_profile(data, default_name="t")


def test_unknown_profile_and_level_named():
    with pytest.raises(ConfigError, match="'nope'"):
        load_profile("nope")
    with pytest.raises(ConfigError, match="level 7"):
        load_profile("light@7")


# ---------------------------------------------------------------- engine


def _p(**kw) -> object:
    return parse_profile(dict(seed=3, **kw), default_name="t")


def test_engine_clean_is_identity_and_episode_seeds_reproduce():
    e = Perturber(load_profile("clean"))
    assert e.is_clean_for("cam_high") and e.image("cam_high", IMG, 5).array is IMG
    prof = _p(level=3, cameras={"all": [{"op": "shadow"}, {"op": "gaussian_noise", "resample": "frame"}]})
    a, b = Perturber(prof), Perturber(prof)
    for e in (a, b):
        e.start_episode(4)
    x1, x2 = a.image("cam_high", IMG, 1000).array, b.image("cam_high", IMG, 1000).array
    assert np.array_equal(x1, x2)
    assert not np.array_equal(x1, a.image("cam_high", IMG, 2000).array)  # per-frame noise
    assert not np.array_equal(x1, a.image("cam_left_wrist", IMG, 1000).array)  # per-camera seed
    b.start_episode(5)
    assert not np.array_equal(x1, b.image("cam_high", IMG, 1000).array)  # per-episode seed
    b.start_episode(4)
    assert np.array_equal(x1, b.image("cam_high", IMG, 1000).array)
    b.start_episode(0, seed=4)  # keyed by the episode's sim seed, whatever its index in the run
    assert np.array_equal(x1, b.image("cam_high", IMG, 1000).array)
    b.start_episode(7, seed=4, start_ns=5 * 10**9)  # ... and per-frame draws by the time since its start
    b.warm("cam_high", IMG.shape)  # fields drawn ahead of the first frame: same result
    assert np.array_equal(x1, b.image("cam_high", IMG, 5 * 10**9 + 1000).array)


def test_engine_per_camera_targeting_and_pick_one():
    e = Perturber(_p(cameras={"cam_high": [{"op": "brightness", "level": 2}]}))
    assert not e.is_clean_for("cam_high") and e.is_clean_for("cam_left_wrist")
    light = load_profile("light@3")
    picked = set()
    for ep in range(12):
        e = Perturber(light)
        e.start_episode(ep)
        names = e.running.op_names()
        assert len(names) == 1
        picked.add(names[0])
    assert len(picked) >= 3


def test_engine_frame_drop_latency_jitter():
    drop = _p(cameras={"all": [{"op": "frame_drop", "level": 5}]})
    rt, ls = Perturber(drop, lockstep=False), Perturber(drop, lockstep=True)
    frames = [np.full((8, 8, 3), k, np.uint8) for k in range(40)]
    rt_out = [rt.image("cam_high", f, 20_000_000 * k).array for k, f in enumerate(frames)]
    ls_out = [ls.image("cam_high", f, 20_000_000 * k).array for k, f in enumerate(frames)]
    dropped = [o is None for o in rt_out]
    assert 8 < sum(dropped) < 32  # p = 0.5
    for k, (d, o) in enumerate(zip(dropped, ls_out)):  # lockstep: same decisions, stale pixels instead
        assert o is not None
        assert (int(o[0, 0, 0]) < k) == (d and k > 0)  # nothing older to show for the first frame
    lat = Perturber(_p(cameras={"all": [{"op": "latency", "level": 3}]}))  # 80 ms
    outs = [int(lat.image("cam_high", f, 20_000_000 * k).array[0, 0, 0]) for k, f in enumerate(frames)]
    assert outs[10:] == [k - 4 for k in range(10, 40)]
    assert outs[:4] == [0, 0, 0, 0]
    jit = Perturber(_p(cameras={"all": [{"op": "stamp_jitter", "level": 5}]}))
    stamps = [jit.image("cam_high", frames[0], 10**9 * k).stamp_ns - 10**9 * k for k in range(30)]
    assert max(abs(s) for s in stamps) <= 2.5 * 15e6 + 1 and np.std(stamps) > 3e6
    with pytest.raises(ConfigError, match="stamp_jitter"):
        Perturber(_p(cameras={"all": [{"op": "stamp_jitter", "level": 1}]}), lockstep=True)


def test_engine_state_and_language():
    e = Perturber(load_profile("robot@4"))
    names = aloha.JOINT_STATE_NAMES
    q = list(np.linspace(0, 1, len(names)))
    out = e.joint_positions("left", names, q, 123)
    assert out[6:] == q[6:]  # gripper and fingers untouched
    assert all(abs(a - b) > 0 for a, b in zip(out[:6], q[:6]))
    assert out == Perturber(load_profile("robot@4")).joint_positions("left", names, q, 123)
    assert out != e.joint_positions("right", names, q, 123)
    lang = Perturber(load_profile("language@2"))
    t = INSTRUCTIONS[0]
    r = lang.instruction(t)
    assert r != t and r == lang.instruction(t)
    assert all(n in r.lower() for n in object_nouns(t))


def test_engine_op_failure_passes_frame():
    e = Perturber(_p(cameras={"all": [{"op": "background", "level": 3}, {"op": "brightness", "level": 3}]}))
    res = e.image("cam_high", IMG, 1)  # no mask: background skipped, brightness still applied
    assert res.array is not None and res.array.shape == IMG.shape
    assert res.applied == ["brightness"] and "background" in res.errors[0]
    bad = e.image("cam_high", IMG, 2, mask=np.zeros((3, 3), np.uint8))  # mask of the wrong size
    assert bad.array is not None and e.counts["op_errors"] == 1
    assert e.active(topics.CAMERAS)["cameras"]["cam_high"][0]["op"] == "background"


def test_docs_table_matches_the_code():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "perturbations.md").read_text()
    table = doc.split("<!-- ops-table -->\n", 1)[1].split("\n<!-- /ops-table -->", 1)[0]
    assert table == ops.parameter_table(), "docs/perturbations.md: regenerate with python -m perturbation_node.ops"


def test_torch_path_matches_numpy():
    pytest.importorskip("torch")
    import torch

    from perturbation_node import torch_ops

    assert {"brightness", "gaussian_noise", "shot_noise", "gaussian_blur", "viewpoint", "shadow", "occlusion"} <= set(
        torch_ops.TORCH_OPS)
    for name in torch_ops.TORCH_OPS:
        for level in (1, 5):
            a = ops.apply(name, IMG, level, seed=3)
            b = torch_ops.prepare(name, level, 3, IMG.shape, "cpu")(torch.from_numpy(IMG.copy())).numpy()
            d = np.abs(a.astype(int) - b)
            assert b.shape == IMG.shape and b.dtype == np.uint8
            assert d.mean() < 0.05 and d.max() <= (8 if ops.OPS[name].family == "viewpoint" else 1), (name, level)
    a = ops.apply("shot_noise", IMG, 4, seed=3)  # the same (value, code) table and codes: bit-identical
    assert np.array_equal(a, torch_ops.prepare("shot_noise", 4, 3, IMG.shape)(torch.from_numpy(IMG.copy())).numpy())
    with pytest.raises(ValueError, match="'fog'"):
        torch_ops.prepare("fog", 1, 0, IMG.shape)
    # the engine on a torch device: same result (within rounding) as numpy
    prof = _p(level=4, cameras={"all": [{"op": "gamma"}, {"op": "viewpoint"}, {"op": "fog"}]})
    a = Perturber(prof).image("cam_high", IMG, 7).array
    b = Perturber(prof, device="cpu").image("cam_high", IMG, 7).array
    assert isinstance(b, np.ndarray) and np.abs(a.astype(int) - b).mean() < 0.1
    from perturbation_node.engine import check_device

    assert check_device("auto") == ("cuda" if torch.cuda.is_available() else "")
    with pytest.raises(ConfigError, match="'nosuchdevice'"):
        Perturber(prof, device="nosuchdevice")


@pytest.mark.parametrize("data,match", [
    ({"suite": ["clean", "nope"]}, "suite\\[1\\].*'nope'"),
    ({"suite": ["clean", "paper"]}, "suite\\[1\\].*another suite"),
    ({"suite": []}, "non-empty"),
    ({"suite": ["clean"], "episodes_per_entry": 0}, "episodes_per_entry"),
    ({"suite": ["clean"], "level": 8}, "level 8"),
    ({"suite": ["clean"], "cameras": {}}, "cameras"),
])
def test_suite_errors_name_the_entry(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_profile(data, default_name="s")
