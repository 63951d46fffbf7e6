"""RTC guidance in the fast π0 / π0.5 / SmolVLA engines is LeRobot's own: tiny models on CPU (fp32).

Reduced-size π0 / π0.5 (``tiny_dims``) and the zoo's tiny SmolVLA with every parameter randomised, loaded
through LeRobot (``impl="eager"``, the reference) and through the fast engine, both with the same
``RTCConfig`` enabled (LeRobot's ``init_rtc_processor``; the engine's method of the same name). A first
plain chunk, shifted by a few executed steps, is the left-over (shorter than the chunk and 14 of the
32 padded action dims: LeRobot zero-pads both); each delay (0, 1, 7, past the execution horizon) gives
the guided chunk, compared at the same noise:

* ``rtc_jacobian="identity"`` against LeRobot 0.6.1's RTC as it is (its ``denoise_step`` computes
  ``v_t`` before ``x_t`` requires grad: the correction is the weighted error itself);
* ``rtc_jacobian="full"`` against LeRobot's ``RTCProcessor.denoise_step`` with the velocity differentiated
  (``engines.reference.differentiated_rtc``: its denoiser given ``x_t`` requiring grad, the paper's VJP
  through LeRobot's own model).

A CUDA-graph test (skipped without CUDA) checks one captured guided graph per Jacobian serves all delays
and equals the engine without graphs.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

pytest.importorskip("transformers")

from wam_policy_node.engines import EngineError, make_engine  # noqa: E402
from wam_policy_node.engines.reference import differentiated_rtc  # noqa: E402
from wam_policy_node.zoo.parts import make_config, random_batch, tiny_dims  # noqa: E402

# No tier marker: pure (no DDS, no subprocess), but it builds models on CPU: too slow for the
# `unit` tier (make test-unit); `make test` runs it.

TOL = 1e-5  # fp32 on CPU (measured: ≤ 1.6e-6 guided, 5e-7 plain)
CHUNK, HORIZON, SHIFT = 20, 10, 4  # chunk length, RTC execution horizon, steps executed of the first chunk
DELAYS = (0, 1, 7, HORIZON + 3)


def _rtc_config(**kw):
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    return RTCConfig(enabled=True, execution_horizon=HORIZON, **kw)


def _enable(ref, fast, rtc_cfg, jacobian="identity"):
    ref.policy.config.rtc_config = fast.config.rtc_config = rtc_cfg
    ref.policy.init_rtc_processor()
    fast.init_rtc_processor(jacobian)


def _build(ptype, d):
    from lerobot.policies.factory import get_policy_class

    from wam_policy_node.zoo import randomise, save_random_policy

    if ptype == "smolvla":
        ckpt = save_random_policy("smolvla", d / "ckpt", size="tiny", seed=3, chunk=CHUNK)
    else:
        cfg = make_config(ptype, image_size=56, tokenizer_max_length=12, chunk_size=CHUNK)
        pol = get_policy_class(ptype)(cfg)
        randomise(pol)
        pol.save_pretrained(d)
        ckpt = d
    ref = make_engine(ckpt, impl="eager", device="cpu", dtype="float32")
    fast = make_engine(ckpt, impl="fast", device="cpu", dtype="float32")
    return ref, fast


def _ctx(ptype):
    return contextlib.nullcontext() if ptype == "smolvla" else tiny_dims()


@pytest.fixture(scope="module", params=["pi0", "pi05", "smolvla"])
def engines(request, tmp_path_factory):
    ptype = request.param
    with _ctx(ptype):
        ref, fast = _build(ptype, tmp_path_factory.mktemp(ptype))
    _enable(ref, fast, _rtc_config())
    cfg = fast.config
    batch = random_batch(cfg, n_valid_tokens=5, seed=3, vocab=300)
    noise = _noise(cfg, seed=1)
    prev = fast.predict_action_chunk(batch, noise=_noise(cfg, seed=0))[:, SHIFT:]  # the un-executed rest
    return ptype, ref, fast, batch, noise, prev


def _noise(cfg, b=1, seed=1):
    return torch.randn(b, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(seed))


def test_guided_chunk_is_lerobots(engines):
    """LeRobot 0.6.1's RTC at each delay, and the guidance really moves the chunk (toward the left-over)."""
    ptype, ref, fast, batch, noise, prev = engines
    plain = fast.predict_action_chunk(batch, noise=noise)
    outs = {}
    for delay in DELAYS:
        a = ref.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=delay)
        b = fast.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=delay)
        assert b.shape == plain.shape and b.isfinite().all()
        assert (a - b).abs().max().item() < TOL, (ptype, delay)
        outs[delay] = b
    n = prev.shape[1]
    for delay in (1, 7):  # the frozen prefix is inpainted: the first actions land on the left-over
        assert (outs[delay][:, :delay] - prev[:, :delay]).abs().mean() < 0.2 * (plain[:, :delay] - prev[:, :delay]).abs().mean()
    assert (outs[7] - outs[1]).abs().max() > 1e-2  # the delay matters
    # past the horizon the weights are those of delay = horizon (LeRobot clips the start)
    alt = fast.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=HORIZON)
    assert (alt - outs[HORIZON + 3]).abs().max().item() < 1e-6
    # the execution horizon as an argument (here: the whole left-over) and another schedule
    for kw, cfg in (({"execution_horizon": n}, None), ({}, _rtc_config(prefix_attention_schedule="EXP",
                                                                        max_guidance_weight=3.0))):
        if cfg is not None:
            _enable(ref, fast, cfg)
        try:
            a = ref.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=3, **kw)
            b = fast.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=3, **kw)
        finally:
            _enable(ref, fast, _rtc_config())
        assert (a - b).abs().max().item() < TOL, kw
        assert (b - outs[1]).abs().max() > 1e-3


def test_no_left_over_is_the_plain_chunk(engines):
    ptype, ref, fast, batch, noise, _ = engines
    plain = fast.predict_action_chunk(batch, noise=noise)
    same = fast.predict_action_chunk(batch, noise=noise, inference_delay=3)
    assert torch.equal(plain, same)
    a = ref.predict_action_chunk(batch, noise=noise, inference_delay=3)
    assert (a - same).abs().max().item() < TOL


def test_full_vjp_is_lerobots_model_differentiated(engines):
    """``rtc_jacobian="full"``: the VJP through the fast expert = autograd through LeRobot's model."""
    ptype, ref, fast, batch, noise, prev = engines
    ident = fast.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=7)
    fast.init_rtc_processor("full")
    try:
        with differentiated_rtc(ref.policy):
            for delay in (0, 7):
                a = ref.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=delay)
                b = fast.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=delay)
                assert b.isfinite().all()
                assert (a - b).abs().max().item() < TOL, (ptype, delay)
        assert (b - ident).abs().max().item() > 1e-3  # the model's Jacobian is in it
        # outside the context LeRobot's own step again (identity)
        a = ref.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=7)
        assert (a - ident).abs().max().item() < TOL
    finally:
        fast.init_rtc_processor("identity")


def test_rtc_input_errors(engines):
    ptype, ref, fast, batch, noise, prev = engines
    cases = [
        ("inference_delay", dict(prev_chunk_left_over=prev)),
        ("prev_chunk_left_over: shape", dict(prev_chunk_left_over=torch.zeros(1, CHUNK + 1, 14), inference_delay=1)),
        ("prev_chunk_left_over: shape", dict(prev_chunk_left_over=torch.zeros(1, 3, 40), inference_delay=1)),
        ("non-finite", dict(prev_chunk_left_over=prev * float("nan"), inference_delay=1)),
        ("< 0", dict(prev_chunk_left_over=prev, inference_delay=-1)),
    ]
    for match, kw in cases:
        with pytest.raises(EngineError, match=match):
            fast.predict_action_chunk(batch, noise=noise, **kw)
    with pytest.raises(EngineError, match="rtc_jacobian"):
        fast.init_rtc_processor("exact")
    saved = fast.config.rtc_config
    try:
        fast.config.rtc_config = None
        fast.init_rtc_processor()
        with pytest.raises(EngineError, match="RTC"):
            fast.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=1)
    finally:
        fast.config.rtc_config = saved
        fast.init_rtc_processor()
    assert fast.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=prev, inference_delay=1).isfinite().all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_serves_every_delay(tmp_path, compile):
    """On CUDA: the guided chunk in a CUDA graph (identity and full VJP: autograd captured in the graph)
    equals the engine without graphs; one graph per Jacobian mode, whatever the delay and left-over."""
    from wam_policy_node.engines import PiFlowEngine

    with tiny_dims():
        _, fast = _build("pi0", tmp_path)
        cfg = fast.config
        cfg.rtc_config = _rtc_config()
        graph = PiFlowEngine.from_pretrained(tmp_path, device="cuda", dtype="float32", compile=compile, config=cfg)
        nograph = PiFlowEngine(graph.config, graph.w, device="cuda", cuda_graph=False, compile=False)
    batch = random_batch(cfg, n_valid_tokens=5, seed=3)
    noise = _noise(cfg)
    prev = nograph.predict_action_chunk(batch, noise=_noise(cfg, seed=0))[:, SHIFT:]  # on the GPU
    graph.warmup(batch)  # captures the guided graph too (the backend's start-up)
    assert [k for k in graph._graphs if k[0] == "rtc"] == [("rtc", "identity", graph._shape_key(batch))]
    for jac in ("identity", "full"):
        graph.init_rtc_processor(jac)
        nograph.init_rtc_processor(jac)
        for delay, cut in ((0, 0), (1, 2), (7, 5), (HORIZON + 3, 0)):
            kw = dict(noise=noise, prev_chunk_left_over=prev[:, cut:], inference_delay=delay)
            a = nograph.predict_action_chunk(batch, **kw)
            b = graph.predict_action_chunk(batch, **kw)
            assert (a - b).abs().max().item() < 1e-3, (jac, delay)
    rtc_graphs = [k for k in graph._graphs if k[0] == "rtc"]
    assert len(rtc_graphs) == 2
    assert all(graph._graphs[k] is not None for k in rtc_graphs)  # the full VJP's autograd was captured too
