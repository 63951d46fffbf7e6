"""Control-loop bench: does the command stream stay at 50 Hz while a slow model infers?

For synthetic backends of 50/200/400/1000 ms latency and each strategy (sync, temporal_ensemble,
rtc), the real runtime (``wam_policy_node.controller.PolicyController`` with its inference
thread) is ticked by a 50 Hz wall-clock loop for ``--seconds``; every tick's command is
"published" (timestamped) and fed back as the next observation (ideal position tracking).
Prints one JSON object: per configuration the p50/p99 command-period error (ms), stalls (gaps
> 1.5 dt), starved ticks (a hold because no action covered "now"), the max joint jump at
chunk boundaries vs. the largest jump inside chunks (rad), chunks and infer_ms.

Targets (issue 4): rtc and temporal_ensemble — zero stalls and p99 period error < 1 ms at
400 ms; sync shows the stalls.
    .venv/bin/python bench/control_loop.py [--seconds 6] [--latencies 50,200,400,1000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wam_common.topics import DT  # noqa: E402
from wam_policy_node.backends import Observation, make_backend  # noqa: E402
from wam_policy_node.controller import PolicyController  # noqa: E402
from wam_policy_node.runtime import STRATEGIES, ChunkRuntime  # noqa: E402
from wam_policy_node.safety import SafetyFilter  # noqa: E402

HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


def sleep_until(t_ns: int) -> None:
    while True:
        left = (t_ns - time.monotonic_ns()) / 1e9
        if left <= 0:
            return
        time.sleep(left - 0.0015 if left > 0.002 else 0)  # coarse sleep, then spin the last ~1.5 ms


def run(latency_ms: float, strategy: str, seconds: float, horizon: int, replan: int, chunk_noise: float,
        rt: bool = False) -> dict:
    if horizon <= 0:  # auto: a chunk must outlast the inference that replaces it
        horizon = max(50, 2 * int(np.ceil(latency_ms / 1e3 / DT)) + 10)
    backend = make_backend("synthetic", {"latency_ms": latency_ms, "horizon": horizon, "chunk_noise": chunk_noise,
                                         "needs_images": False, "amplitude": 0.2, "period_s": 3.0})
    runtime = ChunkRuntime(strategy, DT, replan_steps=replan)

    def worker_init():  # --rt: the inference thread (sleep-bound here, as a GPU/remote backend) at FIFO 5
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))

    ctl = PolicyController(backend, runtime, SafetyFilter({"stale_obs_s": 2.0, "inference_timeout_s": 5.0}),
                           clock_ns=time.monotonic_ns, realtime=True, worker_init=worker_init if rt else None)
    dt_ns = int(DT * 1e9)
    n = int(seconds / DT)
    pub_ns, cmds, chunk_ids, holds, infer, tick_ms = [], [], [], [], [], []
    state = HOME.copy()
    if rt:  # the loop thread (the inference thread set itself in worker_init)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    next_t = time.monotonic_ns() + dt_ns
    for _ in range(n):
        sleep_until(next_t)
        now = time.monotonic_ns()
        obs = Observation(stamp_ns=now, images={}, state=state.copy())
        cmd, st = ctl.tick(now, obs)
        pub_ns.append(time.monotonic_ns())  # the command is out
        tick_ms.append((pub_ns[-1] - now) / 1e6)
        if cmd is not None:
            state = cmd
        cmds.append(state.copy())
        chunk_ids.append(st.get("chunk_id"))
        holds.append(st.get("hold"))
        if st.get("inferred") and st.get("infer_ms"):
            infer.append(st["infer_ms"])
        # a timer keeps its phase: the next tick is due one period later, or now if we are late
        next_t = max(next_t + dt_ns, time.monotonic_ns()) if strategy == "sync" else next_t + dt_ns
    if rt:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    ctl.close()
    periods = np.diff(np.array(pub_ns)) / 1e6
    err = np.abs(periods - DT * 1e3)
    cmds = np.array(cmds)
    jumps = np.abs(np.diff(cmds, axis=0)).max(axis=1)
    ids = np.array([-1 if c is None else c for c in chunk_ids])
    boundary = (ids[1:] != ids[:-1]) & (ids[1:] >= 0) & (ids[:-1] >= 0)
    d = int(np.ceil(latency_ms / 1e3 / DT))
    first = int(np.argmax(ids >= 0)) if np.any(ids >= 0) else d + 1  # ticks before the first chunk: start-up
    steady = np.arange(len(jumps)) >= first + 10  # after the first chunk arrived and was caught up with
    return {
        "latency_ms": latency_ms, "strategy": strategy, "ticks": n, "horizon": horizon,
        "period_err_ms": {"p50": round(float(np.percentile(err, 50)), 4), "p99": round(float(np.percentile(err, 99)), 4),
                          "max": round(float(err.max()), 3)},
        "stalls": int(np.sum(periods > 1.5 * DT * 1e3)),
        "longest_gap_ms": round(float(periods.max()), 2),
        "starved_ticks": int(sum(1 for i, h in enumerate(holds) if h and i > first)),
        "chunks": int(len(set(ids[ids >= 0]))),
        "max_jump_at_boundary_rad": round(float(jumps[boundary & steady].max()), 4) if np.any(boundary & steady) else None,
        "max_jump_inside_chunk_rad": round(float(jumps[~boundary & steady].max()), 4) if np.any(~boundary & steady) else None,
        "infer_ms_p50": round(float(np.median(infer)), 1) if infer else None,
        # the controller's own time per tick (excludes the OS scheduling that dominates period error)
        "tick_ms": {"p50": round(float(np.percentile(tick_ms, 50)), 4), "p99": round(float(np.percentile(tick_ms, 99)), 4)}
        if strategy != "sync" else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--latencies", default="50,200,400,1000")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--horizon", type=int, default=0, help="chunk length (0: max(50, 2 x latency steps + 10))")
    ap.add_argument("--replan", type=int, default=10, help="rtc replan_steps")
    ap.add_argument("--chunk-noise", type=float, default=0.01, help="per-chunk offset (rad) to make boundaries visible")
    ap.add_argument("--rt", action="store_true",
                    help="run the 50 Hz loop thread under SCHED_FIFO (as a robot's control loop would; needs "
                         "CAP_SYS_NICE) and the inference thread under FIFO 5 (it only sleeps here, like a GPU or "
                         "remote backend; without it a preempted GIL holder delays the loop)")
    a = ap.parse_args(argv)
    rt = None
    if a.rt:
        try:  # probe once; run() raises the loop thread only, after the inference thread exists
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            rt = "SCHED_FIFO 10"
        except (PermissionError, AttributeError, OSError) as exc:
            rt = f"unavailable ({exc})"
    load = os.getloadavg()[0]
    results = [run(float(lat), s, a.seconds, a.horizon, a.replan, a.chunk_noise, rt == "SCHED_FIFO 10")
               for lat in a.latencies.split(",") for s in a.strategies.split(",")]
    out = {"bench": "control_loop", "dt_ms": DT * 1e3, "seconds_each": a.seconds,
           "host": platform.node(), "cpus": os.cpu_count(), "loop_priority": rt or "normal",
           "load_avg_1min_before": load, "load_avg_1min_after": os.getloadavg()[0],
           "results": results}
    at400 = [r for r in results if r["latency_ms"] == 400 and r["strategy"] in ("rtc", "temporal_ensemble")]
    out["target_400ms_met"] = bool(at400) and all(r["stalls"] == 0 and r["period_err_ms"]["p99"] < 1.0 for r in at400)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
