"""perturbation_node speed: ms per 480×640 frame per op, and the node's sustained throughput.

Prints one JSON object:

- ``ops``: for every image op at ``--level`` (default 3): ms per frame applying a per-episode
  field (``apply``: what every frame costs with ``resample: episode``) and drawing a new field
  each frame (``frame``: ``resample: frame``), mean / p50 / p99 over ``--reps`` frames;
  ``torch`` (when ``--device`` is given and torch sees it): the same for the ops with a torch
  path (:mod:`perturbation_node.torch_ops`).
- ``node``: the node as its own process (realtime QoS: best effort, newest frame wins), fed by
  a source process publishing 3 cameras × 480×640 rgb8 at ``--rate`` Hz (header stamp = wall
  clock at publish); the sink, in this process, subscribes to both the raw and the perturbed
  topics. ``added_ms`` = (perturbed receipt − stamp) − (raw receipt − stamp) per frame: what the
  extra hop through the node costs; ``dropped`` = frames the source published that never came
  out of the node (``raw_missed``: never reached the sink directly either, i.e. lost before the
  node). One profile per row (``--profiles``; ``OP@L`` makes a one-op profile on every camera).

    .venv/bin/python bench/perturb.py [--seconds 6] [--rate 30] [--profiles clean brightness@3 ...]
        [--skip-node] [--skip-ops] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H, W = 480, 640
CV_THREADS = 1  # the node's cv_threads (--cv-threads)
WARMUP = 10  # frames per camera left out of the node figures (the first frame draws per-episode fields)
DEFAULT_PROFILES = ["clean", "brightness@3", "color_temperature@3", "shadow@3", "gaussian_noise@3", "shot_noise@3",
                    "salt_pepper@3", "gaussian_blur@3", "motion_blur@3", "jpeg@3", "fog@3", "viewpoint@3",
                    "light@3", "noise@3"]


def _frame(k: int = 0) -> np.ndarray:
    import cv2

    r = np.random.default_rng(k)
    small = r.random((6, 8, 3)).astype(np.float32)
    img = (cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 200 + 20).astype(np.uint8)
    cv2.circle(img, (300, 200), 60, (200, 30, 30), -1)
    return img


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms, float)
    if a.size == 0:
        return {"n": 0}
    return {"mean": round(float(a.mean()), 3), "p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3), "n": int(a.size)}


# ------------------------------------------------------------------------------------- ops
def bench_ops(level: int, reps: int) -> dict:
    from perturbation_node import ops

    img = _frame()
    mask = np.zeros((H, W), np.uint8)
    mask[: H // 2] = 255
    out = {}
    for name, spec in sorted(ops.OPS.items()):
        if spec.target != "image":
            continue
        fn = ops.prepare(name, level, 1, img.shape)
        fn(img, mask)
        t_apply = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(img, mask)
            t_apply.append((time.perf_counter() - t0) * 1e3)
        t_frame = []
        for k in range(max(3, reps // 4)):
            t0 = time.perf_counter()
            rng = ops.make_rng(1, 0, "cam_high", 0, k)
            if spec.frame_rng:
                fn(img, mask, rng)
            else:
                spec.prepare(spec.param(level), rng, img.shape)(img, mask)
            t_frame.append((time.perf_counter() - t0) * 1e3)
        out[name] = {"family": spec.family, "apply_ms": _stats(t_apply), "frame_ms": _stats(t_frame)}
    return out


def bench_torch(level: int, reps: int, device: str) -> dict:
    try:
        import torch

        from perturbation_node import torch_ops
    except ImportError as exc:
        return {"error": f"torch path unavailable: {exc}"}
    if device.startswith("cuda") and not torch.cuda.is_available():
        return {"error": "CUDA not available"}
    img = torch.from_numpy(_frame()).to(device)
    out = {"device": device}
    for name in sorted(torch_ops.TORCH_OPS):
        fn = torch_ops.prepare(name, level, 1, tuple(img.shape), device)
        fn(img)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(img)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            ts.append((time.perf_counter() - t0) * 1e3)
        out[name] = _stats(ts)
    return out


# ------------------------------------------------------------------------------------- node
def role_source(rate: float, seconds: float, out: Path, stagger: bool = False) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    from wam_common import qos, topics
    from wam_common.imageio import Stamp, encode_image

    rclpy.init()
    node = rclpy.create_node("bench_source")
    pubs = {c: node.create_publisher(Image, topics.camera_topic(c), qos.SENSOR) for c in topics.CAMERAS}
    frames = [_frame(k) for k in range(4)]
    time.sleep(1.5)  # discovery
    period = 1.0 / rate
    sent: dict[str, list[int]] = {c: [] for c in topics.CAMERAS}
    t_next = time.monotonic()
    end = t_next + seconds
    k = 0
    while time.monotonic() < end:
        for i, (c, pub) in enumerate(pubs.items()):
            if stagger and i:  # free-running cameras: evenly spread over the period, not one burst
                time.sleep(max(0.0, t_next + i * period / len(pubs) - time.monotonic()))
            ns = time.time_ns()
            pub.publish(encode_image(frames[k % 4], "rgb8", Stamp.from_ns(ns), topics.camera_frame(c)))
            sent[c].append(ns)
        k += 1
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    out.write_text(json.dumps(sent))
    node.destroy_node()
    rclpy.try_shutdown()


class Sink:
    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from wam_common import qos, topics

        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("bench_sink", context=self.ctx)
        self.raw: dict[tuple[str, int], int] = {}
        self.pert: dict[tuple[str, int], int] = {}
        self.lock = threading.Lock()
        from wam_common.imageio import decode_image

        def cb(store, cam):
            def f(raw):
                t = time.time_ns()
                st = decode_image(raw).stamp.ns
                with self.lock:
                    store.setdefault((cam, st), t)
            return f

        for c in topics.CAMERAS:
            self.node.create_subscription(Image, topics.camera_topic(c), cb(self.raw, c), qos.SENSOR, raw=True)
            self.node.create_subscription(Image, topics.perturbed(topics.camera_topic(c)), cb(self.pert, c),
                                          qos.SENSOR, raw=True)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.ex.spin()
        except Exception:  # noqa: BLE001 - context shut down
            pass

    def reset(self):
        with self.lock:
            self.raw.clear()
            self.pert.clear()

    def close(self):
        self.ex.shutdown(timeout_sec=1)
        self.node.destroy_node()
        self.ctx.try_shutdown()


def _profile_ref(ref: str, tmp: Path) -> str:
    from perturbation_node import ops
    from perturbation_node.profiles import available

    name, _, lv = ref.partition("@")
    if name in available() or name not in ops.OPS:
        return ref
    p = tmp / f"bench_{name}_{lv or 3}.yaml"
    resample = "frame" if ops.OPS[name].frame_rng else "episode"
    p.write_text(json.dumps({"name": f"bench_{name}", "seed": 1, "level": int(lv or 3),
                             "cameras": {"all": [{"op": name, "resample": resample}]}}))
    return str(p)


def bench_node(profiles: list[str], rate: float, seconds: float, domain_id: int, device: str = "",
               stagger: bool = False) -> dict:
    from wam_common.config import config_dir
    from wam_common.graph import Graph, NodeSpec
    from wam_common.launcher import GraphRunner

    tmp = Path(tempfile.mkdtemp(prefix="bench_perturb_"))
    results = {}
    for ref in profiles:
        graph = Graph(name="bench_perturb", nodes=[NodeSpec("perturbation_node", "perturbation_node", {
            "profile": _profile_ref(ref, tmp), "lockstep": False, "diagnostics_period_s": 0.0, "device": device,
            "cv_threads": CV_THREADS})],
            dds_profile=config_dir() / "dds" / "fastdds.xml")
        runner = GraphRunner(graph, domain_id=domain_id, log_dir=tmp / "logs", extra_env={"PYTHONPATH": str(ROOT)})
        env = runner.env()
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        runner.start()
        sink = Sink()
        try:
            time.sleep(2.0)
            sent_file = tmp / f"sent_{len(results)}.json"
            src = subprocess.Popen([sys.executable, __file__, "--role", "source", "--rate", str(rate),
                                    "--seconds", str(seconds), "--out", str(sent_file)]
                                   + (["--stagger"] if stagger else []), env=env)
            cpu0 = _cpu(runner)
            src.wait(timeout=seconds + 60)
            time.sleep(0.5)
            cpu1 = _cpu(runner)
            sent = json.loads(sent_file.read_text())
            with sink.lock:
                raw, pert = dict(sink.raw), dict(sink.pert)
            n_sent = sum(len(v) - WARMUP for v in sent.values())
            keys = [(c, s) for c, v in sent.items() for s in v[WARMUP:]]  # first frames draw the fields
            added = [(pert[k] - raw[k]) / 1e6 for k in keys if k in pert and k in raw]
            e2e = [(pert[k] - k[1]) / 1e6 for k in keys if k in pert]
            results[ref] = {
                "sent": n_sent,
                "warmup_frames_excluded_per_camera": WARMUP,
                "dropped": sum(1 for k in keys if k not in pert),
                "raw_missed": sum(1 for k in keys if k not in raw),
                "added_ms": _stats(added),
                # per camera (published in this order each period): does the order within a burst matter
                "added_ms_by_camera": {c: _stats([(pert[k] - raw[k]) / 1e6 for k in keys
                                                  if k[0] == c and k in pert and k in raw]) for c in sent},
                "end_to_end_ms": _stats(e2e),
                "node_cpu_per_frame_ms": round((cpu1 - cpu0) * 1e3 / max(1, n_sent), 3),
                "node_alive": not runner.dead(),
            }
        finally:
            sink.close()
            runner.stop()
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return results


def _cpu(runner) -> float:
    tot = 0.0
    for p in runner.procs.values():
        try:
            f = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            tot += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return tot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="main", choices=["main", "source"])
    ap.add_argument("--out", default="")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--profiles", nargs="*", default=DEFAULT_PROFILES)
    ap.add_argument("--skip-node", action="store_true")
    ap.add_argument("--skip-ops", action="store_true")
    ap.add_argument("--device", default="", help="also time the torch path on this device (cuda, cpu)")
    ap.add_argument("--node-device", default="", help="run the node's ops on this torch device (its 'device')")
    ap.add_argument("--stagger", action="store_true",
                    help="publish the cameras evenly spread over each period (free-running, unsynchronised "
                         "cameras) instead of one burst of three")
    ap.add_argument("--cv-threads", type=int, default=1, help="the node's cv_threads parameter (0 = OpenCV default)")
    a = ap.parse_args()
    global CV_THREADS
    CV_THREADS = a.cv_threads
    if a.role == "source":
        role_source(a.rate, a.seconds, Path(a.out), a.stagger)
        return 0
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    res: dict = {"frame": [H, W, 3], "level": a.level, "cpu_count": os.cpu_count(),
                 "loadavg": [round(x, 2) for x in os.getloadavg()]}
    if not a.skip_ops:
        res["ops"] = bench_ops(a.level, a.reps)
    if a.device:
        res["torch"] = bench_torch(a.level, a.reps, a.device)
    if not a.skip_node:
        from wam_common.launcher import DomainLease

        lease = DomainLease()
        os.environ["ROS_DOMAIN_ID"] = str(lease.domain_id)
        try:
            res["node"] = {"rate_hz": a.rate, "cameras": 3, "seconds": a.seconds, "staggered": a.stagger,
                           "cv_threads": a.cv_threads,
                           "device": a.node_device or "cpu (numpy/OpenCV)",
                           "profiles": bench_node(a.profiles, a.rate, a.seconds, lease.domain_id, a.node_device,
                                                  a.stagger)}
        finally:
            lease.release()
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
