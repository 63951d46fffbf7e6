"""Node overhead bench: observation → command latency through the real node minus the bare backend.

Saves a real LeRobot architecture with random weights from ``wam_policy_node.zoo`` (``--policy
KIND:MODE``; default ACT at its default size: ResNet-18 + 512-wide transformer, 3 cameras; on a GPU
every kind at its published size, e.g. ``pi05:fast``) to a temp dir, then

1. bare: loads it with the ``lerobot`` backend in this process and times ``backend.infer(obs)``;
2. node: starts ``wam_policy_node`` (lockstep, ``sync`` strategy, one inference per step) as a
   real process on its own ROS_DOMAIN_ID; this process plays the sim (3 rgb8 cameras + both
   joint states per step, the joint states being the last command: a sim that tracks it) and times
   joint-state publish → command receipt (wall clock).

Overhead = node latency − bare inference (and, per step, node latency − the infer_ms the node
itself reports, which removes run-to-run model jitter). Prints JSON.
Targets: overhead ≤ 5 % of the bare forward on the GPU (issue 4); ≤ 1.0 ms p50 and ≤ 2 ms p99 with three
480x640 frames (issue #22 item 4; docs/results/node_overhead.md).
    .venv/bin/python bench/node_overhead.py [--policy act:eager] [--steps 20] [--size 240x320] [--device auto]
Before/after in one run (the base commit's checkout and this tree's node alternate) with the node's own
work broken down into spans:
    git worktree add /tmp/base <base-commit>    # or: git archive <base-commit> | tar -x -C /tmp/base
    .venv/bin/python bench/node_overhead.py --size 480x640 --compare /tmp/base --rounds 2 --profile
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

CAMS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)

from _proc import SELF_RESIZING, lerobot_mode  # noqa: E402  (bench/ is on sys.path: it holds this script)


def save_policy(kind: str, d: Path, device: str, gpu: bool, h: int, w: int, chunk: int, size: str = "") -> Path:
    """A real LeRobot architecture with random weights from the zoo: the published size on a GPU;
    on this CPU ACT at LeRobot's default size, the others tiny (``size`` overrides). The model takes the
    camera size (``h`` x ``w``; 0 x 0: the zoo's own size for ``size``, frames resized by the backend)."""
    from wam_policy_node.zoo import save_random_policy

    extra = {"dtype": "bfloat16"} if gpu and kind in ("pi0", "pi05") else {}
    kw = {"image_size": (h, w)} if kind not in SELF_RESIZING and h > 0 else {}
    if kind == "act":
        kw["chunk"] = chunk
    size = size or ("full" if gpu or kind == "act" else "tiny")
    return save_random_policy(kind, d / kind, size=size, device=device if gpu else "cpu", extra=extra, **kw)


def pct(a, q):
    return round(float(np.percentile(a, q)), 3) if len(a) else None


def bare_step(b, frames: dict, k: int) -> float:
    from wam_policy_node.backends import Observation

    obs = Observation(k, dict(frames), HOME.copy(), "x", step=k)
    t0 = time.perf_counter()
    b.infer(obs)
    return (time.perf_counter() - t0) * 1e3


def _group(name: str) -> str:
    """A span's row: per-topic spans grouped by kind of topic (the three cameras, the two arms)."""
    what, _, topic = name.partition(" ")
    if not topic:
        return name
    if any(c in topic for c in CAMS):
        return f"{what} camera"
    if "joint_states" in topic:
        return f"{what} joint_states"
    return name


def breakdown(profile: Path, marks: list[tuple[int, int, int]]) -> dict:
    """Per measured step (``marks``: the driver's frames-published, joint-states-published and
    command-received times, CLOCK_MONOTONIC ns), the node's spans between the frames' publish and the
    command's receipt: the mean and p50 per step of each kind of span (inclusive: a callback's row holds
    what it calls), and the critical path from the joint states' publish to the command's receipt."""
    from wam_common import topics

    spans = [tuple(json.loads(line)) for line in profile.read_text().splitlines() if line.strip()]
    tree = next((s[0].split(" ", 1)[1] for s in spans if s[0].startswith("tree ")), None)
    spans = sorted((s for s in spans if s[3] >= 0), key=lambda s: s[1])
    per: dict[str, list[float]] = {}
    path: dict[str, list[float]] = {k: [] for k in ("js_published_to_last_take_us", "last_take_to_command_published_us",
                                                     "command_published_to_received_us", "node_glue_us")}
    for t_img, t0, t_recv in marks:
        win = [s for s in spans if t_img <= s[1] <= t_recv]  # (the status JSON after the command may end later)
        tot: dict[str, float] = {}
        for name, a, b, _ in win:
            g = _group(name)
            tot[g] = tot.get(g, 0.0) + (b - a) / 1e3
        for g, v in tot.items():
            per.setdefault(g, []).append(v)
        cmd = next((s for s in win if s[0] == f"publish {topics.COMMAND}"), None)
        if cmd is None:
            continue
        takes = [s for s in win if s[0].startswith("take") and s[1] < cmd[1]]
        if not takes:
            continue
        last = takes[-1]
        path["js_published_to_last_take_us"].append((last[1] - t0) / 1e3)
        path["last_take_to_command_published_us"].append((cmd[2] - last[1]) / 1e3)
        path["command_published_to_received_us"].append((t_recv - cmd[2]) / 1e3)
        # the executor's own time (waits, wait-set rebuilds, task bookkeeping) from the step's first take to the
        # end of the callback that published the command: the interval minus the top-level spans inside it
        first = takes[0][1]
        end = max((b for _, a, b, dep in win if dep == 0 and a <= cmd[1] and b >= cmd[2]), default=cmd[2])
        top = sum((b - a) for _, a, b, dep in win if dep == 0 and a >= first and b <= end)
        path["node_glue_us"].append((end - first - top) / 1e3)
    n = len(marks)

    def stat(v):
        return {"mean": round(float(np.sum(v)) / n, 1), "p50": round(float(np.median(v)), 1), "steps": len(v)}

    return {"node_tree": tree, "spans_per_step_us": {g: stat(v) for g, v in sorted(per.items(), key=lambda kv: -np.sum(kv[1]))},
            "critical_path_us": {k: stat(v) for k, v in path.items() if v}}


def run(d: Path, device: str, h: int, w: int, steps: int, threads: int, mode: str = "eager",
        resize=None, node_root: Path | None = None, profile: Path | None = None, backend=None) -> dict:
    """Bare and node steps alternate (same frames, same load on this shared machine). ``node_root``: run the
    node from that source tree (another commit's checkout: before/after in one run); ``profile``: the node's
    spans (``bench/node_profile``) to that file and the per-step breakdown in the result; ``backend``: a
    loaded bare backend to reuse (one per bench run)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray, String

    from wam_common import aloha, qos, topics
    from wam_common.graph import Graph, NodeSpec
    from wam_common.imageio import Stamp, encode_image
    from wam_common.launcher import GraphRunner

    bcfg = {"path": str(d), "device": device, "warmup": 2, "torch_threads": threads, **lerobot_mode(mode)}
    obs = {"cameras": list(CAMS), "image_keys": list(CAMS)}
    if resize is not None:
        obs["resize"] = list(resize)
    params = {"lockstep": True, "backend": {"type": "lerobot", "lerobot": bcfg},
              "runtime": {"strategy": "sync", "execute_steps": 1}, "observation": obs,
              "sync": {"lockstep_wait_s": 600.0}}
    # the product's DDS profile (shared memory sized for 480x640 frames), in the node and in this driver
    graph = Graph("overhead", [NodeSpec("wam_policy_node", "wam_policy_node", params)],
                  dds_profile=ROOT / "config" / "dds" / "fastdds.xml")
    extra_env = {}
    paths = [str(node_root or ROOT)]
    if profile is not None:
        paths.insert(0, str(ROOT / "bench" / "node_profile"))  # its sitecustomize wraps the node in spans
        extra_env["WAM_NODE_PROFILE"] = str(profile)
    if os.environ.get("WAM_NODE_EXECUTOR"):
        paths.insert(0, str(ROOT / "bench" / "node_profile"))
    extra_env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and Path(p).resolve() != ROOT])
    runner = GraphRunner(graph, log_dir=Path(tempfile.mkdtemp(prefix="wam_overhead_")), extra_env=extra_env)
    os.environ.update(graph.env())
    os.environ["ROS_DOMAIN_ID"] = str(runner.domain_id)
    cwd = os.getcwd()
    os.chdir(runner.log_dir)  # `python -m` puts its working directory first on sys.path: not this tree's
    try:
        runner.start()
    finally:
        os.chdir(cwd)
    rclpy.init()
    n = rclpy.create_node("overhead_driver")
    ex = SingleThreadedExecutor()
    ex.add_node(n)
    # no spinning thread: it would compete for the GIL with the bare inference in this process
    got, status = [], []
    last_cmd = [HOME.copy()]  # the loop is closed: the next step's joint states are the last command (a sim that
    # tracks it), so the tracking watchdog does not hold a model that moves away from HOME

    def on_cmd(m):
        got.append(time.perf_counter())
        last_cmd[0] = np.array(m.data, dtype=np.float64)

    n.create_subscription(Float64MultiArray, topics.COMMAND, on_cmd, qos.COMMAND)
    n.create_subscription(String, topics.POLICY_STATUS, lambda m: status.append(json.loads(m.data)), 50)
    pub_cam = {c: n.create_publisher(Image, topics.perturbed(topics.camera_topic(c)), qos.sensor(True)) for c in CAMS}
    pub_js = {a: n.create_publisher(JointState, topics.perturbed(topics.joint_state_topic(a)), qos.sensor(True))
              for a in topics.ARMS}
    from wam_policy_node.backends import make_backend

    b = backend
    if b is None:
        with contextlib.redirect_stdout(sys.stderr):  # LeRobot prints while loading; stdout is the JSON
            b = make_backend("lerobot", dict(bcfg))
    bare_ms, marks = [], []
    try:
        end = time.monotonic() + 900  # the node loads (and compiles) the same model
        while time.monotonic() < end and not (n.count_publishers(topics.COMMAND)
                                              and all(p.get_subscription_count() for p in pub_js.values())
                                              and all(p.get_subscription_count() for p in pub_cam.values())):
            if runner.dead():
                raise RuntimeError("node died:\n" + runner.log("wam_policy_node")[-2000:])
            ex.spin_once(timeout_sec=0.2)
        rng = np.random.default_rng(0)
        frames = [{c: rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for c in CAMS} for _ in range(4)]
        lat = []
        t_ns = 1_000_000_000
        for k in range(steps + 3):
            st = Stamp.from_ns(t_ns)
            t_img = time.perf_counter_ns()
            for c in CAMS:
                pub_cam[c].publish(encode_image(frames[k % 4][c], "rgb8", st, topics.camera_frame(c)))
            n0 = len(got)
            t0 = time.perf_counter()  # CLOCK_MONOTONIC: the node's profile spans are on the same clock
            for i, a in enumerate(topics.ARMS):
                m = JointState()
                m.header.stamp.sec, m.header.stamp.nanosec = st.sec, st.nanosec
                m.name = list(aloha.JOINT_STATE_NAMES)
                m.position = aloha.joint_state_positions(last_cmd[0][7 * i:7 * i + 7])
                pub_js[a].publish(m)
            deadline = time.monotonic() + 120
            while len(got) <= n0:
                ex.spin_once(timeout_sec=0.05)
                if time.monotonic() > deadline:
                    raise RuntimeError("no command within 120 s:\n" + runner.log("wam_policy_node")[-2000:])
            if k >= 3:  # first steps: warm-up
                lat.append((got[n0] - t0) * 1e3)
                marks.append((t_img, int(t0 * 1e9), int(got[n0] * 1e9)))
            t_ns += 20_000_000
            ms = bare_step(b, frames[k % 4], k)
            if k >= 3:
                bare_ms.append(ms)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        st_ms = [s["infer_ms"] for s in status[3:] if s.get("inferred") and s.get("infer_ms")]
        per = [a - b for a, b in zip(lat, st_ms)]
        out = {"bare": {"device": str(b.device), "infer_ms": {"p50": pct(bare_ms, 50), "mean": round(float(
                    np.mean(bare_ms)), 3), "p99": pct(bare_ms, 99)}},
                "obs_to_cmd_ms": {"p50": pct(lat, 50), "mean": round(float(np.mean(lat)), 3), "p99": pct(lat, 99)},
                "node_reported_infer_ms": {"p50": pct(st_ms, 50), "mean": round(float(np.mean(st_ms)), 3)},
                "holds": sum(1 for s in status if s.get("hold")), "statuses": len(status),
                "per_step_ms": [round(x, 1) for x in lat], "per_step_infer_ms": [round(x, 1) for x in st_ms],
                "overhead_vs_node_infer_ms": {"p50": pct(per, 50), "mean": round(float(np.mean(per)), 3),
                                              "p99": pct(per, 99)},
                "overhead_per_step_ms": [round(x, 3) for x in per]}
        out["_backend"] = b
    finally:
        ex.shutdown(timeout_sec=1)
        n.destroy_node()
        rclpy.try_shutdown()
        runner.stop()
    if profile is not None:
        out["profile"] = breakdown(profile, marks)
    return out


def summarise(nd: dict, b: dict) -> dict:
    over = nd["obs_to_cmd_ms"]["p50"] - b["infer_ms"]["p50"]
    return {"bare": b, "node": nd, "overhead_ms_p50": round(over, 3),
            "overhead_pct_of_bare_p50": round(100 * over / b["infer_ms"]["p50"], 2),
            "overhead_pct_vs_node_infer_p50": round(100 * nd["overhead_vs_node_infer_ms"]["p50"]
                                                    / nd["node_reported_infer_ms"]["p50"], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=0, help="measured steps (0: 20 on CPU, 200 on GPU)")
    ap.add_argument("--size", default="", help="camera HxW (default: 480x640 on GPU, 240x320 on CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--policy", default="act:eager",
                    help="KIND[:MODE] from the zoo (act, diffusion, pi0, pi05, smolvla, ...); MODE eager | fast "
                         "(the π engine) | compile (torch.compile reduce-overhead)")
    ap.add_argument("--model-size", default="", choices=("", "tiny", "reduced", "full"),
                    help="the zoo size (default: published on a GPU; on a CPU ACT full, the others tiny)")
    ap.add_argument("--model-image", default="",
                    help="HxW the model takes (default: the camera size; 'zoo': the zoo's own size for the model "
                         "size, the backend resizes the frames inside its call)")
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads in both (same for bare and node; 2-thread OpenMP on a shared 2-core "
                         "machine stalls at barriers)")
    ap.add_argument("--compare", default="",
                    help="another source tree (e.g. the base commit's checkout): its node and this tree's run "
                         "alternately, --rounds times each, in this one run; the JSON has both and their ratio")
    ap.add_argument("--rounds", type=int, default=2, help="with --compare: node starts per tree")
    ap.add_argument("--profile", action="store_true",
                    help="time the node's own work in spans (bench/node_profile/sitecustomize.py) and print a "
                         "per-step breakdown (adds ~1 us per span)")
    a = ap.parse_args(argv)
    import torch

    gpu = a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available())
    size = a.size or ("480x640" if gpu else "240x320")
    h, w = (int(v) for v in size.lower().split("x"))
    mh, mw = (0, 0) if a.model_image == "zoo" else (int(v) for v in (a.model_image or size).lower().split("x"))
    steps = a.steps or (200 if gpu else 20)
    kind, _, mode = a.policy.partition(":")
    mode = mode or "eager"
    device = ("cuda" if gpu else "cpu") if a.device == "auto" else a.device
    trees = [("this", None)]
    if a.compare:
        base = Path(a.compare).resolve()
        if not (base / "wam_policy_node" / "node.py").exists():
            raise SystemExit(f"--compare {a.compare}: no wam_policy_node/node.py there")
        trees = [("base", base), ("this", None)] * max(1, a.rounds)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="wam_overhead_") as d:
        with contextlib.redirect_stdout(sys.stderr):
            path = save_policy(kind, Path(d), device, gpu, mh, mw, a.chunk, a.model_size)
        if gpu:
            torch.cuda.empty_cache()
        backend = None
        for i, (label, root) in enumerate(trees):
            prof = Path(d) / f"profile_{i}.jsonl" if a.profile else None
            nd = run(path, device, h, w, steps, a.threads, mode, [0, 0] if kind in SELF_RESIZING else None,
                     node_root=root, profile=prof, backend=backend)
            backend = nd.pop("_backend")
            b = nd.pop("bare")
            runs.setdefault(label, []).append(summarise(nd, b))
    out = {"bench": "node_overhead", "policy": f"{kind} ({mode}; LeRobot architecture from the zoo, random weights, "
                     f"{a.model_size or ('published' if gpu or kind == 'act' else 'tiny')} size"
                     f"{'' if mh else ', its own image size'})", "cameras": len(CAMS),
           "image": [h, w], "steps": steps, "torch_threads": a.threads, "host": platform.node(), "cpus": os.cpu_count(),
           "load_avg_1min": os.getloadavg()[0], "gpu": torch.cuda.get_device_name(0) if gpu else None}
    if not a.compare:
        out.update(runs["this"][0])
        out["target_5pct_met"] = out["overhead_pct_vs_node_infer_p50"] <= 5.0
    else:
        out["compare"] = {"base": str(Path(a.compare).resolve()), "rounds": a.rounds, "order": [t for t, _ in trees]}
        for label in ("base", "this"):
            ov = [x for r in runs[label] for x in r["node"]["overhead_per_step_ms"]]
            out[label] = {"overhead_vs_node_infer_ms": {"p50": pct(ov, 50), "mean": round(float(np.mean(ov)), 3),
                                                        "p99": pct(ov, 99), "steps": len(ov)},
                          "runs": runs[label]}
        out["overhead_p50_ratio_this_over_base"] = round(out["this"]["overhead_vs_node_infer_ms"]["p50"]
                                                         / out["base"]["overhead_vs_node_infer_ms"]["p50"], 3)
    out["load_avg_1min_end"] = os.getloadavg()[0]
    out["note"] = ("overhead_vs_node_infer = obs->command latency minus the inference time the node measured in the "
                   "same step (same process, same forward); bare-vs-node p50 compares two processes and is noisy on a "
                   "shared CPU. Target (issue #22 item 4): <= 1.0 ms p50, <= 2 ms p99 with three 480x640 frames.")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
