"""The policy loop without ROS: backend + chunk runtime + safety filter, in both clock modes.

- lockstep (:meth:`PolicyController.step_lockstep`): one call per sim step with the step's
  observation; a chunk is computed synchronously when none covers ``t`` (sim time is frozen
  meanwhile), so runs are deterministic.
- realtime (:meth:`PolicyController.tick`): called by a 50 Hz timer with the newest synced
  observation; inference runs in a worker thread and the tick never waits for it (except for the
  ``sync`` baseline strategy, which blocks exactly like openpi's synchronous broker).

Both hand every new observation (once per stamp) to ``backend.observe`` before deciding whether to
infer: streaming world action models condition their next chunk on what happened during the last one.

Every call returns the command to publish (or None when there is nothing safe to send yet) and a
status dict (the POLICY_STATUS payload); its ``hold`` and ``rejected`` are :class:`~.safety.Hold` reasons.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Callable, NamedTuple

import numpy as np

from wam_common.config import ConfigError

from .backends import ActionChunk, Backend, Observation
from .chunk_check import COLLISION
from .latency import LatencyModel
from .runtime import ChunkRuntime
from .safety import ARM, Hold, SafetyFilter
from .tracking import Trip, TrackingWatchdog


class Inference(NamedTuple):
    """What one inference gave: a chunk the safety filter let through, or the hold reason and its detail."""

    chunk: ActionChunk | None
    error: Hold | None = None
    detail: str = ""


class _Job(NamedTuple):
    gen: int  # the episode generation it was submitted in (a result of an older one is dropped)
    obs: Observation


class _Done(NamedTuple):
    gen: int  # the job's episode generation
    arrival_ns: int  # controller clock when the inference ended
    inference: Inference


class _Worker:
    """One inference at a time in a daemon thread; results are picked up by the caller."""

    def __init__(self, fn: Callable[[Observation], Inference], clock_ns: Callable[[], int],
                 init: Callable[[], None] | None = None):
        self._fn, self._clock, self._init = fn, clock_ns, init
        self._cv = threading.Condition()
        self._job: _Job | None = None
        self._done: _Done | None = None
        self.busy_since: float | None = None  # monotonic start of the running job
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="wam_policy_inference", daemon=True)
        self._thread.start()

    def submit(self, gen: int, obs: Observation) -> bool:
        with self._cv:
            if self._job is not None or self.busy_since is not None:
                return False
            self._job = _Job(gen, obs)
            self.busy_since = time.monotonic()
            self._cv.notify()
            return True

    @property
    def busy(self) -> bool:
        return self.busy_since is not None

    def take(self) -> _Done | None:
        with self._cv:
            done, self._done = self._done, None
            return done

    def _loop(self):
        if self._init is not None:
            self._init()  # e.g. a scheduling priority for this thread
        while True:
            with self._cv:
                while self._job is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job, self._job = self._job, None
            inference = self._fn(job.obs)
            with self._cv:
                self._done = _Done(job.gen, self._clock(), inference)
                self.busy_since = None

    def close(self):
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=1.0)


class PolicyController:
    def __init__(self, backend: Backend, runtime: ChunkRuntime, safety: SafetyFilter,
                 clock_ns: Callable[[], int] | None = None, realtime: bool = False,
                 stale_obs_s: float | None = None, inference_timeout_s: float | None = None,
                 horizon_hint: int = 50, worker_init: Callable[[], None] | None = None,
                 latency: LatencyModel | None = None):
        if getattr(backend, "requires_sync_runtime", False) and (runtime.strategy != "sync" or runtime.execute_steps):
            raise ConfigError(
                f"key 'runtime.strategy': backend '{backend.name}' runs a streaming model that assumes each chunk is "
                f"executed to its end as predicted: use runtime.strategy: sync and runtime.execute_steps: 0 "
                f"(have {runtime.strategy}, execute_steps {runtime.execute_steps})")
        if latency is not None and realtime:
            raise ConfigError("key 'latency': the latency model is for lockstep (sim time); in realtime the "
                              "policy's own latency is in the loop")
        self.backend, self.runtime = backend, runtime
        self.latency = latency
        self._in_flight: tuple[int, int, Inference] | None = None  # lockstep latency: (arrival_ns, d, result)
        self._last_chunk_id: int | None = None  # the chunk of the last command (seam jumps)
        self.set_safety(safety)
        if stale_obs_s is not None:
            self.stale_obs_ns = int(float(stale_obs_s) * 1e9)
        if inference_timeout_s is not None:
            self.inference_timeout_s = float(inference_timeout_s)
        self.clock_ns = clock_ns or time.monotonic_ns
        self.horizon_hint = horizon_hint
        self.estop = False
        self.last_cmd: np.ndarray | None = None
        self.last_from_chunk = False  # the last command sent was a chunk's action (not a hold)
        self.last_error: Hold | None = None
        self.last_error_detail: str = ""
        self.last_infer_ms: float | None = None
        self.last_chunk_stamp: int | None = None
        self.tracking_trip: Trip | None = None  # latched until the next episode or an e-stop release
        self.chunk_issues: dict[str, int] = {}  # "trimmed.<reason>" / "rejected.<reason>" -> count
        self.episode: dict | None = None
        self._gen = 0
        self._observed_ns: int | None = None  # stamp of the newest observation handed to backend.observe
        self._worker = (_Worker(self._infer, self.clock_ns, worker_init)
                        if realtime and runtime.strategy != "sync" else None)
        self.realtime = realtime
        if realtime:
            # a tick waiting for the GIL behind the inference thread's Python code would be late by
            # up to the switch interval (5 ms by default): hand the GIL over every 0.5 ms instead
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))

    # -- episode / e-stop ----------------------------------------------------------------
    def reset_episode(self, episode: dict | None = None) -> None:
        self._gen += 1  # a result still in flight belongs to the old episode: dropped
        self.runtime.reset()
        self.backend.reset(episode)
        self._observed_ns = None
        self.last_cmd = None
        self.last_from_chunk = False
        self.last_error = None
        self.tracking_trip = None
        self.watchdog.reset()
        self.episode = dict(episode) if episode else None
        self._in_flight = None
        self._last_chunk_id = None
        if self.latency is not None:
            seed = (episode or {}).get("seed")
            self.latency.reset(int(seed) if isinstance(seed, (int, float)) else None)

    def set_estop(self, on: bool) -> None:
        if self.estop and not on:  # the operator released the e-stop: a latched tracking hold goes with it
            self.tracking_trip = None
            self.watchdog.reset()
        self.estop = bool(on)

    def set_safety(self, safety: SafetyFilter) -> None:
        """New limits (a run-time parameter change): the filter and its hold timeouts, from the next step on."""
        self.safety = safety
        self.watchdog = TrackingWatchdog(safety.tracking)
        self.stale_obs_ns = int(float(safety.cfg["stale_obs_s"]) * 1e9)
        self.inference_timeout_s = float(safety.cfg["inference_timeout_s"])

    # -- inference -----------------------------------------------------------------------
    def _observe(self, obs: Observation | None, missing: Hold | None, status: dict) -> None:
        """``backend.observe`` once per new observation stamp (not for one lacking inputs). A failure is
        reported in the status (and as the hold reason should no chunk cover the step), never raised."""
        if obs is None or missing or obs.stamp_ns == self._observed_ns:
            return
        self._observed_ns = obs.stamp_ns
        try:
            self.backend.observe(obs)
        except Exception as exc:  # noqa: BLE001 - any backend failure is a hold, never a crash
            self.last_error, self.last_error_detail = Hold.OBSERVE_ERROR, f"{type(exc).__name__}: {exc}"
            status["observe_error"] = self.last_error_detail

    def _infer(self, obs: Observation) -> Inference:
        t0 = time.perf_counter()
        try:
            chunk = self.backend.infer(obs)
        except Exception as exc:  # noqa: BLE001 - any backend failure is a hold, never a crash
            detail = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, (RuntimeError, OSError, ValueError, TimeoutError)):
                detail += "\n" + traceback.format_exc(limit=3)
            return Inference(None, Hold.INFERENCE_ERROR, detail)
        if not isinstance(chunk, ActionChunk):
            return Inference(None, Hold.INFERENCE_ERROR, f"backend returned {type(chunk).__name__}, not ActionChunk")
        if not chunk.infer_ms:
            chunk.infer_ms = (time.perf_counter() - t0) * 1e3
        reason = self.safety.check_chunk(chunk.actions)
        if reason:
            try:
                self.backend.rejected(chunk, reason)
            except Exception:  # noqa: BLE001 - bookkeeping only: the hold below is what matters
                pass
            return Inference(None, reason, f"chunk rejected ({reason}), shape {chunk.actions.shape}")
        return Inference(chunk)

    def _accept(self, inference: Inference, arrival_ns: int, state=None, status: dict | None = None) -> Hold | None:
        """Check the inference's chunk as a trajectory from its first future action (:meth:`_check_path`) and add
        what is safe of it to the runtime, or keep its error (the hold reason, returned)."""
        chunk = inference.chunk
        if chunk is not None:
            chunk, reason, detail = self._check_path(chunk, arrival_ns, state)
            if reason is not None:
                what = "trimmed" if chunk is not None else "rejected"
                key = f"{what}.{reason}"
                self.chunk_issues[key] = self.chunk_issues.get(key, 0) + 1
                if status is not None:
                    status["chunk_check"] = {"result": what, "reason": reason, "detail": detail}
                    if chunk is not None:
                        status["trimmed"] = reason
                if chunk is None:
                    try:
                        self.backend.rejected(inference.chunk, reason)
                    except Exception:  # noqa: BLE001 - bookkeeping only: the hold below is what matters
                        pass
                    inference = Inference(None, reason, f"chunk rejected ({reason}): {detail}")
        if chunk is None:
            self.last_error, self.last_error_detail = inference.error, inference.detail
            return inference.error
        self.last_error = None
        self.runtime.add(chunk, now_ns=arrival_ns)
        self.last_infer_ms = chunk.infer_ms
        self.last_chunk_stamp = chunk.stamp_ns
        return None

    def _check_path(self, chunk: ActionChunk, arrival_ns: int, state) -> tuple[ActionChunk | None, Hold | None, str]:
        """The whole-chunk check (safety.chunk): the seam from the command being executed (or the measured state
        before the first command) to the first action the runtime will play, then dynamics and collisions of the
        path from there. Returns (the chunk to use: whole, its safe prefix, or None when rejected; the reason or
        None; a description)."""
        chk = self.safety.chunk
        if not chk.enabled:
            return chunk, None, ""
        a = chunk.actions
        d = self.runtime.first_future(chunk.stamp_ns, arrival_ns)
        if d >= len(a):
            return chunk, None, ""  # all in the past: the runtime never plays it
        # the seam is a jump between plans: against the command a chunk is executing. With none (the episode's
        # first chunk, or after a hold) there is no seam: the velocity clamp ramps from the held command or the
        # measured pose, and rejecting would hold for ever (the policy answers the same state the same way)
        seam = chk.seam(a[d], self.last_cmd if self.last_from_chunk else None)
        if seam:
            return None, Hold.SEAM_JUMP, f"{seam} (action {d})"
        verdict = chk.check(a, start=d)
        k = verdict.first(d)
        if k is None:
            return chunk, None, ""
        reason = Hold.COLLISION_CHUNK if verdict.codes[k] == COLLISION else Hold.DYNAMICS_CHUNK
        detail = verdict.details[k]
        if chk.policy == "reject" or k <= d:
            return None, reason, detail
        return (ActionChunk(a[:k], chunk.stamp_ns, chunk.infer_ms, chunk.info), reason,
                f"{detail}; trimmed to its first {k} actions")

    def _gate(self, t_ns: int, state) -> Hold | None:
        """The holds a lockstep step checks before anything else, with or without a latency model: the e-stop,
        a bad measured state, the tracking watchdog."""
        if self.estop:
            return Hold.ESTOP
        if not self.safety.state_ok(state):
            return Hold.BAD_STATE
        return self._track(t_ns, state)

    def _track(self, t_ns: int, state) -> Hold | None:
        """The tracking watchdog on this step's measured state (against the command sent before it). A trip holds
        the last command (not the measured pose: a frozen sensor's pose can be far from the arm) and latches."""
        if self.tracking_trip is None:
            trip = self.watchdog.update(t_ns, state, self.last_cmd)
            if trip is None:
                return None
            self.tracking_trip = trip
            self.last_error, self.last_error_detail = Hold.TRACKING_ERROR, trip.describe()
        return Hold.TRACKING_ERROR

    def _prepare(self, obs: Observation, t_ns: int) -> Observation:
        if self.backend.supports_rtc:
            obs.prev_actions = self.runtime.prefix(obs.stamp_ns, self.horizon_hint)
            if self.last_infer_ms:
                obs.inference_delay = int(np.ceil(self.last_infer_ms * 1e6 / self.runtime.dt_ns))
        return obs

    # -- the command -----------------------------------------------------------------------
    def _command(self, t_ns: int, state, hold: Hold | None, status: dict) -> np.ndarray | None:
        action = None
        if hold is None:
            action, info = self.runtime.action(t_ns)
            status.update(info)
            if action is None:
                hold = self.last_error or Hold.NO_ACTION
        if hold is not None:
            cmd = self.safety.hold(self.last_cmd, state)
        else:
            ref = self.last_cmd if self.last_cmd is not None else (state if self.safety.state_ok(state) else None)
            cid = status.get("chunk_id")
            if cid != self._last_chunk_id and self._last_chunk_id is not None and self.last_cmd is not None:
                # a chunk boundary: how far the runtime's action jumps from the last command (arm joints, rad)
                status["seam_jump"] = float(np.max(np.abs(np.asarray(action, dtype=np.float64) - self.last_cmd)[ARM]))
            self._last_chunk_id = cid
            cmd, clamped = self.safety.filter(action, ref)
            status["clamped"] = clamped
            # the backstop: what is sent is not always a checked chunk's action (the RTC blend of two plans,
            # the temporal ensemble's average, the velocity clamp catching up after a hold take other paths)
            hit = self.safety.chunk.command_collision(cmd)
            if hit:
                hold = Hold.COLLISION_CHUNK
                self.last_error, self.last_error_detail = hold, f"command not sent: {hit}"
                status["chunk_check"] = {"result": "held", "reason": hold, "detail": f"command not sent: {hit}"}
                self.chunk_issues["held.collision_chunk"] = self.chunk_issues.get("held.collision_chunk", 0) + 1
                cmd = self.safety.hold(self.last_cmd, state)
        status["hold"] = hold
        if hold is Hold.TRACKING_ERROR and self.tracking_trip is not None:
            status["tracking"] = {"joint": self.tracking_trip.joint, "error": self.tracking_trip.error}
        status["stall"] = hold is not None  # no fresh action this step: the last command (or the state) is held
        if cmd is not None:
            self.last_cmd = cmd
            self.last_from_chunk = hold is None
        return cmd

    def _status(self, t_ns: int, obs: Observation | None) -> dict:
        st = {"t_ns": int(t_ns), "strategy": self.runtime.strategy, "hold": None, "clamped": False,
              "chunk_id": None, "chunk_index": None, "inferred": False, "rejected": None}
        if obs is not None:
            st["stamp_ns"] = int(obs.stamp_ns)
            st["obs_age_ms"] = (t_ns - obs.stamp_ns) / 1e6
            st["step"] = obs.step
        if self.episode:
            st["episode"] = self.episode.get("episode")
        return st

    def step_lockstep(self, t_ns: int, obs: Observation, missing: str | None = None) -> tuple[np.ndarray | None, dict]:
        """One lockstep step at sim time ``t_ns``. ``missing`` names a hold the caller found (a
        :class:`Hold` or its string, e.g. ``missing_camera``) that only matters when a new chunk is needed."""
        missing = Hold(missing) if missing else None
        if self.latency is not None:
            return self._step_delayed(t_ns, obs, missing)
        status = self._status(t_ns, obs)
        self._observe(obs, missing, status)
        state = obs.state if obs is not None else None
        hold = self._gate(t_ns, state)
        if hold is None and self.runtime.should_infer(t_ns):
            if missing:
                hold = missing
            else:
                t0 = time.perf_counter()
                reason = self._accept(self._infer(self._prepare(obs, t_ns)), t_ns, state, status)
                status["inferred"] = True
                status["infer_ms"] = (time.perf_counter() - t0) * 1e3
                if reason:
                    status["rejected"] = reason
                    if not self.runtime.covers(t_ns):
                        hold = reason
        status.setdefault("infer_ms", self.last_infer_ms)
        status["chunk_stamp_ns"] = self.last_chunk_stamp
        return self._command(t_ns, state, hold, status), status

    # -- lockstep with a latency model ---------------------------------------------------------
    def _deliver(self, t_ns: int, status: dict | None = None) -> None:
        """Hand the runtime the in-flight chunk once its arrival step ``<= t_ns`` has come."""
        if self._in_flight is None or self._in_flight[0] > t_ns:
            return
        arrival_ns, _, inference = self._in_flight
        self._in_flight = None
        reason = self._accept(inference, arrival_ns, None, status)
        if status is not None:
            status["arrived"] = True
            if reason:
                status["rejected"] = reason

    def wants_observation(self, t_ns: int) -> bool:
        """Lockstep: whether step ``t_ns`` starts an inference (so needs the step's frames)."""
        if self.latency is None:
            return self.runtime.should_infer(t_ns)
        self._deliver(t_ns)  # what arrives by t_ns decides (the step itself would deliver it first)
        return self._in_flight is None and self.runtime.should_infer(t_ns)

    def _step_delayed(self, t_ns: int, obs: Observation, missing: Hold | None) -> tuple[np.ndarray | None, dict]:
        """:meth:`step_lockstep` with the latency model: an inference started at ``t`` is computed now (the
        result does not depend on when) and handed to the runtime at ``t + d`` steps; one at a time."""
        status = self._status(t_ns, obs)
        self._observe(obs, missing, status)
        self._deliver(t_ns, status)
        state = obs.state if obs is not None else None
        hold = self._gate(t_ns, state)
        if hold is None and self._in_flight is None and self.runtime.should_infer(t_ns):
            if missing:
                hold = missing
            else:
                d = self.latency.sample_steps(self.runtime.dt_ns / 1e9)
                obs = self._prepare(obs, t_ns)
                if self.backend.supports_rtc:
                    obs.inference_delay = d
                t0 = time.perf_counter()
                inference = self._infer(obs)
                status["inferred"] = True
                status["infer_ms"] = (time.perf_counter() - t0) * 1e3
                status["latency_steps"] = d
                self._in_flight = (t_ns + d * self.runtime.dt_ns, d, inference)
                self._deliver(t_ns, status)  # d == 0: available at once
        status["in_flight"] = self._in_flight is not None
        if hold is None and status.get("rejected") and not self.runtime.covers(t_ns):
            hold = status["rejected"]
        status.setdefault("infer_ms", self.last_infer_ms)
        status["chunk_stamp_ns"] = self.last_chunk_stamp
        return self._command(t_ns, state, hold, status), status

    def tick(self, t_ns: int, obs: Observation | None, missing: str | None = None) -> tuple[np.ndarray | None, dict]:
        """One realtime control tick at ROS time ``t_ns`` with the newest synced observation (``missing``: as
        for :meth:`step_lockstep`)."""
        missing = Hold(missing) if missing else None
        status = self._status(t_ns, obs)
        if self._worker is not None:
            done = self._worker.take()
            if done is not None and done.gen == self._gen:
                status["rejected"] = self._accept(done.inference, done.arrival_ns, obs.state if obs else None, status)
                status["inferred"] = True  # an inference finished: its own infer_ms below
                if done.inference.chunk is not None:
                    status["infer_ms"] = done.inference.chunk.infer_ms
        self._observe(obs, missing, status)
        state = obs.state if obs is not None else None
        hold = None
        if self.estop:
            hold = Hold.ESTOP
        elif obs is None:
            hold = missing or Hold.STALE_OBS
        elif not self.safety.state_ok(state):
            hold = Hold.BAD_STATE
        elif t_ns - obs.stamp_ns > self.stale_obs_ns:
            hold = missing or Hold.STALE_OBS
        elif self._track(t_ns, state):
            hold = Hold.TRACKING_ERROR
        else:
            fresh = self.runtime.last_obs_ns is None or obs.stamp_ns > self.runtime.last_obs_ns
            if self.runtime.should_infer(t_ns) and fresh:
                if missing:
                    hold = missing if not self.runtime.covers(t_ns) else None
                    status["rejected"] = missing
                elif self._worker is None:  # sync baseline: block, like openpi's broker
                    t0 = time.perf_counter()
                    reason = self._accept(self._infer(self._prepare(obs, t_ns)), self.clock_ns(), state, status)
                    status["inferred"] = True
                    status["infer_ms"] = (time.perf_counter() - t0) * 1e3
                    status["rejected"] = reason or status["rejected"]
                    t_ns = max(t_ns, self.clock_ns())  # the robot waited: command for now
                else:
                    if self._worker.submit(self._gen, self._prepare(obs, t_ns)):
                        status["submitted"] = True
            if (hold is None and self._worker is not None and self._worker.busy
                    and time.monotonic() - self._worker.busy_since > self.inference_timeout_s
                    and not self.runtime.covers(t_ns)):
                hold = Hold.INFERENCE_TIMEOUT
        status.setdefault("infer_ms", self.last_infer_ms)
        status["chunk_stamp_ns"] = self.last_chunk_stamp
        return self._command(t_ns, state, hold, status), status

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
        try:
            self.backend.close()
        except Exception:  # noqa: BLE001
            pass
