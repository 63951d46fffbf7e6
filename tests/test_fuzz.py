"""Every decoder that takes outside bytes rejects damaged input with a clear error: a CI-sized run of
bench/fuzz.py's campaign (its full run: docs/results/reliability.md), and the inputs it found that
crashed or hung a decoder before their fixes, one by one."""
from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from bench import fuzz

pytestmark = pytest.mark.unit


def test_a_ci_sized_campaign_finds_no_crash_and_no_hang():
    res = fuzz.campaign(2500, seed=7, timeout=2.0)
    bad = {n: t["crashes"] for n, t in res["targets"].items() if t["crashes"]}
    assert res["crash"] == 0 and res["hang"] == 0, bad
    assert res["inputs"] >= 2400 and set(res["targets"]) == set(fuzz.SHARES)
    for name, t in res["targets"].items():  # every decoder saw both sides: its seeds pass, mutations are refused
        assert t["accepted"] >= 1 and t["rejected"] >= 1, (name, t)


def _png_with_lying_idat() -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((24, 32), np.uint8))
    b = bytearray(buf.tobytes())
    i = b.index(b"IDAT") - 4
    b[i:i + 4] = struct.pack(">I", 0x7FFFFFFF)  # the chunk claims 2 GiB
    return bytes(b)


def test_found_by_fuzzing_compressed_images():
    from wam_common.imageio import ImageDecodeError, Stamp, compressed_to_array, decode_compressed, encode_compressed

    def decode(payload, fmt="png"):
        return compressed_to_array(decode_compressed(encode_compressed(payload, fmt, Stamp(0, 0))))

    t0 = time.monotonic()
    with pytest.raises(ImageDecodeError, match=r"PNG chunk b'IDAT' at offset \d+ claims 2147483647 bytes"):
        decode(_png_with_lying_idat())  # libpng spun for 6-14 s on it
    assert time.monotonic() - t0 < 1.0
    import cv2

    head = bytearray(cv2.imencode(".png", np.zeros((24, 32), np.uint8))[1].tobytes())
    head[16:24] = struct.pack(">II", 30000, 30000)  # OpenCV would allocate 900 Mpx before failing
    with pytest.raises(ImageDecodeError, match="size 30000x30000 is out of range"):
        decode(bytes(head))
    with pytest.raises(ImageDecodeError, match="neither PNG nor JPEG"):
        decode(b"GIF89a....", "jpeg")


def test_found_by_fuzzing_config_files(tmp_path):
    from wam_apps.evaluation.suites import load_suite
    from wam_common.config import ConfigError
    from wam_common.graph import load_graph

    p = tmp_path / "g.yaml"
    p.write_bytes(b"graph:\n  name: x\xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xff at offset 16, line 2"):
        load_graph(str(p))
    p.write_text("graph: {nodes: [{name: a, executable: sim_bridge}], dds_profile: [1]}\n")
    with pytest.raises(ConfigError, match="'graph.dds_profile' must be a file path"):
        load_graph(str(p))
    p.write_text("graph: {nodes: [{name: a, executable: [sim_bridge]}]}\n")
    with pytest.raises(ConfigError, match="key 'executable'"):
        load_graph(str(p))
    p.write_text("graph: {nodes: [{name: a, executable: sim_bridge}], dds_profile: " + "x" * 5000 + "}\n")
    with pytest.raises(ConfigError, match="File name too long"):
        load_graph(str(p))
    s = tmp_path / "s.yaml"
    s.write_text("suite: {configurations: 1.5}\n")
    with pytest.raises(ConfigError, match="'suite.configurations' must be a list"):
        load_suite(str(s))
    s.write_text("suite: {configurations: [{name: a, dimension: Light, level: high}]}\n")
    with pytest.raises(ConfigError, match=r"configurations\[0\]: key 'level' must be an integer"):
        load_suite(str(s))


def test_found_by_fuzzing_bags(tmp_path):
    """Damaged bytes inside an MCAP chunk or record header: BagReadError naming the bag, as analyze reports."""
    from wam_apps.analysis.episodes import analyze_bag
    from wam_common.bag.reader import BagReadError

    good = fuzz.bag_seeds(tmp_path)[0]
    d = tmp_path / "bad"
    # the Header record's length (after the 8-byte magic and its opcode) set huge; a byte inside the first
    # chunk's records (a joint name): "Chunk checksum mismatch" (rosbags' ReaderError before the fix)
    for at, value, why in ((9, b"\xff" * 7 + b"\x7f", "cannot open"), (good.index(b"waist"), b"W", "checksum mismatch")):
        b = bytearray(good)
        b[at:at + len(value)] = value
        if d.exists():
            for f in d.iterdir():
                f.unlink()
        d.mkdir(exist_ok=True)
        (d / "bad_0.mcap").write_bytes(bytes(b))
        with pytest.raises(BagReadError, match=f"{d}: .*{why}"):
            analyze_bag(d)


def test_found_by_fuzzing_events_and_frames():
    from wam_common.events import EventError, parse_episode_event
    from wam_policy_node.backends import BackendError, msgpack_numpy
    from wam_policy_node.backends.openpi import read_reply
    from wam_policy_node.framesize import FrameSizeGate
    from wam_policy_node.server import RequestError, read_request

    with pytest.raises(EventError, match="'width' and 'height' come together"):
        parse_episode_event('{"event": "start", "episode": 1, "height": 240}')
    with pytest.raises(EventError, match="key 'episode' must be an integer >= 0, got -1"):
        parse_episode_event('{"event": "start", "episode": -1}')
    with pytest.raises(EventError, match="not JSON"):
        parse_episode_event("[" * 100_000)
    gate = FrameSizeGate()
    gate.announce({"event": "start", "height": 240})  # a reader without the parser: no size, no KeyError
    assert gate.announced is None

    frame = msgpack_numpy.packb({"state": np.zeros(14), "images": {"c": np.zeros((3, 4, 4), np.uint8)}})
    with pytest.raises(RequestError, match=r"shape \(3, 4, 4\) needs 48 bytes, got 4"):
        read_request(frame.replace(b"\xc4\x30" + bytes(48), b"\xc4\x04" + bytes(4)))
    with pytest.raises(RequestError, match="unsupported dtype object"):
        read_request(frame.replace(b"|u1", b"|O8"))
    with pytest.raises(RequestError, match="'stamp_ns'"):
        read_request(msgpack_numpy.packb({"state": np.zeros(14), "stamp_ns": float("inf")}))
    with pytest.raises(BackendError, match="no 'actions'"):
        read_reply(msgpack_numpy.packb({"policy": "x"}))
    with pytest.raises(BackendError, match=r"has shape \(0, 14\)"):
        read_reply(msgpack_numpy.packb({"actions": np.zeros((0, 14))}))
