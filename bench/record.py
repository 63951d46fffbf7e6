"""Recorder throughput: 3 × 480×640 rgb8 @ 30 Hz + joint states @ 50 Hz, recorder vs plain mcap.

Prints one JSON object. In the same run, with the same publisher process:

- ``recorder``: the real recorder node (``recorder.node``, its own process, shipped
  FastDDS profile) writing a rosbag2 MCAP bag;
- ``mcap_direct``: the simplest possible alternative, subscribed to the same topics at the same
  time: a raw rclpy subscriber that writes each message straight into an ``mcap`` Writer inside
  the callback (no queue, no thread, no metadata, no crash safety);
- ``mcap_file_only``: the same bytes written with the ``mcap`` library with no DDS at all, as fast
  as it goes (the disk + library ceiling on this machine).

Figures: sustained MB/s over the publishing window (bytes stored / seconds published), messages
published vs stored per stream (``dropped`` = published − stored), and the recorder's CPU
seconds; the recorder's chunks (from the finished files' chunk indexes: how many, per second, mean
size) and what the MCAP container adds to the payload (``overhead_bytes``: records, message indexes,
summary; ``overhead_kBps``), which its ``flush_period_s`` drives when the data rate is low. The
recorder that runs is ``python -m recorder.node`` from the working directory / ``PYTHONPATH``
(``recorder_module`` says which, with its ``flush_period_s`` and ``reorder_window_s``), so one script
measures two trees. Target: recorder ≥ 0.8 × mcap_direct MB/s and 0 drops.

    .venv/bin/python bench/record.py [--seconds 10] [--compression none] [--cam-hz 0: joint states only]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _proc import cpu_seconds  # noqa: E402  (bench/ is on sys.path: it holds this script)

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
H, W = 480, 640
CAM_HZ, JOINT_HZ = 30.0, 50.0


def _topics():
    from wam_common import topics as T

    return [T.camera_topic(c) for c in CAMS], [T.joint_state_topic(a) for a in T.ARMS]


def _frames(n: int = 8):
    import numpy as np

    from wam_common.imageio import Stamp, encode_image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    return [[encode_image(np.roll(base, 7 * k + 3 * i, axis=1), "rgb8", Stamp(k, i), f"{c}_color_optical_frame")
             for k in range(n)] for i, c in enumerate(CAMS)]


def _joint_raw(k: int) -> bytes:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    from wam_common import aloha

    js = JointState()
    js.header.stamp.sec, js.header.stamp.nanosec = k // 50, (k % 50) * 20_000_000
    js.name = list(aloha.JOINT_STATE_NAMES)
    js.position = [0.01 * k] * len(aloha.JOINT_STATE_NAMES)
    return serialize_message(js)


# ---------------------------------------------------------------------------------------- roles
def role_publisher(seconds: float, wait_subs: int, out: Path) -> None:
    import rclpy
    from sensor_msgs.msg import Image, JointState

    from wam_common import qos

    cams, joints = _topics()
    rclpy.init()
    node = rclpy.create_node("bench_record_pub")
    q = qos.sensor(True)  # reliable: losses are the recorder's, not best-effort DDS's
    cpubs = [node.create_publisher(Image, t, q) for t in cams]
    jpubs = [node.create_publisher(JointState, t, q) for t in joints]
    frames = _frames()
    jraw = [_joint_raw(k) for k in range(100)]
    end = time.monotonic() + 30
    while time.monotonic() < end and not all(p.get_subscription_count() >= wait_subs for p in cpubs + jpubs):
        time.sleep(0.05)
    time.sleep(0.5)
    counts = {t: 0 for t in cams + joints}
    nbytes = 0
    t0 = time.monotonic()
    next_cam, next_joint = t0, t0
    kc = kj = 0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        if CAM_HZ > 0 and now >= next_cam:
            for i, p in enumerate(cpubs):
                raw = frames[i][kc % len(frames[i])]
                p.publish(raw)
                counts[cams[i]] += 1
                nbytes += len(raw)
            kc += 1
            next_cam = t0 + kc / CAM_HZ
        if now >= next_joint:
            for i, p in enumerate(jpubs):
                raw = jraw[kj % len(jraw)]
                p.publish(raw)
                counts[joints[i]] += 1
                nbytes += len(raw)
            kj += 1
            next_joint = t0 + kj / JOINT_HZ
        time.sleep(max(0.0, (min(next_cam, next_joint) if CAM_HZ > 0 else next_joint) - time.monotonic()))
    elapsed = time.monotonic() - t0
    out.write_text(json.dumps({"published": counts, "bytes": nbytes, "seconds": elapsed}))
    time.sleep(1.0)
    node.destroy_node()
    rclpy.try_shutdown()


def role_direct(path: Path) -> None:
    """Raw subscriptions writing straight into an mcap Writer in the callbacks."""
    import rclpy
    from mcap.writer import CompressionType, Writer
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState

    from wam_common import qos
    from wam_common.bag.msgdefs import message_definition

    cams, joints = _topics()
    rclpy.init()
    node = rclpy.create_node("bench_record_direct")
    stream = open(path, "wb")
    w = Writer(stream, compression=CompressionType.NONE, chunk_size=4 << 20)
    w.start(profile="ros2", library="bench-direct")
    counts: dict[str, int] = {}
    nbytes = [0]
    for topics_, cls, name in ((cams, Image, "sensor_msgs/msg/Image"), (joints, JointState, "sensor_msgs/msg/JointState")):
        d = message_definition(name)
        sid = w.register_schema(name, "ros2msg", d.text.encode())
        for t in topics_:
            cid = w.register_channel(t, "cdr", sid)
            counts[t] = 0

            def cb(raw, info, t=t, cid=cid):
                ts = info.get("received_timestamp") or time.time_ns()
                w.add_message(cid, ts, raw, ts)
                counts[t] += 1
                nbytes[0] += len(raw)

            node.create_subscription(cls, t, cb, qos.RECORD, raw=True)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    w.finish()
    stream.close()
    path.with_suffix(".json").write_text(json.dumps({"stored": counts, "bytes": nbytes[0]}))


def file_only(seconds_of_data: float, path: Path) -> dict:
    from mcap.writer import CompressionType, Writer

    from wam_common.bag.msgdefs import message_definition

    frames = _frames()
    jraw = _joint_raw(1)
    n_cam = int(seconds_of_data * CAM_HZ)
    n_joint = int(seconds_of_data * JOINT_HZ)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        w = Writer(f, compression=CompressionType.NONE, chunk_size=4 << 20)
        w.start(profile="ros2", library="bench-file")
        sid = w.register_schema("sensor_msgs/msg/Image", "ros2msg", message_definition("sensor_msgs/msg/Image").text.encode())
        cids = [w.register_channel(f"/c{i}", "cdr", sid) for i in range(3)]
        jid = w.register_channel("/j", "cdr", sid)
        nbytes = 0
        for k in range(max(n_cam, n_joint)):
            if k < n_cam:
                for i in range(3):
                    raw = frames[i][k % len(frames[i])]
                    w.add_message(cids[i], k, raw, k)
                    nbytes += len(raw)
            if k < n_joint:
                for _ in range(2):
                    w.add_message(jid, k, jraw, k)
                    nbytes += len(jraw)
        w.finish()
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    return {"MBps": nbytes / dt / 1e6, "bytes": nbytes, "seconds": dt}


def _chunks(files) -> dict:
    """Chunk count and sizes (uncompressed payload bytes) from finished MCAP files' chunk indexes."""
    from mcap.reader import make_reader

    sizes = []
    for f in files:
        with open(f, "rb") as fh:
            summary = make_reader(fh).get_summary()
        sizes += [c.uncompressed_size for c in (summary.chunk_indexes if summary else [])]
    return {"chunks": len(sizes), "mean_bytes": round(sum(sizes) / len(sizes)) if sizes else 0,
            "max_bytes": max(sizes, default=0)}


# ---------------------------------------------------------------------------------------- main
def main() -> int:
    global CAM_HZ
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--compression", default="none")
    ap.add_argument("--cam-hz", type=float, default=30.0, help="camera rate (raise it to find where recording saturates)")
    ap.add_argument("--role", default="main", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--wait-subs", type=int, default=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    CAM_HZ = a.cam_hz
    if a.role == "publisher":
        role_publisher(a.seconds, a.wait_subs, Path(a.out))
        return 0
    if a.role == "direct":
        role_direct(Path(a.out))
        return 0

    from wam_common.launcher import DomainLease

    lease = DomainLease()
    tmp = Path(tempfile.mkdtemp(prefix="wam_bench_record_"))
    env = dict(os.environ, ROS_DOMAIN_ID=str(lease.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTRTPS_DEFAULT_PROFILES_FILE=str(ROOT / "config/dds/fastdds.xml"), RMW_FASTRTPS_USE_QOS_FROM_XML="0",
               PYTHONUNBUFFERED="1")
    me = [sys.executable, str(Path(__file__).resolve())]
    procs = {}
    try:
        pfile = tmp / "rec.params.yaml"
        import yaml

        cams, joints = _topics()
        pfile.write_text(yaml.safe_dump({"/recorder": {"ros__parameters": {
            "output_dir": str(tmp), "bag_name": "bag", "topics": cams + joints, "compression": a.compression,
            "diagnostics_period_s": 0.0}}}))
        logs = {n: open(tmp / f"{n}.log", "wb") for n in ("recorder", "direct", "publisher")}
        procs["recorder"] = subprocess.Popen([sys.executable, "-m", "recorder.node", "--ros-args", "-r",
                                              "__node:=recorder", "--params-file", str(pfile)], env=env,
                                             stdout=logs["recorder"], stderr=subprocess.STDOUT, start_new_session=True)
        procs["direct"] = subprocess.Popen(me + ["--role", "direct", "--out", str(tmp / "direct.mcap")], env=env,
                                           stdout=logs["direct"], stderr=subprocess.STDOUT, start_new_session=True)
        procs["publisher"] = subprocess.Popen(me + ["--role", "publisher", "--cam-hz", str(a.cam_hz),
                                                    "--seconds", str(a.seconds), "--out",
                                                    str(tmp / "pub.json"), "--wait-subs", "2"], env=env,
                                              stdout=logs["publisher"], stderr=subprocess.STDOUT, start_new_session=True)
        cpu0 = {n: cpu_seconds(p.pid) for n, p in procs.items()}
        procs["publisher"].wait(timeout=a.seconds + 90)
        cpu1 = {n: cpu_seconds(p.pid) for n, p in procs.items() if n != "publisher"}
        time.sleep(1.0)
        for n in ("recorder", "direct"):
            os.killpg(procs[n].pid, signal.SIGINT)
        for n in ("recorder", "direct"):
            procs[n].wait(timeout=60)
        pub = json.loads((tmp / "pub.json").read_text())
        direct = json.loads((tmp / "direct.json").read_text())

        from wam_common.bag.reader import Bag

        stored: dict[str, int] = {}
        rbytes = 0
        with Bag(tmp / "bag") as bag:
            for m in bag.messages():
                stored[m.topic] = stored.get(m.topic, 0) + 1
                rbytes += len(m.data)
        secs = pub["seconds"]
        chunks = _chunks(sorted((tmp / "bag").glob("*.mcap")))
        which = subprocess.run([sys.executable, "-c", "import recorder.node as n; print(n.__file__); "
                                "print(n.DEFAULTS['flush_period_s'], n.DEFAULTS['reorder_window_s'])"],
                               env=env, capture_output=True, text=True, timeout=60).stdout.split()
        bag_bytes = sum(f.stat().st_size for f in (tmp / "bag").glob("*.mcap"))
        result = {
            "bench": "record", "seconds": round(secs, 2), "compression": a.compression,
            "streams": {"cameras": f"3 x {H}x{W} rgb8 @ {CAM_HZ:g} Hz" if CAM_HZ > 0 else "none",
                        "joints": f"2 x JointState @ {JOINT_HZ:g} Hz"},
            "recorder_module": which[0] if which else None,
            "recorder_flush_period_s": float(which[1]) if len(which) > 2 else None,
            "recorder_reorder_window_s": float(which[2]) if len(which) > 2 else None,
            "offered_MBps": round(pub["bytes"] / secs / 1e6, 2),
            "recorder": {"MBps": round(rbytes / secs / 1e6, 2),
                         "dropped": {t: pub["published"][t] - stored.get(t, 0) for t in pub["published"]},
                         "cpu_s": round(cpu1["recorder"] - cpu0["recorder"], 2),
                         "bag_bytes": bag_bytes,
                         "overhead_bytes": bag_bytes - rbytes,
                         "overhead_kBps": round((bag_bytes - rbytes) / secs / 1e3, 2),
                         "overhead_fraction": round((bag_bytes - rbytes) / rbytes, 4) if rbytes else None,
                         "chunks": chunks["chunks"], "chunks_per_s": round(chunks["chunks"] / secs, 2),
                         "chunk_bytes_mean": chunks["mean_bytes"], "chunk_bytes_max": chunks["max_bytes"]},
            "mcap_direct": {"MBps": round(direct["bytes"] / secs / 1e6, 2),
                            "dropped": {t: pub["published"][t] - direct["stored"].get(t, 0) for t in pub["published"]},
                            "cpu_s": round(cpu1["direct"] - cpu0["direct"], 2)},
            "mcap_file_only": {k: round(v, 2) for k, v in file_only(min(secs, 5.0), tmp / "file_only.mcap").items()},
        }
        r, d = result["recorder"], result["mcap_direct"]
        r["total_dropped"] = sum(r["dropped"].values())
        d["total_dropped"] = sum(d["dropped"].values())
        result["ratio_recorder_vs_direct"] = round(r["MBps"] / d["MBps"], 3) if d["MBps"] else None
        result["target_met"] = bool(result["ratio_recorder_vs_direct"] and result["ratio_recorder_vs_direct"] >= 0.8
                                    and r["total_dropped"] == 0)
        print(json.dumps(result, indent=1))
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        lease.release()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
