"""Fast inference for LeRobot SmolVLA checkpoints (flow matching, SmolVLM2 + interleaved action expert).

Same weights, same inputs and the same function as LeRobot 0.6.1's
``SmolVLAPolicy.predict_action_chunk`` (the batch out of LeRobot's own pre-processor: images float
[0,1], tokens + mask, normalised state), computed the way ``pi_flow`` computes π0:

* weights read from ``model.safetensors`` straight to the device in the engine dtype; q/k/v and
  gate/up projections fused into one GEMM each;
* layer functions take the weights as arguments: on CUDA each is compiled once and serves every
  layer of its stack (SigLIP, the VLM, the expert's self- and cross-attention layers);
* the prefix (image tokens after SigLIP + pixel shuffle + connector, the prompt, the state token)
  runs once per chunk and writes its keys/values into a preallocated static KV cache. The expert's
  cross-attention layers project the cached VLM keys/values with their own k/v projections — the
  same for all 10 flow steps, so that is done once per chunk too, not once per step;
* the time-only terms (sinusoidal time embedding through its half of ``action_time_mlp_in``) are
  computed at start-up for the fixed Euler schedule;
* the prompt is padded to ``tokenizer_max_length`` (LeRobot's SmolVLA pre-processor pads to the
  longest prompt, so its length changes with the task text): padded tokens are masked keys and
  take no position, so the function is unchanged and one CUDA graph serves every prompt;
* on CUDA the whole chunk (vision → prefix → 10 denoise steps) is captured in one CUDA graph;
  inputs go through pinned host buffers with non-blocking copies; images are resized (with
  LeRobot's left/top padding) wherever the batch lives — on the GPU in the ``lerobot`` backend;
* the prefix's last VLM layer skips its attention output and MLP (only its keys/values are read).

Attention arithmetic follows LeRobot's ``eager_attention_forward`` (scores and softmax in fp32,
probabilities in the value dtype) and its ``apply_rope`` (fp32, wavelength 10 000 whatever the
VLM config says). RTC guidance (``prev_chunk_left_over`` / ``inference_delay``, with ``config.rtc_config``
enabled) is LeRobot's, inside the Euler loop around :meth:`SmolVLAFlowEngine._velocity` (``engines._common``:
``rtc_jacobian`` "identity" = LeRobot 0.6.1's guided chunk, "full" = the paper's VJP through the expert),
its own CUDA graph. Guidance, not the ``rtc`` runtime strategy's blending of finished chunks
(``wam_policy_node.runtime``), which runs with or without it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F  # noqa: N812

from ._common import STATE, TOKEN_MASK, TOKENS, EngineError, FlowEngine, SigLIP, act_fn, as_nchw, bind_fns

ROPE_WAVELENGTH = 10_000  # LeRobot's apply_rope default, used by SmolVLA for both stacks


# ----------------------------------------------------------------------------------------------
# weights


@dataclass
class _Layer:
    n1: torch.Tensor  # input RMSNorm weight (model dtype)
    proj: torch.Tensor  # fused q/k/v (H*D + 2*KV*D, W); cross-attention expert layers: q only (H*D, W)
    o: torch.Tensor  # (W, H*D)
    n2: torch.Tensor
    gate_up: torch.Tensor  # (2*M, W)
    down: torch.Tensor  # (W, M)
    kv_cross: tuple[torch.Tensor, torch.Tensor] | None = None  # cross layers: k/v projections of the VLM cache


@dataclass
class _ExpertSlot:
    """The expert layer paired with VLM layer ``vlm_index`` (LeRobot's ``get_model_layers``)."""

    vlm_index: int
    layer: _Layer
    cross: bool
    cross_index: int  # row of the projected cross K/V buffers (cross layers)


class _Weights:
    """The tensors the fast forward reads, gathered from a LeRobot SmolVLA state dict."""

    def __init__(self, get: Callable[[str], torch.Tensor], skeleton, config, *, dtype, vision_dtype, device):
        vwe = skeleton.vlm_with_expert
        vcfg = vwe.config
        tc, vc, ec = vcfg.text_config, vcfg.vision_config, vwe.lm_expert.config
        self.dtype, self.vision_dtype = dtype, vision_dtype
        f32 = torch.float32

        def w(name, dt):
            return get(name).to(device=device, dtype=dt)

        P = "vlm_with_expert.vlm.model."
        self.vision = SigLIP.load(w, P + "vision_model.", vc, vision_dtype)
        self.connector = w(P + "connector.modality_projection.proj.weight", vision_dtype)
        self.scale_factor = vcfg.scale_factor
        self.vision_side = vc.image_size // vc.patch_size  # position table: side × side patches
        self.embed = w(P + "text_model.embed_tokens.weight", dtype)
        self.width = tc.hidden_size
        n_vlm = vwe.num_vlm_layers
        self.text_layers = [self._layer(w, f"{P}text_model.layers.{i}.", cross=False) for i in range(n_vlm)]
        self.text_eps, self.text_act = tc.rms_norm_eps, act_fn(tc.hidden_act)

        E = "vlm_with_expert.lm_expert."
        n_exp = vwe.num_expert_layers
        every = vwe.self_attn_every_n_layers
        cross_mode = "cross" in vwe.attention_mode
        multiple_of = n_vlm // n_exp
        self.expert: list[_ExpertSlot] = []
        for i in range(n_vlm):
            if multiple_of > 0 and i > 0 and i % multiple_of != 0:
                continue  # no expert layer here: the suffix passes unchanged
            e = i // multiple_of if multiple_of > 0 else i
            cross = cross_mode and not (every > 0 and i % every == 0)
            n_cross = sum(s.cross for s in self.expert)
            self.expert.append(_ExpertSlot(i, self._layer(w, f"{E}layers.{e}.", cross=cross), cross, n_cross))
        self.expert_eps, self.expert_act = ec.rms_norm_eps, act_fn(ec.hidden_act)
        self.final_norm = w(E + "norm.weight", dtype)

        self.state_proj = (w("state_proj.weight", f32), w("state_proj.bias", f32))
        self.action_in = (w("action_in_proj.weight", f32), w("action_in_proj.bias", f32))
        self.action_out = (w("action_out_proj.weight", f32), w("action_out_proj.bias", f32))
        self.time_in = (w("action_time_mlp_in.weight", f32), w("action_time_mlp_in.bias", f32))
        self.time_out = (w("action_time_mlp_out.weight", f32), w("action_time_mlp_out.bias", f32))
        self.expert_width = self.action_in[0].shape[0]

        text_attn = vwe.get_vlm_model().text_model.layers[0].self_attn
        expert_attn = vwe.lm_expert.layers[0].self_attn
        self.heads, self.kv_heads = tc.num_attention_heads, tc.num_key_value_heads
        self.head_dim = text_attn.head_dim
        if expert_attn.head_dim != self.head_dim or self.text_layers[0].o.shape[1] != self.heads * self.head_dim:
            raise EngineError("expert and VLM attention shapes differ")
        if self.expert[0].layer.o.shape[1] != self.heads * self.head_dim:
            raise EngineError("the expert's query heads differ from the VLM's")
        if self.heads % self.kv_heads:
            raise EngineError(f"{self.heads} query heads are not a multiple of {self.kv_heads} KV heads")

    def _layer(self, w, L: str, *, cross: bool) -> _Layer:
        d = self.dtype
        proj = [w(L + "self_attn.q_proj.weight", d)]
        kv = (w(L + "self_attn.k_proj.weight", d), w(L + "self_attn.v_proj.weight", d))
        return _Layer(
            n1=w(L + "input_layernorm.weight", d),
            proj=proj[0] if cross else torch.cat([*proj, *kv]),
            o=w(L + "self_attn.o_proj.weight", d),
            n2=w(L + "post_attention_layernorm.weight", d),
            gate_up=torch.cat([w(L + "mlp.gate_proj.weight", d), w(L + "mlp.up_proj.weight", d)]),
            down=w(L + "mlp.down_proj.weight", d),
            kv_cross=kv if cross else None,
        )


# ----------------------------------------------------------------------------------------------
# layer functions (weights as arguments; one compiled graph per kind on CUDA). Arithmetic as
# LeRobot/transformers: Llama RMSNorm (fp32 normalisation, weight in the model dtype), RoPE in fp32,
# attention scores/softmax in fp32, residual stream in the model dtype.


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LeRobot's ``apply_rope`` on (B, N, heads, D) with fp32 cos/sin (B, N, 1, D) (halves duplicated)."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rot * sin).to(x.dtype)


def _mlp_block(x, attn, o_w, n2, gate_up_w, down_w, eps: float, act):
    x = x + F.linear(attn, o_w)
    h = _rms(x, n2, eps)
    g, u = F.linear(h, gate_up_w).chunk(2, dim=-1)
    return x + F.linear(act(g) * u, down_w)


def _vlm_layer(x, cos, sin, mask, n1, qkv_w, o_w, n2, gate_up_w, down_w, *, heads: int, kv_heads: int,
               head_dim: int, eps: float, act, last: bool):
    """One VLM layer over the prefix → (x, k, v); k (post-RoPE), v (B, L, KV, D) go to the KV cache."""
    b, n, _ = x.shape
    H, KV, D = heads, kv_heads, head_dim
    h = _rms(x, n1, eps)
    qkv = F.linear(h, qkv_w)
    k = _rope(qkv[..., H * D: (H + KV) * D].view(b, n, KV, D), cos, sin)
    v = qkv[..., (H + KV) * D:].view(b, n, KV, D)
    if last:  # the prefix's last hidden states are never read: only its keys/values
        return x, k, v
    q = _rope(qkv[..., : H * D].view(b, n, H, D), cos, sin)
    kk = k.transpose(1, 2).repeat_interleave(H // KV, dim=1)  # grouped-query heads: a kernel that takes a mask
    vv = v.transpose(1, 2).repeat_interleave(H // KV, dim=1)
    a = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, attn_mask=mask, scale=D ** -0.5)
    return _mlp_block(x, a.transpose(1, 2).reshape(b, n, H * D), o_w, n2, gate_up_w, down_w, eps, act), k, v


def _expert_layer(x, cos, sin, mask, kp, vp, n1, proj_w, o_w, n2, gate_up_w, down_w, *, heads: int,
                  kv_heads: int, head_dim: int, eps: float, act, cross: bool):
    """One action-expert layer over the suffix (B, S, W).

    Self-attention (``cross=False``): q/k/v from the suffix, keys/values = cached prefix (kp, vp)
    followed by the suffix's own (causal among the actions). Cross-attention: q from the suffix,
    keys/values = the prefix cache through this layer's k/v projections (kp, vp, done once per chunk).
    Attention as LeRobot's eager path: scores in fp32 (+ additive mask), softmax in fp32, probabilities
    in the value dtype; the query groups of a KV head are folded into the query sequence.
    """
    b, n, _ = x.shape
    H, KV, D = heads, kv_heads, head_dim
    G = H // KV
    h = _rms(x, n1, eps)
    p = F.linear(h, proj_w)
    q = _rope(p[..., : H * D].view(b, n, H, D), cos, sin)
    if cross:
        k, v = kp, vp
    else:
        k = torch.cat([kp, _rope(p[..., H * D: (H + KV) * D].view(b, n, KV, D), cos, sin)], dim=1)
        v = torch.cat([vp, p[..., (H + KV) * D:].view(b, n, KV, D)], dim=1)
    qf = q.view(b, n, KV, G, D).permute(0, 2, 3, 1, 4).reshape(b, KV, G * n, D).float()
    scores = torch.matmul(qf, k.permute(0, 2, 3, 1).float()) * D ** -0.5  # (B, KV, G*S, keys)
    probs = torch.softmax(scores + mask, dim=-1).to(v.dtype)
    a = torch.matmul(probs, v.transpose(1, 2))  # (B, KV, G*S, D)
    a = a.view(b, KV, G, n, D).permute(0, 3, 1, 2, 4).reshape(b, n, H * D)
    return _mlp_block(x, a, o_w, n2, gate_up_w, down_w, eps, act)


def _suffix_in(x_t, t_term, in_w, in_b, mlp_in_a_w, mlp_out_w, mlp_out_b, *, dtype):
    """``action_time_mlp_out(silu(action_time_mlp_in([action_in_proj(x_t), time_emb])))`` with the
    time half (``t_term``, bias included) precomputed per flow step."""
    a = F.linear(x_t, in_w, in_b)
    h = F.silu(F.linear(a, mlp_in_a_w) + t_term)
    return F.linear(h, mlp_out_w, mlp_out_b).to(dtype)


def _suffix_out(x, norm_w, out_w, out_b, *, eps: float, chunk: int):
    """Final norm and action projection: the velocity v_t (fp32)."""
    return F.linear(_rms(x[:, -chunk:], norm_w, eps).to(torch.float32), out_w, out_b)


def _pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """SmolVLM connector's pixel shuffle: (N, side², C) → (N, side²/r², C·r²)."""
    n, seq, c = x.shape
    side = int(seq ** 0.5)
    x = x.view(n, side, side // r, c * r).permute(0, 2, 1, 3)
    x = x.reshape(n, side // r, side // r, c * r * r).permute(0, 2, 1, 3)
    return x.reshape(n, seq // (r * r), c * r * r)


def _angles(pos: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin (B, N, 1, D) of ``apply_rope`` for integer positions (B, N)."""
    exps = (2.0 / head_dim) * torch.arange(head_dim // 2, dtype=torch.float32, device=pos.device)
    radians = pos[..., None].to(torch.float32) / ROPE_WAVELENGTH ** exps
    radians = torch.cat((radians, radians), dim=-1)[:, :, None, :]
    return radians.cos(), radians.sin()


def _patch_positions(n_h: int, n_w: int, side: int) -> torch.Tensor:
    """SmolVLM's position ids of an n_h × n_w patch grid on a side × side table (bucketised)."""
    bounds = torch.arange(1 / side, 1.0, 1 / side)
    fh = torch.clamp(torch.arange(n_h, dtype=torch.float32) * (1.0 / n_h), max=1.0 - 1e-6)
    fw = torch.clamp(torch.arange(n_w, dtype=torch.float32) * (1.0 / n_w), max=1.0 - 1e-6)
    bh, bw = torch.bucketize(fh, bounds, right=True), torch.bucketize(fw, bounds, right=True)
    return (bh[:, None] * side + bw[None, :]).reshape(-1)


# ----------------------------------------------------------------------------------------------
# engine


class SmolVLAFlowEngine(FlowEngine):
    """``predict_action_chunk(batch, noise=None) -> (B, chunk, action_dim)`` for SmolVLA."""

    def __init__(self, config, weights: _Weights, *, device, cuda_graph: bool = True, compile: bool | None = None):
        super().__init__(config, weights, config.num_steps, device=device, cuda_graph=cuda_graph, compile=compile)
        if config.prefix_length > 0:
            raise EngineError("SmolVLA prefix_length > 0 (a padded prefix) is not supported by the fast engine")
        if config.add_image_special_tokens:
            raise EngineError("SmolVLA add_image_special_tokens is not supported by the fast engine")
        resize = config.resize_imgs_with_padding
        self.image_hw = (resize[1], resize[0]) if resize else tuple(
            next(iter(config.image_features.values())).shape[1:])
        patch = weights.vision.patch_size
        n_h, n_w = self.image_hw[0] // patch, self.image_hw[1] // patch
        if n_h != n_w or n_h % weights.scale_factor:
            raise EngineError(f"images of {self.image_hw} px: SmolVLM's pixel shuffle needs a square grid of patches "
                              f"divisible by {weights.scale_factor}")
        self.image_tokens = n_h * n_w // weights.scale_factor ** 2
        pos = _patch_positions(n_h, n_w, weights.vision_side).to(self.device)
        self.pos_emb = weights.vision.pos_emb[pos]  # (patches, vision width)
        # LeRobot scales the image tokens by √width as a tensor of their dtype (rounded to it); made here,
        # not per call: a host→device copy cannot be captured in a CUDA graph
        self.img_scale = torch.tensor(weights.width ** 0.5, dtype=weights.connector.dtype, device=self.device)
        self._precompute_time()
        self._build_fns()

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def _skeleton(cls, config):
        from lerobot.policies.smolvla.modeling_smolvla import VLAFlowMatching

        if config.type != "smolvla":
            raise EngineError(f"policy type {config.type!r} has no SmolVLA fast engine")
        # LeRobot's VLAFlowMatching on the meta device: reads the VLM's config and processor from
        # ``vlm_model_name`` (as LeRobot does when it builds the policy), allocates nothing
        with torch.device("meta"):
            return VLAFlowMatching(config)

    @classmethod
    def _weights(cls, get, skeleton, config, dtype, vision_dtype, device) -> _Weights:
        return _Weights(get, skeleton, config, dtype=dtype, vision_dtype=vision_dtype, device=device)

    def _build_fns(self):
        w = self.w
        attn = dict(heads=w.heads, kv_heads=w.kv_heads, head_dim=w.head_dim)
        specs = {
            "vision": w.vision.spec(),
            "text": (_vlm_layer, dict(**attn, eps=w.text_eps, act=w.text_act, last=False)),
            "text_last": (_vlm_layer, dict(**attn, eps=w.text_eps, act=w.text_act, last=True)),
            "self": (_expert_layer, dict(**attn, eps=w.expert_eps, act=w.expert_act, cross=False)),
            "cross": (_expert_layer, dict(**attn, eps=w.expert_eps, act=w.expert_act, cross=True)),
            "suffix_in": (_suffix_in, dict(dtype=self.dtype)),
            "suffix_out": (_suffix_out, dict(eps=w.expert_eps, chunk=self.chunk)),
        }
        self.fn = bind_fns(specs, self.compile)

    def _precompute_time(self):
        """Per flow step: the time embedding through its half of ``action_time_mlp_in`` (+ its bias)."""
        width = self.w.expert_width
        mlp_w, mlp_b = self.w.time_in
        self.mlp_in_a = mlp_w[:, :width].contiguous()
        self._time_terms = [F.linear(emb, mlp_w[:, width:], mlp_b)[:, None, :]  # (1, 1, W) fp32
                            for emb in self._time_embeddings(width)]

    # ---- forward --------------------------------------------------------------------------------

    def _vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → (N, image tokens, text width), scaled by √width, model dtype."""
        w = self.w
        x = w.vision.encode(self.fn["vision"], pixels, self.pos_emb)
        x = F.linear(_pixel_shuffle(x, w.scale_factor), w.connector)
        return (x * self.img_scale.to(x.dtype)).to(self.dtype)

    def _encode_images(self, s: dict) -> None:
        s["img_tok"].copy_(self._vision(s["images"] * 2.0 - 1.0))  # (B*nimg, image tokens, W)

    def _prefix(self, s: dict):
        """Images + prompt + state through the VLM: fills the KV cache s['k'], s['v'] (layers, B, L, KV, D),
        the cross layers' projected K/V, the suffix masks and rotary angles."""
        w = self.w
        b, nimg = s["img_mask"].shape
        img = s["img_tok"].view(b, nimg * self.image_tokens, -1)
        lang = F.embedding(s["tokens"], w.embed) * math.sqrt(w.width)
        state = F.linear(s["state"], *w.state_proj)[:, None, :].to(self.dtype)
        x = torch.cat([img, lang, state], dim=1)
        ones = torch.ones(b, 1, dtype=torch.bool, device=x.device)
        pad = torch.cat([s["img_mask"].repeat_interleave(self.image_tokens, dim=1), s["token_mask"], ones], dim=1)
        L = pad.shape[1]
        # LeRobot's make_att_2d_masks: images and prompt attend to each other, the state token to all;
        # padded keys masked (padded queries see the valid keys: finite, and never read)
        block = (torch.arange(L, device=x.device) == L - 1).long()  # (no host→device copy: CUDA-graph safe)
        allowed = pad[:, None, :] & (block[None, :] <= block[:, None])[None]  # (B, L, L)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=x.device).masked_fill_(~allowed, -math.inf)
        cos, sin = _angles(torch.cumsum(pad, dim=1) - 1, w.head_dim)
        n_layers = len(w.text_layers)
        for i, lay in enumerate(w.text_layers):
            fn = self.fn["text_last"] if i == n_layers - 1 else self.fn["text"]
            x, k, v = fn(x, cos, sin, mask[:, None], lay.n1, lay.proj, lay.o, lay.n2, lay.gate_up, lay.down)
            s["k"][i].copy_(k)
            s["v"][i].copy_(v)
        kv = w.kv_heads * w.head_dim
        for slot in w.expert:
            if slot.cross:  # the expert's k/v projections of the (post-RoPE) VLM keys/values
                kw, vw = slot.layer.kv_cross
                i, j = slot.vlm_index, slot.cross_index
                s["kc"][j].copy_(F.linear(s["k"][i].reshape(b, L, kv), kw).view(b, L, w.kv_heads, w.head_dim))
                s["vc"][j].copy_(F.linear(s["v"][i].reshape(b, L, kv), vw).view(b, L, w.kv_heads, w.head_dim))
        # suffix masks (fp32 additive, query groups folded): prefix padding; causal among the actions
        S, G = self.chunk, w.heads // w.kv_heads
        causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
        cross_ok = pad[:, None, :].expand(b, S, L)
        self_ok = torch.cat([cross_ok, causal[None].expand(b, S, S)], dim=2)
        for name, ok in (("cross_mask", cross_ok), ("self_mask", self_ok)):
            ok = ok[:, None, None].expand(b, 1, G, S, ok.shape[-1]).reshape(b, 1, G * S, ok.shape[-1])
            s[name].copy_(torch.zeros(ok.shape, device=x.device).masked_fill_(~ok, -math.inf))
        spos = pad.sum(dim=1, keepdim=True) + torch.arange(S, device=x.device)[None, :]
        c, sn = _angles(spos, w.head_dim)
        s["scos"].copy_(c)
        s["ssin"].copy_(sn)

    def _velocity(self, s: dict, step: int, x_t: torch.Tensor) -> torch.Tensor:
        w = self.w  # the expert over the suffix: self-attention layers read the prefix cache, cross ones its projections
        x = self.fn["suffix_in"](x_t, self._time_terms[step], *w.action_in, self.mlp_in_a, *w.time_out)
        for slot in w.expert:
            lay = slot.layer
            if slot.cross:
                kp, vp = s["kc"][slot.cross_index], s["vc"][slot.cross_index]
                x = self.fn["cross"](x, s["ccos"], s["csin"], s["cross_mask"], kp, vp, lay.n1, lay.proj, lay.o,
                                     lay.n2, lay.gate_up, lay.down)
            else:
                kp, vp = s["k"][slot.vlm_index], s["v"][slot.vlm_index]
                x = self.fn["self"](x, s["scos"], s["ssin"], s["self_mask"], kp, vp, lay.n1, lay.proj, lay.o,
                                    lay.n2, lay.gate_up, lay.down)
        return self.fn["suffix_out"](x, w.final_norm, *w.action_out)

    # ---- static buffers, staging ----------------------------------------------------------------

    def _cameras(self, batch: dict) -> tuple[tuple[str, ...], int]:
        """The image keys present (config order) and how many empty cameras LeRobot adds for the rest."""
        present = tuple(k for k in self.image_keys if k in batch)
        if not present:
            raise EngineError(f"no image in the batch; expected one of {self.image_keys}")
        return present, min(len(self.image_keys) - len(present), self.config.empty_cameras)

    def _shape_key(self, batch: dict) -> tuple:
        b, ntok = self._tokens(batch)[0].shape
        present, empty = self._cameras(batch)
        return b, max(ntok, self.config.tokenizer_max_length), present, empty

    def _alloc(self, b: int, ntok: int, present: tuple, empty: int) -> dict:
        dev, w = self.device, self.w
        nimg = len(present) + empty
        L = nimg * self.image_tokens + ntok + 1
        S, G = self.chunk, w.heads // w.kv_heads
        kv = (b, L, w.kv_heads, w.head_dim)
        n_cross = sum(slot.cross for slot in w.expert)
        s = {
            **self._input_buffers(b, nimg, ntok, self.image_hw),
            "img_tok": torch.zeros(b * nimg, self.image_tokens, w.width, dtype=self.dtype, device=dev),
            "k": torch.zeros(len(w.text_layers), *kv, dtype=self.dtype, device=dev),
            "v": torch.zeros(len(w.text_layers), *kv, dtype=self.dtype, device=dev),
            "kc": torch.zeros(n_cross, *kv, dtype=self.dtype, device=dev),
            "vc": torch.zeros(n_cross, *kv, dtype=self.dtype, device=dev),
            "self_mask": torch.zeros(b, 1, G * S, L + S, device=dev),
            "cross_mask": torch.zeros(b, 1, G * S, L, device=dev),
            "scos": torch.zeros(b, S, 1, w.head_dim, device=dev),
            "ssin": torch.zeros(b, S, 1, w.head_dim, device=dev),
            "prefix_len": L,
        }
        # cross-attention queries take positions 0..S-1 (LeRobot subtracts the suffix's first position)
        s["ccos"], s["csin"] = _angles(torch.arange(S, device=dev)[None].expand(b, S), w.head_dim)
        return self._pin(s)

    def _stage_images(self, s: dict, batch: dict) -> None:
        b = s["tokens"].shape[0]
        present, empty = self._cameras(batch)
        nimg = len(present) + empty
        # present cameras first (config order), then LeRobot's empty cameras: -1 images, masked
        img_mask = torch.ones(b, nimg, dtype=torch.bool)
        for ci, key in enumerate(present):
            self._put_image(s, batch[key], slice(ci, None, nimg), key)
            if f"{key}_padding_mask" in batch:
                img_mask[:, ci] = batch[f"{key}_padding_mask"].bool().cpu()
        for ci in range(len(present), nimg):
            s["images"][ci::nimg].fill_(0.0)  # 0 → -1 after the [-1,1] map
            img_mask[:, ci] = False
        self._put(s, "img_mask", img_mask)

    def _stage_inputs(self, s: dict, batch: dict, noise: torch.Tensor | None) -> None:
        ntok = s["tokens"].shape[1]
        tokens, tmask = self._tokens(batch)
        if tmask.shape != tokens.shape:
            raise EngineError(f"{TOKEN_MASK}: shape {tuple(tmask.shape)}, expected {tuple(tokens.shape)}")
        grow = ntok - tokens.shape[1]  # padded to the fixed prompt length: masked, no position
        self._put(s, "tokens", F.pad(tokens.to(torch.long), (0, grow)), key=TOKENS)
        self._put(s, "token_mask", F.pad(tmask.to(torch.bool), (0, grow)), key=TOKEN_MASK)
        adapt = None
        if self.config.adapt_to_pi_aloha:  # LeRobot's own conversion (a method that reads no state)
            from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

            adapt = lambda st: SmolVLAPolicy._pi_aloha_decode_state(None, st)  # noqa: E731
        self._put(s, "state", self._state(batch, adapt), key=STATE)
        self._put_noise(s, noise)

    def _image(self, img: torch.Tensor, key: str) -> torch.Tensor:
        """LeRobot's SmolVLA ``prepare_images`` minus the [-1,1] map (done on device in the graph):
        resized keeping the aspect ratio, padded left/top with 0, on the image's device."""
        from lerobot.policies.common.vla_utils import resize_with_pad

        img = as_nchw(img, key)
        if self.config.resize_imgs_with_padding is not None:
            img = resize_with_pad(img, *self.image_hw, pad_value=0)
        return img

    def _finish(self, actions: torch.Tensor) -> torch.Tensor:
        if self.config.adapt_to_pi_aloha:
            from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

            actions = SmolVLAPolicy._pi_aloha_encode_actions(None, actions)
        return actions
