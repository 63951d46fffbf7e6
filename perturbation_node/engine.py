"""The pure core of perturbation_node: a :class:`Perturber` runs one profile over the streams.

No ROS here: numpy arrays, stamps in ns and strings in, the same out. Seeds are derived from
(profile seed, episode key, stream name, op index[, frame stamp]) with
:func:`perturbation_node.ops.make_rng`, so two runs of the same profile over the same episodes
produce bit-identical streams, whatever the message timing. The episode key is the episode's
sim seed from the EPISODE start event (docs/GRAPH_CONTRACT.md, "Seeds": an episode is perturbed
the same whichever run or worker it is in), or the episode index when the event has no seed.
A suite's entry and ``pick: one`` are chosen by the same key.

Per camera, in order: ``latency`` (choose an older source frame) → image ops in profile order →
``frame_drop`` → ``stamp_jitter``. An op that fails (or needs a mask that has not arrived) is
skipped for that frame and counted; the frame still goes out, never blacked out.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from wam_common.config import ConfigError
from wam_common.topics import ARM_JOINTS

from . import ops as ops_mod
from .language import object_nouns
from .profiles import OpEntry, Profile

LATENCY_HISTORY_S = 1.0


@dataclass
class ImageResult:
    array: np.ndarray | None  # None: dropped (realtime frame_drop)
    stamp_ns: int
    applied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Camera:
    prepared: dict = field(default_factory=dict)  # (op index, shape) → fn
    history: deque = field(default_factory=lambda: deque(maxlen=256))  # (stamp_ns, raw array)
    last_out: np.ndarray | None = None


def check_device(device: str) -> str:
    """'' (numpy/OpenCV), 'auto' (CUDA when torch sees a GPU, else ''), or a torch device that
    exists; ConfigError naming it otherwise."""
    device = str(device or "")
    if not device:
        return ""
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else ""
        except ImportError:
            return ""
    try:
        import torch

        torch.empty(1, device=device)
    except Exception as exc:  # noqa: BLE001 - no torch, bad name, no CUDA
        raise ConfigError(f"perturbation device '{device}' is not usable ({type(exc).__name__}: {exc})") from None
    return device


def _to_torch(x, device):
    if isinstance(x, np.ndarray):
        import torch

        return torch.from_numpy(np.array(x, copy=True, order="C")).to(device, non_blocking=True)
    return x


def _to_numpy(x):
    if isinstance(x, np.ndarray):
        return x
    return x.cpu().numpy()


class Perturber:
    """Runs one profile (or suite) over images, joint states and instructions."""

    def __init__(self, profile: Profile, lockstep: bool = False, device: str = ""):
        self.profile = profile
        self.lockstep = bool(lockstep)
        self.device = check_device(device)
        self._check(profile)
        self._lock = threading.Lock()
        self.counts = {"frames": 0, "dropped": 0, "op_errors": 0, "mask_missing": 0}
        self.episode = 0
        self.episode_key = 0
        self.episode_start_ns = 0
        self._active = profile.entry_for_episode(0)
        self._pick_for_episode()
        self._snap = (self._run, self.episode_key, self.episode_start_ns)
        self._cams: dict[str, _Camera] = {}
        self._state_prepared: dict = {}

    def _check(self, profile: Profile) -> None:
        for p in profile.suite or [profile]:
            if self.lockstep and any(e.op == "stamp_jitter" for lst in p.cameras.values() for e in lst):
                raise ConfigError(f"perturbation profile '{p.name}': op 'stamp_jitter' is not allowed in lockstep "
                                  f"(each step waits for cameras stamped exactly t_k)")

    # ------------------------------------------------------------ episodes

    def start_episode(self, episode: int, seed: int | None = None, start_ns: int = 0) -> None:
        """Reset per-episode randomness: key = the episode's sim ``seed`` when given, else ``episode``.

        Per-frame draws are keyed by the frame stamp relative to ``start_ns`` (the start event's
        ``stamp_ns``), so they do not depend on where the episode sits on a run's clock."""
        with self._lock:
            self.episode = int(episode)
            self.episode_start_ns = int(start_ns or 0)
            self.episode_key = int(seed) if seed is not None else self.episode
            self._active = self.profile.entry_for_episode(self.episode_key)
            self._pick_for_episode()
            self._cams = {}
            self._state_prepared = {}
            self._snap = (self._run, self.episode_key, self.episode_start_ns)

    def _pick_for_episode(self) -> None:
        p = self._active
        if p.pick == "one" and p.op_names():
            names = p.op_names()
            rng = ops_mod.make_rng(p.seed, self.episode_key, "pick")
            p = p.only(names[int(rng.integers(0, len(names)))])
        self._run = p

    @property
    def running(self) -> Profile:
        """The profile actually running this episode (a suite's entry, ``pick: one`` applied)."""
        return self._run

    def is_clean_for(self, cam: str) -> bool:
        return not self._run.camera_ops(cam)

    @property
    def state_clean(self) -> bool:
        return not self._run.state

    @property
    def language_clean(self) -> bool:
        return not self._run.language

    def uses_masks(self) -> bool:
        return any(ops_mod.get_op(e.op).needs_mask for lst in self._run.cameras.values() for e in lst)

    # ------------------------------------------------------------ images

    def image(self, cam: str, img: np.ndarray, stamp_ns: int, mask: np.ndarray | None = None) -> ImageResult:
        """Perturb one HxWx3 uint8 RGB frame of ``cam`` stamped ``stamp_ns``."""
        run, episode, t0 = self._snap
        fk = int(stamp_ns) - t0  # frame key
        entries = run.camera_ops(cam)
        res = ImageResult(img, int(stamp_ns))
        self.counts["frames"] += 1
        if not entries:
            return res
        st = self._cams.get(cam)
        if st is None:
            st = self._cams[cam] = _Camera()
        src = img
        lat = [e for e in entries if e.op == "latency"]
        if lat:
            if st.history and int(stamp_ns) < st.history[-1][0]:
                st.history.clear()  # the clock went back (a replayed bag): start over
            st.history.append((int(stamp_ns), img))
            src = self._delayed(st, int(stamp_ns), ops_mod.get_op("latency").param(lat[-1].level))
            res.applied.append("latency")
        out = src
        for i, e in enumerate(entries):
            spec = ops_mod.get_op(e.op)
            if spec.target != "image":
                continue
            try:
                if self.device and e.resample == "episode":
                    tfn = self._torch_fn(st, i, spec, spec.param(e.level), src.shape, run, episode, cam)
                    if tfn is not None:
                        out = _to_torch(out, self.device)
                        out = tfn(out)
                        res.applied.append(e.op)
                        continue
                out = _to_numpy(out)
                out = self._apply_image(cam, i, e, spec, out, fk, mask, st, run, episode)
                res.applied.append(e.op)
            except ops_mod.MaskRequired:
                self.counts["mask_missing"] += 1
                res.errors.append(f"{e.op}: no background mask")
            except Exception as exc:  # noqa: BLE001 - an op must never take the camera down
                self.counts["op_errors"] += 1
                res.errors.append(f"{e.op}: {type(exc).__name__}: {exc}")
        res.array = out = _to_numpy(out)
        for i, e in enumerate(entries):
            if e.op == "frame_drop":
                p = ops_mod.get_op("frame_drop").param(e.level)
                if ops_mod.make_rng(run.seed, episode, cam, i, "drop", fk).random() < p:
                    self.counts["dropped"] += 1
                    res.applied.append("frame_drop")
                    if self.lockstep:
                        res.array = st.last_out if st.last_out is not None and st.last_out.shape == out.shape else out
                    else:
                        res.array = None
                        return res
            elif e.op == "stamp_jitter" and not self.lockstep:
                sigma_ms = ops_mod.get_op("stamp_jitter").param(e.level)
                j = ops_mod.make_rng(run.seed, episode, cam, i, "jitter", fk).standard_normal()
                res.stamp_ns = max(0, int(stamp_ns) + int(np.clip(j, -2.5, 2.5) * sigma_ms * 1e6))
                res.applied.append("stamp_jitter")
        st.last_out = res.array
        return res

    def _apply_image(self, cam, i, e: OpEntry, spec, img, fk, mask, st: _Camera, run, episode):
        param = spec.param(e.level)
        if e.resample == "frame":
            frame_rng = ops_mod.make_rng(run.seed, episode, cam, i, int(fk))
            if spec.frame_rng:
                fn = self._prepared(st, i, spec, param, img.shape, run, episode, cam)
                return fn(img, mask, frame_rng)
            return spec.prepare(param, frame_rng, img.shape)(img, mask)
        return self._prepared(st, i, spec, param, img.shape, run, episode, cam)(img, mask)

    def _prepared(self, st, i, spec, param, shape, run, episode, cam):
        key = (i, shape)
        fn = st.prepared.get(key)
        if fn is None:
            fn = st.prepared[key] = spec.prepare(param, ops_mod.make_rng(run.seed, episode, cam, i), shape)
        return fn

    def warm(self, cam: str, shape: tuple) -> None:
        """Draw the per-episode fields of ``cam`` for frames of ``shape`` now (at episode start),
        so the first frame of the episode does not pay for them."""
        run, episode, _ = self._snap
        st = self._cams.get(cam)
        if st is None:
            st = self._cams[cam] = _Camera()
        for i, e in enumerate(run.camera_ops(cam)):
            spec = ops_mod.get_op(e.op)
            if spec.target == "image" and (e.resample == "episode" or spec.frame_rng):
                self._prepared(st, i, spec, spec.param(e.level), tuple(shape), run, episode, cam)

    def _torch_fn(self, st, i, spec, param, shape, run, episode, cam):
        key = ("torch", i, shape)
        if key not in st.prepared:
            from .torch_ops import to_torch

            st.prepared[key] = to_torch(self._prepared(st, i, spec, param, shape, run, episode, cam), self.device,
                                        shape)
        return st.prepared[key]

    @staticmethod
    def _delayed(st: _Camera, stamp_ns: int, latency_ms: float) -> np.ndarray:
        target = stamp_ns - int(latency_ms * 1e6)
        horizon = stamp_ns - int((latency_ms / 1e3 + LATENCY_HISTORY_S) * 1e9)
        while len(st.history) > 1 and st.history[0][0] < horizon:
            st.history.popleft()
        chosen = st.history[0][1]
        for s, arr in st.history:
            if s <= target:
                chosen = arr
            else:
                break
        return chosen

    # ------------------------------------------------------------ joint states

    def joint_positions(self, arm: str, names: Sequence[str], positions: Sequence[float], stamp_ns: int) -> list[float]:
        """Perturb one arm's JointState positions (the 6 arm joints; gripper and fingers untouched)."""
        run, episode, t0 = self._snap
        fk = int(stamp_ns) - t0
        q = np.asarray(positions, dtype=np.float64).copy()
        if not run.state:
            return q.tolist()
        idx = {n: k for k, n in enumerate(names)}
        sel = [idx[j] for j in ARM_JOINTS if j in idx and idx[j] < len(q)]
        if not sel:
            return q.tolist()
        sub = q[sel]
        stream = f"state/{arm}"
        for i, e in enumerate(run.state):
            spec = ops_mod.get_op(e.op)
            param = spec.param(e.level)
            if e.resample == "frame":
                fn = spec.prepare(param, ops_mod.make_rng(run.seed, episode, stream, i, fk), sub.shape)
            else:
                key = (arm, i, sub.shape)
                fn = self._state_prepared.get(key)
                if fn is None:
                    fn = self._state_prepared[key] = spec.prepare(
                        param, ops_mod.make_rng(run.seed, episode, stream, i), sub.shape)
            sub = fn(sub)
        q[sel] = sub
        return q.tolist()

    # ------------------------------------------------------------ language

    def instruction(self, text: str) -> str:
        """Rewrite the instruction (same rewrite for the whole episode)."""
        run, episode, _ = self._snap
        if not run.language:
            return text
        nouns = object_nouns(text)
        out = text
        for i, e in enumerate(run.language):
            spec = ops_mod.get_op(e.op)
            fn = spec.prepare(spec.param(e.level), ops_mod.make_rng(run.seed, episode, "language", i), ())
            out = fn(out, nouns)
        return out

    # ------------------------------------------------------------ reporting

    def active(self, cameras: Sequence[str]) -> dict:
        """What runs now, for ACTIVE_PERTURBATION: name, level, seed per stream."""
        run = self._run

        def rows(entries: list[OpEntry], stream: str):
            return [{"op": e.op, "level": e.level, "resample": e.resample,
                     "seed": [run.seed, self.episode_key, stream, i]} for i, e in enumerate(entries)]

        return {
            "profile": self.profile.ref,
            "name": run.name,
            "dimension": run.dimension,
            "level": run.level,
            "seed": run.seed,
            "episode": self.episode,
            "episode_seed": self.episode_key,
            "lockstep": self.lockstep,
            "cameras": {cam: rows(run.camera_ops(cam), cam) for cam in cameras},
            "state": rows(run.state, "state"),
            "language": rows(run.language, "language"),
        }
