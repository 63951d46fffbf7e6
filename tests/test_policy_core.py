"""The policy node's pure cores: chunk runtime, approximate time sync, resize-with-pad, safety."""
from __future__ import annotations

import time

import numpy as np
import pytest

from wam_common import aloha
from wam_policy_node.backends import ActionChunk, Observation, make_backend
from wam_policy_node.controller import PolicyController
from wam_policy_node.observation import ObservationMap, resize_with_pad
from wam_policy_node.runtime import ChunkRuntime, rtc_weights
from wam_policy_node.safety import SafetyFilter
from wam_policy_node.timesync import ApproximateTimeSync

pytestmark = pytest.mark.unit

DT = 20_000_000
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


def ramp(stamp_steps: int, h: int, offset: float = 0.0) -> ActionChunk:
    """A chunk whose action for absolute step s is s/100 (+ offset): time-consistent across chunks."""
    vals = (stamp_steps + np.arange(h)) / 100.0 + offset
    return ActionChunk(np.repeat(vals[:, None], 14, axis=1), stamp_steps * DT, 1.0)


def test_late_chunk_skips_its_past_actions_not_replays_them():
    rt = ChunkRuntime("rtc", replan_steps=5)
    rt.add(ramp(0, 20), now_ns=0)
    # a chunk from the obs at step 5 that arrives 7 steps later (d = 7)
    rt.add(ramp(5, 20, offset=0.5), now_ns=12 * DT)
    a, info = rt.action(12 * DT)
    assert info["chunk_index"] == 7  # indexed by observation time: action 7 of the new chunk
    # the committed prefix (before arrival) is the old plan, not the new chunk's first actions
    assert rt.action(11 * DT)[0][0] == pytest.approx(0.11)
    # the overlap blends from old (weight ~1) to new; after the old chunk's end only the new one
    w = rtc_weights(8)  # old covers steps 12..19
    assert a[0] == pytest.approx(w[0] * 0.12 + (1 - w[0]) * 0.62)
    assert rt.action(20 * DT)[0][0] == pytest.approx(0.70)
    assert np.all(np.diff(w) < 0) and w[0] <= 1 and w[-1] >= 0


def test_sync_plays_a_chunk_from_its_first_action_and_temporal_ensemble_weights_oldest():
    rt = ChunkRuntime("sync", execute_steps=4)
    assert rt.should_infer(0)
    rt.add(ramp(0, 10), now_ns=3 * DT)  # the robot waited 3 steps for it
    assert [rt.action(t * DT)[1]["chunk_index"] for t in range(3, 7)] == [0, 1, 2, 3]
    assert rt.action(3 * DT)[0][0] == pytest.approx(0.0)
    assert rt.should_infer(7 * DT) and not rt.should_infer(6 * DT)

    te = ChunkRuntime("temporal_ensemble", ensemble_k=0.5)
    te.add(ramp(0, 10, offset=0.0), now_ns=0)
    te.add(ramp(2, 10, offset=1.0), now_ns=2 * DT)
    a, info = te.action(3 * DT)
    w = np.exp(-0.5 * np.arange(2))
    assert a[0] == pytest.approx((w[0] * 0.03 + w[1] * 1.03) / w.sum())
    assert info["n_votes"] == 2
    assert te.action(10 * DT)[1]["n_votes"] == 1  # the first chunk ended at step 9


def test_approximate_time_sync_semantics():
    s = ApproximateTimeSync(["a", "b", "c"], slop_ns=5, queue_size=5)
    assert s.add("a", 100, "a100") is None
    assert s.add("b", 103, "b103") is None
    assert s.add("b", 200, "b200") is None
    got = s.add("c", 98, "c98")
    assert got == {"a": (100, "a100"), "b": (103, "b103"), "c": (98, "c98")}
    assert s.add("c", 110, "c110") is None  # 'a' has nothing near 110 any more
    assert 100 not in s.queues["a"] and 200 in s.queues["b"]
    # staleness: a frozen stream never pairs with fresh messages
    s2 = ApproximateTimeSync(["js", "cam"], slop_ns=50, max_age_ns=100)
    s2.add("cam", 0, "old")
    assert s2.add("js", 40, "j") is not None
    s2.add("cam", 1000, "c1000")
    assert s2.add("js", 1200, "late") is None and 1000 not in s2.queues["cam"]


def test_resize_with_pad_keeps_aspect_ratio():
    img = np.full((240, 320, 3), 200, np.uint8)
    out = resize_with_pad(img, 224, 224)
    assert out.shape == (224, 224, 3)
    rows = np.where(out[:, 112, 0] > 0)[0]
    assert len(rows) == 168 and rows[0] == 28  # 320x240 → 224x168, centred, black bars
    m = ObservationMap.from_config({"cameras": ["cam_high"], "image_keys": ["observation.images.top"],
                                    "resize": [224, 224]})
    assert m.images({"cam_high": img})["observation.images.top"].shape == (224, 224, 3)
    with pytest.raises(ValueError, match="observation.image_keys"):
        ObservationMap.from_config({"cameras": ["cam_high"], "image_keys": []})


def test_safety_filter():
    sf = SafetyFilter()
    ok = np.repeat(HOME[None], 5, axis=0)
    assert sf.check_chunk(ok) is None
    bad = ok.copy()
    bad[2, 3] = np.nan
    assert sf.check_chunk(bad) == "nan_chunk"
    bad = ok.copy()
    bad[:, 1] = aloha.ARM_UPPER[1] + 0.5
    assert sf.check_chunk(bad) == "out_of_limits_chunk"
    cmd, clamped = sf.filter(HOME + 1.0, HOME)
    assert clamped and np.allclose(np.abs(cmd - HOME)[[0, 1, 2]], 0.12)  # 6 rad/s x 20 ms
    assert 0 <= cmd[6] <= 1
    with pytest.raises(ValueError):
        sf.filter(np.full(14, np.nan), HOME)
    assert np.array_equal(sf.hold(None, HOME), HOME)


def test_controller_realtime_never_waits_for_inference():
    b = make_backend("synthetic", {"latency_ms": 300, "horizon": 50, "needs_images": False})
    ctl = PolicyController(b, ChunkRuntime("rtc", replan_steps=5), SafetyFilter(), clock_ns=time.monotonic_ns,
                           realtime=True)
    try:
        now = time.monotonic_ns()
        cmd, st = ctl.tick(now, Observation(now, {}, HOME.copy()))
        assert st["submitted"] and st["hold"] == "no_action" and np.array_equal(cmd, HOME)
        holds, arrived = [], []
        for _ in range(40):  # ~0.8 s: the first chunk arrives after ~0.3 s, ticks go on meanwhile
            time.sleep(0.02)  # pacing: the 50 Hz control loop
            now = time.monotonic_ns()
            cmd, st = ctl.tick(now, Observation(now, {}, HOME.copy()))
            holds.append(st["hold"])
            if st["inferred"]:
                arrived.append(st["infer_ms"])
        assert "no_action" in holds and holds[-1] is None
        assert arrived and all(ms >= 300 for ms in arrived)  # each finished inference reports its own time
        assert st["chunk_index"] >= 14  # actions indexed by obs time: the late chunk's past skipped
        # a stale observation holds
        cmd2, st2 = ctl.tick(now + 2_000_000_000, Observation(now, {}, HOME.copy()))
        assert st2["hold"] == "stale_obs" and np.array_equal(cmd2, cmd)
    finally:
        ctl.close()


def test_controller_inference_timeout_and_errors_hold():
    b = make_backend("synthetic", {"latency_ms": 1500, "horizon": 10, "needs_images": False})
    ctl = PolicyController(b, ChunkRuntime("rtc"), SafetyFilter({"inference_timeout_s": 0.2}),
                           clock_ns=time.monotonic_ns, realtime=True)
    try:
        now = time.monotonic_ns()
        ctl.tick(now, Observation(now, {}, HOME.copy()))
        time.sleep(0.3)  # the point: the 0.2 s inference timeout passes while the 1.5 s inference runs
        now = time.monotonic_ns()
        cmd, st = ctl.tick(now, Observation(now, {}, HOME.copy()))
        assert st["hold"] == "inference_timeout" and np.array_equal(cmd, HOME)
    finally:
        ctl.close()
    e = make_backend("synthetic", {"inject": "error", "inject_every": 1, "needs_images": False})
    ctl = PolicyController(e, ChunkRuntime("sync"), SafetyFilter())
    cmd, st = ctl.step_lockstep(0, Observation(0, {}, HOME.copy()))
    assert st["hold"] == "inference_error" and np.array_equal(cmd, HOME)
