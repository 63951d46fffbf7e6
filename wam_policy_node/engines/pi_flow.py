"""Fast inference for LeRobot π0 / π0.5 checkpoints (flow matching, PaliGemma + Gemma expert).

Same weights, same inputs and the same function as LeRobot 0.6.1's
``PI0Policy.predict_action_chunk`` / ``PI05Policy.predict_action_chunk`` (the batch that comes out
of LeRobot's own pre-processor: images float [0,1], tokens + mask, normalised state), computed
differently:

* weights read from ``model.safetensors`` straight to the device in the target dtype (no random
  init, no fp32 copy on the host); q/k/v and gate/up projections fused into one GEMM each;
* SDPA (flash / memory-efficient kernels) instead of eager attention. Gemma has one KV head, so
  the 8 query heads are folded into the query sequence (one "head" of 8·L queries) — no
  ``repeat_kv`` and a kernel that takes a mask;
* the prefix (3 images + prompt) runs once per chunk and writes its keys/values straight into
  a preallocated static KV cache; each of the 10 flow steps writes the suffix keys/values into
  the tail of the same buffer (no ``DynamicCache``, no per-step clone);
* everything that depends only on the flow time (the sinusoidal time embedding, π0's time part
  of the action-time MLP input, π0.5's adaRMS modulations of all 18 layers) is computed once at
  start-up for the fixed Euler schedule;
* on CUDA the whole chunk (vision → prefix → 10 denoise steps) is captured in one CUDA graph;
  inputs go through pinned host buffers with non-blocking copies;
* the prefix's last layer skips its attention output and MLP (nothing reads them).

RTC guidance (``inference_delay`` / ``prev_chunk_left_over``) is not implemented here: use the
eager reference for it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F  # noqa: N812

IMAGE_PREFIX = "observation.images."
TOKENS = "observation.language.tokens"
TOKEN_MASK = "observation.language.attention_mask"
STATE = "observation.state"


class EngineError(RuntimeError):
    """Checkpoint or input problem; the message names the key."""


# ----------------------------------------------------------------------------------------------
# weights


@dataclass
class _GemmaLayer:
    a1: torch.Tensor | None  # 1 + RMSNorm weight, (W,) fp32; None when adaRMS (π0.5 expert)
    a2: torch.Tensor | None
    qkv: torch.Tensor  # (H*D + 2*KV*D, W)
    o: torch.Tensor  # (W, H*D)
    gate_up: torch.Tensor  # (2*M, W)
    down: torch.Tensor  # (W, M)


@dataclass
class _VisionLayer:
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


def _rope_inv_freq(cfg, head_dim: int) -> torch.Tensor:
    params = getattr(cfg, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise EngineError(f"rope_type {rope_type!r} not supported by the fast engine")
    base = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _act(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    # module-level functions (stable identities: compiled code is reused across engines)
    if name in ("gelu_pytorch_tanh", "gelu_fast", "gelu_new"):
        return _gelu_tanh
    if name == "gelu":
        return F.gelu
    raise EngineError(f"activation {name!r} not supported by the fast engine")


class _Weights:
    """The tensors the fast forward reads, gathered from a LeRobot π0/π0.5 state dict."""

    def __init__(self, get: Callable[[str], torch.Tensor], skeleton, *, pi05: bool, dtype, vision_dtype,
                 device):
        pwe = skeleton.paligemma_with_expert
        self.text_cfg = pwe.paligemma.config.text_config
        self.vision_cfg = pwe.paligemma.config.vision_config
        self.expert_cfg = pwe.gemma_expert.config
        self.pi05 = pi05
        self.dtype = dtype
        self.vision_dtype = vision_dtype
        f32 = torch.float32

        def w(name, dt):
            t = get(name)
            return t.to(device=device, dtype=dt)

        P = "paligemma_with_expert.paligemma.model."
        V = P + "vision_tower.vision_model."
        vd = vision_dtype
        self.patch_w = w(V + "embeddings.patch_embedding.weight", vd)
        self.patch_b = w(V + "embeddings.patch_embedding.bias", vd)
        self.pos_emb = w(V + "embeddings.position_embedding.weight", vd)
        self.vision_layers = []
        for i in range(self.vision_cfg.num_hidden_layers):
            L = f"{V}encoder.layers.{i}."
            self.vision_layers.append(_VisionLayer(
                ln1_w=w(L + "layer_norm1.weight", vd), ln1_b=w(L + "layer_norm1.bias", vd),
                qkv_w=torch.cat([w(L + f"self_attn.{p}_proj.weight", vd) for p in "qkv"]),
                qkv_b=torch.cat([w(L + f"self_attn.{p}_proj.bias", vd) for p in "qkv"]),
                o_w=w(L + "self_attn.out_proj.weight", vd), o_b=w(L + "self_attn.out_proj.bias", vd),
                ln2_w=w(L + "layer_norm2.weight", vd), ln2_b=w(L + "layer_norm2.bias", vd),
                fc1_w=w(L + "mlp.fc1.weight", vd), fc1_b=w(L + "mlp.fc1.bias", vd),
                fc2_w=w(L + "mlp.fc2.weight", vd), fc2_b=w(L + "mlp.fc2.bias", vd),
            ))
        self.post_ln_w = w(V + "post_layernorm.weight", vd)
        self.post_ln_b = w(V + "post_layernorm.bias", vd)
        self.proj_w = w(P + "multi_modal_projector.linear.weight", vd)
        self.proj_b = w(P + "multi_modal_projector.linear.bias", vd)
        self.vision_act = _act(self.vision_cfg.hidden_act)

        LM = P + "language_model."
        try:
            self.embed = w(LM + "embed_tokens.weight", dtype)
        except KeyError:
            self.embed = w("paligemma_with_expert.paligemma.lm_head.weight", dtype)
        self.embed_scale = torch.tensor(self.text_cfg.hidden_size ** 0.5).to(dtype).to(device)
        self.text_layers = [self._gemma_layer(w, f"{LM}layers.{i}.", adarms=False)
                            for i in range(self.text_cfg.num_hidden_layers)]
        self.text_act = _act(self.text_cfg.hidden_activation or self.text_cfg.hidden_act)

        E = "paligemma_with_expert.gemma_expert.model."
        self.expert_layers = [self._gemma_layer(w, f"{E}layers.{i}.", adarms=pi05)
                              for i in range(self.expert_cfg.num_hidden_layers)]
        self.expert_act = _act(self.expert_cfg.hidden_activation or self.expert_cfg.hidden_act)
        # adaRMS dense layers (π0.5): kept for the start-up precomputation only
        self.adarms: list[tuple[torch.Tensor, torch.Tensor]] = []
        if pi05:
            for i in range(self.expert_cfg.num_hidden_layers):
                for n in ("input_layernorm", "post_attention_layernorm"):
                    self.adarms.append((w(f"{E}layers.{i}.{n}.dense.weight", f32), w(f"{E}layers.{i}.{n}.dense.bias", f32)))
            self.adarms.append((w(E + "norm.dense.weight", f32), w(E + "norm.dense.bias", f32)))
            self.final_a = None
            self.time_mlp = [(w("time_mlp_in.weight", f32), w("time_mlp_in.bias", f32)),
                             (w("time_mlp_out.weight", f32), w("time_mlp_out.bias", f32))]
        else:
            self.final_a = 1.0 + w(E + "norm.weight", f32)
            self.state_proj = (w("state_proj.weight", f32), w("state_proj.bias", f32))
            self.time_mlp = [(w("action_time_mlp_in.weight", f32), w("action_time_mlp_in.bias", f32)),
                             (w("action_time_mlp_out.weight", f32), w("action_time_mlp_out.bias", f32))]
        self.action_in = (w("action_in_proj.weight", f32), w("action_in_proj.bias", f32))
        self.action_out = (w("action_out_proj.weight", f32), w("action_out_proj.bias", f32))

        tc, ec = self.text_cfg, self.expert_cfg
        self.heads = tc.num_attention_heads
        self.head_dim = tc.head_dim
        if tc.num_key_value_heads != 1 or ec.num_key_value_heads != 1:
            raise EngineError("the fast engine expects one KV head (Gemma multi-query attention)")
        if (ec.num_attention_heads, ec.head_dim) != (self.heads, self.head_dim):
            raise EngineError("expert and VLM attention shapes differ")
        if tc.num_hidden_layers != ec.num_hidden_layers:
            raise EngineError("expert and VLM depths differ")
        self.text_inv_freq = _rope_inv_freq(tc, self.head_dim).to(device)
        self.expert_inv_freq = _rope_inv_freq(ec, self.head_dim).to(device)
        self.text_eps = tc.rms_norm_eps
        self.expert_eps = ec.rms_norm_eps

    def _gemma_layer(self, w, L, adarms: bool) -> _GemmaLayer:
        d, f32 = self.dtype, torch.float32
        return _GemmaLayer(
            a1=None if adarms else 1.0 + w(L + "input_layernorm.weight", f32),
            a2=None if adarms else 1.0 + w(L + "post_attention_layernorm.weight", f32),
            qkv=torch.cat([w(L + f"self_attn.{p}_proj.weight", d) for p in "qkv"]),
            o=w(L + "self_attn.o_proj.weight", d),
            gate_up=torch.cat([w(L + "mlp.gate_proj.weight", d), w(L + "mlp.up_proj.weight", d)]),
            down=w(L + "mlp.down_proj.weight", d),
        )


# ----------------------------------------------------------------------------------------------
# layer functions: pure tensor code (weights as arguments), one per layer kind, so that on CUDA
# each can be compiled once (torch.compile fuses the norm / rope / residual / gating element-wise
# chains) and reused for every layer of its stack. Each mirrors LeRobot/transformers' arithmetic
# and dtype casts (norms in fp32, residual stream in the model dtype, softmax in fp32).


def _norm(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Gemma RMSNorm with a = 1 + weight (π0), or adaRMS with a = 1 + scale, b = shift (π0.5)."""
    var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
    y = x * torch.rsqrt(var + eps) * a
    if b is not None:
        y = y + b
    return y.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _cos_sin(pos: torch.Tensor, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = pos[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)  # (B, N, D)


def _vision_layer(x, ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b, *,
                  heads: int, eps: float, act):
    n, p, d = x.shape
    hd = d // heads
    h = F.layer_norm(x, (d,), ln1_w, ln1_b, eps)
    q, k, v = F.linear(h, qkv_w, qkv_b).view(n, p, 3, heads, hd).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5)
    x = x + F.linear(a.transpose(1, 2).reshape(n, p, d), o_w, o_b)
    h = F.layer_norm(x, (d,), ln2_w, ln2_b, eps)
    return x + F.linear(act(F.linear(h, fc1_w, fc1_b)), fc2_w, fc2_b)


def _text_layer(x, cos, sin, key_mask, a1, qkv_w, o_w, a2, gate_up_w, down_w, *, heads: int, head_dim: int,
                eps: float, act, last: bool):
    """One VLM layer over the prefix → (x, k, v); k, v (B, L, D) go to the KV cache."""
    b, n, _ = x.shape
    H, D = heads, head_dim
    h = _norm(x, a1, None, eps)
    qkv = F.linear(h, qkv_w)
    k = _rope(qkv[..., H * D: H * D + D], cos, sin)
    v = qkv[..., H * D + D:]
    if last:  # the prefix's last hidden states are never read: only its keys/values
        return x, k, v
    q = _rope(qkv[..., : H * D].view(b, n, H, D), cos[:, :, None], sin[:, :, None])
    q = q.transpose(1, 2).reshape(b, 1, H * n, D)  # one KV head: fold the heads into the queries
    a = F.scaled_dot_product_attention(q, k[:, None], v[:, None], attn_mask=key_mask, scale=D ** -0.5)
    a = a.view(b, H, n, D).transpose(1, 2).reshape(b, n, H * D)
    x = x + F.linear(a, o_w)
    h = _norm(x, a2, None, eps)
    g, u = F.linear(h, gate_up_w).chunk(2, dim=-1)
    return x + F.linear(act(g) * u, down_w), k, v


def _expert_layer(x, cos, sin, mask, kp, vp, qkv_w, o_w, gate_up_w, down_w, a1, b1, g1, a2, b2, g2, *,
                  heads: int, head_dim: int, eps: float, act):
    """One action-expert layer over the suffix, attending to the cached prefix (kp, vp) + itself.

    Attention as LeRobot's eager path does it (scores in the model dtype, + mask, softmax in fp32,
    probabilities back to the model dtype): at 8·51 queries a few small GEMMs beat a fused kernel.
    """
    b, n, _ = x.shape
    H, D = heads, head_dim
    h = _norm(x, a1, b1, eps)
    qkv = F.linear(h, qkv_w)
    q = _rope(qkv[..., : H * D].view(b, n, H, D), cos[:, :, None], sin[:, :, None])
    q = q.transpose(1, 2).reshape(b, H * n, D)
    k = torch.cat([kp, _rope(qkv[..., H * D: H * D + D], cos, sin)], dim=1)
    v = torch.cat([vp, qkv[..., H * D + D:]], dim=1)
    scores = torch.matmul(q, k.transpose(1, 2)) * (D ** -0.5)
    probs = torch.softmax(scores.float() + mask, dim=-1).to(x.dtype)
    a = torch.matmul(probs, v).view(b, H, n, D).transpose(1, 2).reshape(b, n, H * D)
    o = F.linear(a, o_w)
    x = x + (o if g1 is None else o * g1)
    h = _norm(x, a2, b2, eps)
    gg, u = F.linear(h, gate_up_w).chunk(2, dim=-1)
    y = F.linear(act(gg) * u, down_w)
    return x + (y if g2 is None else y * g2)


def _suffix_in_pi0(x_t, state, temb, in_w, in_b, mlp_in_w, mlp_in_b, mlp_out_w, mlp_out_b, st_w, st_b, *, dtype):
    act = F.linear(x_t, in_w, in_b)
    at = torch.cat([act, temb[:, None, :].expand_as(act)], dim=2)
    at = F.linear(F.silu(F.linear(at, mlp_in_w, mlp_in_b)), mlp_out_w, mlp_out_b)
    st = F.linear(state, st_w, st_b)[:, None, :]
    return torch.cat([st, at], dim=1).to(dtype)


def _suffix_in_pi05(x_t, in_w, in_b, *, dtype):
    return F.linear(x_t, in_w, in_b).to(dtype)


def _suffix_out(x, a, b, x_t, out_w, out_b, *, eps: float, chunk: int, dt: float):
    """Final norm, action projection and the Euler step x_t + dt · v_t (fp32)."""
    x = _norm(x, a, b, eps)
    v_t = F.linear(x[:, -chunk:].to(torch.float32), out_w, out_b)
    return x_t + dt * v_t


# ----------------------------------------------------------------------------------------------
# engine


class PiFlowEngine:
    """``predict_action_chunk(batch, noise=None) -> (B, chunk, action_dim)`` for π0 / π0.5."""

    def __init__(self, config, weights: _Weights, *, device, cuda_graph: bool = True, compile: bool | None = None):
        self.config = config
        self.w = weights
        self.device = torch.device(device)
        self.dtype = weights.dtype
        self.pi05 = weights.pi05
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.compile = (self.device.type == "cuda") if compile is None else compile
        self.image_keys = list(config.image_features)
        self.chunk = config.chunk_size
        self.max_action_dim = config.max_action_dim
        self.action_dim = config.output_features["action"].shape[0]
        self.steps = config.num_inference_steps
        self._graphs: dict[tuple, Any] = {}
        self._static: dict[tuple, dict] = {}
        self.startup: dict[str, float] = {}
        self._precompute_time()
        self._build_fns()

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_dir: str | Path, *, device="cuda", dtype=torch.bfloat16,
                        vision_dtype=None, cuda_graph: bool = True, compile: bool | None = None,
                        config=None) -> "PiFlowEngine":
        from safetensors import safe_open

        t0 = time.perf_counter()
        pretrained_dir = Path(pretrained_dir)
        if config is None:
            from lerobot.configs import PreTrainedConfig

            config = PreTrainedConfig.from_pretrained(pretrained_dir)
        skeleton = _skeleton(config)
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
                    alt = _legacy_key(name, config.type)
                    full = alt if alt in keys else f"model.{alt}" if f"model.{alt}" in keys else None
                    if full is None:
                        raise KeyError(name)
                t = fh.get_tensor(full)
                if name in shapes and tuple(t.shape) != shapes[name]:
                    raise EngineError(f"{path}: {full} has shape {tuple(t.shape)}, expected {shapes[name]}")
                return t

            weights = _gather(get, skeleton, config, dtype, vision_dtype, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        eng = cls(config, weights, device=dev, cuda_graph=cuda_graph, compile=compile)
        eng.startup["load_s"] = time.perf_counter() - t0
        return eng

    @classmethod
    def from_policy(cls, policy, *, device=None, dtype=torch.bfloat16, vision_dtype=None,
                    cuda_graph: bool = True, compile: bool | None = None) -> "PiFlowEngine":
        """Build from an already loaded LeRobot policy (its tensors are converted, not shared)."""
        model = policy.model
        sd = {k: v for k, v in model.state_dict().items()}
        dev = torch.device(device) if device is not None else next(model.parameters()).device

        def get(name):
            if name not in sd:
                raise KeyError(name)
            return sd[name]

        weights = _gather(get, model, policy.config, dtype, vision_dtype, dev)
        return cls(policy.config, weights, device=dev, cuda_graph=cuda_graph, compile=compile)

    def _build_fns(self):
        """The layer functions with their constant keyword arguments; compiled on CUDA.

        Each function is compiled once per shape/dtype (the weights are arguments, so all the
        layers of a stack share one compiled graph, and so do engines of the same shapes).
        """
        w = self.w
        vc = w.vision_cfg
        specs = {
            "vision": (_vision_layer, dict(heads=vc.num_attention_heads, eps=vc.layer_norm_eps, act=w.vision_act)),
            "text": (_text_layer, dict(heads=w.heads, head_dim=w.head_dim, eps=w.text_eps, act=w.text_act,
                                       last=False)),
            "text_last": (_text_layer, dict(heads=w.heads, head_dim=w.head_dim, eps=w.text_eps, act=w.text_act,
                                            last=True)),
            "expert": (_expert_layer, dict(heads=w.heads, head_dim=w.head_dim, eps=w.expert_eps, act=w.expert_act)),
            "suffix_in": (_suffix_in_pi05, dict(dtype=self.dtype)) if self.pi05
            else (_suffix_in_pi0, dict(dtype=self.dtype)),
            "suffix_out": (_suffix_out, dict(eps=w.expert_eps, chunk=self.chunk, dt=self.dt)),
        }
        compiled = {}
        if self.compile:
            import torch._dynamo

            cfg = torch._dynamo.config
            cfg.recompile_limit = max(cfg.recompile_limit, 64)
            cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 1024)
            for fn, _ in specs.values():
                if fn not in compiled:
                    compiled[fn] = _compiled(fn)
        self.fn = {name: _bind(compiled.get(fn, fn), kw) for name, (fn, kw) in specs.items()}

    # ---- time-only terms ------------------------------------------------------------------------

    def _precompute_time(self):
        from lerobot.policies.common.vla_utils import create_sinusoidal_pos_embedding

        w, cfg, dev = self.w, self.config, self.device
        dt = -1.0 / self.steps
        width = w.action_in[0].shape[0]
        self.dt = dt
        per_step = []
        for step in range(self.steps):
            t = torch.tensor(1.0 + step * dt, dtype=torch.float32, device=dev).expand(1)
            emb = create_sinusoidal_pos_embedding(t, width, min_period=cfg.min_period,
                                                  max_period=cfg.max_period, device=t.device).type(torch.float32)
            if self.pi05:
                x = F.silu(F.linear(emb, *w.time_mlp[0]))
                cond = F.silu(F.linear(x, *w.time_mlp[1]))  # (1, W)
                mods = []
                for dw, db in w.adarms:
                    scale, shift, gate = F.linear(cond, dw, db)[:, None, :].chunk(3, dim=-1)
                    mods.append(((1 + scale.float()).contiguous(), shift.float().contiguous(),
                                 gate.to(self.dtype).contiguous()))
                per_step.append(mods)
            else:
                per_step.append(emb)  # (1, W) fp32
        self._time_terms = per_step

    # ---- forward --------------------------------------------------------------------------------

    def _vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → (N, P, text width) image tokens in the model dtype."""
        w, cfg = self.w, self.w.vision_cfg
        x = F.conv2d(pixels.to(w.vision_dtype), w.patch_w, w.patch_b, stride=cfg.patch_size)
        x = x.flatten(2).transpose(1, 2) + w.pos_emb
        for L in w.vision_layers:
            x = self.fn["vision"](x, L.ln1_w, L.ln1_b, L.qkv_w, L.qkv_b, L.o_w, L.o_b, L.ln2_w, L.ln2_b,
                                  L.fc1_w, L.fc1_b, L.fc2_w, L.fc2_b)
        x = F.layer_norm(x, (x.shape[-1],), w.post_ln_w, w.post_ln_b, cfg.layer_norm_eps)
        return F.linear(x, w.proj_w, w.proj_b).to(self.dtype)

    def _prefix(self, s: dict):
        """Vision + prompt through the VLM; fills the KV cache s['k'], s['v'] (layers, B, L, D)."""
        w = self.w
        b, ncam = s["img_mask"].shape
        img_tok = self._vision(s["images"] * 2.0 - 1.0)  # (B*ncam, P, W)
        p = img_tok.shape[1]
        img_tok = img_tok.view(b, ncam * p, -1)
        lang = F.embedding(s["tokens"], w.embed) * w.embed_scale
        x = torch.cat([img_tok, lang], dim=1)
        pad = torch.cat([s["img_mask"].repeat_interleave(p, dim=1), s["token_mask"]], dim=1)  # (B, L)
        L = pad.shape[1]
        pos = torch.cumsum(pad, dim=1) - 1
        cos, sin = _cos_sin(pos, w.text_inv_freq, self.dtype)
        # (B, 1, 1, L) additive: bidirectional among valid tokens (LeRobot masks padded keys)
        key_mask = torch.zeros(pad.shape, dtype=self.dtype, device=pad.device).masked_fill_(~pad, -math.inf)
        key_mask = key_mask[:, None, None, :]
        n_layers = len(w.text_layers)
        for i, lay in enumerate(w.text_layers):
            fn = self.fn["text_last"] if i == n_layers - 1 else self.fn["text"]
            x, k, v = fn(x, cos, sin, key_mask, lay.a1, lay.qkv, lay.o, lay.a2, lay.gate_up, lay.down)
            s["k"][i, :, :L].copy_(k)
            s["v"][i, :, :L].copy_(v)
        # suffix attention mask (fp32 additive, heads folded into the queries) and positions
        S = s["suffix_att"].shape[0]
        H = w.heads
        cum = torch.cumsum(s["suffix_att"], dim=0)
        suffix_2d = (cum[None, :] <= cum[:, None])  # (S, S), LeRobot's make_att_2d_masks
        lp = s["k"].shape[2]  # prefix slots, padded so that prefix + suffix is a multiple of 8
        gap = torch.zeros(b, S, lp - L, dtype=torch.bool, device=pad.device)
        full = torch.cat([pad[:, None, :].expand(b, S, L), gap, suffix_2d[None].expand(b, S, S)], dim=2)
        full = full[:, None].expand(b, H, S, lp + S).reshape(b, H * S, lp + S)
        s["suffix_mask"].copy_(torch.zeros(full.shape, device=pad.device).masked_fill_(~full, -math.inf))
        spos = pad.sum(dim=1, keepdim=True) + torch.arange(S, device=pad.device)[None, :]
        c, sn = _cos_sin(spos, w.expert_inv_freq, self.dtype)
        s["scos"].copy_(c)
        s["ssin"].copy_(sn)

    def _denoise_step(self, s: dict, step: int, x_t: torch.Tensor) -> torch.Tensor:
        """One Euler step: returns x_t + dt · v(x_t, t_step)."""
        w = self.w
        b = x_t.shape[0]
        if self.pi05:
            mods = self._time_terms[step]
            x = self.fn["suffix_in"](x_t, *w.action_in)
        else:
            temb = self._time_terms[step].expand(b, -1)
            x = self.fn["suffix_in"](x_t, s["state"], temb, *w.action_in, *w.time_mlp[0], *w.time_mlp[1],
                                     *w.state_proj)
        for i, lay in enumerate(w.expert_layers):
            if self.pi05:
                (a1, b1, g1), (a2, b2, g2) = mods[2 * i], mods[2 * i + 1]
            else:
                a1, b1, g1, a2, b2, g2 = lay.a1, None, None, lay.a2, None, None
            x = self.fn["expert"](x, s["scos"], s["ssin"], s["suffix_mask"], s["k"][i], s["v"][i], lay.qkv,
                                  lay.o, lay.gate_up, lay.down, a1, b1, g1, a2, b2, g2)
        if self.pi05:
            a, bb, _ = mods[-1]
        else:
            a, bb = w.final_a, None
        return self.fn["suffix_out"](x, a, bb, x_t, *w.action_out)

    def _forward(self, s: dict) -> None:
        self._prefix(s)
        x_t = s["noise"]
        for step in range(self.steps):
            x_t = self._denoise_step(s, step, x_t)
        s["out"].copy_(x_t)

    # ---- static buffers, graph, staging ---------------------------------------------------------

    def _alloc(self, b: int, ntok: int) -> dict:
        dev, w, cfg = self.device, self.w, self.config
        ncam = len(self.image_keys)
        hgt, wid = cfg.image_resolution
        P = (w.vision_cfg.image_size // w.vision_cfg.patch_size) ** 2
        L = ncam * P + ntok
        lp = L + (-(L + (self.chunk + (0 if self.pi05 else 1)))) % 8  # aligned GEMMs in the suffix attention
        S = self.chunk + (0 if self.pi05 else 1)
        n_layers = len(w.text_layers)
        s = {
            "images": torch.zeros(b * ncam, 3, hgt, wid, device=dev),
            "img_mask": torch.ones(b, ncam, dtype=torch.bool, device=dev),
            "tokens": torch.zeros(b, ntok, dtype=torch.long, device=dev),
            "token_mask": torch.ones(b, ntok, dtype=torch.bool, device=dev),
            "state": torch.zeros(b, cfg.max_state_dim, device=dev),
            "noise": torch.zeros(b, self.chunk, self.max_action_dim, device=dev),
            "out": torch.zeros(b, self.chunk, self.max_action_dim, device=dev),
            "k": torch.zeros(n_layers, b, lp, w.head_dim, dtype=self.dtype, device=dev),
            "v": torch.zeros(n_layers, b, lp, w.head_dim, dtype=self.dtype, device=dev),
            "suffix_mask": torch.zeros(b, w.heads * S, lp + S, device=dev),
            "scos": torch.zeros(b, S, w.head_dim, dtype=self.dtype, device=dev),
            "ssin": torch.zeros(b, S, w.head_dim, dtype=self.dtype, device=dev),
            "suffix_att": torch.tensor(([1, 1] if not self.pi05 else [1]) + [0] * (self.chunk - 1),
                                       dtype=torch.int64, device=dev),
            "prefix_len": L,
        }
        if dev.type == "cuda":
            s["pinned"] = {k: torch.empty(s[k].shape, dtype=s[k].dtype, pin_memory=True)
                           for k in ("images", "img_mask", "tokens", "token_mask", "state", "noise")}
        return s

    def _stage(self, s: dict, batch: dict, noise: torch.Tensor | None) -> None:
        """Copy the batch into the static device buffers (pinned + non-blocking from the host)."""
        cfg = self.config
        b = s["tokens"].shape[0]
        ncam = len(self.image_keys)
        present = [k for k in self.image_keys if k in batch]
        if not present:
            raise EngineError(f"no image in the batch; expected one of {self.image_keys}")
        pinned = s.get("pinned")
        if s.get("h2d_done") is not None:
            s["h2d_done"].synchronize()  # the last call's copies out of the pinned buffers are over

        def put(name, value, sl=slice(None), key=None):
            dst = s[name][sl]
            if tuple(value.shape) != tuple(dst.shape):
                raise EngineError(f"{key or name}: shape {tuple(value.shape)}, expected {tuple(dst.shape)} "
                                  f"(batch size and prompt length must match the batch's tokens)")
            if value.device.type == "cpu" and pinned is not None:
                pin = pinned[name][sl]
                pin.copy_(value)
                dst.copy_(pin, non_blocking=True)
            else:
                dst.copy_(value)

        img_mask = torch.ones(b, ncam, dtype=torch.bool)
        for ci, key in enumerate(self.image_keys):
            sl = slice(ci, None, ncam)  # images are laid out (B, ncam) → row b*ncam + ci
            if key in batch:
                put("images", self._image(batch[key], key), sl, key=key)
            else:
                s["images"][sl].fill_(0.0)  # 0 → -1 after the [-1,1] map, as LeRobot pads
                img_mask[:, ci] = False
        put("img_mask", img_mask)
        tokens, tmask = batch.get(TOKENS), batch.get(TOKEN_MASK)
        if tokens is None or tmask is None:
            raise EngineError(f"batch needs {TOKENS!r} and {TOKEN_MASK!r} (LeRobot's tokenizer step)")
        put("tokens", tokens.to(torch.long), key=TOKENS)
        put("token_mask", tmask.to(torch.bool), key=TOKEN_MASK)
        if not self.pi05:
            if STATE not in batch:
                raise EngineError(f"batch needs {STATE!r}")
            st = batch[STATE].to(torch.float32)
            if st.shape[-1] > cfg.max_state_dim:
                raise EngineError(f"{STATE}: dim {st.shape[-1]} > max_state_dim {cfg.max_state_dim}")
            st = F.pad(st, (0, cfg.max_state_dim - st.shape[-1]))
            if not torch.isfinite(st).all():
                raise EngineError(f"{STATE}: non-finite values")
            put("state", st, key=STATE)
        if noise is None:
            s["noise"].normal_()
        else:
            if tuple(noise.shape) != tuple(s["noise"].shape):
                raise EngineError(f"noise shape {tuple(noise.shape)} != {tuple(s['noise'].shape)}")
            put("noise", noise.to(torch.float32))
        if pinned is not None:
            s["h2d_done"] = torch.cuda.Event()
            s["h2d_done"].record()

    def _image(self, img: torch.Tensor, key: str) -> torch.Tensor:
        """LeRobot's `_preprocess_images` minus the [-1,1] map (done on device in the graph)."""
        from lerobot.policies.common.vla_utils import resize_with_pad_torch

        if img.ndim != 4:
            raise EngineError(f"{key}: expected (B, 3, H, W) or (B, H, W, 3), got {tuple(img.shape)}")
        if img.dtype != torch.float32:
            img = img.to(torch.float32)
        channels_first = img.shape[1] == 3
        if not channels_first:
            img = img.permute(0, 3, 1, 2)
        if tuple(img.shape[2:]) != tuple(self.config.image_resolution):
            img = resize_with_pad_torch(img.permute(0, 2, 3, 1), *self.config.image_resolution).permute(0, 3, 1, 2)
        return img

    def _state_for(self, b: int, ntok: int) -> tuple[dict, Any]:
        key = (b, ntok)
        if key not in self._static:
            self._static[key] = self._alloc(b, ntok)
        return self._static[key], self._graphs.get(key)

    def _capture(self, key, s):
        torch.cuda.synchronize(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(s)
        torch.cuda.current_stream(self.device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            self._forward(s)
        self._graphs[key] = g
        return g

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, noise: torch.Tensor | None = None, **rtc) -> torch.Tensor:
        """Actions (B, chunk_size, action_dim) fp32 on the engine's device (normalised, as LeRobot)."""
        if any(v is not None for v in rtc.values()):
            raise EngineError("RTC guidance is not implemented in the fast engine; use engine='eager'")
        tokens = batch.get(TOKENS)
        if tokens is None:
            raise EngineError(f"batch needs {TOKENS!r}")
        b, ntok = tokens.shape
        s, graph = self._state_for(b, ntok)
        self._stage(s, batch, noise)
        if self.cuda_graph:
            if graph is None:
                graph = self._capture((b, ntok), s)
            graph.replay()
        else:
            self._forward(s)
        out = s["out"][:, :, : self.action_dim].clone()
        if not bool(torch.isfinite(out).all()):
            raise EngineError("non-finite actions (NaN/inf in the images or the weights?)")
        return out

    @torch.no_grad()
    def warmup(self, batch: dict | None = None, progress: Callable[[str], None] | None = None) -> float:
        """Allocate the buffers, compile the layers, capture the CUDA graph and run once (start-up).

        ``batch`` defaults to :meth:`dummy_batch` (same shapes as real inputs: the graph is keyed by
        batch size and prompt length). ``progress`` (e.g. a node logger's ``info``) gets one line
        before and one after. Returns seconds.
        """
        t0 = time.perf_counter()
        batch = batch if batch is not None else self.dummy_batch()
        if progress is not None:
            what = ["compiling layers" if self.compile else None, "capturing CUDA graph" if self.cuda_graph else None]
            progress(f"{self.config.type} engine: warm-up ({', '.join(w for w in what if w) or 'eager'}) "
                     f"on {self.device}, weights loaded in {self.startup.get('load_s', 0.0):.1f} s")
        self.predict_action_chunk(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.startup["warmup_s"] = time.perf_counter() - t0
        if progress is not None:
            progress(f"{self.config.type} engine: ready, first action after "
                     f"{self.startup.get('load_s', 0.0) + self.startup['warmup_s']:.1f} s (load + warm-up)")
        return self.startup["warmup_s"]

    def dummy_batch(self, batch_size: int = 1) -> dict:
        """A post-processor-shaped batch of the right shapes (grey images, one-token prompt, zero state)."""
        cfg = self.config
        h, w = cfg.image_resolution
        batch = {k: torch.full((batch_size, 3, h, w), 0.5) for k in self.image_keys}
        n = cfg.tokenizer_max_length
        batch[TOKENS] = torch.zeros(batch_size, n, dtype=torch.long)
        mask = torch.zeros(batch_size, n, dtype=torch.bool)
        mask[:, 0] = True
        batch[TOKEN_MASK] = mask
        batch[STATE] = torch.zeros(batch_size, cfg.input_features[STATE].shape[0] if STATE in cfg.input_features
                                   else cfg.max_state_dim)
        return batch

    def reset(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# helpers


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


def _legacy_key(name: str, policy_type: str) -> str:
    # openpi-era names (LeRobot's _fix_pytorch_state_dict_keys)
    if policy_type == "pi0" and name.startswith("action_time_mlp_"):
        return name.replace("action_time_mlp_", "time_mlp_")
    if policy_type == "pi05" and name.startswith("time_mlp_"):
        return name.replace("time_mlp_", "action_time_mlp_")
    return name


def _policy_model_class(policy_type: str):
    if policy_type == "pi0":
        from lerobot.policies.pi0.modeling_pi0 import PI0Pytorch

        return PI0Pytorch
    if policy_type == "pi05":
        from lerobot.policies.pi05.modeling_pi05 import PI05Pytorch

        return PI05Pytorch
    raise EngineError(f"policy type {policy_type!r} has no fast engine (pi0, pi05)")


def _skeleton(config):
    """LeRobot's own model class built on the meta device: structure and dims, no memory."""
    cls = _policy_model_class(config.type)
    with torch.device("meta"):
        return cls(config)


def _gather(get, skeleton, config, dtype, vision_dtype, device) -> _Weights:
    if isinstance(dtype, str):
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype]
    if vision_dtype is None:
        vision_dtype = dtype
    try:
        return _Weights(get, skeleton, pi05=config.type == "pi05", dtype=dtype, vision_dtype=vision_dtype,
                        device=device)
    except KeyError as e:
        raise EngineError(f"checkpoint lacks tensor {e.args[0]!r}") from None
