"""RealSense camera node on recordings: delivered rate, stamp accuracy, latency, CPU (one JSON).

Records three synthetic 640×480 rgb8 @ 30 fps cameras with ``rs.software_device`` (hardware
timestamps known exactly), starts ``realsense_cameras`` on them (playback in real time,
looping) as its own process, and subscribes here (raw, ``qos.SENSOR``, the shipped DDS profile).

- ``fps``: frames received per second per camera (target: the camera's 30);
- ``stamp_jitter_ms``: |Δstamp − Δhw| between consecutive frames — how faithfully the mapped
  ROS stamps keep the hardware clock's spacing (0 = exact);
- ``latency_ms``: receipt − header stamp (capture-time estimate → our callback: playback,
  mapping, CDR encode, DDS), p50 / p99;
- ``cpu_percent``: the node's CPU over the window (100 = one core).

    .venv/bin/python bench/realsense.py [--seconds 8] [--width 640 --height 480]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _proc import cpu_seconds  # noqa: E402  (bench/ is on sys.path: it holds this script)

import numpy as np  # noqa: E402

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=90, help="frames per recording (looped)")
    args = ap.parse_args()

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from robot_io.realsense import frame_index, write_recording
    from wam_common import qos, topics
    from wam_common.graph import Graph, NodeSpec, load_graph
    from wam_common.imageio import decode_image
    from wam_common.launcher import GraphRunner

    cams = CAMS
    tmp = Path(tempfile.mkdtemp(prefix="bench_rs_"))
    serials = {c: f"33032227000{k}" for k, c in enumerate(cams)}
    t0 = time.monotonic()
    ts = [threading.Thread(target=write_recording, args=(tmp / f"{c}.db3", s, args.frames),
                           kwargs={"width": args.width, "height": args.height, "seed": k})
          for k, (c, s) in enumerate(serials.items())]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    record_s = time.monotonic() - t0

    params = {"serials": serials, "playback_dir": str(tmp), "playback_loop": True,
              "width": args.width, "height": args.height}
    aloha = load_graph("aloha")
    graph = Graph("bench_rs", [NodeSpec("realsense_cameras", "realsense_cameras", params)],
                  dds_profile=aloha.dds_profile)
    runner = GraphRunner(graph, log_dir=tmp / "logs")
    os.environ.update(graph.env())
    ctx = Context()
    rclpy.init(context=ctx, domain_id=runner.domain_id)
    node = rclpy.create_node("bench_rs_sink", context=ctx)
    recv: dict[str, list] = {c: [] for c in cams}
    lock = threading.Lock()

    def cb(raw, cam):
        now = time.time_ns()
        d = decode_image(raw)
        with lock:
            recv[cam].append((now, d.stamp.ns, frame_index(d.array)))

    for c in cams:
        node.create_subscription(Image, topics.camera_topic(c), lambda raw, c=c: cb(raw, c), qos.SENSOR, raw=True)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    stop = threading.Event()
    th = threading.Thread(target=lambda: [ex.spin_once(timeout_sec=0.05) for _ in iter(stop.is_set, True)], daemon=True)
    th.start()
    runner.start()
    pid = runner.procs["realsense_cameras"].pid
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and not all(len(v) > 10 for v in recv.values()):
            time.sleep(0.1)
        with lock:
            for c in cams:
                recv[c].clear()
        cpu0, w0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, w1 = cpu_seconds(pid), time.monotonic()
        with lock:
            data = {c: list(v) for c, v in recv.items()}
    finally:
        runner.stop()
        stop.set()
        th.join(timeout=2)
        ex.shutdown(timeout_sec=0)
        node.destroy_node()
        ctx.try_shutdown()

    period_ns = 1e9 / 30
    per_cam = {}
    for c, rows in data.items():
        if len(rows) < 2:
            per_cam[c] = {"fps": 0.0}
            continue
        recv_ns = np.array([r[0] for r in rows], dtype=np.int64)
        stamps = np.array([r[1] for r in rows], dtype=np.int64)
        idx = np.array([r[2] for r in rows])
        consecutive = np.diff(idx) == 1
        jitter = np.abs(np.diff(stamps)[consecutive] - period_ns) / 1e6
        lat = (recv_ns - stamps) / 1e6
        per_cam[c] = {
            "fps": round((len(rows) - 1) / ((recv_ns[-1] - recv_ns[0]) / 1e9), 2),
            "frames": len(rows),
            "stamp_jitter_ms": {"p50": round(float(np.percentile(jitter, 50)), 3),
                                "p99": round(float(np.percentile(jitter, 99)), 3)} if jitter.size else None,
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p99": round(float(np.percentile(lat, 99)), 2)},
            "monotonic_stamps": bool(np.all(np.diff(stamps) > 0)),
        }
    out = {
        "bench": "realsense_cameras node on software-device recordings",
        "cams": len(cams), "width": args.width, "height": args.height, "camera_fps": 30,
        "seconds": args.seconds, "record_s": round(record_s, 2),
        "cpu_percent": round(100 * (cpu1 - cpu0) / (w1 - w0), 1),
        "per_camera": per_cam,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
