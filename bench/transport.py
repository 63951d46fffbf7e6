"""Image transport: 3 cameras × 480×640 rgb8 through 0, 1, 2 Python hops, plain rclpy vs our path.

Prints one JSON object. Every configuration runs in the same invocation, so the figures are
comparable (same machine, same load):

- ``plain``: what a typical rclpy user writes — typed ``sensor_msgs/Image`` (``msg.data = bytes``),
  typed subscriptions (rclpy deserializes into Python objects), default reliable depth-10 QoS,
  the default DDS configuration.
- ``ours``: ``wam_common.imageio`` — raw subscriptions, a zero-copy numpy view of the pixels,
  serialization straight from numpy, ``wam_common.qos.SENSOR`` (newest frame wins) and the
  shipped FastDDS profile (``config/dds/fastdds.xml``, shared memory sized for the frames).

Each hop (what perturbation_node and wam_policy_node do) decodes the frame to a numpy array,
touches it, and republishes it. The sink measures latency from the source's header stamp (wall
clock, same host) to receipt. Delivered = distinct frames received / frames published.

    .venv/bin/python bench/transport.py [--seconds 8] [--rates 30 60] [--hops 0 1 2]
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


def _topic(cam: str, hop: int) -> str:
    return f"/bench/h{hop}/{cam}/image"


# ---------------------------------------------------------------------------------------- roles
def _qos(mode: str):
    from rclpy.qos import QoSProfile

    from wam_common import qos

    if mode.startswith("ours"):
        depth = int(mode.split("@d")[1]) if "@d" in mode else qos.SENSOR.depth
        return QoSProfile(history=qos.SENSOR.history, depth=depth, reliability=qos.SENSOR.reliability,
                          durability=qos.SENSOR.durability)
    return QoSProfile(depth=10)


def _spin(node, stop_after: float) -> None:
    """Spin until ``stop_after`` seconds pass (a blocking spin, no spin_once polling)."""
    import threading

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    ex = SingleThreadedExecutor()
    ex.add_node(node)
    timer = threading.Timer(stop_after, rclpy.try_shutdown)
    timer.start()
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        timer.cancel()


def role_source(mode: str, rate: float, seconds: float, out: Path) -> None:
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    from wam_common.imageio import Stamp, encode_image

    rclpy.init()
    node = rclpy.create_node("bench_source")
    pubs = {c: node.create_publisher(Image, _topic(c, 0), _qos(mode)) for c in CAMS}
    rng = np.random.default_rng(0)
    frames = {c: rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for c in CAMS}
    t_wait = time.monotonic() + 10.0  # discovery: every camera's first hop (or the sink) matched
    while time.monotonic() < t_wait and any(p.get_subscription_count() == 0 for p in pubs.values()):
        time.sleep(0.05)
    time.sleep(1.0)  # the rest of the chain (hop → hop → sink) matches meanwhile
    sent = 0
    stamps = []
    period = 1.0 / rate
    t_next = time.monotonic()
    end = t_next + seconds
    while time.monotonic() < end:
        now_ns = time.time_ns()
        stamps.append(now_ns)
        for c in CAMS:
            if mode.startswith("ours"):
                pubs[c].publish(encode_image(frames[c], "rgb8", Stamp.from_ns(now_ns), c))
            else:
                m = Image()
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
                m.header.frame_id = c
                m.height, m.width, m.encoding, m.step = H, W, "rgb8", W * 3
                m.data = frames[c].tobytes()
                pubs[c].publish(m)
        sent += 1
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    out.write_text(json.dumps({"sent_per_camera": sent, "stamps": stamps}))
    time.sleep(1.0)
    node.destroy_node()
    rclpy.try_shutdown()


def role_hop(mode: str, hop: int, seconds: float) -> None:
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    from wam_common.imageio import decode_image, encode_image

    rclpy.init()
    node = rclpy.create_node(f"bench_hop{hop}")
    for c in CAMS:
        pub = node.create_publisher(Image, _topic(c, hop), _qos(mode))
        if mode.startswith("ours"):
            def cb(raw, pub=pub):
                img = decode_image(raw)
                arr = img.array
                _ = int(arr[0, 0, 0])  # the node looks at the pixels (a view, no copy)
                pub.publish(encode_image(arr, img.encoding, img.stamp, img.frame_id))
            node.create_subscription(Image, _topic(c, hop - 1), cb, _qos(mode), raw=True)
        else:
            def cb(msg, pub=pub):
                arr = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
                _ = int(arr[0, 0, 0])
                out = Image()
                out.header = msg.header
                out.height, out.width, out.encoding, out.step = msg.height, msg.width, msg.encoding, msg.step
                out.data = arr.tobytes()
                pub.publish(out)
            node.create_subscription(Image, _topic(c, hop - 1), cb, _qos(mode))
    _spin(node, seconds)


def role_sink(mode: str, hops: int, seconds: float, out: Path) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    from wam_common.imageio import decode_image

    rclpy.init()
    node = rclpy.create_node("bench_sink")
    lat: dict[str, list[float]] = {c: [] for c in CAMS}
    seen: dict[str, set[int]] = {c: set() for c in CAMS}
    for c in CAMS:
        if mode.startswith("ours"):
            def cb(raw, c=c):
                now = time.time_ns()
                img = decode_image(raw)
                seen[c].add(img.stamp.ns)
                lat[c].append((now - img.stamp.ns) / 1e6)
        else:
            def cb(msg, c=c):
                now = time.time_ns()
                ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                _ = msg.data[0]
                seen[c].add(ns)
                lat[c].append((now - ns) / 1e6)
        node.create_subscription(Image, _topic(c, hops), cb, _qos(mode), raw=mode.startswith("ours"))
    _spin(node, seconds)
    out.write_text(json.dumps({"latency_ms": lat, "received": {c: len(s) for c, s in seen.items()},
                               "seen": {c: sorted(s) for c, s in seen.items()}}))


# ------------------------------------------------------------------------------------- driver
def run_case(mode: str, rate: float, hops: int, seconds: float) -> dict:
    import numpy as np

    from wam_common.launcher import DomainLease

    lease = DomainLease()
    tmp = Path(tempfile.mkdtemp(prefix="bench_transport_"))
    env = dict(os.environ, ROS_DOMAIN_ID=str(lease.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    if mode.startswith("ours"):
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config/dds/fastdds.xml")
        env["RMW_FASTRTPS_USE_QOS_FROM_XML"] = "0"
    me = [sys.executable, __file__, "--role"]
    listen = seconds + 12.0  # the source starts 1 s later, waits for discovery (≤ 10 s, ~1-2 s) and then sends
    procs = [subprocess.Popen(me + ["sink", "--mode", mode, "--hops", str(hops), "--seconds", str(listen),
                                    "--out", str(tmp / "sink.json")], env=env)]
    procs += [subprocess.Popen(me + ["hop", "--mode", mode, "--hop", str(h), "--seconds", str(listen)], env=env)
              for h in range(1, hops + 1)]
    time.sleep(1.0)
    procs.append(subprocess.Popen(me + ["source", "--mode", mode, "--rate", str(rate), "--seconds", str(seconds),
                                        "--out", str(tmp / "source.json")], env=env))
    t0 = time.monotonic()
    cpu0 = {p.pid: cpu_seconds(p.pid) for p in procs}
    cpu_last = dict(cpu0)
    while any(p.poll() is None for p in procs):
        for p in procs:
            if p.poll() is None:
                cpu_last[p.pid] = cpu_seconds(p.pid)
        time.sleep(0.2)
        if time.monotonic() - t0 > listen + 30:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
    wall = time.monotonic() - t0
    lease.release()
    src = json.loads((tmp / "source.json").read_text())
    sink = json.loads((tmp / "sink.json").read_text())
    sent = src["sent_per_camera"] * len(CAMS)
    all_lat = np.concatenate([np.asarray(v, float) for v in sink["latency_ms"].values()] or [np.zeros(0)])
    received = sum(sink["received"].values())
    # where the losses are: in the first second (the hop chain still matching) or in steady state
    t_first = src["stamps"][0] if src["stamps"] else 0
    lost = [t for c in CAMS for t in sorted(set(src["stamps"]) - set(sink["seen"][c]))]
    lost_start = sum(1 for t in lost if t < t_first + 1_000_000_000)
    steady_sent = sum(1 for t in src["stamps"] if t >= t_first + 1_000_000_000) * len(CAMS)
    cpu = sum(cpu_last[p] - cpu0[p] for p in cpu_last)
    return {
        "mode": mode, "rate_hz": rate, "hops": hops, "cameras": len(CAMS), "frame": f"{H}x{W} rgb8",
        "sent": sent, "received": received, "delivered": round(received / sent, 4) if sent else 0.0,
        "lost_first_second": lost_start,
        "delivered_after_first_second": round(1 - (len(lost) - lost_start) / steady_sent, 4) if steady_sent else 0.0,
        "latency_ms_mean": round(float(all_lat.mean()), 2) if all_lat.size else None,
        "latency_ms_p50": round(float(np.percentile(all_lat, 50)), 2) if all_lat.size else None,
        "latency_ms_p99": round(float(np.percentile(all_lat, 99)), 2) if all_lat.size else None,
        "cpu_percent_all_processes": round(100.0 * cpu / wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["source", "hop", "sink"])
    ap.add_argument("--mode", default="ours")
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--hop", type=int, default=1)
    ap.add_argument("--hops", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--rates", type=float, nargs="*", default=[30.0, 60.0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sensor-depths", type=int, nargs="*", default=[],
                    help="also run our path with best-effort keep-last N (the QoS depth decision)")
    a = ap.parse_args()
    if a.role == "source":
        return role_source(a.mode, a.rate, a.seconds, a.out)
    if a.role == "hop":
        return role_hop(a.mode, a.hop, a.seconds)
    if a.role == "sink":
        return role_sink(a.mode, a.hops[0] if isinstance(a.hops, list) else a.hops, a.seconds, a.out)
    cases = []
    for rate in a.rates:
        for hops in a.hops:
            modes = ["plain", "ours"] + [f"ours@d{d}" for d in a.sensor_depths]
            pair = {m: run_case(m, rate, hops, a.seconds) for m in modes}
            p_plain, p_ours = pair["plain"]["latency_ms_p99"], pair["ours"]["latency_ms_p99"]
            cases.append({**{m: pair[m] for m in pair}, "rate_hz": rate, "hops": hops,
                          "p99_ratio_plain_over_ours": round(p_plain / p_ours, 2) if p_plain and p_ours else None})
            print(json.dumps(cases[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"bench": "transport", "cores": os.cpu_count(), "seconds_per_case": a.seconds,
                      "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
