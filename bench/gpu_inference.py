"""GPU inference bench: LeRobot eager π0 / π0.5 / SmolVLA / FastWAM vs the fast engine, in the same run (JSON).

Full-size models (π: PaliGemma-3B + Gemma-300M expert, 3 cameras 224×224; SmolVLA: SmolVLM2-500M
with 16 layers + its action expert, 3 cameras 512×512, written by ``wam_policy_node.zoo`` with
``size="full"`` on the GPU) from config only, random weights (every parameter randomised, also the
norm scales and π0.5's adaRMS layers that LeRobot initialises to zero, so the expert's gated
residuals are live), bf16, 50×14 chunk, 10 flow steps, batch 1. For each policy:

* reference: LeRobot's ``PolicyClass(config)`` built on the GPU (SmolVLA: loaded with LeRobot's
  ``from_pretrained`` from the zoo checkpoint, bf16 autocast as the ``lerobot`` backend runs it),
  ``predict_action_chunk`` (eager);
* the checkpoint is written with LeRobot's ``save_pretrained`` and the fast engine loads it from
  disk (start-up = load + warm-up/graph capture, the disk read measured separately);
* latency p50/p99 (host wall clock around the call, synchronised), peak GPU memory, and the max
  abs difference of the actions for the same inputs and the same noise (also against a LeRobot
  fp32 copy of the same weights, which shows the bf16 rounding floor itself);
* a torch.profiler kernel table of both, and a per-part split of the fast forward.

FastWAM (``--policies fastwam``, :func:`run_wam`): LeRobot's call and the engine over the same loaded
policy, LeRobot's seeded noise; also the engine without CUDA graphs and LeRobot with the backend's
prompt cache, which split the gain between its parts. LingBot-VA (``--policies lingbot_va``,
:func:`run_lingbot`): an episode of LeRobot's ``select_action``, then the same with the engine installed.

RTC (``--rtc``, :func:`run_rtc`; π0 / π0.5 / SmolVLA): the same models with LeRobot's ``RTCConfig``
enabled (``--rtc-horizon``) on both sides, a left-over (a first chunk minus ``--rtc-shift`` executed steps)
and ``--rtc-delay``: p50/p99 of the fast engine plain, the fast engine RTC-guided (``identity``: LeRobot
0.6.1's guidance; ``full``: the paper's VJP through the expert, autograd in the CUDA graph) and LeRobot's
eager RTC (and eager plain), and the max abs action difference fast-RTC vs eager-RTC for the same inputs
and noise (``full`` against LeRobot's step differentiated: ``engines.reference.differentiated_rtc``).

Usage (device)::  python bench/gpu_inference.py --out $OUT/gpu_inference.json [--policies smolvla]
RTC (device)::    python bench/gpu_inference.py --rtc --policies pi05,pi0,smolvla --no-profile --out $OUT/gpu_inference_rtc.json
CPU smoke::       python bench/gpu_inference.py --tiny --device cpu --iters 3 --policies pi05,pi0,smolvla,fastwam,lingbot_va
RTC CPU smoke::   python bench/gpu_inference.py --rtc --tiny --device cpu --dtype float32 --iters 3 --ref-iters 2 \
                      --policies pi05,pi0,smolvla
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
from pathlib import Path

T_START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

T_TORCH = time.perf_counter()


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _pcts(ms):
    ms = sorted(ms)

    def q(p):
        return ms[min(len(ms) - 1, max(0, math.ceil(p / 100 * len(ms)) - 1))]

    return {"p50": round(statistics.median(ms), 3), "p99": round(q(99), 3), "min": round(ms[0], 3),
            "mean": round(statistics.fmean(ms), 3), "n": len(ms)}


def _time_calls(fn, dev, iters, warmup=2):
    for _ in range(warmup):
        fn()
    _sync(dev)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append((time.perf_counter() - t0) * 1e3)
    return _pcts(out)


def _diff(outs_a, outs_b):
    """max / mean abs difference and relative L2 error of b w.r.t. a, over the input sets."""
    a = torch.cat([x.flatten() for x in outs_a])
    b = torch.cat([x.flatten() for x in outs_b])
    return {"max_abs": (a - b).abs().max().item(), "mean_abs": (a - b).abs().mean().item(),
            "rel_l2": ((a - b).norm() / a.norm()).item()}


def _graph_time(fn, dev, iters=20):
    """Capture fn in a CUDA graph and time its replays (events)."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return _time_calls(g.replay, dev, iters)["p50"]


def _mem(dev):
    if dev.type != "cuda":
        return {}
    return {"allocated_gib": round(torch.cuda.memory_allocated(dev) / 2**30, 3),
            "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)}


def _profile(fn, dev, n=1, rows=18, warm=True):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    if warm:
        fn()
    _sync(dev)
    with profile(activities=acts) as prof:
        for _ in range(n):
            fn()
        _sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)
    total_dev = 0.0
    kernels = []
    syncs = 0
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if ev.device_type is not None and str(ev.device_type).endswith("CUDA") and t:
            total_dev += t
            kernels.append((ev.key, t / n / 1e3, ev.count // n))
        if "Synchronize" in ev.key or ev.key in ("aten::nonzero", "aten::item", "aten::_local_scalar_dense"):
            syncs += ev.count // n
    kernels.sort(key=lambda k: -k[1])
    return {"table": table, "gpu_kernel_ms_per_call": round(total_dev / n / 1e3, 3),
            "kernel_launches_per_call": sum(k[2] for k in kernels), "sync_ops_per_call": syncs,
            "top_kernels": [{"name": k[:90], "ms": round(t, 3), "calls": c} for k, t, c in kernels[:15]]}


def _sdpa_backends(dev, dtype, q_len, k_len, head_dim=256):
    """Which SDPA kernels take the engine's folded-head attention with an additive mask, and how fast."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 1, q_len, head_dim, device=dev, dtype=dtype)
    k = torch.randn(1, 1, k_len, head_dim, device=dev, dtype=dtype)
    v = torch.randn(1, 1, k_len, head_dim, device=dev, dtype=dtype)
    m = torch.zeros(1, 1, 1, k_len, device=dev, dtype=dtype)
    m[..., -7:] = -math.inf
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m.float())
    out = {}
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        for masked in (True, False):
            name = f"{be.name.lower()}{'_mask' if masked else ''}"
            try:
                with sdpa_kernel([be]):
                    f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m if masked else None)  # noqa: E731
                    o = f()
                    t = _time_calls(f, dev, 20)
                err = (o.float() - ref).abs().max().item() if masked else None
                out[name] = {"ms": t["p50"], "max_err": err}
            except Exception as e:  # noqa: BLE001
                out[name] = {"error": str(e).splitlines()[0][:120]}
    return out


def _eager(pol, dtype):
    """LeRobot's forward; SmolVLA (no ``dtype`` in its config) in bf16 under autocast, as the backend runs it."""
    from wam_policy_node.engines import EagerEngine

    smol = pol.config.type == "smolvla" and dtype != torch.float32
    return EagerEngine(pol, autocast=dtype if smol else None)


def _reference(ptype, args, dev, workdir, res):
    """(LeRobot policy on ``dev`` with random weights, its config, the checkpoint written from it)."""
    from lerobot.policies.factory import get_policy_class

    from wam_policy_node.zoo.parts import make_config
    from wam_policy_node.zoo import randomise, save_random_policy

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    if ptype == "smolvla":
        # the zoo builds SmolVLA on the GPU (fp32, randomised) with its own SmolVLM directory; LeRobot
        # loads it back the normal way (from_pretrained: built on the host, then moved)
        ckpt = save_random_policy("smolvla", workdir / ptype, size="tiny" if args.tiny else "full", device=str(dev))
        res["zoo_build_save_s"] = round(time.perf_counter() - t0, 2)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        from lerobot.configs import PreTrainedConfig

        cfg = PreTrainedConfig.from_pretrained(ckpt)
        t0 = time.perf_counter()
        pol = get_policy_class(ptype).from_pretrained(ckpt, config=cfg).to(dev)
        _sync(dev)
        res["ref_from_pretrained_s"] = round(time.perf_counter() - t0, 2)
        res["ref_weights_mem"] = _mem(dev)
        return pol, cfg, ckpt
    cfg = make_config(ptype, dtype=args.dtype, device=str(dev), image_size=56 if args.tiny else 224)
    with torch.device(dev):
        pol = get_policy_class(ptype)(cfg)
    randomise(pol, seed=0)
    _sync(dev)
    res["ref_build_random_s"] = round(time.perf_counter() - t0, 2)
    res["ref_weights_mem"] = _mem(dev)
    ckpt = workdir / ptype
    t0 = time.perf_counter()
    pol.save_pretrained(ckpt)
    res["save_s"] = round(time.perf_counter() - t0, 2)
    return pol, cfg, ckpt


def run_policy(ptype, args, dev, workdir, res):
    from lerobot.policies.factory import get_policy_class

    from wam_policy_node.engines import FAST_ENGINES
    from wam_policy_node.zoo.parts import make_config, random_batch, tiny_dims

    engine_cls = FAST_ENGINES[ptype]
    smol = ptype == "smolvla"
    ctx = tiny_dims() if args.tiny and not smol else contextlib.nullcontext()
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    with ctx:
        pol, cfg, ckpt = _reference(ptype, args, dev, workdir, res)
        st = ckpt / "model.safetensors"
        res["checkpoint_gib"] = round(st.stat().st_size / 2**30, 3)
        t0 = time.perf_counter()
        with open(st, "rb") as fh:
            while fh.read(1 << 26):
                pass
        res["disk_read_s"] = round(time.perf_counter() - t0, 2)  # just written: mostly page cache

        ref = _eager(pol, dtype)
        # token ids inside the vocabulary of the zoo's small SmolVLM tokenizer (tiny: 512 entries)
        batches = [random_batch(cfg, n_valid_tokens=20, seed=s, vocab=300 if smol else 1000) for s in range(3)]
        gen = torch.Generator().manual_seed(123)
        noises = [torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=gen) for _ in range(3)]
        on_dev = [{k: v.to(dev) for k, v in b.items()} for b in batches]

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        ref_out = [ref.predict_action_chunk(on_dev[i], noise=noises[i]).float().cpu() for i in range(3)]
        res["ref"] = {"latency_ms": _time_calls(lambda: ref.predict_action_chunk(on_dev[0], noise=noises[0]), dev,
                                                args.ref_iters),
                      "mem": _mem(dev), "batch_on": "device (as after LeRobot's to_device step)"}
        if args.profile:
            res["ref"]["profile"] = _profile(lambda: ref.predict_action_chunk(on_dev[0], noise=noises[0]), dev)
        print(f"[{ptype}] ref p50 {res['ref']['latency_ms']['p50']} ms", flush=True)

        # fast engine from the checkpoint on disk
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        t0 = time.perf_counter()
        fast = engine_cls.from_pretrained(ckpt, device=dev, dtype=dtype)
        load_s = time.perf_counter() - t0
        weights_gib = ((torch.cuda.memory_allocated(dev) - before) / 2**30) if dev.type == "cuda" else None
        warm_s = fast.warmup(batches[0])
        s = fast._state_for(*fast._shape_key(batches[0]))
        res["tokens"] = {"images": len(cfg.image_features),
                         "image_tokens_each": getattr(fast, "image_tokens", None) or (cfg.image_resolution[0] // 14) ** 2,
                         "text_tokens": cfg.tokenizer_max_length, "valid_text_tokens": 20,
                         "prefix_len": s["prefix_len"],
                         "suffix_len": cfg.chunk_size + (1 if ptype == "pi0" else 0),
                         "chunk": [cfg.chunk_size, 14], "flow_steps": fast.steps}
        res["fast"] = {"startup": {"load_s": round(load_s, 2), "warmup_capture_s": round(warm_s, 2),
                                   "to_first_action_s": round(load_s + warm_s, 2),
                                   "python_import_torch_s": round(T_TORCH - T_START, 2)},
                       "weights_gib": None if weights_gib is None else round(weights_gib, 3),
                       "batch_on": "host (pinned staging + non-blocking copies inside the timed call)"}
        fast_out = [fast.predict_action_chunk(batches[i], noise=noises[i]).float().cpu() for i in range(3)]
        res["fast"]["latency_ms"] = _time_calls(lambda: fast.predict_action_chunk(batches[0], noise=noises[0]), dev,
                                                args.iters, warmup=3)
        res["fast"]["mem"] = _mem(dev)
        res["speedup_p50"] = round(res["ref"]["latency_ms"]["p50"] / res["fast"]["latency_ms"]["p50"], 2)
        diffs = [(a - b).abs().max().item() for a, b in zip(ref_out, fast_out)]
        res["max_abs_diff_vs_ref"] = max(diffs)
        res["diff_vs_ref"] = _diff(ref_out, fast_out)
        res["ref_abs_mean"] = statistics.fmean(a.abs().mean().item() for a in ref_out)
        # LeRobot against itself: the same samples and noise inside a batch of 2 (only GEMM shapes change):
        # the spread of LeRobot's own bf16 result, the floor under any other implementation's difference
        try:
            pairs = [({k: torch.cat([on_dev[i][k], on_dev[(i + 1) % 3][k]]) for k in on_dev[i]},
                      torch.cat([noises[i], noises[(i + 1) % 3]])) for i in range(3)]
            self_out = [ref.predict_action_chunk(b, noise=n)[:1].float().cpu() for b, n in pairs]
            res["ref_batch2_vs_ref"] = _diff(ref_out, self_out)
        except Exception as exc:  # noqa: BLE001 - a side measurement
            res["ref_batch2_vs_ref"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[{ptype}] fast p50 {res['fast']['latency_ms']['p50']} ms, x{res['speedup_p50']}, "
              f"diff {res['max_abs_diff_vs_ref']:.3g}", flush=True)

        # a second start on warm compile caches (what a node restart sees)
        t0 = time.perf_counter()
        fast2 = engine_cls.from_pretrained(ckpt, device=dev, dtype=dtype)
        l2 = time.perf_counter() - t0
        w2 = fast2.warmup(batches[0])
        res["fast"]["startup_warm_cache"] = {"load_s": round(l2, 2), "warmup_capture_s": round(w2, 2),
                                             "to_first_action_s": round(l2 + w2, 2)}
        del fast2
        gc.collect()

        # same weights: CUDA graph without torch.compile; neither (for the split and the profile)
        nocomp = engine_cls(fast.config, fast.w, device=dev, cuda_graph=True, compile=False)
        nc_out = nocomp.predict_action_chunk(batches[0], noise=noises[0]).float().cpu()
        res["fast_graph_no_compile"] = {
            "latency_ms": _time_calls(lambda: nocomp.predict_action_chunk(batches[0], noise=noises[0]), dev, 30),
            "max_abs_diff_vs_ref": (nc_out - ref_out[0]).abs().max().item()}
        del nocomp
        nog = engine_cls(fast.config, fast.w, device=dev, cuda_graph=False, compile=False)
        res["fast_no_graph_no_compile_latency_ms"] = _time_calls(
            lambda: nog.predict_action_chunk(batches[0], noise=noises[0]), dev, 10)
        s = nog._state_for(*nog._shape_key(batches[0]))
        nog._stage(s, batches[0], noises[0])
        res["fast_split_no_graph_no_compile_ms"] = {
            "vision": _time_calls(lambda: nog._encode_images(s), dev, 10)["p50"],
            "prefix_incl_vision": _time_calls(lambda: (nog._encode_images(s), nog._prefix(s)), dev, 10)["p50"],
            "one_denoise_step": _time_calls(lambda: nog._denoise_step(s, 0, s["noise"]), dev, 10)["p50"],
        }
        if dev.type == "cuda":  # the shipped configuration (compiled), each part in its own CUDA graph
            s = fast._state_for(*fast._shape_key(batches[0]))
            res["fast_split_graph_ms"] = {
                "vision": _graph_time(lambda: fast._encode_images(s), dev),
                "prefix_incl_vision": _graph_time(lambda: (fast._encode_images(s), fast._prefix(s)), dev),
                "one_denoise_step": _graph_time(lambda: fast._denoise_step(s, 0, s["noise"]), dev),
                "staging_host_to_device": _time_calls(lambda: fast._stage(s, batches[0], noises[0]), dev, 20)["p50"],
            }
        if args.profile:
            res["fast"]["profile_graph"] = _profile(lambda: fast.predict_action_chunk(batches[0], noise=noises[0]), dev, n=3)
            res["fast"]["profile_no_graph_no_compile"] = _profile(
                lambda: nog.predict_action_chunk(batches[0], noise=noises[0]), dev)
        del nog

        # LeRobot's own random init (std 0.02, adaRMS layers zero), as in the issue's measurement
        if not args.quick:
            with torch.device(dev):
                pol_li = get_policy_class(ptype)(cfg)
            ref_li = _eager(pol_li, dtype)
            fast_li = engine_cls.from_policy(pol_li, dtype=dtype)
            res["lerobot_init"] = {"diff_vs_ref": _diff(
                [ref_li.predict_action_chunk(on_dev[i], noise=noises[i]).float().cpu() for i in range(3)],
                [fast_li.predict_action_chunk(batches[i], noise=noises[i]).float().cpu() for i in range(3)])}
            del pol_li, ref_li, fast_li
            gc.collect()

        # fast with the vision tower in fp32 (as LeRobot keeps it)
        if not args.quick:
            v32 = engine_cls.from_policy(pol, dtype=dtype, vision_dtype=torch.float32)
            v32_out = [v32.predict_action_chunk(batches[i], noise=noises[i]).float().cpu() for i in range(3)]
            res["fast_vision_fp32"] = {
                "diff_vs_ref": _diff(ref_out, v32_out),
                "latency_ms": _time_calls(lambda: v32.predict_action_chunk(batches[0], noise=noises[0]), dev, 20)}
            del v32
            gc.collect()
            # LeRobot in fp32 on the same weights: the rounding floor of bf16 itself (SmolVLA's
            # reference policy is fp32 already: bf16 is its autocast)
            if smol:
                pol32 = pol
            else:
                cfg32 = make_config(ptype, dtype="float32", device=str(dev), image_size=cfg.image_resolution[0])
                with torch.device(dev):
                    pol32 = get_policy_class(ptype)(cfg32)
                pol32.load_state_dict(pol.state_dict())
            ref32 = _eager(pol32, torch.float32)
            r32 = [ref32.predict_action_chunk(on_dev[i], noise=noises[i]).float().cpu() for i in range(3)]
            f32 = engine_cls.from_policy(pol32, dtype=torch.float32)
            f32_out = [f32.predict_action_chunk(batches[i], noise=noises[i]).float().cpu() for i in range(3)]
            res["fp32_reference"] = {
                "ref_bf16_vs_ref_fp32": _diff(r32, ref_out),
                "fast_bf16_vs_ref_fp32": _diff(r32, fast_out),
                "fast_fp32_vs_ref_fp32": _diff(r32, f32_out),
                "fast_fp32_latency_ms": _time_calls(lambda: f32.predict_action_chunk(batches[0], noise=noises[0]),
                                                    dev, 10),
            }
            del ref32, pol32, f32
        if ptype in args.ref_startup.split(","):
            # LeRobot's own start-up from the same checkpoint: from_pretrained (builds the model on the
            # host, loads the state dict, moves it to the GPU) + its first call
            del ref, pol
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            t0 = time.perf_counter()
            from wam_policy_node.engines import EagerEngine

            ref_l = EagerEngine.from_pretrained(ckpt, device=dev, dtype=args.dtype)
            load_s = time.perf_counter() - t0
            warm_s = ref_l.warmup(on_dev[0])
            loaded_out = [ref_l.predict_action_chunk(on_dev[i], noise=noises[i]).float().cpu() for i in range(3)]
            res["ref_startup_from_pretrained"] = {
                "load_s": round(load_s, 2), "first_call_s": round(warm_s, 2), "to_first_action_s": round(load_s + warm_s, 2),
                "loaded_vs_in_memory_reference": _diff(ref_out, loaded_out),
                "fast_vs_loaded_reference": _diff(loaded_out, fast_out)}
            print(f"[{ptype}] LeRobot from_pretrained start-up {load_s + warm_s:.1f} s", flush=True)
            del ref_l
        else:
            del ref, pol
    del fast
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def run_rtc(ptype, args, dev, workdir, res):
    """Fast engine plain / RTC-guided (identity, full VJP) / LeRobot eager RTC: latency and action differences."""
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    from wam_policy_node.engines import FAST_ENGINES, RTC_TYPES
    from wam_policy_node.engines.reference import differentiated_rtc
    from wam_policy_node.zoo.parts import random_batch, tiny_dims

    if ptype not in RTC_TYPES:
        raise ValueError(f"--rtc: no RTC guidance in the fast engine for {ptype} (have {RTC_TYPES})")
    smol = ptype == "smolvla"
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    with tiny_dims() if args.tiny and not smol else contextlib.nullcontext():
        pol, cfg, ckpt = _reference(ptype, args, dev, workdir, res)
        rtc_cfg = RTCConfig(enabled=True, execution_horizon=args.rtc_horizon)
        pol.config.rtc_config = rtc_cfg
        pol.init_rtc_processor()
        ref = _eager(pol, dtype)
        fast = FAST_ENGINES[ptype].from_pretrained(ckpt, device=dev, dtype=dtype)
        fast.config.rtc_config = rtc_cfg
        fast.init_rtc_processor("identity")
        batches = [random_batch(cfg, n_valid_tokens=20, seed=s, vocab=300 if smol else 1000) for s in range(3)]
        gen = torch.Generator().manual_seed(123)
        noises = [torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=gen) for _ in range(3)]
        on_dev = [{k: v.to(dev) for k, v in b.items()} for b in batches]
        warm_s = fast.warmup(batches[0])  # plain and guided graphs
        # the left-over: a first chunk (its own noise) minus the steps executed since its observation
        first = fast.predict_action_chunk(batches[0], noise=torch.randn(noises[0].shape, generator=gen))
        prev = first[:, args.rtc_shift:].float().cpu()
        kw = {"prev_chunk_left_over": prev, "inference_delay": args.rtc_delay}
        kw_dev = {**kw, "prev_chunk_left_over": prev.to(dev)}  # LeRobot's: on its device
        r = res["rtc"] = {"execution_horizon": args.rtc_horizon, "inference_delay": args.rtc_delay,
                          "left_over_len": prev.shape[1], "max_guidance_weight": rtc_cfg.max_guidance_weight,
                          "schedule": str(rtc_cfg.prefix_attention_schedule), "fast_warmup_s": round(warm_s, 2)}

        def outs(engine, batch_set, **k):
            return [engine.predict_action_chunk(batch_set[i], noise=noises[i], **k).float().cpu() for i in range(3)]

        fast_plain, fast_rtc = outs(fast, batches), outs(fast, batches, **kw)
        ref_rtc = outs(ref, on_dev, **kw_dev)
        r["fast_plain_ms"] = _time_calls(lambda: fast.predict_action_chunk(batches[0], noise=noises[0]), dev,
                                         args.iters, warmup=3)
        r["fast_rtc_ms"] = _time_calls(lambda: fast.predict_action_chunk(batches[0], noise=noises[0], **kw), dev,
                                       args.iters, warmup=3)
        r["eager_rtc_ms"] = _time_calls(lambda: ref.predict_action_chunk(on_dev[0], noise=noises[0], **kw_dev), dev,
                                        args.ref_iters)
        r["eager_plain_ms"] = _time_calls(lambda: ref.predict_action_chunk(on_dev[0], noise=noises[0]), dev,
                                          args.ref_iters)
        r["max_abs_diff_fast_rtc_vs_eager_rtc"] = max((a - b).abs().max().item() for a, b in zip(ref_rtc, fast_rtc))
        r["diff_fast_rtc_vs_eager_rtc"] = _diff(ref_rtc, fast_rtc)
        r["guidance_moves_max_abs"] = max((a - b).abs().max().item() for a, b in zip(fast_plain, fast_rtc))
        n = min(args.rtc_delay, prev.shape[1])
        r["first_delay_actions_to_left_over_mean_abs"] = {  # the inpainted prefix lands on the left-over
            "plain": statistics.fmean((o[:, :n] - prev[:, :n]).abs().mean().item() for o in fast_plain) if n else None,
            "rtc": statistics.fmean((o[:, :n] - prev[:, :n]).abs().mean().item() for o in fast_rtc) if n else None}
        print(f"[{ptype}] rtc: fast plain p50 {r['fast_plain_ms']['p50']} ms, fast rtc {r['fast_rtc_ms']['p50']} ms, "
              f"eager rtc {r['eager_rtc_ms']['p50']} ms, diff {r['max_abs_diff_fast_rtc_vs_eager_rtc']:.3g}", flush=True)
        if not args.rtc_no_full:  # the paper's VJP: autograd through the expert in the graph
            fast.init_rtc_processor("full")
            t0 = time.perf_counter()
            fast.predict_action_chunk(batches[0], noise=noises[0], **kw)  # captures the full-VJP graph
            _sync(dev)
            r["fast_rtc_full_capture_s"] = round(time.perf_counter() - t0, 2)
            r["fast_rtc_full_in_cuda_graph"] = any(k[0] == "rtc" and k[1] == "full" and g is not None
                                                   for k, g in fast._graphs.items()) if fast.cuda_graph else None
            fast_full = outs(fast, batches, **kw)
            r["fast_rtc_full_ms"] = _time_calls(lambda: fast.predict_action_chunk(batches[0], noise=noises[0], **kw),
                                                dev, args.iters, warmup=3)
            with differentiated_rtc(pol):
                ref_full = outs(ref, on_dev, **kw_dev)
                r["eager_rtc_full_ms"] = _time_calls(
                    lambda: ref.predict_action_chunk(on_dev[0], noise=noises[0], **kw_dev), dev, args.ref_iters)
            r["max_abs_diff_fast_full_vs_eager_full"] = max((a - b).abs().max().item()
                                                           for a, b in zip(ref_full, fast_full))
            r["full_vs_identity_max_abs"] = max((a - b).abs().max().item() for a, b in zip(fast_full, fast_rtc))
            print(f"[{ptype}] rtc full VJP: fast {r['fast_rtc_full_ms']['p50']} ms, eager "
                  f"{r['eager_rtc_full_ms']['p50']} ms, diff {r['max_abs_diff_fast_full_vs_eager_full']:.3g}",
                  flush=True)
        r["mem"] = _mem(dev)
    del fast, ref, pol
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


WAMS = ("fastwam",)  # engines over LeRobot's own modules (engines.fastwam_graph)
STREAMED = ("lingbot_va",)  # engines installed on LeRobot's policy, timed over an episode (run_lingbot)


def _zoo_wam(ptype, args, dev, workdir, res):
    """The zoo's ``ptype`` at ``--wam-size`` (three cameras, random weights) written and loaded back with
    LeRobot's ``from_pretrained`` (``wam_policy_node.checkpoint.load_checkpoint``) onto ``dev``; sizes and times into ``res``."""
    from wam_policy_node.checkpoint import load_checkpoint
    from wam_policy_node.zoo import save_random_policy

    size = "tiny" if args.tiny else args.wam_size
    extra = {"layers": args.wam_layers} if args.wam_layers and size != "full" else {}
    t0 = time.perf_counter()
    cams = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    ckpt = save_random_policy(ptype, workdir / ptype, size=size, cameras=cams, device=str(dev), extra=extra)
    res["zoo_build_save_s"], res["size"], res["extra"] = round(time.perf_counter() - t0, 2), size, extra
    res["checkpoint_gib"] = round(sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**30, 3)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    pol = load_checkpoint(ckpt, device=str(dev))
    _sync(dev)
    res["ref_from_pretrained_s"] = round(time.perf_counter() - t0, 2)
    res["ref_weights_mem"] = _mem(dev)
    res["params_b"] = round(sum(p.numel() for p in pol.parameters()) / 1e9, 3)
    return pol


def run_wam(ptype, args, dev, workdir, res):
    """FastWAM: LeRobot's ``predict_action_chunk`` (its own dtype, no autocast: LeRobot's function) vs the
    engine over the same loaded policy (same modules, same weights), the same seeded noise (LeRobot's
    ``inference_seed``); the zoo checkpoint at ``--wam-size`` (full: Wan2.2-TI2V-5B video DiT, 1 B action
    DiT, UMT5-XXL, Wan2.2 VAE; 224×448 input, 32×14 chunk, 10 flow steps)."""
    from wam_policy_node.backends.lerobot import _memoize_prompt_encoder
    from wam_policy_node.engines import FastWAMEngine

    pol = _zoo_wam(ptype, args, dev, workdir, res)
    cfg = pol.config
    keys = sorted(cfg.image_features)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    batches = []
    for g in gens:
        b = {k: torch.rand(1, *cfg.image_features[k].shape, generator=g) for k in keys}
        b["observation.state"] = torch.randn(1, cfg.proprio_dim, generator=g)
        b["task"] = "transfer the cube"
        batches.append(b)
    on_dev = [{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in b.items()} for b in batches]

    def ref_call(i=0):
        return pol.predict_action_chunk(dict(on_dev[i]))

    with torch.inference_mode():
        ref_out = [ref_call(i).float().cpu() for i in range(3)]
        res["ref"] = {"latency_ms": _time_calls(ref_call, dev, args.ref_iters), "mem": _mem(dev),
                      "what": "LeRobot FastWAMPolicy.predict_action_chunk, UMT5 prompt encoding every call"}
        print(f"[{ptype}] ref p50 {res['ref']['latency_ms']['p50']} ms", flush=True)
        if args.profile:
            res["ref"]["profile"] = _profile(ref_call, dev)
        # the engine over the same policy (no second copy of the weights)
        t0 = time.perf_counter()
        fast = FastWAMEngine(pol)
        init_s = time.perf_counter() - t0
        warm_s = fast.warmup(batches[0])
        res["fast"] = {"startup": {"ref_from_pretrained_s": res["ref_from_pretrained_s"],
                                   "engine_init_s": round(init_s, 2), "warmup_capture_s": round(warm_s, 2),
                                   "to_first_action_s": round(res["ref_from_pretrained_s"] + init_s + warm_s, 2)},
                       "batch_on": "host (pinned staging + non-blocking copies inside the timed call)"}
        fast_out = [fast.predict_action_chunk(batches[i]).float().cpu() for i in range(3)]
        res["fast"]["latency_ms"] = _time_calls(lambda: fast.predict_action_chunk(batches[0]), dev, args.iters,
                                                warmup=3)
        res["fast"]["mem"] = _mem(dev)
        s = fast._static[fast._last_sig]
        res["tokens"] = {"video_tokens": s["video_len"], "action_tokens": fast.chunk,
                         "text_tokens": s["context"].shape[1], "latents": list(s["latents"].shape),
                         "flow_steps": fast.steps, "image": list(cfg.image_size)}
        res["speedup_p50"] = round(res["ref"]["latency_ms"]["p50"] / res["fast"]["latency_ms"]["p50"], 2)
        res["max_abs_diff_vs_ref"] = max((a - b).abs().max().item() for a, b in zip(ref_out, fast_out))
        res["diff_vs_ref"] = _diff(ref_out, fast_out)
        res["ref_abs_mean"] = statistics.fmean(a.abs().mean().item() for a in ref_out)
        print(f"[{ptype}] fast p50 {res['fast']['latency_ms']['p50']} ms, x{res['speedup_p50']}, "
              f"diff {res['max_abs_diff_vs_ref']:.3g}", flush=True)
        if dev.type == "cuda":
            graphs = {part: fast._graphs[(part, fast._last_sig)] for part in ("encode", "chunk")}
            res["fast_split_graph_ms"] = {
                "frames_to_vae_latents": _time_calls(graphs["encode"].replay, dev, 20)["p50"],
                "prefill_and_flow_steps": _time_calls(graphs["chunk"].replay, dev, 20)["p50"]}
        if args.profile:
            res["fast"]["profile_graph"] = _profile(lambda: fast.predict_action_chunk(batches[0]), dev, n=3)
        # the same modules without the graphs (what the prompt cache and the constants alone give)
        nog = FastWAMEngine(pol, cuda_graph=False)
        nog_out = nog.predict_action_chunk(batches[0]).float().cpu()
        res["fast_no_graph"] = {"latency_ms": _time_calls(lambda: nog.predict_action_chunk(batches[0]), dev, 10),
                                "max_abs_diff_vs_ref": (nog_out - ref_out[0]).abs().max().item()}
        # LeRobot with the backend's prompt cache only (the eager backend's configuration)
        _memoize_prompt_encoder(pol)
        res["ref_prompt_cached"] = {"latency_ms": _time_calls(ref_call, dev, args.ref_iters),
                                    "max_abs_diff_vs_ref": (ref_call(0).float().cpu() - ref_out[0]).abs().max().item()}
        print(f"[{ptype}] no graph {res['fast_no_graph']['latency_ms']['p50']} ms, LeRobot + prompt cache "
              f"{res['ref_prompt_cached']['latency_ms']['p50']} ms", flush=True)
    del fast, nog, pol
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def run_lingbot(ptype, args, dev, workdir, res):
    """LingBot-VA: LeRobot's ``select_action`` over an episode of ``--lingbot-chunks`` chunks, then the same
    episode (same frames, same seed) with the engine installed on the same policy (same weights): the
    latency of each chunk — the first (prompt on its UMT5; here on the GPU), the later ones (the executed
    chunk and the observed keyframes fed back into the KV cache, then 20 video + 50 action flow steps) —
    and the max abs difference of every action. With ``--profile``, a later chunk of the engine is profiled
    (LeRobot's: gpu_inference_lingbot.json of the fourth session, ≈ 27 000 syncs)."""
    from wam_policy_node.engines import LingBotVAEngine

    pol = _zoo_wam(ptype, args, dev, workdir, res)
    cfg = pol.config
    # LeRobot keeps the 5.7 B UMT5 encoder on the host by default (it runs once per episode); on this GPU
    # there is room for it, so the first chunk is not a CPU matmul of the prompt
    cfg.text_encoder_device = str(dev)
    res["config"] = {k: getattr(cfg, k) for k in ("height", "width", "frame_chunk_size", "action_per_frame",
                                                   "attn_window", "num_inference_steps", "action_num_inference_steps",
                                                   "guidance_scale", "action_guidance_scale", "text_encoder_device")}
    keys = sorted(cfg.image_features)

    def episode(tag, profile_chunk=None):
        g = torch.Generator().manual_seed(0)
        st = cfg.input_features.get("observation.state")
        chunks, actions = [], []
        pol.reset()
        torch.manual_seed(0)  # LingBot-VA's flow noise: the global generators
        with torch.inference_mode():
            while True:
                batch = {k: torch.rand(1, *cfg.image_features[k].shape, generator=g).to(dev) for k in keys}
                if st is not None:
                    batch["observation.state"] = torch.randn(1, *st.shape, generator=g).to(dev)
                batch["task"] = "transfer the cube"
                new = (not pol._started) or len(pol._action_queue) == 0
                if new and len(chunks) == args.lingbot_chunks:
                    break
                _sync(dev)
                t0 = time.perf_counter()
                if new and profile_chunk is not None and len(chunks) == profile_chunk:
                    box = []
                    res[f"{tag}_profile_chunk{profile_chunk + 1}"] = _profile(
                        lambda b=batch: box.append(pol.select_action(b)), dev, n=1, warm=False)
                    actions.append(box[0].float().cpu())
                else:
                    actions.append(pol.select_action(batch).float().cpu())
                _sync(dev)
                if new:
                    ms = round((time.perf_counter() - t0) * 1e3, 2)
                    profiled = profile_chunk is not None and len(chunks) == profile_chunk
                    chunks.append(None if profiled else ms)  # the profiler's own overhead is no latency
                    print(f"[{ptype}] {tag} chunk {len(chunks)}: {ms} ms{' (profiled)' if profiled else ''}", flush=True)
        res[f"{tag}_chunk_ms"] = chunks
        later = [c for c in chunks[1:] if c is not None]
        res[f"{tag}_later_chunks_p50_ms"] = statistics.median(later) if later else None
        return torch.stack(actions)

    ref_out = episode("ref")
    eng = LingBotVAEngine(pol)
    fast_out = episode("fast", profile_chunk=2 if args.profile else None)
    again = episode("fast_next_episode")  # after a reset: the graphs of the first episode are replayed
    res["engine_index_uploads"], res["engine_passes"] = eng.uploads, eng.passes
    res["engine_graph_captures"], res["engine_graph_replays"] = eng.captures, eng.replays
    res["actions"] = int(ref_out.shape[0])
    res["max_abs_diff_vs_ref"] = (ref_out - fast_out).abs().max().item()
    res["max_abs_diff_vs_ref_next_episode"] = (ref_out - again).abs().max().item()
    res["ref_abs_mean"] = ref_out.abs().mean().item()
    if res.get("ref_later_chunks_p50_ms") and res.get("fast_later_chunks_p50_ms"):
        res["speedup_later_chunks_p50"] = round(res["ref_later_chunks_p50_ms"] / res["fast_later_chunks_p50_ms"], 2)
    res["mem"] = _mem(dev)
    print(f"[{ptype}] later chunks p50 {res['ref_later_chunks_p50_ms']} -> {res['fast_later_chunks_p50_ms']} ms, "
          f"diff {res['max_abs_diff_vs_ref']:.3g}", flush=True)
    del pol, eng
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policies", default="pi05,pi0")  # π0.5 first: its start-up is a cold compile
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--ref-iters", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="reduced-size models (CPU smoke)")
    ap.add_argument("--quick", action="store_true", help="skip the fp32 comparisons")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--sdpa", action="store_true", help="also time each SDPA backend on the engine's shapes")
    ap.add_argument("--ref-startup", default="", help="policies (comma list) whose LeRobot from_pretrained "
                    "start-up is timed too (slow: the model is built on the host)")
    ap.add_argument("--wam-size", default="full", choices=("full", "reduced"), help="fastwam's zoo size")
    ap.add_argument("--wam-layers", type=int, default=0, help="fastwam 'reduced': DiT layers (0 = the default)")
    ap.add_argument("--lingbot-chunks", type=int, default=4,
                    help="lingbot_va: chunks in the timed episode (each run twice: LeRobot, engine)")
    ap.add_argument("--rtc", action="store_true", help="RTC mode (run_rtc): fast plain / fast RTC / LeRobot eager RTC")
    ap.add_argument("--rtc-delay", type=int, default=4, help="--rtc: inference delay (steps)")
    ap.add_argument("--rtc-horizon", type=int, default=10, help="--rtc: RTCConfig.execution_horizon")
    ap.add_argument("--rtc-shift", type=int, default=5, help="--rtc: steps of the first chunk executed (left-over)")
    ap.add_argument("--rtc-no-full", action="store_true", help="--rtc: skip the full-VJP guidance")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA not available"}))
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_bench_"))
    out = {"bench": "gpu_inference", "argv": sys.argv[1:], "torch": torch.__version__,
           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
           "host": platform.node(), "results": []}
    try:
        import lerobot
        import transformers

        out["lerobot"], out["transformers"] = lerobot.__version__, transformers.__version__
    except Exception:  # noqa: BLE001
        pass
    if args.sdpa and dev.type == "cuda":
        dt = torch.bfloat16
        out["sdpa_backends"] = {"prefix_pi0_8x816_vs_816": _sdpa_backends(dev, dt, 8 * 816, 816),
                                "suffix_pi0_8x51_vs_867": _sdpa_backends(dev, dt, 8 * 51, 867)}
    for ptype in args.policies.split(","):
        res = {"policy": ptype.strip()}
        out["results"].append(res)
        try:
            run = (run_rtc if args.rtc else run_wam if ptype.strip() in WAMS
                   else run_lingbot if ptype.strip() in STREAMED else run_policy)
            run(ptype.strip(), args, dev, workdir, res)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            res["error"] = f"{type(e).__name__}: {e}"
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))
    if args.rtc:
        summary = [{"policy": r["policy"], "error": r.get("error")}
                   | {f"{name}_{q}": r.get("rtc", {}).get(f"{name}_ms", {}).get(q)
                      for name in ("fast_plain", "fast_rtc", "fast_rtc_full", "eager_rtc", "eager_rtc_full")
                      for q in ("p50", "p99")}
                   | {k: r.get("rtc", {}).get(k) for k in ("max_abs_diff_fast_rtc_vs_eager_rtc",
                                                           "max_abs_diff_fast_full_vs_eager_full")}
                   for r in out["results"]]
    else:
        summary = [{k: r.get(k) for k in ("policy", "speedup_p50", "max_abs_diff_vs_ref", "error")}
                   | {"ref_p50": r.get("ref", {}).get("latency_ms", {}).get("p50"),
                      "fast_p50": r.get("fast", {}).get("latency_ms", {}).get("p50"),
                      "fast_p99": r.get("fast", {}).get("latency_ms", {}).get("p99"),
                      "startup_s": r.get("fast", {}).get("startup", {}).get("to_first_action_s")}
                   for r in out["results"]]
    out["summary"] = summary
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
