"""LingBot-VA as CUDA graphs: LeRobot's own modules and streaming loop, its KV-cache bookkeeping on the host.

LeRobot 0.6.1's LingBot-VA (``LingBotVAPolicy``) keeps, in every self-attention layer, a pool of KV slots
with a validity mask, an age id and a "predicted" flag on the GPU, and manages it with ``nonzero()``,
``numel()``, ``any()`` and ``max()`` at every layer of every transformer pass — each a device→host sync;
it also builds the RoPE grid ids and frequency bases on the host and copies them (a pageable copy waits
for the stream), and indexes with host masks. Measured on the H200 at full size: a later chunk is
≈ 200 000 kernels and ≈ 27 000 sync points in 3–6 s of wall clock for 1.07 s of GPU kernels
(``docs/results/gpu_inference_lingbot.json``). Such a loop cannot be captured in a CUDA graph, and it
is host-bound: the GPU waits for the host at every layer.

:class:`LingBotVAEngine` installs itself on a loaded policy and changes only that:

* the slot pool's bookkeeping runs on the host (:class:`SlotPool`): which slots a pass writes, which
  it attends to and which it frees depend only on the sizes and flags of the writes, never on tensor
  values, and all layers see the same writes — so one host computation per pass replaces 30 layers of
  device bookkeeping; the layers get the slot indices as device tensors (uploaded once per distinct
  set: a handful per chunk);
* the RoPE frequency bases live on the device, the grid ids are built once per (shape, frame offset),
  the VAE latent statistics once, the action-channel mask is a device index;
* on CUDA each transformer pass is a CUDA graph, captured at the first pass of its shape and replayed
  for the others (the 20 video passes of a chunk share one graph, the 50 action passes another); the
  attended slot count grows until the pool is full, so a chunk captures a few new graphs until then;
* the prompt's UMT5 embedding is kept across episodes (LeRobot encodes it at every episode's first
  chunk, on the host by default).

Without the syncs LeRobot's pass is still host-bound (≈ 145 000 kernel launches per chunk, 3.4 s of
host time for 1.0 s of GPU kernels): the graphs are what make the chunk GPU-bound.

Everything else — the transformer and its blocks, the VAE, the schedulers, the CFG, the streaming state
of ``select_action`` / ``predict_action_chunk`` — is LeRobot's code on LeRobot's tensors, so the actions
are LeRobot's to the bit (``tests/test_engines_lingbot.py``), noise included: it is drawn by the same
``torch.randn`` calls in the same order. One documented difference: when the pool is full LeRobot evicts
the oldest entries with ``torch.argsort`` (unstable: ties between slots of one write are in no defined
order); the pool breaks such ties by slot index (a stable sort).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import numpy as np
import torch

from ..memo import lru_memo
from ._common import EngineError, capture_graph


class SlotPool:
    """Host mirror of a LingBot-VA attention KV cache's bookkeeping (LeRobot's ``WanAttention``:
    ``allocate_slots``, ``_next_cache_id``, ``update_cache``, ``restore_cache``, ``clear_pred_cache``)."""

    def __init__(self, size: int):
        self.mask = np.zeros(size, bool)
        self.ids = np.full(size, -1, np.int64)
        self.is_pred = np.zeros(size, bool)

    def allocate(self, key_size: int) -> np.ndarray:
        free = np.flatnonzero(~self.mask)
        if free.size < key_size:  # evict the oldest writes
            used = np.flatnonzero(self.mask)
            to_free = used[np.argsort(self.ids[used], kind="stable")[: key_size - free.size]]
            self.mask[to_free] = False
            self.ids[to_free] = -1
            free = np.flatnonzero(~self.mask)
        if free.size < key_size:
            raise EngineError(f"LingBot-VA KV cache exhausted: need {key_size} free slots, have {free.size}")
        return free[:key_size]

    def write(self, key_size: int, is_pred: bool) -> np.ndarray:
        slots = self.allocate(key_size)
        new_id = int(self.ids[self.mask].max()) + 1 if self.mask.any() else 0
        self.mask[slots] = True
        self.ids[slots] = new_id
        self.is_pred[slots] = is_pred
        return slots

    def restore(self, slots: np.ndarray) -> None:
        self.mask[slots] = False

    def clear_pred(self) -> None:
        self.mask[self.is_pred] = False

    def valid(self) -> np.ndarray:
        return np.flatnonzero(self.mask)


def _guided(pred: torch.Tensor, scale: float) -> torch.Tensor:
    """LeRobot's classifier-free guidance of a (conditional, unconditional) pair of predictions."""
    return pred[1:] + scale * (pred[:1] - pred[1:]) if scale > 1 else pred[:1]


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """LeRobot's ``apply_rotary_emb`` inside ``WanAttention.forward``."""
    x_out = torch.view_as_complex(x.to(torch.float64).reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2))
    return torch.view_as_real(x_out * freqs).flatten(3).to(x.dtype)


class LingBotVAEngine:
    """Installed on a loaded ``LingBotVAPolicy`` (see the module docstring); ``policy`` is then used as
    before (``select_action``, ``predict_action_chunk``, ``reset``)."""

    def __init__(self, policy, *, cuda_graph: bool = True, index_cache: int = 16, graphs: int = 8):
        if getattr(policy, "_lingbot_engine", None) is not None:
            raise EngineError("LingBot-VA engine: already installed on this policy")
        cfg = policy.config
        if cfg.attn_mode != "torch":
            raise EngineError(f"LingBot-VA engine: attn_mode {cfg.attn_mode!r} (the engine serves 'torch', "
                              "LeRobot's inference default)")
        self.policy, self.config = policy, cfg
        self.device = torch.device(cfg.device)
        tr = policy.transformer
        for name in ("f_freqs_base", "h_freqs_base", "w_freqs_base"):  # LeRobot copies them at every pass
            setattr(tr.rope, name, getattr(tr.rope, name).to(self.device))
        self.pool: SlotPool | None = None
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # the engine's K/V tensors, per layer
        self._kv_ptr: int | None = None

        self._pass: tuple[torch.Tensor, torch.Tensor] | None = None  # this pass's (slots, valid) on the device
        # (slots, valid) as bytes → on the device: uploaded once per distinct set (a sync each)
        self._upload, self._indices = lru_memo(self._upload_once, int(index_cache))
        # (f, h, w, t, frame offset, action) → LeRobot's grid ids on the device
        self._grid, self._grids = lru_memo(self._grid_once, 32)
        self._latent_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        drop = torch.ones(cfg.action_dim, dtype=torch.bool)
        drop[cfg.used_action_channel_ids] = False
        self._drop = drop.nonzero().squeeze(-1).to(self.device)  # action channels LeRobot zeroes
        self.uploads = 0  # index sets uploaded (a sync each): a handful per chunk
        self.passes = 0
        # CUDA graphs: one per pass shape (stream, input shapes, slots written, slots attended), captured on
        # first use and replayed for the other passes of that shape — the 20 video passes of a chunk share
        # one, its 50 action passes another; the attended count grows until the pool is full, so the
        # oldest graphs are dropped (``graphs`` kept)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._graphs: OrderedDict[tuple, dict] = OrderedDict()
        self._max_graphs = int(graphs)
        self._graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graph else None
        self.captures = 0
        self.replays = 0
        # install: the attention layers, the transformer pass, and the policy's streaming helpers
        for block in tr.blocks:
            if block.attn1.attn_caches is not None:
                block.attn1.forward = partial(self._attention, block.attn1)
        self._lerobot_pass = tr.forward
        tr.forward = self._transformer_pass
        self._lerobot_init_cache = policy._init_streaming_cache
        policy._init_streaming_cache = self._init_streaming_cache
        policy._compute_kv_cache = self._compute_kv_cache
        policy._prepare_latent_input = self._prepare_latent_input
        policy._normalize_vae_latent = self._normalize_vae_latent
        policy._infer = self._infer
        # the prompt's UMT5 embedding (and CFG's empty prompt's): LeRobot encodes it at the first chunk of
        # every episode, on its text_encoder_device (the host by default: seconds for 5.7 B parameters)
        self._lerobot_encode_prompt = policy._encode_prompt
        self.prompt_encodes = 0
        policy._encode_prompt, self._prompts = lru_memo(self._encode_once, 8)
        policy._lingbot_engine = self
        policy.eval()

    @classmethod
    def from_policy(cls, policy, *, cuda_graph: bool = True, **_):
        return cls(policy, cuda_graph=cuda_graph)

    # ---- the KV cache ---------------------------------------------------------------------------

    def _init_streaming_cache(self, init_latent) -> None:
        """LeRobot's (a fresh pool per episode), then the engine's own K/V tensors put back into every layer:
        the captured graphs read and write those addresses, episode after episode (LeRobot allocates new,
        uninitialised ones; nothing is read from a slot before it is written in either)."""
        self._lerobot_init_cache(init_latent)
        caches = [b.attn1.attn_caches["pos"] for b in self.policy.transformer.blocks if b.attn1.attn_caches is not None]
        sizes = {c["k"].shape[1] for c in caches}
        if len(sizes) != 1:
            raise EngineError(f"LingBot-VA engine: layers with different cache sizes {sorted(sizes)}")
        same = self._kv is not None and len(self._kv) == len(caches) and all(
            k.shape == c["k"].shape and k.dtype == c["k"].dtype and k.device == c["k"].device
            for (k, _), c in zip(self._kv, caches))
        if same:
            for (k, v), c in zip(self._kv, caches):
                c["k"], c["v"] = k, v
        else:
            self._kv = [(c["k"], c["v"]) for c in caches]
            self._graphs.clear()  # they read the previous tensors
        self._kv_ptr = self._kv[0][0].data_ptr() if self._kv else None
        self.pool = SlotPool(sizes.pop())
        self._indices.clear()

    def _device_indices(self, slots: np.ndarray, valid: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self._upload((slots.tobytes(), valid.tobytes()))

    def _upload_once(self, key: tuple[bytes, bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        self.uploads += 1
        return tuple(torch.from_numpy(np.frombuffer(b, np.int64).copy()).to(self.device) for b in key)

    def _transformer_pass(self, input_dict, update_cache=0, cache_name="pos", action_mode=False, train_mode=False):
        """One LeRobot transformer pass, its cache writes decided on the host first."""
        if train_mode or self.pool is None or cache_name != "pos":
            self._pass = None
            return self._lerobot_pass(input_dict, update_cache=update_cache, cache_name=cache_name,
                                      action_mode=action_mode, train_mode=train_mode)
        shape = input_dict["noisy_latents"].shape  # (B, C, F, H, W)
        p = self.policy.transformer.patch_size
        tokens = (shape[2] * shape[3] * shape[4] if action_mode
                  else (shape[2] // p[0]) * (shape[3] // p[1]) * (shape[4] // p[2]))
        slots = self.pool.write(tokens, is_pred=update_cache == 1)
        indices = self._device_indices(slots, self.pool.valid())
        try:
            if self.cuda_graph:
                out = self._graph_pass(input_dict, indices, action_mode)
            else:
                self._pass = indices
                out = self._lerobot_pass(input_dict, update_cache=update_cache, cache_name=cache_name,
                                         action_mode=action_mode)
        finally:
            if update_cache == 0:
                self.pool.restore(slots)
            self._pass = None
        self.passes += 1
        return out

    def _graph_pass(self, input_dict: dict, indices: tuple[torch.Tensor, torch.Tensor], action_mode: bool):
        """The pass as a CUDA graph: inputs and slot indices copied into the graph's static buffers, replay,
        the output copied out (the next replay overwrites it)."""
        key = (action_mode, tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(input_dict.items())),
               tuple(indices[0].shape), tuple(indices[1].shape), self._kv_ptr)  # a graph reads these buffers
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, input_dict, indices, action_mode)
        else:
            self._graphs.move_to_end(key)
            for name, t in input_dict.items():
                entry["inputs"][name].copy_(t)
            if entry["indices"] is not indices:  # another set of slots of the same sizes
                entry["slots"].copy_(indices[0])
                entry["valid"].copy_(indices[1])
                entry["indices"] = indices
        entry["graph"].replay()
        self.replays += 1
        return entry["out"].clone()

    def _capture(self, key, input_dict: dict, indices, action_mode: bool) -> dict:
        static = {name: t.clone() for name, t in input_dict.items()}
        slots, valid = indices[0].clone(), indices[1].clone()
        self._pass = (slots, valid)
        box = {}

        def part(st):
            box["out"] = self._lerobot_pass(st, update_cache=1, cache_name="pos", action_mode=action_mode)

        # one eager run first (it writes what the replay writes): the new shapes' kernels and plans are set up
        graph = capture_graph(part, static, self.device, warm=1, pool=self._graph_pool)
        self.captures += 1
        entry = {"graph": graph, "inputs": static, "slots": slots, "valid": valid, "indices": indices,
                 "out": box["out"]}
        self._graphs[key] = entry
        while len(self._graphs) > self._max_graphs:
            self._graphs.popitem(last=False)
        return entry

    def _attention(self, attn, q, k, v, rotary_emb, update_cache=0, cache_name="pos"):
        """LeRobot's ``WanAttention.forward`` for a self-attention layer with a KV cache, its slot
        bookkeeping replaced by this pass's device indices (``_transformer_pass``)."""
        caches = attn.attn_caches
        kv_cache = caches.get(cache_name) if caches is not None else None
        query, key, value = attn.to_q(q), attn.to_k(k), attn.to_v(v)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _rope(query, rotary_emb), _rope(key, rotary_emb)
        if kv_cache is not None and kv_cache["k"] is not None:
            if self._pass is None:
                raise EngineError("LingBot-VA engine: a cached attention outside a transformer pass")
            slots, valid = self._pass
            kv_cache["k"][:, slots] = key
            kv_cache["v"][:, slots] = value
            key, value = kv_cache["k"][:, valid], kv_cache["v"][:, valid]
        hidden = attn.attn_op(query, key, value).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden))

    # ---- the policy's streaming helpers, without host round trips --------------------------------

    def _encode_once(self, prompt: str):
        self.prompt_encodes += 1
        return self._lerobot_encode_prompt(prompt)

    def _grid_once(self, key: tuple) -> torch.Tensor:
        from lerobot.policies.lingbot_va.utils import get_mesh_id

        f, h, w, t, f_shift, action = key
        return get_mesh_id(f, h, w, t, 1, f_shift, action=action).to(self.device)

    def _normalize_vae_latent(self, enc_out: torch.Tensor) -> torch.Tensor:
        """LeRobot's, with the VAE's latent mean and 1/std on the device once."""
        mu, _logvar = torch.chunk(enc_out, 2, dim=1)
        if self._latent_stats is None or self._latent_stats[0].device != mu.device:
            vcfg = self.policy._vae.config
            mean = torch.tensor(vcfg.latents_mean).to(mu.device).view(1, -1, 1, 1, 1)
            inv_std = (1.0 / torch.tensor(vcfg.latents_std).to(mu.device)).view(1, -1, 1, 1, 1)
            self._latent_stats = (mean, inv_std)
        mean, inv_std = self._latent_stats
        return ((mu.float() - mean) * inv_std).to(mu)

    def _prepare_latent_input(self, latent_model_input, action_model_input, latent_t=0, action_t=0,
                              latent_cond=None, action_cond=None, frame_st_id=0):
        """LeRobot's ``_prepare_latent_input`` with cached grid ids and a device action-channel index."""
        p = self.config.patch_size
        out = {}
        if latent_model_input is not None:
            x = latent_model_input
            grid = self._grid((x.shape[-3] // p[0], x.shape[-2] // p[1], x.shape[-1] // p[2], 0, frame_st_id, False))
            out["latent_res_lst"] = self._stream_input(x, latent_t, grid, latent_cond)
        if action_model_input is not None:
            x = action_model_input
            grid = self._grid((x.shape[-3], x.shape[-2], x.shape[-1], 1, frame_st_id, True))
            out["action_res_lst"] = self._stream_input(x, action_t, grid, action_cond)
            out["action_res_lst"]["noisy_latents"][:, self._drop] *= 0
        return out

    def _stream_input(self, x, t, grid, cond) -> dict:
        """One stream's pass input as LeRobot's ``_prepare_latent_input`` builds it (the conditioning
        frame, when given, overwrites frame 0 at timestep 0)."""
        pol = self.policy
        d = {"noisy_latents": x, "timesteps": torch.ones([x.shape[2]], dtype=torch.float32, device=self.device) * t,
             "grid_id": grid, "text_emb": pol._prompt_embeds.to(pol.dtype).clone()}
        if cond is not None:
            d["noisy_latents"][:, :, 0:1] = cond[:, :, 0:1]
            d["timesteps"][0:1] *= 0
        return d

    def _compute_kv_cache(self, obs_buffer, executed_actions) -> None:
        """LeRobot's ``_compute_kv_cache``: the observed keyframes and the executed chunk into the cache."""
        pol = self.policy
        if not obs_buffer or executed_actions is None:
            return
        self.pool.clear_pred()
        latent_model_input = pol._encode_frames(obs_buffer)
        if pol._frame_st_id == 0 and getattr(pol, "_init_latent", None) is not None:
            latent_model_input = torch.cat([pol._init_latent, latent_model_input], dim=2)
        action_model_input = pol._preprocess_action_state(executed_actions).to(latent_model_input)
        input_dict = self._prepare_latent_input(latent_model_input, action_model_input, frame_st_id=pol._frame_st_id)
        with torch.no_grad():
            pol.transformer(pol._repeat_input_for_cfg(input_dict["latent_res_lst"]), update_cache=2,
                            cache_name="pos", action_mode=False)
            pol.transformer(pol._repeat_input_for_cfg(input_dict["action_res_lst"]), update_cache=2,
                            cache_name="pos", action_mode=True)
        pol._frame_st_id += latent_model_input.shape[2]

    @torch.no_grad()
    def _infer(self, init_latent, frame_st_id=0):
        """LeRobot's ``_infer`` (the video-latent then the action flow loop of one chunk), unchanged but
        for the device action-channel index."""
        import torch.nn.functional as F  # noqa: N812
        from lerobot.policies.lingbot_va.utils import data_seq_to_patch

        pol, cfg, device = self.policy, self.config, self.device
        latent_h, latent_w = pol._latent_hw
        fcs = cfg.frame_chunk_size
        nb = 2 if pol._use_cfg else 1
        latents = torch.randn(1, 48, fcs, latent_h, latent_w, device=device, dtype=pol.dtype)
        actions = torch.randn(1, cfg.action_dim, fcs, cfg.action_per_frame, 1, device=device, dtype=pol.dtype)
        pol._scheduler.set_timesteps(cfg.num_inference_steps)
        pol._action_scheduler.set_timesteps(cfg.action_num_inference_steps)
        timesteps = F.pad(pol._scheduler.timesteps, (0, 1), mode="constant", value=0)
        if cfg.video_exec_step != -1:
            timesteps = timesteps[: cfg.video_exec_step]
        action_timesteps = F.pad(pol._action_scheduler.timesteps, (0, 1), mode="constant", value=0)
        for i, t in enumerate(timesteps):
            last = i == len(timesteps) - 1
            latent_cond = init_latent[:, :, 0:1].to(pol.dtype) if frame_st_id == 0 and init_latent is not None else None
            input_dict = self._prepare_latent_input(latents, None, t, t, latent_cond, None, frame_st_id=frame_st_id)
            pred = pol.transformer(pol._repeat_input_for_cfg(input_dict["latent_res_lst"]),
                                   update_cache=1 if last else 0, cache_name="pos", action_mode=False)
            if not last or cfg.video_exec_step != -1:
                pred = _guided(data_seq_to_patch(cfg.patch_size, pred, fcs, latent_h, latent_w, batch_size=nb),
                               cfg.guidance_scale)
                latents = pol._scheduler.step(pred, t, latents, return_dict=False)
            if frame_st_id == 0 and latent_cond is not None:
                latents[:, :, 0:1] = latent_cond
        for i, t in enumerate(action_timesteps):
            last = i == len(action_timesteps) - 1
            action_cond = (torch.zeros([1, cfg.action_dim, 1, cfg.action_per_frame, 1], device=device, dtype=pol.dtype)
                           if frame_st_id == 0 else None)
            input_dict = self._prepare_latent_input(None, actions, t, t, None, action_cond, frame_st_id=frame_st_id)
            pred = pol.transformer(pol._repeat_input_for_cfg(input_dict["action_res_lst"]),
                                   update_cache=1 if last else 0, cache_name="pos", action_mode=True)
            if not last:
                pred = pred.unflatten(1, (fcs, -1)).permute(0, 3, 1, 2).unsqueeze(-1)  # "b (f n) c -> b c f n 1"
                actions = pol._action_scheduler.step(_guided(pred, cfg.action_guidance_scale), t, actions,
                                                     return_dict=False)
            if frame_st_id == 0 and action_cond is not None:
                actions[:, :, 0:1] = action_cond
        actions[:, self._drop] *= 0
        return actions, latents


__all__ = ["LingBotVAEngine", "SlotPool"]
