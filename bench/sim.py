"""sim_bridge speed: physics steps/s, render ms per camera per resolution, real-time factor with 3 cameras.

Prints one JSON object:

- ``physics`` (MuJoCo) / ``physics_sapien`` (SAPIEN 3 PhysX CPU, if installed): per task, control
  steps/s (one step = DT 0.02 s = 10 MuJoCo sub-steps) holding the start pose and replaying the
  scripted expert, and the physics-only real-time factor.
- ``render_ms`` (``render.quality: gym_aloha``) / ``render_ms_fast`` (``fast``): per resolution and
  camera, median / p90 ms of one ``Renderer.update_scene`` +
  ``render`` (EGL; ``gl_renderer`` says which GL device drew it: Mesa llvmpipe on this CPU,
  the NVIDIA driver on the GPU device).
- ``core_rtf``: the bridge's per-step work without ROS (step + 3 cameras rendered + CDR-encoded)
  per resolution and ``camera_every``, as sim seconds per wall second.
- ``bridge_rtf``: the real ``sim_bridge`` node process in lockstep, 3 cameras every step, answered
  by a responder node in this process replaying the scripted expert: sim seconds per wall second
  between the episode's start and end events (includes DDS transport of every frame).

    MUJOCO_GL=egl .venv/bin/python bench/sim.py [--quick] [--no-bridge]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import numpy as np  # noqa: E402

import sim_bridge  # noqa: E402,F401  (sets MUJOCO_GL before mujoco loads)
from sim_bridge.env import SimEnv  # noqa: E402
from sim_bridge.experts import make_expert  # noqa: E402
from sim_bridge.tasks import TASKS  # noqa: E402
from wam_common import topics  # noqa: E402
from wam_common.imageio import Stamp, encode_image  # noqa: E402

RESOLUTIONS = ((120, 160), (240, 320), (480, 640))


def gl_renderer(env: SimEnv) -> str:
    try:
        from OpenGL import GL

        r = env.sim.renderer(64, 64)
        r._gl_context.make_current()
        return f"{GL.glGetString(GL.GL_VENDOR).decode()} / {GL.glGetString(GL.GL_RENDERER).decode()}"
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({type(exc).__name__})"


def bench_physics(task: str, steps: int, backend: str = "mujoco") -> dict:
    env = SimEnv(task, backend=backend, render=False)
    env.reset(0)
    hold = env.qpos14()
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(hold)
    t_hold = time.perf_counter() - t0
    ex = make_expert(task)
    env.reset(0)
    t0 = time.perf_counter()
    ex.reset(env.privileged(0, 0, 0, 0))
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(steps):
        env.step(ex.actions(k, 1)[0])
    t_exp = time.perf_counter() - t0
    env.close()
    return {"steps_per_s_hold": round(steps / t_hold, 1), "steps_per_s_expert": round(steps / t_exp, 1),
            "substeps_per_step": env.sim.n_sub if env.sim else None,
            "physics_rtf": round(steps * topics.DT / t_exp, 2), "expert_plan_ms": round(t_plan * 1e3, 1)}


def bench_render(n: int, quality: str = "gym_aloha") -> tuple[dict, str]:
    env = SimEnv("transfer_cube", quality=quality)
    env.reset(0)
    out = {}
    for h, w in RESOLUTIONS:
        row = {}
        for cam in topics.CAMERAS:
            env.render(cam, h, w)  # warm-up (context, textures)
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                env.render(cam, h, w)
                ts.append((time.perf_counter() - t0) * 1e3)
            row[cam] = {"median": round(float(np.median(ts)), 2), "p90": round(float(np.percentile(ts, 90)), 2)}
        out[f"{h}x{w}"] = row
    gl = gl_renderer(env)
    env.close()
    return out, gl


def bench_core(steps: int, quality: str = "gym_aloha", resolutions=RESOLUTIONS) -> dict:
    env = SimEnv("transfer_cube", quality=quality)
    ex = make_expert("transfer_cube")
    out = {}
    for h, w in resolutions:
        for every in (1, 2, 5):
            env.reset(0)
            ex.reset(env.privileged(0, 0, 0, 0))
            t0 = time.perf_counter()
            for k in range(steps):
                if k % every == 0:
                    for cam in topics.CAMERAS:
                        encode_image(env.render(cam, h, w), "rgb8", Stamp.from_ns(k), topics.camera_frame(cam))
                env.step(ex.actions(k, 1)[0])
            wall = time.perf_counter() - t0
            out[f"{h}x{w}/every{every}"] = round(steps * topics.DT / wall, 3)
    env.close()
    return out


def bench_bridge(steps: int, h: int, w: int, every: int) -> dict:
    """The node as a process; a responder here answers each step with the expert's command."""
    import rclpy
    from rclpy.context import Context

    sys.path.insert(0, str(ROOT / "tests"))
    from rosutil import Probe
    from sim_driver import ExpertDriver, sim_graph
    from wam_common.launcher import DomainLease, GraphRunner

    lease = DomainLease()
    # the product's DDS profile (shared memory sized for 480x640 frames), in the bridge and here
    graph = sim_graph(max_steps=steps, end_on_success=False, render={"width": w, "height": h, "camera_every": every})
    graph.dds_profile = ROOT / "config" / "dds" / "fastdds.xml"
    os.environ.update(graph.env())
    ctx = Context()
    rclpy.init(context=ctx, domain_id=lease.domain_id)
    probe = Probe(ctx, "bench_sim_responder")
    drv = ExpertDriver(probe, "transfer_cube")
    sim = GraphRunner(graph, domain_id=lease.domain_id).start()
    recv = {}
    try:
        t_start = None
        end = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with drv.cond:
                kinds = [e["event"] for e in drv.events]
            if t_start is None and "start" in kinds:
                t_start = time.monotonic()
            if "end" in kinds:
                end = time.monotonic()
                break
            time.sleep(0.002)
        ev = [e for e in drv.events if e["event"] == "end"]
        if not ev or t_start is None:
            return {"error": "no episode end", "log": sim.log("sim_bridge")[-500:]}
        e = ev[0]
        wall = end - t_start
        recv = {cam: len({f[0] for f in drv.images[cam]}) for cam in drv.images}
        return {"resolution": f"{h}x{w}", "camera_every": every, "steps": e["steps"],
                "rtf": round(e["steps"] * topics.DT / wall, 3), "wall_s": round(wall, 2),
                "step_latency_ms": e["latency_ms"], "frames_received": recv}
    finally:
        sim.stop()
        probe.close()
        ctx.try_shutdown()
        lease.release()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps / renders")
    ap.add_argument("--no-bridge", action="store_true", help="skip the node-process measurement")
    ap.add_argument("--bridge-only", action="store_true", help="only the node-process measurement")
    ap.add_argument("--bridge-sizes", default="240x320",
                    help="camera resolutions (HxW, comma-separated) of the node-process measurement")
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in r.lower().split("x")) for r in args.bridge_sizes.split(",") if r]
    steps = 100 if args.quick else 400
    n_render = 5 if args.quick else 10
    out = {"bench": "sim", "host": os.uname().nodename, "cpus": os.cpu_count(), "mujoco_gl": os.environ.get("MUJOCO_GL"),
           "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    if not args.bridge_only:
        out["physics"] = {t: bench_physics(t, steps) for t in TASKS}
        try:
            import sapien  # noqa: F401

            out["physics_sapien"] = {t: bench_physics(t, steps, "sapien") for t in TASKS}
        except ImportError:
            out["physics_sapien"] = "SAPIEN not installed (requirements-sapien.txt)"
        out["render_ms"], out["gl_renderer"] = bench_render(n_render)
        out["render_ms_fast"], _ = bench_render(n_render, "fast")
        out["core_rtf"] = bench_core(40 if args.quick else 100)
        out["core_rtf_fast"] = bench_core(40 if args.quick else 100, "fast", RESOLUTIONS[1:2])
    if args.bridge_only or not args.no_bridge:
        out["bridge_rtf"] = [bench_bridge(100 if args.quick else 200, h, w, every) for h, w in sizes for every in (1, 2)]
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
