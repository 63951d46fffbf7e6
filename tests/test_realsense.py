"""RealSense cameras without hardware: recordings made with pyrealsense2's software device.

`write_recording` records synthetic colour frames (index stamped into pixel [0,0], hardware
timestamps 1000 + i*33.3 ms) through `rs.software_device` + `rs.recorder`; the core and the
`realsense_cameras` node then open those recordings by serial like USB cameras. Covered:
discovery and the missing-serial message, frames and hardware timestamps read back intact,
auto-exposure handling, the hardware→host clock mapping, and the node over DDS: topics,
frame ids, pixels, stamps, reconnect after a stream ends, unplug (recording removed) and
replug, and configuration errors.
"""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from robot_io.clock_sync import HardwareClockMapper
from robot_io.realsense import (CameraNotFound, CameraWorker, FrameSource, check_serials, configure_exposure,
                                discover, frame_index, synthetic_frame, write_recording)
from rosutil import wait_for
from wam_common import topics

SERIALS = {"cam_high": "130322270001", "cam_left_wrist": "130322270002", "cam_right_wrist": "130322270003"}
N_FRAMES = 45  # 1.5 s at 30 fps


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rs")
    threads = [threading.Thread(target=write_recording,
                                args=(folder / f"{cam}.db3", serial, N_FRAMES),
                                kwargs={"seed": k, "auto_exposure": True if cam == "cam_high" else None})
               for k, (cam, serial) in enumerate(SERIALS.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return folder


# ------------------------------------------------------------------------------ pure core


@pytest.mark.unit
def test_discover_lists_recordings_by_serial(recordings):
    found = discover(recordings)
    assert set(found) == set(SERIALS.values())
    assert all(i.is_recording and i.name == "Intel RealSense D405" for i in found.values())
    assert discover(recordings / "nope") == {}


@pytest.mark.unit
def test_missing_serial_lists_connected(recordings):
    found = discover(recordings)
    check_serials(SERIALS, found)
    with pytest.raises(CameraNotFound) as err:
        check_serials({**SERIALS, "cam_low": "999"}, found)
    msg = str(err.value)
    assert "cam_low" in msg and "999" in msg
    for serial in SERIALS.values():
        assert serial in msg
    with pytest.raises(CameraNotFound, match="connected serials: none"):
        FrameSource("cam_high", "1", playback_dir=recordings / "empty").open()


@pytest.mark.unit
def test_frames_and_hardware_timestamps_read_back(recordings):
    src = FrameSource("cam_left_wrist", SERIALS["cam_left_wrist"], playback_dir=recordings)
    info = src.open()
    assert info.serial == SERIALS["cam_left_wrist"]
    frames = []
    try:
        while True:
            f = src.read(1.0)
            if f is None:
                break
            frames.append(f)
    finally:
        src.close()
    assert len(frames) >= N_FRAMES - 2  # playback may skip a frame under load, never invent one
    idx = [frame_index(f.rgb) for f in frames]
    assert idx == sorted(set(idx)) and idx[0] <= 1 and idx[-1] == N_FRAMES - 1
    for f, i in zip(frames, idx):
        assert f.rgb.shape == (480, 640, 3) and f.rgb.dtype == np.uint8
        np.testing.assert_array_equal(f.rgb, synthetic_frame(i, seed=1))
        assert f.domain == "hardware_clock"
        assert f.number == i
        assert f.hw_ms == pytest.approx(1000.0 + i * 1000.0 / 30, abs=1e-3)


@pytest.mark.unit
def test_wrong_profile_is_a_clear_error(recordings):
    from robot_io.realsense import CameraError

    with pytest.raises(CameraError, match=r"cannot stream color 1280x720 rgb8 @ 30 fps"):
        FrameSource("cam_high", SERIALS["cam_high"], width=1280, height=720, playback_dir=recordings).open()


@pytest.mark.unit
def test_auto_exposure_turned_off_on_a_live_software_sensor():
    import pyrealsense2 as rs

    dev = rs.software_device()
    sensor = dev.add_sensor("RGB Camera")
    sensor.add_option(rs.option.enable_auto_exposure, rs.option_range(0, 1, 1, 1), True)
    sensor.add_option(rs.option.exposure, rs.option_range(1, 10000, 1, 1), True)
    sensor.set_option(rs.option.enable_auto_exposure, 1)
    assert configure_exposure(sensor, auto_exposure=False, exposure_us=250) == []
    assert sensor.get_option(rs.option.enable_auto_exposure) == 0
    assert sensor.get_option(rs.option.exposure) == 250
    assert configure_exposure(sensor, auto_exposure=True) == []
    assert sensor.get_option(rs.option.enable_auto_exposure) == 1
    bare = rs.software_device().add_sensor("RGB Camera")
    assert configure_exposure(bare, auto_exposure=False) == ["auto exposure: option not supported by this sensor"]


@pytest.mark.unit
def test_read_only_auto_exposure_is_reported(recordings):
    src = FrameSource("cam_high", SERIALS["cam_high"], playback_dir=recordings)
    src.open()
    src.close()
    assert src.auto_exposure_state == "on"
    assert any("cannot set off" in n for n in src.notes), src.notes


@pytest.mark.unit
def test_clock_mapper_tracks_offset_and_drift():
    rng = np.random.default_rng(0)
    m = HardwareClockMapper(max_drift=2e-4)
    offset, drift = 5_000_000_000_000, 50e-6  # device clock 50 ppm slow
    hw = np.arange(0, 60_000_000_000, 33_333_333)  # 60 s at 30 fps
    true_host = offset + hw * (1 + drift)
    latency = rng.exponential(3e6, hw.size).astype(np.int64) + 2_000_000  # >= 2 ms
    host = (true_host + latency).astype(np.int64)
    stamps = np.array([m.map(int(h), int(t)).stamp_ns for h, t in zip(hw, host)])
    assert np.all(np.diff(stamps) > 0)
    assert np.all(stamps <= host)  # never in the future
    err = (stamps - true_host)[30:]  # after the first second
    assert np.abs(err).max() < 3e6, np.abs(err).max()  # within the 2 ms latency floor + 1 ms
    assert m.resets == 1


@pytest.mark.unit
def test_clock_mapper_resets_when_device_clock_restarts():
    m = HardwareClockMapper()
    host = 10_000_000_000
    for i in range(30):
        m.map(1_000_000_000 + i * 33_000_000, host + i * 33_000_000 + 1_000_000)
    last = m.map(1_000_000_000 + 30 * 33_000_000, host + 30 * 33_000_000 + 1_000_000).stamp_ns
    r = m.map(1_000_000_000, host + 40 * 33_000_000)  # replugged: device time back at the start
    assert r.reset and r.stamp_ns > last
    assert m.map(1_033_000_000, host + 41 * 33_000_000 + 500_000).stamp_ns > r.stamp_ns
    # a long silence with the device clock running on is a jump, not a reason to stamp in the past
    j = m.map(1_033_000_000 + 5_000_000_000, host + 41 * 33_000_000 + 60_000_000_000)
    assert j.reset


@pytest.mark.unit
def test_worker_reconnects_after_the_stream_ends(recordings):
    got, states = [], []
    w = CameraWorker(FrameSource("cam_high", SERIALS["cam_high"], playback_dir=recordings),
                     on_frame=lambda cam, rgb, st, fr: got.append((frame_index(rgb), st)),
                     on_status=lambda s: states.append(s.state), lost_after_s=0.4, reconnect_s=0.2)
    w.start()
    try:
        assert wait_for(lambda: w.status.reconnects >= 1 and len(got) >= N_FRAMES + 10, 20), (states, len(got))
    finally:
        w.stop()
    assert states[:3] == ["streaming", "lost", "streaming"]
    idx = [i for i, _ in got]
    restart = next(k for k in range(1, len(idx)) if idx[k] < idx[k - 1])
    assert idx[restart] <= 1  # the recording replays from its start after the "replug"
    stamps = [s for _, s in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))  # stamps keep increasing across it
    assert w.status.clock_resets >= 1


# ------------------------------------------------------------------------------ the node over DDS


def _runner(params, domain_id, tmp_path):
    from wam_common.graph import Graph, NodeSpec
    from wam_common.launcher import GraphRunner

    g = Graph("rs", [NodeSpec("realsense_cameras", "realsense_cameras", params)])
    return GraphRunner(g, domain_id=domain_id, log_dir=tmp_path / "logs")


def _diag(probe, cam):
    from diagnostic_msgs.msg import DiagnosticArray

    out = []
    for arr in probe.decoded(topics.DIAGNOSTICS, DiagnosticArray):
        for st in arr.status:
            if st.name.endswith(f": {cam}"):
                level = ord(st.level) if isinstance(st.level, bytes) else int(st.level)
                out.append((level, st.message, {kv.key: kv.value for kv in st.values}))
    return out


@pytest.mark.ros
def test_node_publishes_reconnects_and_survives_unplug(recordings, domain_id, probe, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from wam_common.imageio import decode_image

    folder = tmp_path / "devices"
    shutil.copytree(recordings, folder)
    from sensor_msgs.msg import CameraInfo

    from robot_io.realsense_node import camera_info_topic

    for cam in SERIALS:
        probe.listen(topics.camera_topic(cam), Image, reliable=False, depth=200)
    probe.listen(camera_info_topic("cam_high"), CameraInfo, reliable=False, depth=200)
    probe.listen(topics.DIAGNOSTICS, DiagnosticArray)
    params = {"serials": dict(SERIALS), "playback_dir": str(folder), "lost_after_s": 0.4, "reconnect_s": 0.2,
              "diagnostics_period_s": 0.2}
    runner = _runner(params, domain_id, tmp_path)
    with runner:
        ok = wait_for(lambda: all(probe.count(topics.camera_topic(c)) >= 20 for c in SERIALS)
                      and any(d[2].get("reconnects") not in (None, "0") for d in _diag(probe, "cam_high")), 40)
        assert ok, ({c: probe.count(topics.camera_topic(c)) for c in SERIALS}, runner.log("realsense_cameras"))
        # unplug cam_right_wrist: its recording disappears; once its stream ends it is missing
        unplugged = folder / "cam_right_wrist.db3"
        unplugged.rename(folder / "cam_right_wrist.away")
        ok = wait_for(lambda: any(d[2]["state"] == "missing" for d in _diag(probe, "cam_right_wrist")), 20)
        assert ok, (_diag(probe, "cam_right_wrist")[-3:], runner.log("realsense_cameras"))
        level, msg, vals = next(d for d in _diag(probe, "cam_right_wrist") if d[2]["state"] == "missing")
        assert level == 2 and SERIALS["cam_right_wrist"] in msg
        assert SERIALS["cam_high"] in msg and SERIALS["cam_left_wrist"] in msg  # the connected ones
        n_before = probe.count(topics.camera_topic("cam_right_wrist"))
        others_before = probe.count(topics.camera_topic("cam_high"))
        ok = wait_for(lambda: probe.count(topics.camera_topic("cam_high")) > others_before + 10, 10)
        assert ok  # the other cameras keep streaming while one is unplugged
        assert probe.count(topics.camera_topic("cam_right_wrist")) == n_before  # no frozen frames
        (folder / "cam_right_wrist.away").rename(unplugged)  # replug
        ok = wait_for(lambda: probe.count(topics.camera_topic("cam_right_wrist")) > n_before + 5, 20)
        assert ok, runner.log("realsense_cameras")
        assert runner.dead() == {}
        log = runner.log("realsense_cameras")
    assert "is not connected (connected serials:" in log
    infos = probe.decoded(camera_info_topic("cam_high"), CameraInfo)
    assert infos, "no camera_info"
    info = infos[-1]
    assert (info.width, info.height, info.header.frame_id) == (640, 480, topics.camera_frame("cam_high"))
    assert list(info.k) == pytest.approx([0.95 * 640, 0, 320, 0, 0.95 * 640, 240, 0, 0, 1])  # as recorded
    image_stamps = {decode_image(raw).stamp.ns for _, raw in probe.msgs[topics.camera_topic("cam_high")]}
    info_stamps = {m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in infos}
    assert len(info_stamps & image_stamps) >= 0.8 * min(len(info_stamps), len(image_stamps))
    for cam, serial in SERIALS.items():
        recv = probe.msgs[topics.camera_topic(cam)]
        decoded = [(t, decode_image(raw)) for t, raw in recv]
        for _, d in decoded:
            assert d.encoding == "rgb8" and d.array.shape == (480, 640, 3)
            assert d.frame_id == topics.camera_frame(cam)
            i = frame_index(d.array)
            assert 0 <= i < N_FRAMES
            np.testing.assert_array_equal(d.array, synthetic_frame(i, seed=list(SERIALS).index(cam)))
        stamps = [d.stamp.ns for _, d in decoded]
        assert all(b > a for a, b in zip(stamps, stamps[1:])), cam  # across reconnects too
        # hardware spacing kept: most consecutive frames are 33.3 ms apart in the stamps
        idx = [frame_index(d.array) for _, d in decoded]
        gaps = [(b - a) / 1e6 for (a, b, i, j) in zip(stamps, stamps[1:], idx, idx[1:]) if j == i + 1]
        close = sum(abs(g - 1000 / 30) < 2.0 for g in gaps)
        assert close >= 0.8 * len(gaps), gaps


@pytest.mark.ros
def test_node_config_errors_name_the_key(recordings, domain_id, tmp_path):
    cases = [
        ({"serials": {"cam_high": "", "cam_left_wrist": "1", "cam_right_wrist": "2"}},
         ["serials.cam_high", "is empty"]),
        ({"serials": {**SERIALS}, "playback_dir": str(recordings), "fpz": 30}, ["fpz"]),
        ({"serials": {**SERIALS, "cam_low": SERIALS["cam_high"]}, "playback_dir": str(recordings)},
         ["serials.cam_high", "serials.cam_low", "same serial"]),
        ({"serials": {**SERIALS, "cam_top": "7"}, "playback_dir": str(recordings)}, ["cam_top"]),
        ({"serials": {**SERIALS}, "playback_dir": str(recordings / "nope")}, ["'playback_dir': no such folder"]),
    ]
    for params, words in cases:
        runner = _runner(params, domain_id, tmp_path)
        with runner:
            proc = runner.procs["realsense_cameras"]
            proc.wait(60)
            log = runner.log("realsense_cameras")
        assert proc.returncode == 2, (params, log)
        for w in words:
            assert w in log, (w, log)


@pytest.mark.ros
def test_empty_serial_message_lists_connected(recordings, domain_id, tmp_path):
    runner = _runner({"serials": {"cam_high": "", "cam_left_wrist": "1", "cam_right_wrist": "2"},
                      "playback_dir": str(recordings)}, domain_id, tmp_path)
    with runner:
        runner.procs["realsense_cameras"].wait(60)
        log = runner.log("realsense_cameras")
    for serial in SERIALS.values():
        assert serial in log, log


@pytest.mark.unit
def test_worker_loops_a_recording_without_losing_it(recordings):
    got, states = [], []
    w = CameraWorker(FrameSource("cam_left_wrist", SERIALS["cam_left_wrist"], playback_dir=recordings),
                     on_frame=lambda cam, rgb, st, fr: got.append((frame_index(rgb), st)),
                     on_status=lambda s: states.append(s.state), lost_after_s=5.0, reconnect_s=5.0, loop=True)
    w.start()
    try:
        assert wait_for(lambda: w.status.loops >= 1 and len(got) >= N_FRAMES + 10, 20), (states, len(got), w.status)
    finally:
        w.stop()
    # lost_after_s / reconnect_s of 5 s would show as a gap and a "lost" state; a loop has neither
    assert states == ["streaming"]
    idx = [i for i, _ in got]
    restart = next(k for k in range(1, len(idx)) if idx[k] < idx[k - 1])
    assert idx[restart] <= 1
    stamps = [s for _, s in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert w.status.reconnects == 0


@pytest.mark.unit
def test_clock_mapper_unwraps_the_32bit_microsecond_counter():
    from robot_io.clock_sync import RS_WRAP_NS

    m = HardwareClockMapper()
    host0, period = 77_000_000_000_000, 33_333_333
    hw0 = RS_WRAP_NS - 20 * period  # 20 frames before the counter wraps
    out = []
    for i in range(60):
        hw = (hw0 + i * period) % RS_WRAP_NS  # what the device reports
        out.append(m.map(hw, host0 + i * period + 2_000_000))
    assert m.resets == 1  # only the first frame started the estimate
    stamps = np.array([o.stamp_ns for o in out])
    np.testing.assert_allclose(np.diff(stamps), period, atol=10)
    assert stamps[-1] == host0 + 59 * period + 2_000_000  # offset kept across the wrap (a constant
    # latency is indistinguishable from the offset: the stamp is the earliest arrival it explains)


@pytest.mark.ros
def test_cameras_cli_lists_serials(recordings, tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "wam_apps.cli", "cameras", "--playback-dir", str(recordings)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for serial in SERIALS.values():
        assert serial in res.stdout
    assert "serials:" in res.stdout and "cam_low: ''" in res.stdout
    res = subprocess.run([sys.executable, "-m", "wam_apps.cli", "cameras", "--playback-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "no recordings in" in res.stdout


@pytest.mark.unit
def test_validate_serials():
    from robot_io.realsense_node import DEFAULTS, validate
    from wam_common.config import ConfigError

    cfg = dict(DEFAULTS, serials={"cam_high": 130322270001, "cam_left_wrist": " 2 ", "cam_right_wrist": "3",
                                  "cam_low": None})
    assert validate(cfg) == {"cam_high": "130322270001", "cam_left_wrist": "2", "cam_right_wrist": "3"}
    with pytest.raises(ConfigError, match="'serials.cam_high' must be a serial number string"):
        validate(dict(cfg, serials={**cfg["serials"], "cam_high": True}))
    with pytest.raises(ConfigError, match="'fps' must be within 1..90"):
        validate(dict(cfg, fps=0))
