"""What the fast flow-matching engines share (π0/π0.5 in ``pi_flow``, SmolVLA in ``smolvla_flow``).

* :class:`FlowEngine`: loading a checkpoint (``model.safetensors`` read straight onto the device,
  every tensor's shape checked against LeRobot's own model class built on the meta device), static
  device buffers per input shape, staging of the batch through pinned host buffers with
  non-blocking copies, one CUDA graph per input shape, warm-up, the ``predict_action_chunk`` call;
* the SigLIP vision tower both VLMs use (weights + one layer function);
* the compile helpers: each layer function is ``torch.compile``'d once per process and called
  with the weights as arguments, so one graph serves every layer of a stack.

An engine subclass says how to build the model skeleton (``_skeleton``), gather its weights
(``_weights``), key the static buffers by input shape (``_shape_key``), allocate (``_alloc``), stage a
batch's images (``_stage_images``) and its other inputs (``_stage_inputs``), encode the staged images
into ``s["img_tok"]`` (``_encode_images``), run the prefix into its KV cache (``_prefix``) and compute
one flow velocity (``_velocity``; the Euler step and RTC's guidance around it are this class's); it
hands its weights and the number of flow steps to ``FlowEngine.__init__``. A chunk on the static
buffers is two CUDA graphs: the vision tower, then the prefix and the Euler steps from ``s["noise"]``.

The split lets the images start early: :meth:`FlowEngine.prefetch` stages a batch's images and
launches the vision graph while the host still runs the pre-processor on the prompt and state (the
``lerobot`` backend calls it between uploading the frames and its pre-processor); the next
``predict_action_chunk`` on the same image tensors then runs only the second graph. That hides the
pre-processor's host time behind the vision tower's GPU time (bench/gpu_latency.py: obs→action).

RTC guidance (real-time chunking, Black et al. 2025: the new chunk inpainted toward the frozen prefix of
the previous one during flow sampling) is LeRobot 0.6.1's ``RTCProcessor.denoise_step`` inside the Euler
loop (``FlowEngine._guided_velocity``): ``predict_action_chunk(batch, prev_chunk_left_over=...,
inference_delay=d)`` with RTC enabled (``config.rtc_config``, or :meth:`FlowEngine.init_rtc_processor`).
Per step, from the velocity ``v_t`` at flow time ``t`` (1 → 0): ``x1 = x_t - t·v_t`` (the clean chunk
it predicts), ``err = (prev - x1)·w`` with LeRobot's prefix weights ``w`` (1 over the first ``d``
actions, then its schedule down to 0 at the execution horizon), the correction ``c = (∂x1/∂x_t)ᵀ err``
and the guided velocity ``v_t - g(t)·c`` (``g``: LeRobot's guidance weight, clipped at
``max_guidance_weight``). ``rtc_jacobian`` picks the Jacobian:

* ``"identity"`` (default): LeRobot 0.6.1's own result. Its ``denoise_step`` computes ``v_t`` *before*
  ``x_t.requires_grad_(True)``, so ``v_t`` is a constant for autograd and its VJP is ``err`` itself
  (no backward pass); the fast engine computes exactly that, element-wise (tests/test_engines_rtc.py:
  equal to LeRobot's eager RTC);
* ``"full"``: the paper's ΠGDM correction (as Physical Intelligence's Kinetix code: ``jax.vjp`` of the
  denoiser), the VJP through the whole action expert, by ``torch.autograd.grad`` inside the step: one
  backward pass of the expert per flow step (tests: equal to LeRobot's own ``denoise_step`` with
  ``x_t`` requiring grad before the model runs).

The delay, the previous chunk and the horizon reach the graph as static buffers: the left-over padded to
(B, chunk, max_action_dim) (``rtc_prev``) and the prefix weights LeRobot's ``get_prefix_weights`` makes
of (delay, horizon) (``rtc_w``, (B, chunk, 1)), staged like the other inputs, so one guided CUDA graph
per input shape serves every delay and left-over length; the guidance weights of the fixed Euler
schedule are constants of the graph. Without a left-over the plain graph runs (LeRobot: no guidance).
The full VJP's backward is captured with the rest (PyTorch captures autograd's backward like any other
kernels, after the side-stream warm-up ``capture_graph`` does); should a torch build refuse, that chunk
runs uncaptured (same arithmetic, logged once per input shape) — tests/test_engines_rtc.py's CUDA test
asserts it was captured.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

log = logging.getLogger("wam_policy.engines")

IMAGE_PREFIX = "observation.images."
TOKENS = "observation.language.tokens"
TOKEN_MASK = "observation.language.attention_mask"
STATE = "observation.state"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class EngineError(RuntimeError):
    """Checkpoint or input problem; the message names the key."""


def as_dtype(dtype) -> torch.dtype:
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


# ----------------------------------------------------------------------------------------------
# activations, rotary cos/sin, compile helpers


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def act_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    # module-level functions (stable identities: compiled code is reused across engines)
    if name in ("gelu_pytorch_tanh", "gelu_fast", "gelu_new"):
        return _gelu_tanh
    if name == "gelu":
        return F.gelu
    if name in ("silu", "swish"):
        return F.silu
    raise EngineError(f"activation {name!r} not supported by the fast engine")


def cos_sin(pos: torch.Tensor, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos/sin (B, N, D) for integer positions (B, N): the halves duplicated (rotate-half RoPE)."""
    freqs = pos[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


_COMPILED: dict = {}


def _compiled(fn):
    """One torch.compile wrapper per layer function for the whole process."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _COMPILED[fn]


def _bind(fn, kw):
    def call(*args):
        return fn(*args, **kw)

    return call


def bind_fns(specs: dict[str, tuple[Callable, dict]], compile: bool) -> dict[str, Callable]:
    """``{name: (layer function, constant keyword arguments)}`` → callables taking the tensors.

    With ``compile``, each function is compiled once per shape/dtype (the weights are arguments, so
    all the layers of a stack share one compiled graph, and so do engines of the same shapes).
    """
    compiled = {}
    if compile:
        import torch._dynamo

        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, 64)
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 1024)
        for fn, _ in specs.values():
            if fn not in compiled:
                compiled[fn] = _compiled(fn)
    return {name: _bind(compiled.get(fn, fn), kw) for name, (fn, kw) in specs.items()}


# ----------------------------------------------------------------------------------------------
# SigLIP vision tower (PaliGemma's So400m, SmolVLM's SigLIP-B): weights and one layer


@dataclass
class VisionLayer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    o_w: torch.Tensor
    o_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc1_w: torch.Tensor
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor

    def args(self) -> tuple:
        return (self.ln1_w, self.ln1_b, self.qkv_w, self.qkv_b, self.o_w, self.o_b, self.ln2_w, self.ln2_b,
                self.fc1_w, self.fc1_b, self.fc2_w, self.fc2_b)


@dataclass
class SigLIP:
    """A SigLIP vision transformer's tensors (``<V>embeddings.*``, ``<V>encoder.layers.*``, ``<V>post_layernorm.*``)."""

    patch_w: torch.Tensor
    patch_b: torch.Tensor
    pos_emb: torch.Tensor
    layers: list[VisionLayer]
    post_ln_w: torch.Tensor
    post_ln_b: torch.Tensor
    patch_size: int
    eps: float
    heads: int
    act: Callable

    @classmethod
    def load(cls, w: Callable[[str, Any], torch.Tensor], V: str, cfg, dtype) -> "SigLIP":
        """``w(name, dtype)`` reads a checkpoint tensor onto the device; ``cfg`` is the vision config."""
        layers = []
        for i in range(cfg.num_hidden_layers):
            L = f"{V}encoder.layers.{i}."
            layers.append(VisionLayer(
                ln1_w=w(L + "layer_norm1.weight", dtype), ln1_b=w(L + "layer_norm1.bias", dtype),
                qkv_w=torch.cat([w(L + f"self_attn.{p}_proj.weight", dtype) for p in "qkv"]),
                qkv_b=torch.cat([w(L + f"self_attn.{p}_proj.bias", dtype) for p in "qkv"]),
                o_w=w(L + "self_attn.out_proj.weight", dtype), o_b=w(L + "self_attn.out_proj.bias", dtype),
                ln2_w=w(L + "layer_norm2.weight", dtype), ln2_b=w(L + "layer_norm2.bias", dtype),
                fc1_w=w(L + "mlp.fc1.weight", dtype), fc1_b=w(L + "mlp.fc1.bias", dtype),
                fc2_w=w(L + "mlp.fc2.weight", dtype), fc2_b=w(L + "mlp.fc2.bias", dtype),
            ))
        return cls(patch_w=w(V + "embeddings.patch_embedding.weight", dtype),
                   patch_b=w(V + "embeddings.patch_embedding.bias", dtype),
                   pos_emb=w(V + "embeddings.position_embedding.weight", dtype), layers=layers,
                   post_ln_w=w(V + "post_layernorm.weight", dtype), post_ln_b=w(V + "post_layernorm.bias", dtype),
                   patch_size=cfg.patch_size, eps=cfg.layer_norm_eps, heads=cfg.num_attention_heads,
                   act=act_fn(cfg.hidden_act))

    def spec(self) -> tuple[Callable, dict]:
        return vision_layer, dict(heads=self.heads, eps=self.eps, act=self.act)

    def encode(self, layer_fn: Callable, pixels: torch.Tensor, pos_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → (N, P, width) after the post-layernorm. ``pos_emb`` (P, width)
        defaults to the table itself (one row per patch, in order)."""
        x = F.conv2d(pixels.to(self.patch_w.dtype), self.patch_w, self.patch_b, stride=self.patch_size)
        x = x.flatten(2).transpose(1, 2) + (self.pos_emb if pos_emb is None else pos_emb)
        for L in self.layers:
            x = layer_fn(x, *L.args())
        return F.layer_norm(x, (x.shape[-1],), self.post_ln_w, self.post_ln_b, self.eps)


def vision_layer(x, ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b, *,
                 heads: int, eps: float, act):
    n, p, d = x.shape
    hd = d // heads
    h = F.layer_norm(x, (d,), ln1_w, ln1_b, eps)
    q, k, v = F.linear(h, qkv_w, qkv_b).view(n, p, 3, heads, hd).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5)
    x = x + F.linear(a.transpose(1, 2).reshape(n, p, d), o_w, o_b)
    h = F.layer_norm(x, (d,), ln2_w, ln2_b, eps)
    return x + F.linear(act(F.linear(h, fc1_w, fc1_b)), fc2_w, fc2_b)


# ----------------------------------------------------------------------------------------------
# batch helpers


def as_nchw(img: torch.Tensor, key: str) -> torch.Tensor:
    """A batch image (B, 3, H, W) or (B, H, W, 3) (or (B, T, ...): the newest frame) as float (B, 3, H, W)."""
    if img.ndim == 5:
        img = img[:, -1]
    if img.ndim != 4:
        raise EngineError(f"{key}: expected (B, 3, H, W) or (B, H, W, 3), got {tuple(img.shape)}")
    if img.dtype != torch.float32:
        img = img.to(torch.float32)
    return img if img.shape[1] == 3 else img.permute(0, 3, 1, 2)


def model_image_hw(config) -> tuple[int, int]:
    """(H, W) the policy's images are resized to (π: ``image_resolution``; SmolVLA:
    ``resize_imgs_with_padding``, stored as (W, H)); else the first image feature's size."""
    if getattr(config, "image_resolution", None):
        return tuple(config.image_resolution)
    if getattr(config, "resize_imgs_with_padding", None):
        w, h = config.resize_imgs_with_padding
        return h, w
    shape = next(iter(config.image_features.values())).shape
    return shape[1], shape[2]


def dummy_batch(config, batch_size: int = 1) -> dict:
    """A pre-processor-shaped batch of the right shapes (grey images, one-token prompt, zero state)."""
    h, w = model_image_hw(config)
    batch = {k: torch.full((batch_size, 3, h, w), 0.5) for k in config.image_features}
    n = config.tokenizer_max_length
    batch[TOKENS] = torch.zeros(batch_size, n, dtype=torch.long)
    mask = torch.zeros(batch_size, n, dtype=torch.bool)
    mask[:, 0] = True
    batch[TOKEN_MASK] = mask
    batch[STATE] = torch.zeros(batch_size, config.input_features[STATE].shape[0] if STATE in config.input_features
                               else config.max_state_dim)
    return batch


# ----------------------------------------------------------------------------------------------
# the engine machinery


def _host_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Host → pinned host copy on the calling thread (numpy), not torch's OpenMP-parallel copy: measured
    on the GPU machine, that one stalled a frame copy by ~20 ms now and then (every call in one run),
    presumably its worker threads waking under the container's CPU quota."""
    if dst.dtype == torch.bfloat16 or src.dtype != dst.dtype:  # numpy has no bfloat16
        dst.copy_(src)
    else:
        np.copyto(dst.numpy(), src.numpy(), casting="no")


def _copy_in(dst: torch.Tensor, value: torch.Tensor, pin: torch.Tensor | None) -> None:
    """``value`` into the device buffer ``dst``: from the host through its pinned twin ``pin``
    (non-blocking), else directly."""
    if value.device.type == "cpu" and pin is not None:
        _host_copy(pin, value)
        dst.copy_(pin, non_blocking=True)
    else:
        dst.copy_(value)


def begin_stage(s: dict) -> None:
    """Before writing a state's pinned buffers: the last call's copies out of them are over."""
    if s.get("h2d_done") is not None:
        s["h2d_done"].synchronize()


def end_stage(s: dict) -> None:
    """After launching a state's copies out of its pinned buffers: mark them (``begin_stage`` waits)."""
    if s.get("pinned") is not None:
        s["h2d_done"] = torch.cuda.Event()
        s["h2d_done"].record()


def capture_graph(part: Callable[[dict], Any], s: dict, device, warm: int = 2, pool=None) -> "torch.cuda.CUDAGraph":
    """``part`` on the static buffers ``s`` as a CUDA graph (after ``warm`` runs on a side stream, which set
    up what a shape needs outside the capture; ``pool``: a memory pool shared with other graphs)."""
    torch.cuda.synchronize(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warm):
            part(s)
    torch.cuda.current_stream(device).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        part(s)
    return g


def timed_warmup(engine, batch: dict, progress: Callable[[str], None] | None, name: str, doing: str,
                 rtc: dict | None = None) -> float:
    """An engine's start-up call on ``batch``, timed into ``engine.startup["warmup_s"]``; ``progress`` (e.g. a
    node logger's ``info``) gets one line before (``doing``) and one after; ``rtc``: RTC inputs of a second,
    guided call (its graph is captured then, not at the first guided chunk). Returns seconds."""
    t0 = time.perf_counter()
    if progress is not None:
        progress(f"{name} engine: warm-up ({doing}) on {engine.device}, "
                 f"loaded in {engine.startup.get('load_s', 0.0):.1f} s")
    engine.predict_action_chunk(batch)
    if rtc is not None:
        engine.predict_action_chunk(batch, **rtc)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    engine.startup["warmup_s"] = time.perf_counter() - t0
    if progress is not None:
        progress(f"{name} engine: ready, first action after "
                 f"{engine.startup.get('load_s', 0.0) + engine.startup['warmup_s']:.1f} s (load + warm-up)")
    return engine.startup["warmup_s"]


RTC_JACOBIANS = ("identity", "full")


def rtc_guidance_weight(time: float, max_guidance_weight: float) -> float:
    """LeRobot's RTC guidance weight at flow time ``time`` (1 → 0), as ``RTCProcessor.denoise_step``
    computes it (fp32 tensors: τ = 1 - time, min(c·1/r², max) with c = (1-τ)/τ, 1/r² = ((1-τ)² + τ²)/(1-τ)²)."""
    max_w = torch.as_tensor(max_guidance_weight)
    tau = torch.as_tensor(1 - time)
    sq = (1 - tau) ** 2
    inv_r2 = (sq + tau ** 2) / sq
    c = torch.nan_to_num((1 - tau) / tau, posinf=float(max_w))
    return float(torch.minimum(torch.nan_to_num(c * inv_r2, posinf=float(max_w)), max_w))


class FlowEngine:
    """``predict_action_chunk(batch, noise=None) -> (B, chunk, action_dim)``: static buffers, staging,
    CUDA graphs, loading; the model itself is the subclass's (see the module docstring)."""

    def __init__(self, config, weights, steps: int, *, device, cuda_graph: bool = True, compile: bool | None = None):
        self.config = config
        self.w = weights  # the subclass's gathered weights (``_weights``), in ``weights.dtype``
        self.dtype = weights.dtype
        self.steps = steps  # the flow schedule: t = 1 → 0 in ``steps`` Euler steps of dt
        self.dt = -1.0 / steps
        self.device = torch.device(device)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.compile = (self.device.type == "cuda") if compile is None else compile
        self.image_keys = list(config.image_features)
        self.chunk = config.chunk_size
        self.max_action_dim = config.max_action_dim
        self.action_dim = config.output_features["action"].shape[0]
        self._graphs: dict[tuple, Any] = {}  # input shapes → the chunk's graph; ("vision", ...) → vision
        self._static: dict[tuple, dict] = {}
        self._last_key: tuple | None = None  # input shapes of the last call (prefetch stages into them)
        self._prefetched: tuple | None = None  # (key, {image key: tensor}) staged and encoded by prefetch
        self.prefetch_hits = 0  # calls that used a prefetch
        self.startup: dict[str, float] = {}
        self.rtc_processor = None  # LeRobot's RTCProcessor (its config and prefix weights) when RTC is on
        self.rtc_jacobian = "identity"  # RTC_JACOBIANS (module docstring)
        self._rtc_gw: list[float] = []  # the guidance weight of each Euler step
        self.init_rtc_processor()

    # ---- subclass hooks -----------------------------------------------------------------------

    @classmethod
    def _skeleton(cls, config):
        """LeRobot's own model class built on the meta device: structure and dims, no memory."""
        raise NotImplementedError

    @classmethod
    def _weights(cls, get: Callable[[str], torch.Tensor], skeleton, config, dtype, vision_dtype, device):
        raise NotImplementedError

    @staticmethod
    def _legacy_key(name: str, policy_type: str) -> str:
        """An older checkpoint's name for ``name`` (tried when ``name`` is not in the file)."""
        return name

    def _shape_key(self, batch: dict) -> tuple:
        raise NotImplementedError

    def _alloc(self, *key) -> dict:
        raise NotImplementedError

    def _stage_images(self, s: dict, batch: dict) -> None:
        """The batch's images (and image mask) into the static buffers (between begin_stage/end_stage)."""
        raise NotImplementedError

    def _stage_inputs(self, s: dict, batch: dict, noise: torch.Tensor | None) -> None:
        """Everything else the chunk reads (prompt, state, noise) into the static buffers."""
        raise NotImplementedError

    def _encode_images(self, s: dict) -> None:
        """The vision tower: the staged images → ``s["img_tok"]`` (image tokens, model dtype)."""
        raise NotImplementedError

    def _prefix(self, s: dict) -> None:
        """Image tokens + prompt (+ state) through the VLM into the static KV cache."""
        raise NotImplementedError

    def _velocity(self, s: dict, step: int, x_t: torch.Tensor) -> torch.Tensor:
        """The flow velocity v(x_t, t_step) (fp32, (B, chunk, max_action_dim)) over the cached prefix."""
        raise NotImplementedError

    def _denoise_step(self, s: dict, step: int, x_t: torch.Tensor) -> torch.Tensor:
        """One Euler step: returns x_t + dt · v(x_t, t_step)."""
        return x_t + self.dt * self._velocity(s, step, x_t)

    def _guided_velocity(self, s: dict, step: int, x_t: torch.Tensor) -> torch.Tensor:
        """RTC's guided velocity (LeRobot's ``RTCProcessor.denoise_step``; module docstring) from the staged
        left-over ``s["rtc_prev"]`` and prefix weights ``s["rtc_w"]``."""
        time = 1.0 + step * self.dt
        if self.rtc_jacobian == "full":
            # the VJP through the expert; inference_mode(False): a caller's inference mode would make the
            # activations inference tensors, which autograd cannot save
            with torch.inference_mode(False), torch.enable_grad():
                x = x_t.detach().requires_grad_(True)
                v_t = self._velocity(s, step, x)
                x1 = x - time * v_t
                err = (s["rtc_prev"] - x1) * s["rtc_w"]
                correction = torch.autograd.grad(x1, x, err.detach())[0]
            v_t = v_t.detach()
        else:  # v_t held constant, as LeRobot 0.6.1 computes it: the VJP of x1 w.r.t. x_t is err itself
            v_t = self._velocity(s, step, x_t)
            correction = (s["rtc_prev"] - (x_t - time * v_t)) * s["rtc_w"]
        return v_t - self._rtc_gw[step] * correction

    def _forward(self, s: dict) -> None:
        """The whole chunk on the static buffers."""
        self._vision_part(s)
        self._after_images(s)

    def _after_images(self, s: dict, guided: bool = False) -> None:
        """The chunk from the encoded images: the prefix once, then the Euler steps from the noise
        (``guided``: RTC's guided velocity from the staged left-over)."""
        self._prefix(s)
        x_t = s["noise"]
        for step in range(self.steps):
            v_t = self._guided_velocity(s, step, x_t) if guided else self._velocity(s, step, x_t)
            x_t = x_t + self.dt * v_t
        s["out"].copy_(x_t)

    def _finish(self, actions: torch.Tensor) -> torch.Tensor:
        return actions

    def _time_embeddings(self, width: int) -> list[torch.Tensor]:
        """LeRobot's sinusoidal time embedding (1, width) fp32 at each time of the fixed Euler
        schedule t = 1 + step · dt (``self.steps`` steps of ``self.dt``), for start-up precomputation."""
        from lerobot.policies.common.vla_utils import create_sinusoidal_pos_embedding

        out = []
        for step in range(self.steps):
            t = torch.tensor(1.0 + step * self.dt, dtype=torch.float32, device=self.device).expand(1)
            out.append(create_sinusoidal_pos_embedding(t, width, min_period=self.config.min_period,
                                                       max_period=self.config.max_period,
                                                       device=t.device).type(torch.float32))
        return out

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def _gather(cls, get, skeleton, config, dtype, vision_dtype, device):
        dtype = as_dtype(dtype)
        try:
            return cls._weights(get, skeleton, config, dtype, as_dtype(vision_dtype or dtype), device)
        except KeyError as e:
            raise EngineError(f"checkpoint lacks tensor {e.args[0]!r}") from None

    @classmethod
    def from_pretrained(cls, pretrained_dir: str | Path, *, device="cuda", dtype=torch.bfloat16,
                        vision_dtype=None, cuda_graph: bool = True, compile: bool | None = None, config=None):
        from safetensors import safe_open

        t0 = time.perf_counter()
        pretrained_dir = Path(pretrained_dir)
        if config is None:
            from lerobot.configs import PreTrainedConfig

            config = PreTrainedConfig.from_pretrained(pretrained_dir)
        skeleton = cls._skeleton(config)
        path = pretrained_dir / "model.safetensors"
        if not path.is_file():
            raise EngineError(f"{path}: no model.safetensors")
        dev = torch.device(device)
        load_dev = "cpu" if dev.type == "cpu" else str(dev if dev.index is not None else torch.device("cuda", 0))
        with safe_open(str(path), framework="pt", device=load_dev) as fh:
            keys = set(fh.keys())
            shapes = {n: tuple(p.shape) for n, p in skeleton.named_parameters()}

            def get(name: str) -> torch.Tensor:
                full = name if name in keys else f"model.{name}"
                if full not in keys:
                    alt = cls._legacy_key(name, config.type)
                    full = alt if alt in keys else f"model.{alt}" if f"model.{alt}" in keys else None
                    if full is None:
                        raise KeyError(name)
                t = fh.get_tensor(full)
                if name in shapes and tuple(t.shape) != shapes[name]:
                    raise EngineError(f"{path}: {full} has shape {tuple(t.shape)}, expected {shapes[name]}")
                return t

            weights = cls._gather(get, skeleton, config, dtype, vision_dtype, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        eng = cls(config, weights, device=dev, cuda_graph=cuda_graph, compile=compile)
        eng.startup["load_s"] = time.perf_counter() - t0
        return eng

    @classmethod
    def from_policy(cls, policy, *, device=None, dtype=torch.bfloat16, vision_dtype=None,
                    cuda_graph: bool = True, compile: bool | None = None):
        """Build from an already loaded LeRobot policy (its tensors are converted, not shared)."""
        model = policy.model
        sd = dict(model.state_dict())
        dev = torch.device(device) if device is not None else next(model.parameters()).device

        def get(name):
            if name not in sd:
                raise KeyError(name)
            return sd[name]

        weights = cls._gather(get, model, policy.config, dtype, vision_dtype, dev)
        return cls(policy.config, weights, device=dev, cuda_graph=cuda_graph, compile=compile)

    # ---- staging ------------------------------------------------------------------------------

    INPUTS = ("images", "img_mask", "tokens", "token_mask", "state", "noise", "rtc_prev", "rtc_w")

    def _input_buffers(self, b: int, nimg: int, ntok: int, hw: tuple[int, int]) -> dict:
        """The static device buffers a batch is staged into (``INPUTS``) and the output buffer."""
        dev = self.device
        return {
            "images": torch.zeros(b * nimg, 3, *hw, device=dev),  # rows (B, nimg), [0, 1]
            "img_mask": torch.ones(b, nimg, dtype=torch.bool, device=dev),
            "tokens": torch.zeros(b, ntok, dtype=torch.long, device=dev),
            "token_mask": torch.zeros(b, ntok, dtype=torch.bool, device=dev),
            "state": torch.zeros(b, self.config.max_state_dim, device=dev),
            "noise": torch.zeros(b, self.chunk, self.max_action_dim, device=dev),
            "out": torch.zeros(b, self.chunk, self.max_action_dim, device=dev),
            # RTC: the previous chunk's left-over (zero-padded) and its prefix weights (module docstring)
            "rtc_prev": torch.zeros(b, self.chunk, self.max_action_dim, device=dev),
            "rtc_w": torch.zeros(b, self.chunk, 1, device=dev),
        }

    def _pin(self, s: dict, names=INPUTS) -> dict:
        """Pinned host twins of the input buffers ``names`` (CUDA only)."""
        if self.device.type == "cuda":
            s["pinned"] = {k: torch.empty(s[k].shape, dtype=s[k].dtype, pin_memory=True) for k in names}
        return s

    @staticmethod
    def _tokens(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, tmask = batch.get(TOKENS), batch.get(TOKEN_MASK)
        if tokens is None or tmask is None:
            raise EngineError(f"batch needs {TOKENS!r} and {TOKEN_MASK!r} (LeRobot's tokenizer step)")
        return tokens, tmask

    def _state(self, batch: dict, adapt: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The batch's state (its newest step) as fp32 (B, max_state_dim), zero-padded; ``adapt`` first."""
        if STATE not in batch:
            raise EngineError(f"batch needs {STATE!r}")
        st = batch[STATE].to(torch.float32)
        st = st[:, -1] if st.ndim > 2 else st
        if st.shape[-1] > self.config.max_state_dim:
            raise EngineError(f"{STATE}: dim {st.shape[-1]} > max_state_dim {self.config.max_state_dim}")
        if adapt is not None:
            st = adapt(st.clone())
        st = F.pad(st, (0, self.config.max_state_dim - st.shape[-1]))
        if not torch.isfinite(st).all():
            raise EngineError(f"{STATE}: non-finite values")
        return st

    def _put(self, s: dict, name: str, value: torch.Tensor, sl=slice(None), key: str | None = None) -> None:
        """Copy ``value`` into the static buffer ``s[name][sl]`` (through its pinned twin from the host)."""
        dst = s[name][sl]
        if tuple(value.shape) != tuple(dst.shape):
            raise EngineError(f"{key or name}: shape {tuple(value.shape)}, expected {tuple(dst.shape)} "
                              f"(batch size and prompt length must match the batch's tokens)")
        pinned = s.get("pinned")
        _copy_in(dst, value, pinned[name][sl] if pinned is not None else None)

    def _put_image(self, s: dict, img: torch.Tensor, sl, key: str) -> None:
        """One camera's images into ``s["images"][sl]`` (rows of that camera). Float images are
        converted now (``_image``: resize to the model's input). Raw frames (uint8 (B, H, W, 3), as a
        camera gives them; (B, T, H, W, 3): the newest) are staged as they are, a quarter of float's
        bytes, and converted on the device inside the vision graph (``_vision_part``): the host
        launches one copy per camera, not a string of small kernels."""
        if img.dtype == torch.uint8 and img.ndim == 5:
            img = img[:, -1]
        if not (img.dtype == torch.uint8 and img.ndim == 4 and img.shape[-1] == 3):
            self._put(s, "images", self._image(img, key), sl, key=key)
            return
        rows = s["images"][sl].shape[0]
        if img.shape[0] != rows:
            raise EngineError(f"{key}: {img.shape[0]} frames, expected {rows} (the batch size of the tokens)")
        # one buffer per camera and frame size, kept: a captured vision graph reads it
        raw, pin, slot = s.setdefault("raw", {}), s.setdefault("raw_pinned", {}), (key, tuple(img.shape))
        if slot not in raw:
            raw[slot] = torch.empty(img.shape, dtype=torch.uint8, device=self.device)
            if self.device.type == "cuda":
                pin[slot] = torch.empty(img.shape, dtype=torch.uint8, pin_memory=True)
        _copy_in(raw[slot], img, pin.get(slot))
        s["raw_now"][key] = (raw[slot], sl)

    def _vision_part(self, s: dict) -> None:
        """The first CUDA graph: this call's raw frames → float [0, 1] at the model's size in
        ``s["images"]`` (LeRobot's ``/255`` and the model's resize), then the vision tower."""
        for key, (buf, sl) in s.get("raw_now", {}).items():
            s["images"][sl].copy_(self._image(buf.permute(0, 3, 1, 2).float().div(255.0), key))
        self._encode_images(s)

    def _stage_image_part(self, s: dict, batch: dict) -> None:
        s["raw_now"] = {}
        self._stage_images(s, batch)
        s["image_sig"] = self._image_sig(batch)
        s["raw_sig"] = tuple((k, tuple(buf.shape)) for k, (buf, _) in s["raw_now"].items())

    def _put_noise(self, s: dict, noise: torch.Tensor | None) -> None:
        if noise is None:
            s["noise"].normal_()
            return
        if tuple(noise.shape) != tuple(s["noise"].shape):
            raise EngineError(f"noise shape {tuple(noise.shape)} != {tuple(s['noise'].shape)}")
        self._put(s, "noise", noise.to(torch.float32))

    def _stage(self, s: dict, batch: dict, noise: torch.Tensor | None, images: bool = True,
               begin: bool = True) -> None:
        """Copy the batch into the static device buffers (pinned + non-blocking from the host; ``begin``:
        wait for the last call's copies out of the pinned buffers first, unless the caller did)."""
        if begin:
            begin_stage(s)
        if images:
            self._stage_image_part(s, batch)
        self._stage_inputs(s, batch, noise)
        end_stage(s)

    def _image_sig(self, batch: dict) -> tuple:
        return tuple((k, tuple(batch[k].shape), batch[k].dtype) for k in self.image_keys if k in batch)

    # ---- RTC guidance (module docstring) ------------------------------------------------------------
    # the names are LeRobot's policy API (supports_rtc, _rtc_enabled, init_rtc_processor): the ``lerobot``
    # backend turns RTC on the same way for LeRobot's policy and for this engine

    def supports_rtc(self) -> bool:
        return True

    def _rtc_enabled(self) -> bool:
        cfg = getattr(self.config, "rtc_config", None)
        return cfg is not None and cfg.enabled and self.rtc_processor is not None

    def init_rtc_processor(self, jacobian: str | None = None) -> None:
        """(Re)read ``config.rtc_config`` (LeRobot's ``RTCConfig``: execution horizon, prefix schedule, max
        guidance weight); ``jacobian``: one of ``RTC_JACOBIANS`` (default: keep the current one)."""
        if jacobian is not None:
            if jacobian not in RTC_JACOBIANS:
                raise EngineError(f"rtc_jacobian {jacobian!r}: expected one of {RTC_JACOBIANS}")
            self.rtc_jacobian = jacobian
        cfg = getattr(self.config, "rtc_config", None)
        if cfg is None:
            self.rtc_processor, self._rtc_gw = None, []
            return
        from lerobot.policies.rtc.modeling_rtc import RTCProcessor

        self.rtc_processor = RTCProcessor(cfg)
        self._rtc_gw = [rtc_guidance_weight(1.0 + step * self.dt, cfg.max_guidance_weight)
                        for step in range(self.steps)]

    def _stage_rtc(self, s: dict, prev: torch.Tensor, delay, horizon) -> None:
        """The left-over (``(T, A)`` or ``(B, T, A)``, T ≤ chunk, A ≤ max_action_dim: zero-padded as LeRobot
        pads it) and the prefix weights of (delay, horizon) into ``s["rtc_prev"]``, ``s["rtc_w"]``."""
        b = s["rtc_prev"].shape[0]
        prev = torch.as_tensor(prev)
        if prev.ndim == 2:
            prev = prev[None]
        if prev.ndim != 3 or prev.shape[0] not in (1, b) or prev.shape[1] < 1 \
                or prev.shape[1] > self.chunk or prev.shape[2] > self.max_action_dim:
            raise EngineError(f"prev_chunk_left_over: shape {tuple(prev.shape)}, expected ({b}, T ≤ {self.chunk}, "
                              f"A ≤ {self.max_action_dim}) or (T, A)")
        if not bool(torch.isfinite(prev).all()):
            raise EngineError("prev_chunk_left_over: non-finite values")
        if delay is None:
            raise EngineError("prev_chunk_left_over needs inference_delay (steps the robot runs on it meanwhile)")
        delay = int(delay)
        if delay < 0:
            raise EngineError(f"inference_delay {delay} < 0")
        horizon = self.rtc_processor.rtc_config.execution_horizon if horizon is None else int(horizon)
        horizon = min(horizon, prev.shape[1])  # LeRobot: nothing to merge past the left-over's end
        padded = torch.zeros(b, self.chunk, self.max_action_dim, device=prev.device)
        padded[:, : prev.shape[1], : prev.shape[2]] = prev.detach().to(torch.float32)
        self._put(s, "rtc_prev", padded, key="prev_chunk_left_over")
        w = self.rtc_processor.get_prefix_weights(delay, horizon, self.chunk).to(torch.float32)
        self._put(s, "rtc_w", w[None, :, None].expand(b, -1, -1).contiguous(), key="inference_delay")

    # ---- the call -----------------------------------------------------------------------------

    def _state_for(self, *key) -> dict:
        if key not in self._static:
            self._static[key] = self._alloc(*key)
        return self._static[key]

    def _run(self, key, s, images: bool = True, rest: bool = True, guided: bool = False):
        """The vision graph (per input shapes and raw-frame shapes: the conversion is in it), then the
        rest of the chunk (per input shapes; RTC-guided: a graph of its own per Jacobian mode); captured
        on first use; eager without CUDA graphs."""
        if not self.cuda_graph:
            if images:
                self._vision_part(s)
            if rest:
                self._after_images(s, guided)
            return
        if images:
            vkey = ("vision", key, s.get("raw_sig", ()))
            if vkey not in self._graphs:
                self._graphs[vkey] = capture_graph(self._vision_part, s, self.device)
            self._graphs[vkey].replay()
        if rest:
            rkey = ("rtc", self.rtc_jacobian, key) if guided else key
            part = (lambda st: self._after_images(st, True)) if guided else self._after_images
            if rkey not in self._graphs:
                try:
                    self._graphs[rkey] = capture_graph(part, s, self.device)
                except RuntimeError as exc:
                    if not (guided and self.rtc_jacobian == "full"):
                        raise
                    # the autograd backward would not capture (a torch/driver without it): that chunk
                    # runs uncaptured, the same arithmetic; said once per input shape
                    log.warning("RTC full-VJP guidance not captured in a CUDA graph (%s: %s): it runs without "
                                "one (slower); rtc_jacobian identity is captured", type(exc).__name__, exc)
                    torch.cuda.synchronize(self.device)
                    self._graphs[rkey] = None
            graph = self._graphs[rkey]
            if graph is None:
                part(s)
            else:
                graph.replay()

    @torch.inference_mode()  # in-place on the buffers, whichever mode the first call made them in
    def prefetch(self, batch: dict) -> bool:
        """Stage ``batch``'s images and start the vision tower now (asynchronous on a GPU).

        ``batch`` needs only the images (the pre-processor has not run yet). It goes into the static
        buffers of the last call's input shapes; the next :meth:`predict_action_chunk` whose batch holds
        these same image tensors (the pre-processor passes them through) skips staging and encoding
        them. Returns False (nothing done) before the first call or when the images' keys/shapes are
        not the last call's. Any call consumes the prefetch, used or not.
        """
        key = self._last_key
        s = self._static.get(key) if key is not None else None
        sig = self._image_sig(batch)
        if s is None or not sig or sig != s.get("image_sig"):
            self._prefetched = None
            return False
        begin_stage(s)
        self._stage_image_part(s, batch)
        end_stage(s)
        self._run(key, s, rest=False)
        self._prefetched = (key, {k: batch[k] for k in self.image_keys if k in batch})
        return True

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, noise: torch.Tensor | None = None, *,
                             prev_chunk_left_over: torch.Tensor | None = None, inference_delay=None,
                             execution_horizon: int | None = None) -> torch.Tensor:
        """Actions (B, chunk_size, action_dim) fp32 on the engine's device (normalised, as LeRobot).

        RTC (module docstring; RTC enabled): ``prev_chunk_left_over`` (the previous chunk's un-executed
        rest, model space) guides the chunk toward it over its first ``inference_delay`` actions and the
        schedule to ``execution_horizon`` (default: ``config.rtc_config``'s); without it, the plain chunk."""
        rtc_inputs = (prev_chunk_left_over, inference_delay, execution_horizon)
        if not self._rtc_enabled() and any(v is not None for v in rtc_inputs):
            raise EngineError("RTC inputs given but RTC guidance is off (no enabled config.rtc_config; "
                              "init_rtc_processor)")
        guided = prev_chunk_left_over is not None
        key = self._shape_key(batch)
        s = self._state_for(*key)
        pre, self._prefetched = self._prefetched, None
        done = (pre is not None and pre[0] == key and self._image_sig(batch) == s.get("image_sig")
                and all(batch.get(k) is t for k, t in pre[1].items()))  # this batch's images are encoded
        begin_stage(s)
        if guided:
            self._stage_rtc(s, prev_chunk_left_over, inference_delay, execution_horizon)
        self._stage(s, batch, noise, images=not done, begin=False)
        self._run(key, s, images=not done, guided=guided)
        self._last_key = key
        self.prefetch_hits += done
        out = s["out"][:, :, : self.action_dim].clone()
        if not bool(torch.isfinite(out).all()):
            raise EngineError("non-finite actions (NaN/inf in the images or the weights?)")
        return self._finish(out)

    @torch.no_grad()
    def warmup(self, batch: dict | None = None, progress: Callable[[str], None] | None = None) -> float:
        """Allocate the buffers, compile the layers, capture the CUDA graph and run once (start-up).

        ``batch`` defaults to :meth:`dummy_batch` (same shapes as real inputs: the graph is keyed by
        the input shapes). ``progress`` (e.g. a node logger's ``info``) gets one line before and one
        after. Returns seconds.
        """
        what = ["compiling layers" if self.compile else None, "capturing CUDA graph" if self.cuda_graph else None]
        rtc = None
        if self._rtc_enabled():
            what.append(f"RTC-guided ({self.rtc_jacobian}) too")
            rtc = {"prev_chunk_left_over": torch.zeros(self.chunk, self.action_dim), "inference_delay": 0}
        return timed_warmup(self, batch if batch is not None else self.dummy_batch(), progress, self.config.type,
                            ", ".join(w for w in what if w) or "eager", rtc=rtc)

    def dummy_batch(self, batch_size: int = 1) -> dict:
        """A post-processor-shaped batch of the right shapes (grey images, one-token prompt, zero state)."""
        return dummy_batch(self.config, batch_size)

    def reset(self) -> None:
        pass
