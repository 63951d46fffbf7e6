"""The storage layer without ROS: BagWriter (compression, splits, metadata) and repair of files
cut at arbitrary points (what kill -9 or a power cut leaves)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from rclpy.serialization import serialize_message
from std_msgs.msg import String

from wam_common.imageio import Stamp, encode_image
from wam_common.bag.reader import Bag, BagReadError, json_event
from wam_common.bag.repair import is_complete, needs_repair, repair_bag, repair_mcap
from wam_common.bag.writer import BagError, BagWriter, QosSpec

pytestmark = pytest.mark.unit


def _write(path, compression="none", n=60, chunk=4096, **kw):
    w = BagWriter(path, compression=compression, chunk_bytes=chunk, **kw)
    w.add_topic("/s", "std_msgs/msg/String", [QosSpec()])
    w.add_topic("/img", "sensor_msgs/msg/Image", [QosSpec(reliability="best_effort", depth=1)])
    sent = {"/s": [], "/img": []}
    for k in range(n):
        raw = serialize_message(String(data=f'{{"k": {k}}}'))
        w.write("/s", 1_000 + 10 * k, raw)
        sent["/s"].append(raw)
        img = encode_image(np.full((8, 10, 3), k, np.uint8), "rgb8", Stamp(0, k))
        w.write("/img", 1_000 + 10 * k + 5, img)
        sent["/img"].append(img)
        if k % 20 == 0:
            w.flush()
    return w, sent


def _read(path):
    out = {}
    with Bag(path) as bag:
        for m in bag.messages():
            out.setdefault(m.topic, []).append(bytes(m.data))
    return out


@pytest.mark.parametrize("compression", ["none", "zstd", "lz4"])
def test_round_trip_and_metadata(tmp_path, compression):
    w, sent = _write(tmp_path / "b", compression)
    w.close()
    assert _read(tmp_path / "b") == sent
    meta = yaml.safe_load((tmp_path / "b/metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["message_count"] == 120 and meta["starting_time"]["nanoseconds_since_epoch"] == 1000
    assert meta["duration"]["nanoseconds"] == 10 * 59 + 5
    assert {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]} == \
        {"/s": 60, "/img": 60}
    assert not needs_repair(tmp_path / "b")


def test_duration_split_and_refusals(tmp_path):
    w, sent = _write(tmp_path / "b", max_file_duration_s=200e-9)
    w.close()
    files = sorted((tmp_path / "b").glob("*.mcap"))
    assert len(files) >= 3 and all(is_complete(f) for f in files)
    assert _read(tmp_path / "b") == sent
    with pytest.raises(BagError, match="not empty"):
        BagWriter(tmp_path / "b")
    with pytest.raises(BagError, match="compression"):
        BagWriter(tmp_path / "c", compression="bzip2")
    w = BagWriter(tmp_path / "d")
    with pytest.raises(BagError, match="not added"):
        w.write("/nope", 1, b"\x00\x01\x00\x00")
    w.add_topic("/s", "std_msgs/msg/String")
    w.write("/s", 1, serialize_message(String(data="x")))
    with pytest.raises(BagError, match="already recorded"):
        w.add_topic("/s", "std_msgs/msg/Bool")
    w.close()


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_repair_at_every_cut(tmp_path, compression):
    """A file cut anywhere: repair never fails, keeps an in-order prefix of what was written,
    and leaves a file every reader opens; flushed data (every 20 messages here) survives."""
    w, sent = _write(tmp_path / "src", compression, n=60, chunk=1 << 20)
    flushed = w.files[-1].path.stat().st_size
    w.flush()
    data = w.files[-1].path.read_bytes()
    w.close()
    rng = np.random.default_rng(0)
    cuts = sorted(set([0, 8, 9, 20, len(data) - 1, len(data), flushed]) | set(rng.integers(8, len(data), 25).tolist()))
    for cut in cuts:
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / "cut_0.mcap").write_bytes(data[:cut])
        if cut < 8:
            with pytest.raises(BagReadError):
                Bag(d)
            continue
        got = _read(d)
        for topic, msgs in got.items():
            assert msgs == sent[topic][:len(msgs)], (cut, topic)
        if cut >= flushed:  # everything up to the last flush is there
            assert len(got.get("/s", [])) >= 40, cut
        assert not needs_repair(d)


def test_repair_report_and_json_reading(tmp_path):
    w, sent = _write(tmp_path / "b")
    w.flush()
    path = w.files[-1].path  # never closed: no summary, no footer
    rep = repair_mcap(path)
    assert not rep.was_complete and rep.messages == 120
    assert repair_mcap(path).was_complete
    repair_bag(tmp_path / "b")
    with Bag(tmp_path / "b") as bag:
        ks = [json_event(m)["k"] for m in bag.messages(["/s"])]
        assert ks == list(range(60))
        assert bag.custom_data.get("wam_policy.repaired") == "true"
