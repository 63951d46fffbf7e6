"""GPU latency of real architectures through the policy node's backend path (issue 8), JSON.

For each policy kind (π0.5, π0, SmolVLA, ACT, a world action model) a checkpoint with random weights
is written by :mod:`wam_policy_node.zoo` (LeRobot's own classes from a config, published sizes,
processors and local tokenizers saved beside it), then loaded the way the node loads it
(``LeRobotBackend``: ``from_pretrained`` or the fast π/SmolVLA engine, ``make_pre_post_processors``), and
timed two ways in the same process, on the same inputs:

* **bare**: the model call alone on an already pre-processed batch (``backend.predict``) —
  LeRobot's ``predict_action_chunk`` (bf16 autocast) or the fast engine (whose batch from the backend
  carries the camera frames as uint8 on the host: the call uploads them; ``bare_device_images_ms``
  times it on float images already on the device, as LeRobot's pre-processor would hand them over);
* **obs→action**: what the node does per inference in lockstep, minus DDS: camera frames
  (480×640 rgb8, 3 cameras) resized with pad to the model's input (``ObservationMap``), the
  ``PolicyController`` step (pre-processor, the model, post-processor, chunk runtime, safety
  filter) until the first joint command exists.

ratio = p50(obs→action) / p50(bare); target ≤ 1.05 for the π0-class model. Modes per kind:
``fast`` (π, SmolVLA: static KV cache + CUDA graph + torch.compile), ``eager`` (LeRobot, bf16 autocast),
``compile`` (LeRobot under ``torch.compile(mode="reduce-overhead")``: Inductor + CUDA graphs).
Results are written after every job, so a run cut short keeps what it measured. Streaming WAMs
(LingBot-VA, fed every observation) are timed on an episode's first chunk: every timed call starts
from ``reset``.

Device::  python bench/gpu_latency.py --out $OUT/gpu_latency.json --budget-s 420
CPU smoke (tiny sizes)::  python bench/gpu_latency.py --tiny --device cpu --iters 3 --kinds act,pi05
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _proc import SELF_RESIZING, lerobot_mode  # noqa: E402

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
WAMS = ("fastwam", "lingbot_va")  # sized by --wam-size / --wam-layers
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
# (kind, mode) in priority order: a run out of budget drops the tail
DEFAULT_JOBS = ("pi05:fast", "act:eager", "smolvla:eager", "smolvla:fast", "fastwam:eager", "pi0:fast",
                "act:compile", "smolvla:compile")


def _pcts(ms):
    ms = sorted(ms)
    q99 = ms[min(len(ms) - 1, max(0, math.ceil(0.99 * len(ms)) - 1))]
    return {"p50": round(statistics.median(ms), 3), "p99": round(q99, 3), "min": round(ms[0], 3),
            "mean": round(statistics.fmean(ms), 3), "n": len(ms)}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _gib(x):
    return round(x / 2**30, 3)


def _tiny_ctx(kind, tiny):
    if tiny and kind in ("pi0", "pi05"):
        from wam_policy_node.zoo.parts import tiny_dims

        return tiny_dims()
    return contextlib.nullcontext()


def build(kind, args, dev, workdir, size) -> tuple[Path, dict]:
    from wam_policy_node.zoo import save_random_policy

    t0 = time.perf_counter()
    extra = {}
    if kind in WAMS and args.wam_layers:
        extra["layers"] = args.wam_layers
    if kind in ("pi0", "pi05") and dev.type == "cuda":
        extra["dtype"] = "bfloat16"  # LeRobot's bf16 (vision tower kept fp32): an 8.7 GB checkpoint, not 14
    path = save_random_policy(kind, workdir / kind, size=size, device=str(dev), extra=extra)
    _sync(dev)
    out = {"build_save_s": round(time.perf_counter() - t0, 2), "size": size, "extra": extra,
           "checkpoint_gib": _gib(sum(f.stat().st_size for f in path.glob("*.safetensors")))}
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return path, out


def run_job(kind, mode, path, args, dev) -> dict:
    from wam_policy_node.backends import Observation
    from wam_policy_node.backends.lerobot import LeRobotBackend
    from wam_policy_node.controller import PolicyController
    from wam_policy_node.observation import ObservationMap
    from wam_policy_node.runtime import ChunkRuntime
    from wam_policy_node.safety import SafetyFilter

    res = {"kind": kind, "mode": mode}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    cfg = {"path": str(path), "device": str(dev), "warmup": args.warmup, **lerobot_mode(mode)}
    t0 = time.perf_counter()
    with _tiny_ctx(kind, args.tiny):
        b = LeRobotBackend(cfg)
    _sync(dev)
    res["load_warmup_s"] = round(time.perf_counter() - t0, 2)
    res["params_m"] = round(sum(p.numel() for p in b.policy.parameters()) / 1e6, 1) \
        if hasattr(b.policy, "parameters") else None
    res["engine"] = b.engine
    feats = {k: tuple(v.shape) for k, v in b.policy.config.image_features.items()}
    res["image_inputs"] = {k.removeprefix("observation.images."): list(s) for k, s in feats.items()}
    cams = [k.removeprefix("observation.images.") for k in feats]
    rng = np.random.default_rng(0)
    frames = [{cam: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for cam in cams} for _ in range(3)]
    # the node's default `observation.resize: [0, 0]` (frames as published) where the model resizes
    # itself, on its device (π0/π0.5, SmolVLA with pad; FastWAM per camera); the model's input size otherwise
    if kind in SELF_RESIZING:
        resize = [0, 0]
    else:
        (_, h, w), = {s for s in feats.values()}  # one resolution for all cameras
        resize = [h, w]
    res["node_resize"] = resize
    obs_map = ObservationMap.from_config({"cameras": cams, "image_keys": cams, "resize": resize})
    prompt = "transfer the cube to the other arm"

    # bare: the model call on a pre-processed batch (3 input sets, round robin)
    batches = [b.batch(Observation(1_000_000_000, obs_map.images(f), HOME.copy(), prompt)) for f in frames]
    for i in range(args.warmup):
        b.reset()
        b.predict(batches[i % 3])
    _sync(dev)
    bare = []
    for i in range(args.iters):
        b.reset()
        _sync(dev)
        t0 = time.perf_counter()
        b.predict(batches[i % 3])
        _sync(dev)
        bare.append((time.perf_counter() - t0) * 1e3)

    # bare on LeRobot-style batches (float [0, 1] images already on the device): for the fast engines,
    # whose batch carries the camera frames as uint8 on the host, this leaves their upload out
    def on_device(batch):
        return {k: (v.permute(0, 3, 1, 2).float().div(255.0).to(dev)
                    if isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.ndim == 4 else v)
                for k, v in batch.items()}

    if any(v is not w for bt in batches for v, w in zip(on_device(bt).values(), bt.values())):
        dev_batches = [on_device(bt) for bt in batches]
        bare_dev = []
        for i in range(args.iters + args.warmup):
            b.reset()
            _sync(dev)
            t0 = time.perf_counter()
            b.predict(dev_batches[i % 3])
            _sync(dev)
            if i >= args.warmup:
                bare_dev.append((time.perf_counter() - t0) * 1e3)
        res["bare_device_images_ms"] = _pcts(bare_dev)

    # obs→action: the node's per-inference path (lockstep, a new chunk every step)
    ctl = PolicyController(b, ChunkRuntime(strategy="sync"), SafetyFilter({}), realtime=False,
                           horizon_hint=50)
    e2e, holds, infer_ms = [], {}, []
    infer = b.infer

    def timed_infer(obs):  # the backend's share of each step (the rest is controller, runtime, safety)
        t = time.perf_counter()
        out = infer(obs)
        infer_ms.append((time.perf_counter() - t) * 1e3)
        return out

    b.infer = timed_infer
    for i in range(args.iters + args.warmup):
        ctl.reset_episode({"episode": i})
        stamp = 1_000_000_000 + i * 20_000_000
        _sync(dev)
        t0 = time.perf_counter()
        obs = Observation(stamp, obs_map.images(frames[i % 3]), HOME.copy(), prompt)
        cmd, st = ctl.step_lockstep(stamp, obs)
        dt = (time.perf_counter() - t0) * 1e3
        if i >= args.warmup:
            e2e.append(dt)
            if st.get("hold"):
                holds[st["hold"]] = holds.get(st["hold"], 0) + 1
        if st.get("hold") == "inference_error":
            raise RuntimeError(f"{kind}/{mode}: {ctl.last_error_detail}")
    # where the added time goes: each host-side part alone (medians of many calls)
    def part(fn, n=max(20, args.iters)):
        fn()
        ms = []
        for i in range(n):
            _sync(dev)
            t0 = time.perf_counter()
            fn(i)
            _sync(dev)
            ms.append((time.perf_counter() - t0) * 1e3)
        return _pcts(ms)

    chunk = b.predict(batches[0])
    obs_i = [Observation(1_000_000_000, obs_map.images(f), HOME.copy(), prompt) for f in frames]
    b.infer = infer
    step_minus_infer = [t - i for t, i in zip(e2e, infer_ms[args.warmup:])]
    res["parts_ms"] = {
        "backend_infer_in_step": _pcts(infer_ms[args.warmup:]),  # batch + model + post-processor
        "controller_runtime_safety": _pcts(step_minus_infer),
        "resize": part(lambda i=0: obs_map.images(frames[i % 3])),
        "pre_processor": part(lambda i=0: b.batch(obs_i[i % 3])),
        "post_processor": part(lambda i=0: b.post(chunk.float().cpu()).numpy()),
    }
    res["bare_ms"] = _pcts(bare)
    res["obs_to_action_ms"] = _pcts(e2e)
    res["ratio_p50"] = round(res["obs_to_action_ms"]["p50"] / res["bare_ms"]["p50"], 4)
    if "bare_device_images_ms" in res:
        res["ratio_p50_vs_device_images"] = round(res["obs_to_action_ms"]["p50"] / res["bare_device_images_ms"]["p50"], 4)
    res["added_ms_p50"] = round(res["obs_to_action_ms"]["p50"] - res["bare_ms"]["p50"], 3)
    res["safety_holds"] = holds  # random weights: a chunk may be out of the arm's limits (held, still timed)
    if dev.type == "cuda":
        res["peak_gpu_gib"] = _gib(torch.cuda.max_memory_allocated(dev))
    del ctl, b, batches
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", default=",".join(DEFAULT_JOBS), help="kind:mode,... in priority order")
    ap.add_argument("--kinds", default="", help="shorthand: these kinds, eager (π, SmolVLA: fast)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU smoke)")
    ap.add_argument("--wam-size", default="reduced", choices=("reduced", "full", "tiny"))
    ap.add_argument("--wam-layers", type=int, default=0, help="WAM 'reduced' size: transformer layers (0 = the builder default)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=0, help="start no new job after this many seconds (0 = no limit)")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.kinds:
        from wam_policy_node.engines import FAST_TYPES

        jobs = [(k, "fast" if k in FAST_TYPES else "eager") for k in args.kinds.split(",") if k]
    else:
        jobs = [tuple(j.split(":")) for j in args.jobs.split(",") if j]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_latency_"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = {"bench": "gpu_latency", "device": str(dev),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "torch": torch.__version__, "python": platform.python_version(), "tiny": args.tiny,
           "cameras": {"n": 3, "raw": [480, 640]}, "iters": args.iters, "import_s": round(time.perf_counter() - T_START, 2),
           "builds": {}, "results": [], "errors": [], "skipped": []}

    def dump():
        text = json.dumps(out, indent=1)
        if args.out:
            Path(args.out).write_text(text)
        return text

    built: dict[str, Path] = {}
    for kind, mode in jobs:
        if args.budget_s and time.perf_counter() - T_START > args.budget_s:
            out["skipped"].append(f"{kind}:{mode}")
            continue
        try:
            if kind not in built:
                size = "tiny" if args.tiny else (args.wam_size if kind in WAMS else "full")
                built[kind], out["builds"][kind] = build(kind, args, dev, workdir, size)
            r = run_job(kind, mode, built[kind], args, dev)
            out["results"].append(r)
            print(f"[gpu_latency] {kind}:{mode} bare p50 {r['bare_ms']['p50']} ms, obs→action p50 "
                  f"{r['obs_to_action_ms']['p50']} ms, ratio {r['ratio_p50']}", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - one architecture failing never loses the others
            out["errors"].append({"job": f"{kind}:{mode}", "error": f"{type(exc).__name__}: {exc}",
                                  "trace": traceback.format_exc(limit=6)[-2000:]})
            print(f"[gpu_latency] {kind}:{mode} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        out["elapsed_s"] = round(time.perf_counter() - T_START, 1)
        dump()
    print(dump())
    return 0 if out["results"] and not out["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
