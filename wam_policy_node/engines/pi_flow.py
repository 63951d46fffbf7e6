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

RTC guidance (``prev_chunk_left_over`` / ``inference_delay`` / ``execution_horizon``, with
``config.rtc_config`` enabled) is LeRobot's, inside the Euler loop (``engines._common``: the guided
velocity around :meth:`PiFlowEngine._velocity`): ``rtc_jacobian="identity"`` gives LeRobot 0.6.1's
guided chunk, ``"full"`` the paper's VJP through the action expert (torch.autograd); each its own CUDA
graph, the left-over and the delay's prefix weights in static buffers. This is the *guidance* (the
chunk inpainted toward the old plan while it is sampled); the ``rtc`` runtime strategy's *blending*
(``wam_policy_node.runtime``) merges finished chunks and runs with or without it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F  # noqa: N812

from ._common import (  # noqa: F401 - the names other modules import from here
    IMAGE_PREFIX,
    STATE,
    TOKEN_MASK,
    TOKENS,
    EngineError,
    FlowEngine,
    SigLIP,
    act_fn,
    as_nchw,
    bind_fns,
    cos_sin,
)

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


def _rope_inv_freq(cfg, head_dim: int) -> torch.Tensor:
    params = getattr(cfg, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise EngineError(f"rope_type {rope_type!r} not supported by the fast engine")
    base = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


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
        self.vision = SigLIP.load(w, P + "vision_tower.vision_model.", self.vision_cfg, vision_dtype)
        self.proj_w = w(P + "multi_modal_projector.linear.weight", vision_dtype)
        self.proj_b = w(P + "multi_modal_projector.linear.bias", vision_dtype)

        LM = P + "language_model."
        try:
            self.embed = w(LM + "embed_tokens.weight", dtype)
        except KeyError:
            self.embed = w("paligemma_with_expert.paligemma.lm_head.weight", dtype)
        self.embed_scale = torch.tensor(self.text_cfg.hidden_size ** 0.5).to(dtype).to(device)
        self.text_layers = [self._gemma_layer(w, f"{LM}layers.{i}.", adarms=False)
                            for i in range(self.text_cfg.num_hidden_layers)]
        self.text_act = act_fn(self.text_cfg.hidden_activation or self.text_cfg.hidden_act)

        E = "paligemma_with_expert.gemma_expert.model."
        self.expert_layers = [self._gemma_layer(w, f"{E}layers.{i}.", adarms=pi05)
                              for i in range(self.expert_cfg.num_hidden_layers)]
        self.expert_act = act_fn(self.expert_cfg.hidden_activation or self.expert_cfg.hidden_act)
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


def _suffix_out(x, a, b, out_w, out_b, *, eps: float, chunk: int):
    """Final norm and action projection: the velocity v_t (fp32)."""
    x = _norm(x, a, b, eps)
    return F.linear(x[:, -chunk:].to(torch.float32), out_w, out_b)


# ----------------------------------------------------------------------------------------------
# engine


class PiFlowEngine(FlowEngine):
    """``predict_action_chunk(batch, noise=None) -> (B, chunk, action_dim)`` for π0 / π0.5."""

    def __init__(self, config, weights: _Weights, *, device, cuda_graph: bool = True, compile: bool | None = None):
        super().__init__(config, weights, config.num_inference_steps, device=device, cuda_graph=cuda_graph,
                         compile=compile)
        self.pi05 = weights.pi05
        self._precompute_time()
        self._build_fns()

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def _skeleton(cls, config):
        if config.type == "pi0":
            from lerobot.policies.pi0.modeling_pi0 import PI0Pytorch as model_cls
        elif config.type == "pi05":
            from lerobot.policies.pi05.modeling_pi05 import PI05Pytorch as model_cls
        else:
            raise EngineError(f"policy type {config.type!r} has no π fast engine (pi0, pi05)")
        with torch.device("meta"):
            return model_cls(config)

    @classmethod
    def _weights(cls, get, skeleton, config, dtype, vision_dtype, device) -> _Weights:
        return _Weights(get, skeleton, pi05=config.type == "pi05", dtype=dtype, vision_dtype=vision_dtype,
                        device=device)

    @staticmethod
    def _legacy_key(name: str, policy_type: str) -> str:
        # openpi-era names (LeRobot's _fix_pytorch_state_dict_keys)
        if policy_type == "pi0" and name.startswith("action_time_mlp_"):
            return name.replace("action_time_mlp_", "time_mlp_")
        if policy_type == "pi05" and name.startswith("time_mlp_"):
            return name.replace("time_mlp_", "action_time_mlp_")
        return name

    def _build_fns(self):
        """The layer functions with their constant keyword arguments; compiled on CUDA (``bind_fns``)."""
        w = self.w
        specs = {
            "vision": w.vision.spec(),
            "text": (_text_layer, dict(heads=w.heads, head_dim=w.head_dim, eps=w.text_eps, act=w.text_act,
                                       last=False)),
            "text_last": (_text_layer, dict(heads=w.heads, head_dim=w.head_dim, eps=w.text_eps, act=w.text_act,
                                            last=True)),
            "expert": (_expert_layer, dict(heads=w.heads, head_dim=w.head_dim, eps=w.expert_eps, act=w.expert_act)),
            "suffix_in": (_suffix_in_pi05, dict(dtype=self.dtype)) if self.pi05
            else (_suffix_in_pi0, dict(dtype=self.dtype)),
            "suffix_out": (_suffix_out, dict(eps=w.expert_eps, chunk=self.chunk)),
        }
        self.fn = bind_fns(specs, self.compile)

    # ---- time-only terms ------------------------------------------------------------------------

    def _precompute_time(self):
        w = self.w
        per_step = []
        for emb in self._time_embeddings(w.action_in[0].shape[0]):
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
        w = self.w
        x = w.vision.encode(self.fn["vision"], pixels)
        return F.linear(x, w.proj_w, w.proj_b).to(self.dtype)

    def _encode_images(self, s: dict) -> None:
        s["img_tok"].copy_(self._vision(s["images"] * 2.0 - 1.0))  # (B*ncam, P, W)

    def _prefix(self, s: dict):
        """Image tokens + prompt through the VLM; fills the KV cache s['k'], s['v'] (layers, B, L, D)."""
        w = self.w
        b, ncam = s["img_mask"].shape
        p = s["img_tok"].shape[1]
        img_tok = s["img_tok"].view(b, ncam * p, -1)
        lang = F.embedding(s["tokens"], w.embed) * w.embed_scale
        x = torch.cat([img_tok, lang], dim=1)
        pad = torch.cat([s["img_mask"].repeat_interleave(p, dim=1), s["token_mask"]], dim=1)  # (B, L)
        L = pad.shape[1]
        pos = torch.cumsum(pad, dim=1) - 1
        cos, sin = cos_sin(pos, w.text_inv_freq, self.dtype)
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
        c, sn = cos_sin(spos, w.expert_inv_freq, self.dtype)
        s["scos"].copy_(c)
        s["ssin"].copy_(sn)

    def _velocity(self, s: dict, step: int, x_t: torch.Tensor) -> torch.Tensor:
        """v(x_t, t_step): the action expert over the cached prefix."""
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
        return self.fn["suffix_out"](x, a, bb, *w.action_out)

    # ---- static buffers, graph, staging ---------------------------------------------------------

    def _alloc(self, b: int, ntok: int) -> dict:
        dev, w, cfg = self.device, self.w, self.config
        ncam = len(self.image_keys)
        P = (w.vision_cfg.image_size // w.vision_cfg.patch_size) ** 2
        L = ncam * P + ntok
        lp = L + (-(L + (self.chunk + (0 if self.pi05 else 1)))) % 8  # aligned GEMMs in the suffix attention
        S = self.chunk + (0 if self.pi05 else 1)
        n_layers = len(w.text_layers)
        s = {
            **self._input_buffers(b, ncam, ntok, cfg.image_resolution),
            "img_tok": torch.zeros(b * ncam, P, w.proj_w.shape[0], dtype=self.dtype, device=dev),
            "k": torch.zeros(n_layers, b, lp, w.head_dim, dtype=self.dtype, device=dev),
            "v": torch.zeros(n_layers, b, lp, w.head_dim, dtype=self.dtype, device=dev),
            "suffix_mask": torch.zeros(b, w.heads * S, lp + S, device=dev),
            "scos": torch.zeros(b, S, w.head_dim, dtype=self.dtype, device=dev),
            "ssin": torch.zeros(b, S, w.head_dim, dtype=self.dtype, device=dev),
            "suffix_att": torch.tensor(([1, 1] if not self.pi05 else [1]) + [0] * (self.chunk - 1),
                                       dtype=torch.int64, device=dev),
            "prefix_len": L,
        }
        return self._pin(s)

    def _shape_key(self, batch: dict) -> tuple:
        return tuple(self._tokens(batch)[0].shape)  # (B, prompt length)

    def _stage_images(self, s: dict, batch: dict) -> None:
        b = s["tokens"].shape[0]
        ncam = len(self.image_keys)
        present = [k for k in self.image_keys if k in batch]
        if not present:
            raise EngineError(f"no image in the batch; expected one of {self.image_keys}")
        img_mask = torch.ones(b, ncam, dtype=torch.bool)
        for ci, key in enumerate(self.image_keys):
            sl = slice(ci, None, ncam)  # images are laid out (B, ncam) → row b*ncam + ci
            if key in batch:
                self._put_image(s, batch[key], sl, key)
            else:
                s["images"][sl].fill_(0.0)  # 0 → -1 after the [-1,1] map, as LeRobot pads
                img_mask[:, ci] = False
        self._put(s, "img_mask", img_mask)

    def _stage_inputs(self, s: dict, batch: dict, noise: torch.Tensor | None) -> None:
        tokens, tmask = self._tokens(batch)
        self._put(s, "tokens", tokens.to(torch.long), key=TOKENS)
        self._put(s, "token_mask", tmask.to(torch.bool), key=TOKEN_MASK)
        if not self.pi05:
            self._put(s, "state", self._state(batch), key=STATE)
        self._put_noise(s, noise)

    def _image(self, img: torch.Tensor, key: str) -> torch.Tensor:
        """LeRobot's `_preprocess_images` minus the [-1,1] map (done on device in the graph)."""
        from lerobot.policies.common.vla_utils import resize_with_pad_torch

        img = as_nchw(img, key)
        if tuple(img.shape[2:]) != tuple(self.config.image_resolution):
            img = resize_with_pad_torch(img.permute(0, 2, 3, 1), *self.config.image_resolution).permute(0, 3, 1, 2)
        return img
