"""Any LeRobot policy from a local pretrained directory, with its own pre/post-processors.

Loads exactly as LeRobot does: ``PreTrainedConfig.from_pretrained(dir)``,
``get_policy_class(cfg.type).from_pretrained(dir, config=cfg)`` (config.json +
model.safetensors) and ``make_pre_post_processors(cfg, pretrained_path=dir)`` (the saved
processor pipelines: normalisation stats, tokenizer, ...). Works for ACT, Diffusion, SmolVLA,
π0/π0.5, X-VLA (``xvla``), VLA-JEPA (``vla_jepa``: its Qwen3-VL / V-JEPA 2 from ``<dir>/qwen`` and
``<dir>/jepa_encoder`` when the checkpoint carries them, ``checkpoint.py``), and the WAMs fastwam /
lingbot_va — whatever ``get_policy_class`` knows.

Observation → batch as LeRobot's own inference path (``prepare_observation_for_inference``):
images HWC uint8 → float CHW in [0, 1] under ``observation.images.<key>`` (the node's
``observation.image_keys``; keys that already start with ``observation.`` are used as they are),
the 14-dim state under ``observation.state``, the prompt as ``task``. One
``predict_action_chunk`` gives the chunk; the post-processor un-normalises it.

GPU when present (``device: auto``); ``dtype: auto`` runs bf16 autocast on CUDA (float32 on
CPU). With ``rtc: true`` and a policy with RTC (SmolVLA, π0, π0.5; its checkpoint's ``rtc_config``, else
LeRobot's defaults) the un-executed remainder of the previous chunk (model space, indexed by observation
time) and the expected inference delay are passed to RTC guidance: LeRobot's own (eager engine) or the
fast engine's, which computes LeRobot's guided chunk inside its CUDA graphs (``engines._common``;
``rtc_jacobian: full``, fast engine only: the paper's VJP through the action expert instead of LeRobot
0.6.1's constant-velocity correction). ``rtc: true`` on a policy without RTC is a config error.

Streaming policies (``STREAMING``: LingBot-VA) condition each chunk after the first on what was observed
while the previous one ran: ``observe`` (every new observation, from the controller) feeds them as their
``select_action`` would, ``infer`` predicts the next chunk from that. They need the ``sync`` runtime
(``requires_sync_runtime``).
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from wam_common.config import ConfigError
from wam_common.schema import Param, defaults
from wam_common.topics import DT, STATE_DIM

from ..checkpoint import local_tokenizer_overrides, local_vlm_overrides, load_checkpoint, zoo_checkpoint
from ..memo import lru_memo
from ..observation import IMAGE_MISMATCH, ImageSizeError, fit_image
from . import ActionChunk, Backend, BackendError, Observation, register_backend

log = logging.getLogger("wam_policy.backend.lerobot")  # the node forwards it to its ROS logger

ENGINES = ("auto", "fast", "eager")
DTYPES = ("auto", "float32", "bfloat16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
RTC_JACOBIANS = ("identity", "full")  # engines._common.RTC_JACOBIANS (not imported here: torch-free)

PARAMS = {
    "path": Param("", "local pretrained directory (config.json, model.safetensors, policy_*processor*.json)"),
    "device": Param("auto", "auto (CUDA when present), cpu, cuda or cuda:N"),
    "dtype": Param("auto", "auto: bf16 autocast on CUDA, float32 on CPU", choices=DTYPES),
    "n_actions": Param(0, "keep the first n actions of each chunk (0 = all)", range=(0, None)),
    "rtc": Param(False, "RTC guidance (the new chunk inpainted toward the previous chunk's left-over while it is "
                 "sampled; the policy must support RTC: SmolVLA, π0, π0.5): LeRobot's (eager) or the fast engine's"),
    "rtc_jacobian": Param("identity", "rtc with the fast engine: identity = LeRobot 0.6.1's guidance (its velocity held "
                          "constant: no backward pass); full = the RTC paper's VJP through the action expert (one "
                          "autograd backward per flow step, in the CUDA graph)", choices=RTC_JACOBIANS),
    "engine": Param("auto", "π0/π0.5/SmolVLA/FastWAM/LingBot-VA (engines.FAST_TYPES): auto runs wam_policy_node.engines' "
                    "fast engine (CUDA graphs) on CUDA (with rtc: π0/π0.5/SmolVLA, engines.RTC_TYPES); fast forces it "
                    "(CPU too); eager = LeRobot's own", choices=ENGINES),
    "compile": Param("", "eager engine: torch.compile mode of predict_action_chunk (\"\" = no compile); the "
                     "warm-up pays the compile at load", choices=("",) + COMPILE_MODES),
    "warmup": Param(1, "dummy inferences at load (first-call allocations, cudnn autotune, compiles)", range=(0, None)),
    "torch_threads": Param(0, "CPU intra-op threads of the inferring thread (0 = torch's default)", range=(0, None)),
    "image_mismatch": Param("resize", "a camera image of another size than the checkpoint's input feature (config.json "
                            "input_features): resize (with pad, keeping the aspect ratio, as openpi's resize_with_pad; "
                            "logged once per camera and size) or refuse (the inference fails: a hold, the error names "
                            "both sizes)", choices=("resize", "refuse")),
    "zoo": Param({}, "a random-weight architecture of wam_policy_node.zoo instead of a trained checkpoint: {kind, "
                 "size, seed, cameras, image_size, chunk}, written on first use into path, or when that is \"\" "
                 "into $XDG_CACHE_HOME/wam_policy/zoo/<kind>-<hash of the spec>"),
}
DEFAULTS = defaults(PARAMS)


def _frame_tensor(torch, img: np.ndarray):
    """A uint8 HxWx3 frame as a CPU tensor without copying it: a read-only view of the message buffer is
    shared as it is (torch warns that it is not writable; the callers only read it). Copied only where
    torch cannot share it (not C-contiguous: bgr8's reversed channels, a padded row step)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.require(img, np.uint8, ["C"]))


def _images_untouched(pipeline) -> bool:
    """Whether the pre-processor passes images through unchanged: each of its steps is one that never
    touches an image, or a normaliser whose mode for visual features is identity."""
    from lerobot.configs.types import FeatureType, NormalizationMode

    passive = {"RenameObservationsProcessorStep", "AddBatchDimensionProcessorStep", "RelativeActionsProcessorStep",
               "Pi05PrepareStateTokenizerProcessorStep", "Pi0NewLineProcessor", "NewLineTaskProcessorStep",
               "TokenizerProcessorStep", "DeviceProcessorStep"}
    for step in getattr(pipeline, "steps", []):
        name = type(step).__name__
        if name == "NormalizerProcessorStep":
            if step.norm_map.get(FeatureType.VISUAL, NormalizationMode.IDENTITY) != NormalizationMode.IDENTITY:
                return False
        elif name == "RenameObservationsProcessorStep":
            if getattr(step, "rename_map", None):
                return False
        elif name not in passive:
            return False
    return True


def _memoize_tokenizer(pipeline, size: int = 64) -> None:
    """Tokenize each prompt once: LeRobot's tokenizer steps tokenize the task text at every
    inference (~0.5 ms of Python), though a prompt rarely changes within an episode. The wrapped
    step gets fresh tensors of the cached result each call (π0.5 puts the discretised state in its
    prompt: those texts mostly miss, and the bounded cache only costs a lookup)."""
    import torch

    def fresh(hit: dict) -> dict:
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in hit.items()}

    for step in getattr(pipeline, "steps", []):
        fn = getattr(step, "_tokenize_text", None)
        if fn is not None:
            step._tokenize_text, _ = lru_memo(lambda text, _fn=fn: dict(_fn(text)), size, fresh)


def _memoize_prompt_encoder(policy, size: int = 16) -> None:
    """Encode each prompt once where a policy runs a text encoder at every inference: LeRobot's FastWAM
    calls its frozen UMT5 encoder (5.7 B parameters at full size, more than its video DiT) on the
    prompt for every chunk. The cached embedding is what the encoder returns for that text (eval
    mode, no randomness); later steps build new tensors from it (proprio appended), never write it."""
    model = getattr(policy, "model", None)
    fn = getattr(model, "encode_prompt", None)
    if fn is None or getattr(model, "text_encoder", None) is None:
        return
    model.encode_prompt, model.prompt_cache = lru_memo(fn, size)


class _LingBotVA:
    """LingBot-VA's ``select_action`` loop split between ``observe`` and ``infer``, on the policy's own
    streaming state. The first chunk is conditioned on the observation it is asked for; every later
    observation is the result of one executed action and is buffered as a keyframe on the policy's
    stride (``_obs_buffer``); the next chunk feeds the buffered frames and the executed chunk into the
    KV cache (``predict_action_chunk(None)``). In lockstep this is exactly ``select_action``'s sequence;
    in real time a camera slower than the control rate can leave fewer new observations than executed
    steps: the buffer is then padded with its newest frame to the count the VAE expects."""

    def __init__(self, policy):
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        self.first = None  # batch of the newest observation before the first chunk
        self.since = 0  # observations since the newest chunk was predicted
        self.n_last = 0  # actions in the newest chunk

    def observe(self, batch: dict) -> None:
        p = self.policy
        if p._first_chunk:
            self.first = batch
            return
        j = self.since % p.config.action_per_frame  # sub-step of the action this observation followed
        self.since += 1
        if (j + 1) % p._keyframe_stride == 0:
            p._obs_buffer.append(p._extract_raw_obs(batch))

    def predict(self, call):
        """``call(batch or None)`` runs the policy's ``predict_action_chunk``."""
        p = self.policy
        if p._first_chunk:
            chunk = call(self.first)
        else:
            want, buf = self.n_last // p._keyframe_stride, p._obs_buffer
            if buf and len(buf) != want:
                p._obs_buffer = (buf + buf[-1:] * want)[:want] if len(buf) < want else buf[-want:]
            chunk = call(None)
        self.since, self.n_last = 0, chunk.shape[-2]
        return chunk


STREAMING = {"lingbot_va": _LingBotVA}  # policy type → its observe/infer adapter


@dataclass(frozen=True)
class Options:
    """The backend's modes, resolved once (:func:`resolve_options`) from its config, the checkpoint's policy
    type and the device, before the policy is loaded."""

    engine: str  # "fast" (wam_policy_node.engines) | "eager" (LeRobot's own policy)
    # the policy is an engine object with its own batch handling (π/SmolVLA/FastWAM); an engine installed on
    # LeRobot's own policy (LingBot-VA) leaves the policy, its batch and streaming as they are
    wrapped: bool
    rtc: bool  # RTC guidance (LeRobot's, or the fast engine's; a policy without it is refused once loaded)
    compile: str  # torch.compile mode of the eager predict_action_chunk ("" = none)
    dtype: str  # "bfloat16" | "float32": the fast engine's own dtype; eager: bf16 autocast or none
    stream: type | None  # the STREAMING adapter of the policy type (LeRobot's batch: not when wrapped)
    rtc_jacobian: str = "identity"  # the fast engine's RTC Jacobian (RTC_JACOBIANS)


def resolve_options(cfg: dict, policy_type: str, device_type: str) -> Options:
    """The :class:`Options` of a backend config (DEFAULTS merged) for a policy of ``policy_type`` on a
    ``device_type`` ("cuda", "cpu") device; a ConfigError names the key of a clash."""
    from .. import engines

    want, rtc, cuda = str(cfg["engine"]), bool(cfg["rtc"]), device_type == "cuda"
    if want not in ENGINES:
        raise ConfigError(f"key 'backend.lerobot.engine' must be auto, fast or eager, got '{want}'")
    if want == "fast":
        if not engines.supports(policy_type):
            raise ConfigError(f"key 'backend.lerobot.engine': no fast engine for policy type '{policy_type}' "
                              f"(have {', '.join(engines.FAST_TYPES)})")
        if rtc and not engines.supports_rtc(policy_type):
            raise ConfigError(f"key 'backend.lerobot.engine': the fast engine for '{policy_type}' has no RTC guidance "
                              f"(have {', '.join(engines.RTC_TYPES)}); use engine: eager with rtc: true")
    fast = want == "fast" or (want == "auto" and cuda and engines.supports(policy_type)
                              and (not rtc or engines.supports_rtc(policy_type)))
    jac = str(cfg.get("rtc_jacobian", "identity"))
    if jac not in RTC_JACOBIANS:
        raise ConfigError(f"key 'backend.lerobot.rtc_jacobian' must be one of {', '.join(RTC_JACOBIANS)}, got '{jac}'")
    if rtc and jac != "identity" and not fast:
        raise ConfigError(f"key 'backend.lerobot.rtc_jacobian': {jac} is the fast engine's (LeRobot's eager RTC is "
                          "identity); use engine: fast, or rtc_jacobian: identity")
    mode = str(cfg["compile"] or "")
    if mode:
        if mode not in COMPILE_MODES:
            raise ConfigError(f"key 'backend.lerobot.compile': unknown torch.compile mode '{mode}'")
        if fast:
            raise ConfigError("key 'backend.lerobot.compile': the fast engine compiles itself; use engine: eager")
    dtype = str(cfg["dtype"])
    if fast:
        dtype = "bfloat16" if cuda and dtype != "float32" else "float32"
    else:  # bf16 autocast: auto on CUDA, or asked for (CPU too)
        dtype = "bfloat16" if dtype == "bfloat16" or (cuda and dtype == "auto") else "float32"
    wrapped = fast and not engines.installs_in_place(policy_type)
    return Options("fast" if fast else "eager", wrapped, rtc, mode, dtype,
                   None if wrapped else STREAMING.get(policy_type), jac)


@register_backend("lerobot")
class LeRobotBackend(Backend):
    # what reset() re-creates: RTC's last chunk, the policies' own queues (Diffusion's observations)
    episode_state = ("_last_raw", "_prev_raw", "policy._queues")

    def __init__(self, cfg):
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in dict(cfg).items() if v is not None})
        super().__init__(merged)
        path, pcfg, pre_overrides = self._load_config()
        self.options = resolve_options(self.cfg, pcfg.type, self.device.type)
        t_start = time.perf_counter()
        self._load_policy(path, pcfg)
        self._load_processors(path, pcfg, pre_overrides)
        self._set_up_inference()
        self._warm_up(t_start)

    @property
    def engine(self) -> str:
        return self.options.engine

    def _load_config(self) -> tuple[Path, object, dict]:
        """The checkpoint directory (``path``, or the ``zoo`` checkpoint written on first use) and its policy
        config for the device (sets ``torch``, ``device``, ``policy_type``), with the pre-processor
        overrides the directory's own files call for (a local tokenizer, a local VLM)."""
        c = self.cfg
        path = zoo_checkpoint(str(c["path"]), c["zoo"]) if c["zoo"] else Path(str(c["path"])).expanduser()
        if not (c["path"] or c["zoo"]) or not (path / "config.json").is_file():
            raise ConfigError(f"key 'backend.lerobot.path': '{c['path']}' is not a LeRobot pretrained directory "
                              "(no config.json)")
        import lerobot.policies  # noqa: F401 - registers the policy config types that from_pretrained reads
        import torch
        from lerobot.configs.policies import PreTrainedConfig

        self.torch = torch
        dev = str(c["device"])
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        pcfg = PreTrainedConfig.from_pretrained(str(path))
        pcfg.device = dev
        self.policy_type = pcfg.type
        return path, pcfg, {**local_tokenizer_overrides(path), **local_vlm_overrides(path, pcfg)}

    def _load_policy(self, path: Path, pcfg) -> None:
        """``policy``: LeRobot's (``load_checkpoint``), with the fast engine installed on it (LingBot-VA), or
        the fast engine's own object (``options.wrapped``: π/SmolVLA/FastWAM)."""
        dev, opts = str(self.device), self.options
        log.info("lerobot: loading %s from %s on %s (engine %s)", pcfg.type, path, dev, opts.engine)
        if opts.engine == "eager":
            self.policy = load_checkpoint(path, device=dev, config=pcfg)
            return
        from .. import engines

        try:
            if opts.wrapped:
                self.policy = engines.make_engine(str(path), impl="fast", device=dev, config=pcfg,
                                                  cuda_graph=self.device.type == "cuda", dtype=opts.dtype)
            else:
                self.policy = load_checkpoint(path, device=dev, config=pcfg)
                engines.load_fast(self.policy)
        except engines.EngineError as exc:
            raise ConfigError(f"key 'backend.lerobot.path': {exc}") from None

    def _load_processors(self, path: Path, pcfg, overrides: dict) -> None:
        """LeRobot's saved pre/post-processor pipelines (each prompt tokenized once), the features the batch
        is built for (a ConfigError unless the policy acts in 14 dims) and the images' way into it."""
        from lerobot.policies.factory import make_pre_post_processors

        # the fast engine stages the prompt and state itself (pinned buffers, non-blocking copies): its
        # pre-processor stays on the host, so no copy in it waits for the GPU (busy with the images)
        pre_dev = "cpu" if self.options.wrapped else str(self.device)
        self.pre, self.post = make_pre_post_processors(
            pcfg, pretrained_path=str(path),
            preprocessor_overrides={"device_processor": {"device": pre_dev}, **overrides},
            postprocessor_overrides={"device_processor": {"device": "cpu"}})
        _memoize_tokenizer(self.pre)
        self.image_features = list(getattr(pcfg, "image_features", {}) or {})
        self.needs_images = bool(self.image_features)
        self.image_sizes = {k: (int(f.shape[-2]), int(f.shape[-1])) for k, f in pcfg.image_features.items()
                            if len(getattr(f, "shape", ())) == 3} if self.image_features else {}
        self.image_mismatch = str(self.cfg.get("image_mismatch", "resize"))
        if self.image_mismatch not in IMAGE_MISMATCH:
            raise ConfigError(f"key 'backend.lerobot.image_mismatch': must be one of {', '.join(IMAGE_MISMATCH)}, "
                              f"got {self.image_mismatch!r}")
        self._resized: set[tuple[str, tuple[int, ...]]] = set()  # (key, size) already logged as resized
        self.state_key = "observation.state"
        act = getattr(pcfg, "action_feature", None)
        self.action_dim = int(act.shape[0]) if act is not None else STATE_DIM
        if self.action_dim != STATE_DIM:
            raise ConfigError(f"key 'backend.lerobot.path': policy action dim {self.action_dim} != {STATE_DIM}")
        self._pinned: dict[str, object] = {}  # image key → pinned uint8 staging buffer (CUDA)
        self._uploaded = None  # CUDA event after the last copies out of those buffers
        # fast engine: the images skip the pre-processor (it would leave them as they are: checked here)
        # and go to the engine's vision tower first (FlowEngine.prefetch), while the host pre-processes
        # the prompt and state (see batch())
        self._prefetch = self.policy.prefetch if self.options.wrapped and _images_untouched(self.pre) else None

    def _set_up_inference(self) -> None:
        """The model call as the options ask for it: bf16 autocast, the prompt-encoder memo (eager), RTC
        guidance on the policy, torch.compile, the streaming adapter."""
        opts, torch = self.options, self.torch
        self.autocast_dtype = torch.bfloat16 if opts.engine == "eager" and opts.dtype == "bfloat16" else None
        if opts.engine == "eager":
            _memoize_prompt_encoder(self.policy)
        self.use_rtc = opts.rtc and self._enable_rtc()
        self.supports_rtc = self.use_rtc  # the controller then fills Observation.inference_delay
        self._predict_fn = self.policy.predict_action_chunk
        if opts.compile:
            self._predict_fn = torch.compile(self.policy.predict_action_chunk, mode=opts.compile)
        self._last_raw = None  # (stamp_ns, (H, D) model-space chunk) for RTC guidance
        self._prev_raw = None  # the one before (restored when the safety filter refuses the last)
        self._stream = opts.stream(self.policy) if opts.stream is not None else None
        self.streams_observations = self.requires_sync_runtime = self._stream is not None
        self._observed: int | None = None  # stamp of the newest observation fed to the stream

    def _warm_up(self, t_start: float) -> None:
        """``warmup`` dummy inferences (first-call allocations, compiles, CUDA graph captures); ``startup``:
        the seconds spent loading (since ``t_start``) and warming up."""
        t_loaded = time.perf_counter()
        n = int(self.cfg["warmup"])
        if n:
            if self.engine == "fast" and self.device.type == "cuda":
                from .. import engines

                # the π/SmolVLA engines compile their layer functions; FastWAM and LingBot-VA run LeRobot's
                compiled = self.options.wrapped and isinstance(self.policy, engines.FlowEngine)
                what = "capturing CUDA graphs" + (", compiling layers" if compiled else "")
            else:
                what = f"compiling ({self.options.compile})" if self.options.compile else "first-call allocations"
            log.info("lerobot: %s loaded in %.1f s; warm-up: %d dummy inference(s), %s", self.policy_type,
                     t_loaded - t_start, n, what)
        for _ in range(n):
            self._dummy_inference()
        self.startup = {"load_s": round(t_loaded - t_start, 2), "warmup_s": round(time.perf_counter() - t_loaded, 2)}
        log.info("lerobot: ready, first action after %.1f s (load %.1f s + warm-up %.1f s)",
                 self.startup["load_s"] + self.startup["warmup_s"], self.startup["load_s"], self.startup["warmup_s"])

    def _enable_rtc(self) -> bool:
        """``rtc: true`` turns on RTC guidance as LeRobot's own RTC rollout does: a policy that implements it
        (SmolVLA, π0, π0.5) keeps its checkpoint's ``rtc_config`` (enabled) or gets ``RTCConfig()``'s defaults;
        a policy without it (ACT, Diffusion, ...) is a config error. The fast π/SmolVLA engine has the same
        three methods (``engines._common.FlowEngine``) and takes the Jacobian mode too."""
        pol = self.policy
        if not pol.supports_rtc():
            raise ConfigError(f"key 'backend.lerobot.rtc': policy type '{self.policy_type}' has no RTC guidance "
                              "(SmolVLA, π0, π0.5 have); set rtc: false")
        if not pol._rtc_enabled():
            from lerobot.policies.rtc.configuration_rtc import RTCConfig

            pol.config.rtc_config = replace(pol.config.rtc_config or RTCConfig(), enabled=True)
            pol.init_rtc_processor()
        if self.options.wrapped:
            pol.init_rtc_processor(self.options.rtc_jacobian)
        return True

    def _dummy_inference(self):
        imgs = {}
        for k in self.image_features:
            shape = tuple(getattr(self.policy.config, "image_features")[k].shape)  # (C, H, W)
            imgs[k] = np.zeros((shape[1], shape[2], shape[0]), np.uint8)
        obs = Observation(0, imgs, np.zeros(STATE_DIM), "warm up")
        raw, _ = self._forward(obs, {k: k for k in imgs})
        if self.use_rtc:  # a guided call too: the fast engine captures its guided graph now, not at chunk 2
            self._last_raw = (obs.stamp_ns, raw.detach().cpu())
            self._forward(obs, {k: k for k in imgs})
        self.reset()

    def _frame(self, obs: Observation, src: str, dst: str) -> np.ndarray:
        """The observation's image ``src`` as the model's ``dst`` input: HxWx3 uint8 at the checkpoint's
        size (resized with pad or refused, ``image_mismatch``), else a BackendError naming the problem."""
        img = obs.images[src]
        try:
            out, resized = fit_image(src, img, self.image_sizes.get(dst), self.image_mismatch)
        except ImageSizeError as exc:
            raise BackendError(f"lerobot: {exc}") from None
        if resized and (src, np.shape(img)) not in self._resized:
            self._resized.add((src, np.shape(img)))
            h, w = self.image_sizes[dst]
            log.warning("lerobot: image '%s' is %dx%d, the checkpoint's %s is %dx%d: resized with pad "
                        "(image_mismatch: resize; 'refuse' refuses it)", src, np.shape(img)[1], np.shape(img)[0],
                        dst, w, h)
        return out

    def reset(self, episode=None) -> None:
        self._last_raw = self._prev_raw = None
        self._observed = None
        if self._stream is not None:
            self._stream.reset()
        with contextlib.suppress(Exception):
            self.policy.reset()

    def observe(self, obs: Observation) -> None:
        """A streaming policy's per-step input (see ``STREAMING``); nothing for the others."""
        if self._stream is None or obs.stamp_ns == self._observed:
            return
        self._observed = obs.stamp_ns
        self._stream.observe(self.batch(obs, self._keys(obs)))

    def _key(self, k: str) -> str:
        return k if k.startswith("observation.") else f"observation.images.{k}"

    def _forward(self, obs: Observation, keys: dict[str, str]):
        if self._stream is not None:
            self.observe(obs)  # a no-op when the controller already did
            chunk = self._stream.predict(self.predict)
        else:
            chunk = self.predict(self.batch(obs, keys), self._rtc_kwargs(obs))
        raw = chunk[0].float()
        # the post-processor on the host: a chunk is a few hundred numbers, which the GPU would unnormalise
        # in a string of tiny kernels (and LeRobot's QUANTILES/MIN_MAX steps copy a constant to it per call)
        actions = self.post(chunk.float().cpu())
        return raw, actions

    def batch(self, obs: Observation, keys: dict[str, str] | None = None) -> dict:
        """Observation → the pre-processed batch the model takes (on the policy's device)."""
        torch = self.torch
        if keys is None:
            keys = self._keys(obs)
        n = int(self.cfg["torch_threads"])
        if n > 0 and torch.get_num_threads() != n:  # OpenMP settings are per calling thread
            torch.set_num_threads(n)
        if self._prefetch is not None:
            return self._batch_fast(obs, keys)
        # to the GPU only where the pre-processor runs there (the fast engine's runs on the host)
        upload = self.device.type == "cuda" and not self.options.wrapped
        if upload and self._uploaded is not None:
            self._uploaded.synchronize()  # the last call's copies out of the pinned buffers are over
        batch = {}
        for src, dst in keys.items():
            img = self._frame(obs, src, dst)
            if upload:
                # uint8 to the GPU through a pinned buffer (a quarter of the bytes of float32), copied
                # while the host goes on, and the float conversion there (bench/gpu_latency.py: parts_ms)
                pin = self._pinned.get(dst)
                if pin is None or tuple(pin.shape) != img.shape:
                    pin = self._pinned[dst] = torch.empty(img.shape, dtype=torch.uint8, pin_memory=True)
                np.copyto(pin.numpy(), img, casting="unsafe")
                t = pin.to(self.device, non_blocking=True)
            else:
                t = _frame_tensor(torch, img)
            # uint8 → [0, 1] float32 in one op (the same values as .float().div_(255.0))
            batch[dst] = torch.div(t.permute(2, 0, 1).unsqueeze(0), 255.0)
        if upload:
            self._uploaded = torch.cuda.Event()
            self._uploaded.record()
        return self._preprocess(batch, obs)

    def _preprocess(self, batch: dict, obs: Observation) -> dict:
        batch[self.state_key] = self.torch.from_numpy(np.asarray(obs.state, np.float32)).unsqueeze(0)
        batch["task"] = obs.prompt or ""
        batch["robot_type"] = ""
        batch = self.pre(batch)
        batch.pop("action", None)  # the processors' transition carries an empty action
        return batch

    def _batch_fast(self, obs: Observation, keys: dict[str, str], prefetch: bool = True) -> dict:
        """The fast engine's batch: the frames as they are (uint8 HxWx3, no copy here) go to the engine,
        which copies them to the GPU and starts its vision tower at once (uint8 → [0, 1] float and the
        model's resize are inside its vision graph: engines/_common.py, FlowEngine.prefetch); then the
        host runs the pre-processor on the prompt and state while the GPU encodes the images. The images
        skip the pre-processor, which would leave them unchanged (checked at load: _images_untouched).
        ``prefetch=False``: no early start (a batch of several requests is staged whole)."""
        images = {dst: _frame_tensor(self.torch, self._frame(obs, src, dst)).unsqueeze(0) for src, dst in keys.items()}
        if prefetch:
            self._prefetch(images)
        batch = self._preprocess({}, obs)
        batch.update(images)
        return batch

    def _rtc_kwargs(self, obs: Observation) -> dict:
        if self.use_rtc and self._last_raw is not None:
            stamp, raw = self._last_raw
            i = int(round((obs.stamp_ns - stamp) / (DT * 1e9)))
            if 0 <= i < len(raw):
                # the fast engine stages it itself (pinned, non-blocking); LeRobot's wants it on its device
                left = raw[i:].unsqueeze(0)
                return {"prev_chunk_left_over": left if self.options.wrapped else left.to(self.device),
                        "inference_delay": int(obs.inference_delay)}
        return {}

    def predict(self, batch: dict, kwargs: dict | None = None):
        """The bare model call: a pre-processed batch → the (1, H, D) model-space chunk."""
        torch = self.torch
        if self.policy_type == "diffusion":
            # Diffusion conditions on the last n_obs_steps observations: feed its queues exactly as
            # its select_action does, then predict from them (predict_action_chunk's online path)
            from lerobot.policies.utils import populate_queues

            batch = dict(batch)
            if self.image_features:
                batch["observation.images"] = torch.stack([batch[k] for k in self.image_features], dim=-4)
            self.policy._queues = populate_queues(self.policy._queues, batch)
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        # RTC's guidance takes an autograd step inside the policy's no_grad: not under inference_mode
        with (torch.no_grad() if self.use_rtc else torch.inference_mode()), ctx:
            chunk = self._predict_fn(batch, **(kwargs or {}))
        return chunk.unsqueeze(0) if chunk.ndim == 2 else chunk

    def _keys(self, obs: Observation) -> dict[str, str]:
        """The observation's image keys → the policy's image features (all of them, or BackendError)."""
        missing = [k for k in self.image_features if not any(self._key(s) == k for s in obs.images)]
        if missing:
            raise BackendError(f"lerobot: observation lacks image features {missing} "
                               f"(have {[self._key(s) for s in obs.images]}); set observation.image_keys")
        return {s: self._key(s) for s in obs.images if self._key(s) in self.image_features}

    def rejected(self, chunk: ActionChunk, reason: str) -> None:
        # RTC: the refused chunk is never executed, so it is not the plan to continue from
        if self.use_rtc and self._last_raw is not None and self._last_raw[0] == chunk.stamp_ns:
            self._last_raw, self._prev_raw = self._prev_raw, None

    def infer(self, obs: Observation) -> ActionChunk:
        t0 = time.perf_counter()
        raw, actions = self._forward(obs, self._keys(obs))
        a = actions.detach().to("cpu", self.torch.float64).numpy()
        a = a.reshape(-1, a.shape[-1])
        n = int(self.cfg["n_actions"])
        if n > 0:
            a = a[:n]
        if self.use_rtc:
            self._prev_raw, self._last_raw = self._last_raw, (obs.stamp_ns, raw.detach().cpu())
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        return ActionChunk(a, obs.stamp_ns, (time.perf_counter() - t0) * 1e3,
                           {"policy": self.policy_type, "device": str(self.device), "engine": self.engine})

    # -- batched inference (a policy server stacking requests of several clients) -----------------
    def batch_unsupported(self) -> str:
        """The policies whose ``predict_action_chunk`` reads per-episode state cannot mix clients in one
        forward: Diffusion (its observation queues), RTC (each client's last chunk), streaming policies."""
        if self._stream is not None:
            return f"lerobot: {self.policy_type} streams observations (per-client model state)"
        if self.use_rtc:
            return "lerobot: rtc guidance conditions on each client's last chunk"
        if self.policy_type == "diffusion":
            return "lerobot: diffusion conditions on each client's observation queues"
        return ""

    def _one_batch(self, obs: Observation) -> dict:
        """One observation's pre-processed batch (batch size 1), to be stacked with others'. The fast
        engine's images go in as raw uint8 frames (its vision graph converts them; no prefetch: the
        stacked batch is staged whole)."""
        keys = self._keys(obs)
        return self.batch(obs, keys) if self._prefetch is None else self._batch_fast(obs, keys, prefetch=False)

    def _stack_sig(self, batch: dict) -> tuple:
        """What must agree for batches to stack: each tensor's key, per-row shape and dtype."""
        return tuple(sorted((k, tuple(v.shape[1:]), str(v.dtype)) for k, v in batch.items()
                            if isinstance(v, self.torch.Tensor)))

    def _stack(self, batches: list[dict]) -> dict:
        """Batch-size-1 batches → one: tensors concatenated along dim 0, lists (``task``) joined, the rest
        (the processors' transition scalars) taken from the first."""
        out = {}
        for k, v in batches[0].items():
            if isinstance(v, self.torch.Tensor):
                out[k] = self.torch.cat([b[k] for b in batches], dim=0)
            elif isinstance(v, list):
                out[k] = [x for b in batches for x in b[k]]
            else:
                out[k] = v
        return out

    def infer_batch(self, observations: list[Observation]) -> list[ActionChunk | Exception]:
        """One ``predict_action_chunk`` for observations of several clients: each pre-processed as
        :meth:`infer` does (its own normalisation, tokens, image fit), stacked along dim 0 (observations
        whose inputs differ in shape, e.g. prompts of different token lengths, go in separate forwards),
        one model call, the post-processor on the (B, H, D) chunk, split by row. An observation whose
        pre-processing fails gets its own error; a failed forward fails its group. The fast engine keeps
        one set of static buffers and one CUDA graph per batch size (captured on first use:
        :meth:`warm_batches`)."""
        why = self.batch_unsupported()
        if why:
            raise BackendError(f"{why}: no batched inference")
        t0 = time.perf_counter()
        results: list[ActionChunk | Exception | None] = [None] * len(observations)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, obs in enumerate(observations):
            try:
                b = self._one_batch(obs)
            except Exception as exc:  # noqa: BLE001 - this observation's error, not the batch's
                results[i] = exc
                continue
            groups.setdefault(self._stack_sig(b), []).append((i, b))
        n = int(self.cfg["n_actions"])
        for members in groups.values():
            try:
                stacked = members[0][1] if len(members) == 1 else self._stack([b for _, b in members])
                chunk = self.predict(stacked)
                actions = self.post(chunk.float().cpu()).detach().to("cpu", self.torch.float64).numpy()
            except Exception as exc:  # noqa: BLE001 - the group's forward failed: each of them says so
                for i, _ in members:
                    results[i] = exc
                continue
            if actions.shape[0] != len(members):
                err = BackendError(f"lerobot: batched forward of {len(members)} gave {actions.shape[0]} chunks")
                for i, _ in members:
                    results[i] = err
                continue
            if self.device.type == "cuda":
                self.torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3
            for row, (i, _) in enumerate(members):
                a = actions[row].reshape(-1, actions.shape[-1])
                results[i] = ActionChunk(a[:n] if n > 0 else a, observations[i].stamp_ns, ms,
                                         {"policy": self.policy_type, "device": str(self.device),
                                          "engine": self.engine, "batch": len(members)})
        return results  # type: ignore[return-value]

    def warm_batches(self, sizes) -> None:
        """A dummy batched inference per size (the fast engine's buffers and CUDA graph for that batch
        size, first-call allocations); then a fresh episode."""
        if self.batch_unsupported():
            return
        imgs = {}
        for k in self.image_features:
            c, h, w = tuple(self.policy.config.image_features[k].shape)
            imgs[k] = np.zeros((h, w, c), np.uint8)
        t0 = time.perf_counter()
        done = []
        for size in sizes:
            size = int(size)
            if size < 2:
                continue
            res = self.infer_batch([Observation(0, dict(imgs), np.zeros(STATE_DIM), "warm up") for _ in range(size)])
            bad = [r for r in res if isinstance(r, Exception)]
            if bad:
                raise BackendError(f"lerobot: batched warm-up at batch size {size} failed: {bad[0]}")
            done.append(size)
        self.reset()
        if done:
            log.info("lerobot: batched warm-up for batch sizes %s in %.1f s", done, time.perf_counter() - t0)
