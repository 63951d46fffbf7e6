"""Batched serving: ``wam-policy serve``'s throughput and per-request latency for 1, 2, 4, 8 concurrent
clients, batching off vs on (issue 22).

One policy server (``wam_policy_node.server.PolicyServer``, in this process, what ``wam-policy serve``
runs) serves a zoo model (random weights, the real architecture: ``--policy KIND:MODE``, MODE ``fast`` |
``eager``); each client is its own process speaking openpi's protocol as openpi's
``WebsocketClientPolicy`` does (connect, read the msgpack-numpy metadata, then a binary request → a
binary reply; CHW uint8 images at the checkpoint's input size, float32 state, a prompt), in a closed
loop: the next request as soon as the reply is in. After ``--warmup`` requests each, all clients start
together (a barrier) and each sends ``--requests``; per request the client measures send → reply.

Per setting: ``throughput_rps`` (all requests / the time from the barrier to the last reply),
``latency_ms`` p50/p99/mean/max over every client's requests, ``batches`` (forward batch size → count,
from the server), and ratios against one client without batching (``x_throughput``, ``x_p99``).

Batching on = ``batch.max_size`` = the largest client count, ``batch.window_ms`` = ``--window-ms``; the
server warms (on a GPU: captures the CUDA graph of) every batch size at start-up.

H100 (π0.5, fast engine, full size, bf16)::

    python3 bench/serve.py --device cuda --policy pi05:fast --out $OUT/serve_batching_h100.json

CPU (tiny model)::

    nice -n 5 python3 bench/serve.py --device cpu --policy act:eager --size tiny --requests 20
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

PROMPT = "transfer the cube to the other arm"


def _pcts(ms: list[float]) -> dict:
    ms = sorted(ms)
    q99 = ms[min(len(ms) - 1, max(0, math.ceil(0.99 * len(ms)) - 1))]
    return {"p50": round(statistics.median(ms), 3), "p99": round(q99, 3), "mean": round(statistics.fmean(ms), 3),
            "max": round(ms[-1], 3), "n": len(ms)}


def client(port: int, idx: int, image_hw: dict, warmup: int, n: int, barrier, out) -> None:
    """One openpi client (its own process): ``warmup`` requests, the barrier, ``n`` timed requests."""
    from websockets.sync.client import connect

    from wam_policy_node.backends import msgpack_numpy

    try:
        rng = np.random.default_rng(1000 + idx)
        reqs = [msgpack_numpy.packb({
            "state": rng.uniform(-0.5, 0.5, 14).astype(np.float32), "prompt": PROMPT,
            "images": {cam: rng.integers(0, 255, (3, h, w), dtype=np.uint8) for cam, (h, w) in image_hw.items()}})
            for _ in range(4)]
        ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, proxy=None, legacy=True,
                     open_timeout=60)
        msgpack_numpy.unpackb(ws.recv(timeout=60))  # the metadata
        lat, batches = [], []
        for i in range(warmup + n):
            if i == warmup:
                barrier.wait(timeout=600)
            t0 = time.perf_counter()
            ws.send(reqs[i % len(reqs)])
            reply = ws.recv(timeout=600)
            dt = (time.perf_counter() - t0) * 1e3
            if isinstance(reply, str):
                raise RuntimeError(f"server error: {reply[-500:]}")
            if i >= warmup:
                lat.append(dt)
                batches.append(int(msgpack_numpy.unpackb(reply)["server_timing"].get("batch", 1)))
        ws.close()
        out.put((idx, {"lat": lat, "end": time.perf_counter(), "batches": batches}))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        with contextlib.suppress(Exception):
            barrier.abort()
        out.put((idx, {"error": f"{type(exc).__name__}: {exc}"}))


def run_setting(port: int, n_clients: int, image_hw: dict, args) -> dict:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n_clients + 1), ctx.Queue()
    procs = [ctx.Process(target=client, args=(port, i, image_hw, args.warmup, args.requests, barrier, out), daemon=True)
             for i in range(n_clients)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=900)
        t0 = time.perf_counter()
        res = dict(out.get(timeout=1800) for _ in procs)
    except Exception:  # noqa: BLE001 - a client failed before the barrier: its error is in the queue
        res = {}
        while not out.empty():
            i, r = out.get()
            res[i] = r
        raise RuntimeError(f"clients failed: {[r.get('error') for r in res.values()]}") from None
    finally:
        for p in procs:
            p.join(60)
    errors = [r["error"] for r in res.values() if "error" in r]
    if errors:
        raise RuntimeError(f"clients failed: {errors}")
    lat = [x for r in res.values() for x in r["lat"]]
    wall = max(r["end"] for r in res.values()) - t0
    seen = [b for r in res.values() for b in r["batches"]]
    return {"clients": n_clients, "requests": len(lat), "wall_s": round(wall, 3),
            "throughput_rps": round(len(lat) / wall, 3), "latency_ms": _pcts(lat),
            "mean_batch_seen": round(statistics.fmean(seen), 3)}


def build(kind: str, args, workdir: Path) -> Path:
    from wam_policy_node.zoo import save_random_policy

    extra = {"dtype": "bfloat16"} if kind in ("pi0", "pi05") and args.device.startswith("cuda") else {}
    with _tiny_ctx(kind, args.size):
        return save_random_policy(kind, workdir / kind, size=args.size, device=args.device, extra=extra)


def _tiny_ctx(kind: str, size: str):
    if size == "tiny" and kind in ("pi0", "pi05"):
        from wam_policy_node.zoo.parts import tiny_dims

        return tiny_dims()
    return contextlib.nullcontext()


def main() -> int:
    import torch

    from _proc import lerobot_mode
    from wam_policy_node.server import PolicyServer

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="pi05:fast" if cuda else "act:eager", metavar="KIND:MODE",
                    help="a zoo kind and the lerobot backend's mode (fast | eager)")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--size", default="", choices=("", "tiny", "reduced", "full"),
                    help="zoo size (default: full on CUDA, tiny on CPU)")
    ap.add_argument("--clients", default="1,2,4,8", help="concurrent client counts")
    ap.add_argument("--requests", type=int, default=0, help="timed requests per client (default: 100 CUDA, 20 CPU)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed requests per client first")
    ap.add_argument("--window-ms", type=float, default=2.0, help="batching on: batch.window_ms")
    ap.add_argument("--modes", default="off,on", help="batching settings to run: off, on")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    args.size = args.size or ("full" if args.device.startswith("cuda") else "tiny")
    args.requests = args.requests or (100 if args.device.startswith("cuda") else 20)
    kind, _, mode = args.policy.partition(":")
    mode = mode or ("fast" if kind in ("pi0", "pi05", "smolvla") else "eager")
    counts = [int(c) for c in args.clients.split(",") if c]

    res = {"bench": "serve", "policy": f"{kind}:{mode}", "size": args.size, "device": args.device,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
           "torch": torch.__version__, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
           "clients": counts, "requests_per_client": args.requests, "window_ms": args.window_ms,
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        path = build(kind, args, workdir)
        res["build_s"] = round(time.perf_counter() - t0, 1)
        cfg = {"path": str(path), "device": args.device, **lerobot_mode(mode)}
        for setting in [m for m in args.modes.split(",") if m]:
            batch = {"max_size": max(counts), "window_ms": args.window_ms} if setting == "on" else None
            t0 = time.perf_counter()
            with _tiny_ctx(kind, args.size):
                srv = PolicyServer("lerobot", cfg, port=0, name=f"{kind}_{args.size}", batch=batch).start()
            rows = {"load_s": round(time.perf_counter() - t0, 1),
                    "batching": srv.metadata["wam_policy"]["batching"], "runs": []}
            image_hw = {k.removeprefix("observation.images."): hw for k, hw in srv.image_sizes.items()}
            try:
                for n in counts:
                    before = dict(srv.batches)
                    r = run_setting(srv.port, n, image_hw, args)
                    r["batches"] = {b: c - before.get(b, 0) for b, c in sorted(srv.batches.items())
                                    if c - before.get(b, 0)}
                    rows["runs"].append(r)
                    print(json.dumps({"setting": setting, **r}), file=sys.stderr, flush=True)
            finally:
                srv.close()
                del srv
                gc.collect()
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            res["settings"][setting] = rows
    base = next((r for r in res["settings"].get("off", {}).get("runs", []) if r["clients"] == 1), None)
    if base is not None:
        for rows in res["settings"].values():
            for r in rows["runs"]:
                r["x_throughput"] = round(r["throughput_rps"] / base["throughput_rps"], 3)
                r["x_p50"] = round(r["latency_ms"]["p50"] / base["latency_ms"]["p50"], 3)
                r["x_p99"] = round(r["latency_ms"]["p99"] / base["latency_ms"]["p99"], 3)
    res["loadavg_end"] = os.getloadavg()[0]
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
