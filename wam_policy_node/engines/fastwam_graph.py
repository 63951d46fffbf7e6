"""Fast inference for LeRobot FastWAM: LeRobot's own modules, each chunk as two CUDA graphs.

Same weights, same inputs, same function as LeRobot 0.6.1's ``FastWAMPolicy.predict_action_chunk``
(``FastWAM.infer_action``: the Wan2.2 VAE encodes the width-concatenated camera frame, the video
expert prefills its per-layer keys/values once, then the action expert runs the flow steps against
that cache). Unlike the π/SmolVLA engines, nothing is re-implemented: the engine holds the loaded
LeRobot policy and calls its modules (VAE, patch embedding, MoT layers, action DiT, heads, scheduler)
— what changes is everything around them:

* the prompt's UMT5 embedding (5.7 B parameters at full size, LeRobot runs it every chunk) is computed
  once per distinct prompt and kept on the device;
* what depends only on the flow schedule is computed once at start-up: the action expert's time
  embedding and its six modulations for each of the steps, and the video expert's (its timestep is
  always 0 in ``infer_action``); the text context is embedded once per chunk, not once per step;
* LeRobot's host-side tensors that it copies to the GPU at every call (the RoPE tables, the video grid
  size that its RoPE reads back with ``.tolist()`` — a device sync per layer) stay where they are
  needed: the tables on the device, the grid on the host;
* on CUDA the chunk runs as two CUDA graphs over static buffers: (1) the frames → [0, 1] → LeRobot's
  per-camera resize and concatenation → the VAE, started by :meth:`prefetch` while the host still runs
  the pre-processor; (2) proprio token, video prefill and the flow steps. Frames, state and noise go
  in through pinned host buffers with non-blocking copies. The video model (5 B) and the action
  model (1 B) at batch 1 over ~100 video and 32 action tokens are thousands of small kernels: the
  launches, not the arithmetic, are LeRobot's time (bench/gpu_inference.py, ``fastwam``).

The noise is LeRobot's: ``FastWAM._make_action_latents`` with the config's ``inference_seed`` (42 by
default: the same noise at every call, as LeRobot draws it) unless the caller passes ``noise``.
A batch of B > 1 runs sample by sample, as LeRobot's does. RTC guidance: not in FastWAM.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..checkpoint import load_checkpoint
from ..memo import lru_memo
from ._common import STATE, EngineError, _copy_in, begin_stage, capture_graph, end_stage, timed_warmup


class FastWAMEngine:
    """``predict_action_chunk(batch, noise=None) -> (B, action_horizon, action_dim)`` over a loaded LeRobot
    ``FastWAMPolicy`` (see the module docstring)."""

    def __init__(self, policy, *, cuda_graph: bool = True, prompt_cache: int = 16):
        model = policy.model
        ve, ae = model.video_expert, model.action_expert
        if str(getattr(ve, "video_attention_mask_mode", "")) != "first_frame_causal":
            raise EngineError("FastWAM engine: infer_action needs video_attention_mask_mode 'first_frame_causal'")
        if not (getattr(ve, "seperated_timestep", False) and getattr(ve, "fuse_vae_embedding_in_latents", False)):
            raise EngineError("FastWAM engine: needs separated timesteps with fused VAE latents (as LeRobot)")
        if model.text_encoder is None:
            raise EngineError("FastWAM engine: the policy has no text encoder (load_text_encoder: false)")
        if policy.config.tiled:
            raise EngineError("FastWAM engine: config 'tiled' (tiled VAE encoding) is not supported; use engine: eager")
        policy.eval()
        self.policy, self.model, self.config = policy, model, policy.config
        self.device = torch.device(model.device)
        self.dtype = model.torch_dtype
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        cfg = self.config
        self.image_keys = sorted(cfg.image_features)  # LeRobot concatenates them in this order
        self.chunk = int(cfg.action_horizon)
        self.action_dim = int(ae.action_dim)
        self.steps = int(cfg.num_inference_steps)
        # LeRobot's RoPE tables live on the host and are copied to the device at every call
        ve.freqs = ve.freqs.to(self.device)
        ae.freqs = ae.freqs.to(self.device)

        self._encode_prompt, self._prompts = lru_memo(self._encode_once, int(prompt_cache))
        self._noise: tuple | None = None  # ((seed, rand_device), LeRobot's seeded noise): drawn once
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._static: dict[tuple, dict] = {}  # image signature → buffers
        self._last_sig: tuple | None = None
        self._prefetched: tuple | None = None  # (signature, {key: tensor}) whose VAE graph is launched
        self.prefetch_hits = 0
        self.prompt_encodes = 0
        self.startup: dict[str, float] = {}
        with torch.inference_mode():
            self._action_time()

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_policy(cls, policy, *, cuda_graph: bool = True, **_):
        """Wrap a loaded LeRobot FastWAM policy. It runs in the dtype LeRobot built it in (its config's
        ``torch_dtype``, bf16 for the published model): a ``dtype`` argument does not apply."""
        return cls(policy, cuda_graph=cuda_graph)

    @classmethod
    def from_pretrained(cls, pretrained_dir, *, device="cuda", dtype=None, cuda_graph: bool = True, config=None,
                        **_):
        """LeRobot's ``from_pretrained`` (with the checkpoint's own VAE/encoder/tokenizer when it carries
        them: ``checkpoint.load_checkpoint``), then the engine over it."""

        t0 = time.perf_counter()
        policy = load_checkpoint(pretrained_dir, device=str(device), config=config)
        eng = cls.from_policy(policy, cuda_graph=cuda_graph)
        eng.startup["load_s"] = time.perf_counter() - t0
        return eng

    @torch.no_grad()
    def _action_time(self) -> None:
        """The flow schedule (LeRobot's) and, for each step, the action expert's time embedding and its
        modulations (``ActionDiT.pre_dit`` on that step's timestep: nothing else in them varies)."""
        m, ae = self.model, self.model.action_expert
        ts, deltas = m.infer_action_scheduler.build_inference_schedule(
            num_inference_steps=self.steps, device=self.device, dtype=self.dtype,
            shift_override=self.config.sigma_shift)
        self.deltas = list(deltas)
        dummy = torch.zeros(1, self.chunk, self.action_dim, device=self.device, dtype=self.dtype)
        ctx = torch.zeros(1, 1, ae.text_dim, device=self.device, dtype=self.dtype)
        self._mods = []  # per step, each layer's six modulations (LeRobot's _split_modulation of its t_mod)
        for t in ts:
            t_mod = ae.pre_dit(action_tokens=dummy, timestep=t.unsqueeze(0).to(dtype=self.dtype, device=self.device),
                               context=ctx)["t_mod"]
            self._mods.append([layer._split_modulation(layer.blocks["action"], t_mod) for layer in m.mot.layers])

    # ---- static buffers -----------------------------------------------------------------------

    def _image_sig(self, batch: dict) -> tuple:
        missing = [k for k in self.image_keys if k not in batch]
        if missing:
            raise EngineError(f"batch lacks image features {missing}")
        sig = []
        for k in self.image_keys:
            img = batch[k]
            if not torch.is_tensor(img):
                raise EngineError(f"{k}: expected a tensor, got {type(img).__name__}")
            raw = img.dtype == torch.uint8 and img.ndim in (4, 5) and img.shape[-1] == 3
            if not raw and not (img.is_floating_point() and img.ndim in (3, 4, 5) and img.shape[-3] == 3):
                raise EngineError(f"{k}: expected uint8 (B, H, W, 3) frames or float (B, 3, H, W) images in [0, 1], "
                                  f"got {img.dtype} {tuple(img.shape)}")
            sig.append((k, tuple(img.shape[-3:]), "raw" if raw else "float"))
        return tuple(sig)

    def _alloc(self, sig: tuple) -> dict:
        dev, dt, m = self.device, self.dtype, self.model
        s: dict = {"frames": {}}
        for k, hw3, kind in sig:
            s["frames"][k] = (torch.zeros(1, *hw3, dtype=torch.uint8, device=dev) if kind == "raw"
                              else torch.zeros(1, *hw3, device=dev))
        n = int(m.tokenizer.seq_len)  # LeRobot pads every prompt to it
        s["context"] = torch.zeros(1, n, m.text_encoder.dim, device=dev, dtype=dt)
        s["context_mask"] = torch.zeros(1, n, dtype=torch.bool, device=dev)
        s["prompt"] = None
        s["proprio"] = torch.zeros(1, m.proprio_dim or 1, device=dev)
        s["noise"] = torch.zeros(1, self.chunk, self.action_dim, device=dev, dtype=dt)
        s["out"] = torch.zeros(1, self.chunk, self.action_dim, device=dev)
        if self.device.type == "cuda":
            s["pinned"] = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in s["frames"].items()}
            s["pinned"]["proprio"] = torch.empty(s["proprio"].shape, pin_memory=True)
            s["pinned"]["noise"] = torch.empty(s["noise"].shape, dtype=dt, pin_memory=True)
        with torch.inference_mode():
            self._encode(s)  # the latent's shape; then the video expert's constants for that shape
            ve = m.video_expert
            pre = ve.pre_dit(x=s["latents"], timestep=torch.zeros(1, dtype=s["latents"].dtype, device=dev),
                             context=s["context"], context_mask=s["context_mask"], action=None,
                             fuse_vae_embedding_in_latents=True)
            s["video_t_mod"] = pre["t_mod"].clone()  # timestep 0 everywhere: constant
            s["grid"] = pre["meta"]["grid_sizes"].cpu()  # read by LeRobot's RoPE with .tolist(): keep on the host
            s["video_len"] = int(pre["tokens"].shape[1])
            # per layer: the video then the action keys/values, in the dtype the attention reads them in
            width = m.mot.num_heads * m.mot.attn_head_dim
            kvdt = torch.float32 if m.mot.fp32_attention else dt
            s["kf"] = [torch.zeros(1, s["video_len"] + self.chunk, width, device=dev, dtype=kvdt) for _ in m.mot.layers]
            s["vf"] = [torch.zeros_like(t) for t in s["kf"]]
            s["mask"] = m._build_mot_attention_mask(video_seq_len=s["video_len"], action_seq_len=self.chunk,
                                                    video_tokens_per_frame=int(pre["meta"]["tokens_per_frame"]),
                                                    device=dev)
        return s

    # ---- the two parts of a chunk (LeRobot's infer_action, on the static buffers) ---------------

    def _encode(self, s: dict) -> None:
        """Frames → [0, 1] float (N, 3, H, W) → LeRobot's input image (its per-camera resize, the
        concatenation along the width, the model's size) → the VAE's first-frame latents."""
        from lerobot.policies.fastwam.modeling_fastwam import _input_image_from_batch

        imgs = {}
        for k, buf in s["frames"].items():
            imgs[k] = buf.permute(0, 3, 1, 2).float().div(255.0) if buf.dtype == torch.uint8 else buf
        image = _input_image_from_batch(imgs, self.config)
        z = self.model._encode_input_image_latents_tensor(input_image=image.to(device=self.device, dtype=self.dtype))
        if "latents" not in s:
            s["latents"] = torch.zeros_like(z)
        s["latents"].copy_(z)

    def _chunk(self, s: dict) -> None:
        """Proprio token, video prefill into the per-layer K/V cache, then the flow steps."""

        m, ve, ae, dt = self.model, self.model.video_expert, self.model.action_expert, self.dtype
        ctx, cmask = s["context"], s["context_mask"]
        if m.proprio_encoder is not None:
            ctx, cmask = m._append_proprio_to_context(context=ctx, context_mask=cmask, proprio=s["proprio"].to(dt))
        # the video expert's pre_dit at timestep 0 (its t_mod precomputed)
        x = ve.patchify(s["latents"].to(dtype=ve.patch_embedding.weight.dtype))
        tokens = x.flatten(2).transpose(1, 2).contiguous()  # LeRobot: "b c f h w -> b (f h w) c"
        vctx = ve.text_embedding(ctx.to(dtype=ve.patch_embedding.weight.dtype))
        vmask = cmask.unsqueeze(1).expand(-1, tokens.shape[1], -1)
        V = s["video_len"]
        kv = m.mot.prefill_video_cache(
            video_tokens=tokens, video_freqs={"grid_sizes": s["grid"], "freqs": ve.freqs},
            video_t_mod=s["video_t_mod"], video_context_payload={"context": vctx, "mask": vmask},
            video_attention_mask=s["mask"][:V, :V])
        # the action expert: text context embedded once per chunk (LeRobot: at every step, same values),
        # and each layer's cross-attention keys/values of it (LeRobot: at every step)
        adt = ae.action_encoder.weight.dtype
        actx = ae.text_embedding(ctx.to(dtype=adt))
        amask = cmask.unsqueeze(1).expand(-1, self.chunk, -1).unsqueeze(1)
        cross = []
        for i, layer in enumerate(m.mot.layers):
            at, n = layer.blocks["action"].cross_attn, layer.blocks["action"].cross_attn.num_heads
            k = at.norm_k(at.k(actx)).view(1, -1, n * at.head_dim)
            v = at.v(actx).view(1, -1, n * at.head_dim)
            cross.append((self._heads(k, n, layer.fp32_attention), self._heads(v, n, layer.fp32_attention)))
            s["kf"][i][:, :V].copy_(kv[i]["k"])  # the video keys/values, in the attention's dtype
            s["vf"][i][:, :V].copy_(kv[i]["v"])
        freqs = ae.freqs[: self.chunk].view(self.chunk, 1, -1)
        self_mask = s["mask"][V: V + self.chunk, : V + self.chunk]
        lat = s["noise"]
        for step in range(self.steps):
            h = ae.action_encoder(lat.to(dtype=adt))
            for i, layer in enumerate(m.mot.layers):
                h = self._action_layer(layer, self._mods[step][i], h, freqs, s["kf"][i], s["vf"][i], V, self_mask,
                                       cross[i], amask)
            lat = m.infer_action_scheduler.step(ae.post_dit(h, None), self.deltas[step], lat)
        s["out"].copy_(lat.float())

    @staticmethod
    def _heads(t: torch.Tensor, n: int, fp32: bool) -> torch.Tensor:
        """(B, S, n·d) → (B, n, S, d) as LeRobot's ``fastwam_masked_attention`` hands keys/values to SDPA
        (fp32 when the model's ``fp32_attention``: a strided view, converted)."""
        t = t.unflatten(-1, (n, -1)).transpose(1, 2)  # LeRobot: rearrange "b s (n d) -> b n s d" (a view)
        return t.float() if fp32 else t

    @classmethod
    def _attend(cls, q, kh, vh, n: int, fp32: bool, mask) -> torch.Tensor:
        """The rest of ``fastwam_masked_attention`` for keys/values already in heads (``_heads``): the queries
        to heads (fp32, or the values' dtype), SDPA with the boolean mask, back to (B, S, n·d)."""
        import torch.nn.functional as F  # noqa: N812

        qh = cls._heads(q, n, fp32) if fp32 else cls._heads(q, n, False).to(dtype=vh.dtype)
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask).transpose(1, 2).flatten(2)

    def _action_layer(self, layer, mods, x, freqs, kbuf, vbuf, V, self_mask, cross, cross_mask):
        """LeRobot's ``MoTLayer`` in ``action_cached`` mode (``_build_expert_attention_io``, the mixed
        attention, ``_apply_expert_post_block``), op for op, with three things read instead of recomputed:
        the modulations of this step (``mods``), the video keys/values already in the attention's dtype in
        the head of ``kbuf``/``vbuf`` (LeRobot concatenates and converts all of them at every step: this
        converts the action rows into the tail), the cross-attention keys/values of this chunk (``cross``)."""
        from lerobot.policies.fastwam.wan.modular import _apply_block_norm, modulate

        blk, n, fp32 = layer.blocks["action"], layer.num_heads, layer.fp32_attention
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        q, k, v = blk.project_self_attention(modulate(_apply_block_norm(blk, "norm1", x), shift_msa, scale_msa),
                                             freqs)
        kbuf[:, V:].copy_(k)
        vbuf[:, V:].copy_(v)
        y = self._attend(q, self._heads(kbuf, n, False), self._heads(vbuf, n, False), n, fp32, self_mask)
        x = x + gate_msa * blk.project_self_attention_output(y)
        at = blk.cross_attn
        qc = at.norm_q(at.q(_apply_block_norm(blk, "norm3", x))).view(x.size(0), -1, at.num_heads * at.head_dim)
        x = x + at.o(self._attend(qc, *cross, at.num_heads, fp32, cross_mask).to(dtype=at.o.weight.dtype))
        return x + gate_mlp * blk.ffn(modulate(_apply_block_norm(blk, "norm2", x), shift_mlp, scale_mlp))

    # ---- staging ------------------------------------------------------------------------------

    def _stage_frames(self, s: dict, batch: dict, i: int) -> None:
        for k, buf in s["frames"].items():
            img = batch[k]
            if img.ndim == 5:  # (B, T, ...): LeRobot conditions on the first step (its video[:, :, 0])
                img = img[:, 0]
            if img.ndim == 3:
                img = img.unsqueeze(0)
            _copy_in(buf, img[i: i + 1], s.get("pinned", {}).get(k))

    def _encode_once(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.prompt_encodes += 1
        return self.model.encode_prompt(prompt)

    def _context(self, s: dict, prompt: str) -> None:
        if s["prompt"] == prompt:
            return
        emb, mask = self._encode_prompt(prompt)
        if tuple(emb.shape) != tuple(s["context"].shape):
            raise EngineError(f"prompt embedding {tuple(emb.shape)} != {tuple(s['context'].shape)}")
        s["context"].copy_(emb)
        s["context_mask"].copy_(mask)
        s["prompt"] = prompt

    def _stage_rest(self, s: dict, batch: dict, i: int, noise: torch.Tensor | None) -> None:
        from lerobot.policies.fastwam.modeling_fastwam import _prompt_from_batch

        prompt = _prompt_from_batch(batch, self.config)
        if prompt is None or (not isinstance(prompt, str) and len(prompt) == 0):
            raise EngineError("batch needs 'task' (the prompt) for FastWAM")
        self._context(s, prompt if isinstance(prompt, str) else str(prompt[min(i, len(prompt) - 1)]))
        pins = s.get("pinned", {})
        if self.model.proprio_encoder is not None:
            st = batch.get("proprio", batch.get(STATE))
            if st is None:
                raise EngineError(f"batch needs {STATE!r} (FastWAM's proprio)")
            st = st[:, -1] if st.ndim > 2 else (st.unsqueeze(0) if st.ndim == 1 else st)
            st = st[i: i + 1].to(torch.float32)
            if tuple(st.shape) != tuple(s["proprio"].shape):
                raise EngineError(f"{STATE}: shape {tuple(st.shape)}, expected {tuple(s['proprio'].shape)}")
            if not bool(torch.isfinite(st).all()):
                raise EngineError(f"{STATE}: non-finite values")
            _copy_in(s["proprio"], st, pins.get("proprio"))
        if noise is not None:
            n = noise[i: i + 1]
            if tuple(n.shape) != tuple(s["noise"].shape):
                raise EngineError(f"noise shape {tuple(noise.shape)}, expected (B, {self.chunk}, {self.action_dim})")
            _copy_in(s["noise"], n.to(self.dtype), pins.get("noise"))
            return
        seed = batch.get("seed", self.config.inference_seed)
        if torch.is_tensor(seed):  # a seed per sample, as LeRobot slices it
            seed = int(seed.flatten()[i if seed.numel() > 1 else 0].item())
        where = str(batch.get("rand_device", self.config.rand_device))
        if seed is None or self._noise is None or self._noise[0] != (seed, where):
            fresh = self.model._make_action_latents(self.chunk, seed, where)  # LeRobot's draw
            self._noise = None if seed is None else ((seed, where), fresh)  # seeded: the same every call
            s["noise"].copy_(fresh)
        else:
            s["noise"].copy_(self._noise[1])

    # ---- the call -----------------------------------------------------------------------------

    def _run(self, sig: tuple, s: dict, part: str) -> None:
        fn = self._encode if part == "encode" else self._chunk
        if not self.cuda_graph:
            fn(s)
            return
        key = (part, sig)
        if key not in self._graphs:
            self._graphs[key] = capture_graph(fn, s, self.device)
        self._graphs[key].replay()

    def _encode_frames(self, sig: tuple, s: dict, batch: dict, i: int) -> None:
        """Sample ``i``'s frames into the static buffers and the VAE graph launched on them."""
        begin_stage(s)
        self._stage_frames(s, batch, i)
        end_stage(s)
        self._run(sig, s, "encode")

    def _state(self, sig: tuple) -> dict:
        if sig not in self._static:
            self._static[sig] = self._alloc(sig)
        return self._static[sig]

    @torch.inference_mode()
    def prefetch(self, batch: dict) -> bool:
        """Stage the batch's frames and start the VAE now (asynchronous on a GPU), before the
        pre-processor has run (``batch`` needs only the images). The next :meth:`predict_action_chunk`
        whose batch holds these same image tensors skips them. False (nothing done) before the first
        call, for a batch of B > 1, or when the frames' shapes are not the last call's."""
        self._prefetched = None
        try:
            sig = self._image_sig(batch)
        except EngineError:
            return False
        if sig != self._last_sig or any(batch[k].shape[0] != 1 for k in self.image_keys if batch[k].ndim >= 4):
            return False
        self._encode_frames(sig, self._static[sig], batch, 0)
        self._prefetched = (sig, {k: batch[k] for k in self.image_keys})
        return True

    UNSUPPORTED = ("input_image", "video", "context", "context_mask", "num_inference_steps", "sigma_shift", "tiled")

    @torch.inference_mode()
    def predict_action_chunk(self, batch: dict, noise: torch.Tensor | None = None, **rtc) -> torch.Tensor:
        """Actions (B, action_horizon, action_dim) fp32 on the engine's device (normalised, as LeRobot)."""
        if any(v is not None for v in rtc.values()):
            raise EngineError("FastWAM has no RTC guidance")
        bad = [k for k in self.UNSUPPORTED if k in batch]
        if bad:
            raise EngineError(f"FastWAM engine: batch keys {bad} (LeRobot's per-call overrides) are not supported; "
                              "use engine: eager")
        sig = self._image_sig(batch)
        sizes = {k: batch[k].shape[0] for k in self.image_keys if batch[k].ndim >= 4}
        if len(set(sizes.values())) > 1:
            raise EngineError(f"cameras with different batch sizes: {sizes}")
        b = next(iter(sizes.values()), 1)
        if noise is not None and (noise.ndim != 3 or noise.shape[0] != b):
            raise EngineError(f"noise shape {tuple(noise.shape)}, expected ({b}, {self.chunk}, {self.action_dim})")
        s = self._state(sig)
        pre, self._prefetched = self._prefetched, None
        done = (b == 1 and pre is not None and pre[0] == sig and all(batch.get(k) is t for k, t in pre[1].items()))
        outs = []
        for i in range(b):
            if not (done and i == 0):
                self._encode_frames(sig, s, batch, i)
            begin_stage(s)
            self._stage_rest(s, batch, i, noise)
            end_stage(s)
            self._run(sig, s, "chunk")
            outs.append(s["out"].clone())
        self._last_sig = sig
        self.prefetch_hits += done
        out = torch.cat(outs) if b > 1 else outs[0]
        if not bool(torch.isfinite(out).all()):
            raise EngineError("non-finite actions (NaN/inf in the images or the weights?)")
        return out

    @torch.no_grad()
    def warmup(self, batch: dict | None = None, progress: Callable[[str], None] | None = None) -> float:
        """Buffers, the prompt's embedding, CUDA graph capture, one call (start-up). Returns seconds."""
        return timed_warmup(self, batch if batch is not None else self.dummy_batch(), progress, "fastwam",
                            "capturing CUDA graphs" if self.cuda_graph else "eager")

    def dummy_batch(self, batch_size: int = 1) -> dict:
        """Grey frames at the configured sizes, a zero state, a short task."""
        b: dict = {}
        for k in self.image_keys:
            c, h, w = self.config.image_features[k].shape
            b[k] = torch.full((batch_size, c, h, w), 0.5)
        if self.model.proprio_dim is not None:
            b[STATE] = torch.zeros(batch_size, self.model.proprio_dim)
        b["task"] = "warm up"
        return b

    def reset(self) -> None:
        pass


__all__ = ["FastWAMEngine"]
