"""The ROS 2 shell of the policy: topics in, one joint command per control step out.

Reads the ``/perturbed/...`` cameras (raw subscriptions decoded by ``wam_common.imageio``),
joint states and instruction, the sim's EPISODE and PRIVILEGED_STATE; publishes COMMAND (or
SHADOW_COMMAND with ``safety.dry_run``), one POLICY_STATUS JSON per command, and /diagnostics
for every hold. Two clock modes (docs/GRAPH_CONTRACT.md):

- ``lockstep: true`` — each (stamp-deduplicated) joint-state pair is answered with exactly one
  command; a chunk is computed synchronously when none covers the step; at steps where the sim
  renders (``k % camera_every == 0``) it waits for the frames stamped exactly ``t_k``.
- ``lockstep: false`` — a ``rate_hz`` timer on ROS time publishes the runtime's command for "now";
  inference runs in a worker thread the timer never waits for; observations are approximately
  time-synced (``sync.slop_s``) and a stale one holds the arm.

E-stop: ``ESTOP`` (std_msgs/Bool, latched) and the service ``~/estop`` (std_srvs/SetBool); once
engaged it stays engaged until released by ``false`` on either.

The decisions are the pure cores' (no ROS): :mod:`.framesize` (which frames are taken),
:mod:`.lockstep` (the inputs by stamp, when a lockstep step is answered and with what),
:mod:`.controller` (the command); this shell decodes, calls them, publishes and logs.
"""
from __future__ import annotations

import array
import json
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import SetBool

from wam_common import aloha, qos, topics
from wam_common.config import ConfigError
from wam_common.events import EventError, parse_episode_event
from wam_common.imageio import ImageDecodeError, decode_image, to_rgb
from wam_common.node_main import forward_logging, run_node, stop_forwarding
from wam_common.params import declare_tree
from wam_common.schema import Param, Service, defaults, publishes, subscribes

from . import backends, latency, observation, runtime, safety
from .backends import Observation
from .controller import PolicyController
from .framesize import FrameSizeError, FrameSizeGate
from .lockstep import Inputs, Lockstep, Ready, Resend, Wait
from .observation import ObservationMap, state14
from .timesync import ApproximateTimeSync


def _backend_params() -> dict:
    """``backend.<name>.*``: the ``PARAMS`` of each built-in backend that imports here."""
    import importlib

    out = {}
    for name in backends.BUILTIN:
        try:
            mod = importlib.import_module(f"wam_policy_node.backends.{name}")
        except ImportError:
            continue
        out[name] = mod.PARAMS
    return out


PARAMS = {
    "lockstep": Param(False, "answer each sim step's joint states with exactly one command (the sim's lockstep "
                      "clock; reliable sensor QoS); false: a rate_hz timer on ROS time, as on hardware"),
    "rate_hz": Param(50.0, "realtime: command rate (Hz)", range=(1.0, 1000.0)),
    "backend": {"type": Param("expert", "the policy backend (wam_policy_node/backends)", choices=backends.BUILTIN),
                **_backend_params()},
    "observation": dict(observation.PARAMS, expected_size=Param(
        [0, 0], "[height, width] every camera frame must have; [0, 0] = any (sizes announced by the sim's "
                "EPISODE start event, or learnt, are enforced then)")),
    "runtime": runtime.PARAMS,
    "latency": latency.PARAMS,
    "safety": safety.PARAMS,
    "sync": {
        "slop_s": Param(0.025, "realtime: largest stamp spread between the cameras and joint states of one "
                        "observation (s)", range=(0.0, None), dynamic=True),
        "queue_size": Param(10, "realtime: messages queued per input while matching stamps", range=(1, None)),
        "lockstep_wait_s": Param(5.0, "lockstep: longest wait for a step's frames and privileged state (wall s)",
                                 range=(0.0, None), dynamic=True),
        "camera_every": Param(1, "lockstep: cameras come every n steps; used until an EPISODE start event says "
                              "otherwise", range=(1, None)),
        "reanswer_after_s": Param(0.5, "lockstep: a step the sim resends this long after we answered it gets the "
                                  "same command again (ours was lost); resends that crossed our answer are "
                                  "ignored (0 = never)", range=(0.0, None), dynamic=True),
    },
    "status_every": Param(1, "publish POLICY_STATUS every n commands (and at every hold)", range=(1, None),
                          dynamic=True),
}
DEFAULTS = defaults(PARAMS)

STATUS_QOS = qos.STATUS  # the contract's POLICY_STATUS QoS: reliable, depth 50, volatile
COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "8UC3")


def endpoints(cfg: dict) -> list:
    """The node's topics and service for a validated config (docs/NODES.md; tests/test_ros2_params.py holds them
    against the running node)."""
    prefix, sensor = cfg["observation"]["input_prefix"] or "", qos.sensor(cfg["lockstep"])
    dry = cfg["safety"]["dry_run"]
    return [
        *[subscribes(prefix + topics.joint_state_topic(arm), JointState, sensor, f"the {arm} arm's joint states")
          for arm in topics.ARMS],
        *[subscribes(prefix + topics.camera_topic(cam), Image, sensor, f"camera {cam} (raw, decoded in place)")
          for cam in cfg["observation"]["cameras"]],
        subscribes(prefix + topics.INSTRUCTION, String, qos.LATCHED, "the task instruction (the prompt)"),
        subscribes(topics.EPISODE, String, qos.EVENTS, "episode events: a start resets the policy"),
        subscribes(topics.PRIVILEGED_STATE, String, sensor, "the sim's privileged state (backends that need it)"),
        subscribes(topics.ESTOP, Bool, qos.LATCHED, "e-stop: true engages it (latched), false releases it"),
        publishes(topics.SHADOW_COMMAND if dry else topics.COMMAND, Float64MultiArray, qos.COMMAND,
                  "the 14-joint command (SHADOW_COMMAND with safety.dry_run)"),
        publishes(topics.POLICY_STATUS, String, STATUS_QOS, "one JSON status per command (every status_every)"),
        publishes(topics.DIAGNOSTICS, DiagnosticArray, 10, "safety status: holds, e-stop, counts, chunks trimmed / "
                  "rejected and why, the joint that stopped tracking (1 Hz and at every change)"),
        Service("~/estop", SetBool, "engage (true) or release (false) the e-stop"),
    ]


def _guarded(fn):
    """A callback that logs an unexpected exception instead of taking the node down."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - never crash the node on one bad message
            self._warn(f"exc_{fn.__name__}", f"{fn.__name__}: unexpected {type(exc).__name__}: {exc}", every_s=5.0)
            return None

    return wrapper


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def command_msg(cmd: np.ndarray, answers_ns: int | None = None) -> Float64MultiArray:
    """The COMMAND message for a 14-joint command (labelled with the step it answers): its data as an
    ``array('d')`` of the command's float64 bytes, which the message takes as it is (a list is checked value by
    value); the same doubles."""
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=aloha.command_label(answers_ns), size=topics.STATE_DIM,
                                          stride=topics.STATE_DIM)]
    msg.data = array.array("d", np.ascontiguousarray(cmd, dtype=np.float64).tobytes())
    return msg


class WamPolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__("wam_policy_node", **kwargs)
        self._log_bridge = forward_logging(self)  # the backend's load / warm-up progress lines
        try:
            self._setup()
        except BaseException:
            stop_forwarding(self._log_bridge)  # no handler left on the package logger by a failed start
            raise

    def _setup(self) -> None:
        self.cfg = cfg = declare_tree(self, PARAMS, on_set=self._on_params)
        self.lockstep = bool(cfg["lockstep"])
        try:
            self.obs_map = ObservationMap.from_config(cfg["observation"])
            btype = cfg["backend"]["type"]
            bcfg = cfg["backend"].get(btype, {}) if isinstance(cfg["backend"].get(btype), dict) else {}
            self.backend = backends.make_backend(btype, bcfg)
            self.runtime = runtime.ChunkRuntime.from_config(cfg["runtime"])
            self.latency = latency.LatencyModel.from_config(cfg["latency"])
            self.safety = safety.SafetyFilter(cfg["safety"])
        except ConfigError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"node 'wam_policy_node': {exc}") from None
        self.controller = PolicyController(
            self.backend, self.runtime, self.safety, clock_ns=lambda: self.get_clock().now().nanoseconds,
            realtime=not self.lockstep, horizon_hint=int(bcfg.get("horizon", 50) or 50), latency=self.latency)
        self.dry_run = bool(cfg["safety"]["dry_run"])
        self.cams = list(self.obs_map.cameras)
        self.needs_images = bool(self.backend.needs_images)
        self.frame_gate = FrameSizeGate(cfg["observation"]["expected_size"])

        # state (guarded by the data callback group; the realtime tick reads snapshots)
        self.inputs = Inputs(self.cams, cfg["sync"]["camera_every"])
        self.lock = Lockstep(
            self.inputs, self.obs_map, needs_images=self.needs_images,
            needs_privileged=bool(self.backend.needs_privileged), streams=bool(self.backend.streams_observations),
            should_infer=self.controller.wants_observation,
            privileged_published=lambda: self.count_publishers(topics.PRIVILEGED_STATE) > 0,
            on_episode=self._start_episode, wait_s=cfg["sync"]["lockstep_wait_s"],
            reanswer_after_s=cfg["sync"]["reanswer_after_s"])
        self._latest_obs: Observation | None = None
        self._n_cmd = 0
        self._hold_counts: dict[str, int] = {}
        self._last_hold: str | None = None
        self._last_chunk_check = ""  # the last chunk the whole-chunk check trimmed or rejected, and why
        self._warned: dict[str, float] = {}
        self.rejected_images = 0
        self._sync = ApproximateTimeSync(
            list(topics.ARMS) + (self.cams if self.needs_images else []),
            int(cfg["sync"]["slop_s"] * 1e9), int(cfg["sync"]["queue_size"]),
            max_age_ns=int(cfg["safety"]["stale_obs_s"] * 1e9))

        # Groups for an executor that runs callbacks concurrently (e.g. the node composed into a
        # multi-threaded process); run_node spins it on one thread: rclpy's multi-threaded executor
        # starved a GPU model of the GIL (docs/results/node_overhead_gpu.md), and nothing here
        # blocks except the model in lockstep and in realtime `sync`, where waiting is the point.
        self._data = MutuallyExclusiveCallbackGroup()
        self._ctl = MutuallyExclusiveCallbackGroup()
        self._tick_group = MutuallyExclusiveCallbackGroup()
        prefix = cfg["observation"]["input_prefix"] or ""
        sensor_qos = qos.sensor(self.lockstep)
        for arm in topics.ARMS:
            self.create_subscription(JointState, prefix + topics.joint_state_topic(arm),
                                     lambda m, arm=arm: self._on_joint_state(arm, m), sensor_qos,
                                     callback_group=self._data)
        for cam in self.cams:
            self.create_subscription(Image, prefix + topics.camera_topic(cam),
                                     lambda raw, cam=cam: self._on_image(cam, raw), sensor_qos,
                                     callback_group=self._data, raw=True)
        self.create_subscription(String, prefix + topics.INSTRUCTION, self._on_instruction, qos.LATCHED,
                                 callback_group=self._data)
        self.create_subscription(String, topics.EPISODE, self._on_episode, qos.EVENTS, callback_group=self._data)
        self.create_subscription(String, topics.PRIVILEGED_STATE, self._on_privileged, sensor_qos,
                                 callback_group=self._data)
        self.create_subscription(Bool, topics.ESTOP, self._on_estop, qos.LATCHED, callback_group=self._ctl)
        self.create_service(SetBool, "~/estop", self._on_estop_srv, callback_group=self._ctl)

        self.cmd_topic = topics.SHADOW_COMMAND if self.dry_run else topics.COMMAND
        self.pub_cmd = self.create_publisher(Float64MultiArray, self.cmd_topic, qos.COMMAND)
        self.pub_status = self.create_publisher(String, topics.POLICY_STATUS, STATUS_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if self.lockstep:
            self.create_timer(0.05, self._check_pending, callback_group=self._data, clock=steady)
        else:
            self.create_timer(1.0 / float(cfg["rate_hz"]), self._on_tick, callback_group=self._tick_group)
        self.create_timer(1.0, self._publish_diag, callback_group=self._ctl, clock=steady)
        self.get_logger().info(
            f"backend={self.backend.name} strategy={self.runtime.strategy} mode={'lockstep' if self.lockstep else 'realtime'}"
            + (f" latency={self.latency.describe()}" if self.latency is not None else "") +
            f" cameras={self.cams if self.needs_images else []} output={self.cmd_topic}")

    def _on_params(self, cfg: dict, changed: set[str]):
        """``ros2 param set`` of the dynamic parameters (wam_common.params): the safety limits and timeouts, the
        sync tolerances; ``status_every`` is read live. A bad combination (gripper_min >= gripper_max) is refused."""
        filt = safety.SafetyFilter(cfg["safety"])
        sync = cfg["sync"]

        def apply() -> None:
            self.safety = filt
            self.controller.set_safety(filt)
            self._sync.slop_ns, self._sync.max_age_ns = int(sync["slop_s"] * 1e9), self.controller.stale_obs_ns
            self.lock.wait_s, self.lock.reanswer_after_s = sync["lockstep_wait_s"], sync["reanswer_after_s"]

        return apply

    # -- helpers ---------------------------------------------------------------------------
    def _warn(self, key: str, msg: str, every_s: float = 2.0) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= every_s:
            self._warned[key] = now
            self.get_logger().warning(msg)

    # -- inputs ----------------------------------------------------------------------------
    @_guarded
    def _on_joint_state(self, arm: str, msg: JointState) -> None:
        try:
            arm7 = aloha.arm_state_from_joint_state(list(msg.name), list(msg.position))
        except (ValueError, IndexError) as exc:
            self._warn(f"js_{arm}", f"rejected /follower_{arm}/joint_states: {exc}")
            return
        t = _stamp_ns(msg.header.stamp)
        paired = self.inputs.add_joint_state(arm, t, arm7)
        if not self.lockstep:
            self._sync_add(arm, t, arm7)
        elif paired:
            self._on_pair(t)

    @_guarded
    def _on_image(self, cam: str, raw: bytes) -> None:
        try:
            img = decode_image(raw)
            if img.encoding not in COLOUR_ENCODINGS:
                raise ImageDecodeError(f"encoding '{img.encoding}' is not a colour image (want rgb8)")
            rgb = to_rgb(img)
            h, w = rgb.shape[:2]
            if self.frame_gate.check(cam, h, w):
                self._warn(f"resize_{cam}", f"camera '{cam}' now sends {w}x{h}: adopted")
        except (ImageDecodeError, FrameSizeError) as exc:
            self.rejected_images += 1
            self._warn(f"img_{cam}_{str(exc)[:12]}", f"rejected image on camera '{cam}': {exc}")
            return
        t = img.stamp.ns
        self.inputs.add_frame(cam, t, rgb)
        if self.lockstep:
            self._answer(self.lock.poll())
        elif self.needs_images:  # the synchroniser has no camera streams for a backend without images
            self._sync_add(cam, t, rgb)

    @_guarded
    def _on_instruction(self, msg: String) -> None:
        self.inputs.prompt = msg.data

    @_guarded
    def _on_episode(self, msg: String) -> None:
        try:
            ev = parse_episode_event(msg.data)
        except EventError as exc:
            self._warn("episode", f"rejected EPISODE message: {exc}")
            return
        if ev["event"] == "start":
            self.frame_gate.announce(ev)  # the sim says its render size: frames of another size are rejected
            self.inputs.add_start(ev)
            if self.lockstep:
                self._answer(self.lock.poll())
            elif self.inputs.switch_episode(ev):
                self._start_episode(ev)

    @_guarded
    def _on_privileged(self, msg: String) -> None:
        try:
            priv = json.loads(msg.data)
            if not isinstance(priv, dict):
                raise ValueError("not a JSON object")
            self.inputs.add_privileged(priv)
        except (ValueError, TypeError) as exc:
            self._warn("priv", f"rejected PRIVILEGED_STATE message: {exc}")
            return
        if self.lockstep:
            self._answer(self.lock.poll())

    @_guarded
    def _on_estop(self, msg: Bool) -> None:
        self._set_estop(bool(msg.data), "topic")

    def _on_estop_srv(self, req, resp):
        self._set_estop(bool(req.data), "service")
        resp.success, resp.message = True, f"estop {'engaged' if req.data else 'released'}"
        return resp

    def _set_estop(self, on: bool, via: str) -> None:
        if on and not self.controller.estop:
            self.get_logger().error(f"e-stop ENGAGED via {via}: holding")
        elif not on and self.controller.estop:
            self.get_logger().warning(f"e-stop released via {via}")
        self.controller.set_estop(on)
        self._publish_diag()

    def _start_episode(self, ev: dict) -> None:
        """A new episode (``inputs.switch_episode`` said so): forget the last one's sizes, sync and runtime."""
        self.frame_gate.reset()
        self._sync.reset()
        self._latest_obs = None  # never act on the previous episode's observation
        self.controller.reset_episode(ev)
        self.get_logger().info(f"episode start: {json.dumps(ev) if ev else None}")

    # -- lockstep --------------------------------------------------------------------------
    def _on_pair(self, t: int) -> None:
        got = self.lock.pair(t)
        if isinstance(got, Resend):
            self._warn("reanswer", f"lockstep: step at t={t} resent by the sim: sending its command again")
            self._publish_cmd(got.cmd, answers_ns=t)
            return
        if got.abandoned is not None:
            self._warn("abandon", f"lockstep: step at {got.abandoned} abandoned for a newer one at {t}")
        self._answer(got)

    @_guarded
    def _check_pending(self) -> None:
        self._answer(self.lock.poll())

    def _answer(self, got: Wait | Ready) -> None:
        """Send the controller's command for a step the lockstep core says is ready."""
        if not isinstance(got, Ready):
            return
        obs, t = got.obs, got.obs.stamp_ns
        if got.missing:
            self._warn("missing_cam", f"lockstep: no frame at step {obs.step} (t={t}) from {got.lacking}: holding")
        cmd, status = self.controller.step_lockstep(t, obs, got.missing)
        if status.get("inferred") and obs.image_stamps:
            status["image_stamps_ns"] = obs.image_stamps
        self._emit(cmd, status, answers_ns=t)
        if cmd is not None:
            self.lock.answered(t, cmd)

    # -- realtime --------------------------------------------------------------------------
    def _sync_add(self, key: str, t: int, item) -> None:
        got = self._sync.add(key, t, item)
        if got is None:
            return
        stamp = got["left"][0]
        frames = {c: got[c][1] for c in self.cams} if self.needs_images else {}
        try:
            images = self.obs_map.images(frames) if frames else {}
        except Exception as exc:  # noqa: BLE001 - a bad frame never crashes the node
            self._warn("resize", f"cannot map camera frames: {exc}")
            return
        self._latest_obs = Observation(stamp_ns=stamp, images=images, state=state14(got["left"][1], got["right"][1]),
                                       prompt=self.inputs.prompt_for(self.inputs.latest_start),
                                       privileged=self.inputs.latest_priv)

    @_guarded
    def _on_tick(self) -> None:
        now = self.get_clock().now().nanoseconds
        if now == 0:  # use_sim_time and no /clock yet
            return
        obs = self._latest_obs
        if obs is not None and self.backend.needs_privileged:
            obs.privileged = self.inputs.latest_priv
        missing = None
        stale_ns = self.controller.stale_obs_ns
        if self.needs_images and (obs is None or now - obs.stamp_ns > stale_ns):
            lack = self.inputs.stale_cameras(now, stale_ns)  # a camera that stopped, not the joint states
            if lack:
                missing = "missing_camera"
                self._warn("rt_missing_cam", f"no fresh frame from {lack}: holding")
        cmd, status = self.controller.tick(now, obs, missing)
        self._emit(cmd, status)

    # -- outputs ---------------------------------------------------------------------------
    def _publish_cmd(self, cmd: np.ndarray, answers_ns: int | None = None) -> None:
        self.pub_cmd.publish(command_msg(cmd, answers_ns))

    def _emit(self, cmd, status: dict, answers_ns: int | None = None) -> None:
        hold = status.get("hold")
        if cmd is not None:
            self._publish_cmd(cmd, answers_ns)
            self._n_cmd += 1
        status["published"] = cmd is not None
        status["dry_run"] = self.dry_run
        if hold:
            self._hold_counts[hold] = self._hold_counts.get(hold, 0) + 1
            if self.controller.last_error_detail and hold == self.controller.last_error:
                status["error"] = self.controller.last_error_detail.splitlines()[0][:300]
        check = status.get("chunk_check")
        if check:  # a chunk trimmed or rejected by the whole-chunk check: said at once, on the log and /diagnostics
            text = f"{check['result']} ({check['reason']}): {check['detail']}"[:300]
            new = text != self._last_chunk_check
            self._last_chunk_check = text
            self._warn(f"chunk_{check['result']}_{check['reason']}", f"chunk {text}", every_s=1.0)
            if hold == self._last_hold and new:  # (a hold change publishes below; the 1 Hz timer repeats it)
                self._publish_diag()
        if hold != self._last_hold:
            if hold:
                self.get_logger().warning(f"HOLD ({hold}) at t={status.get('t_ns')}"
                                          + (f": {status['error']}" if status.get("error") else ""))
            elif self._last_hold:
                self.get_logger().info(f"hold ({self._last_hold}) cleared")
            self._last_hold = hold
            self._publish_diag()
        every = max(1, int(self.cfg["status_every"]))
        if cmd is None or self._n_cmd % every == 0 or hold:
            self.pub_status.publish(String(data=json.dumps(_jsonable(status))))

    @_guarded
    def _publish_diag(self) -> None:
        st = DiagnosticStatus()
        st.name = f"{self.get_name()}: safety"
        st.hardware_id = "wam_policy"
        hold = "estop" if self.controller.estop else self._last_hold
        trip = self.controller.tracking_trip
        st.level = (DiagnosticStatus.ERROR if hold in ("estop", "tracking_error")
                    else DiagnosticStatus.WARN if hold else DiagnosticStatus.OK)
        st.message = f"HOLD: {hold}" if hold else "ok"
        if hold == "tracking_error" and trip is not None:
            st.message += f" ({trip.joint} does not follow its command)"
        vals = {"hold": hold or "", "commands": self._n_cmd, "rejected_images": self.rejected_images,
                "estop": self.controller.estop, "backend": self.backend.name, "strategy": self.runtime.strategy,
                "dry_run": self.dry_run}
        vals.update({f"holds.{k}": v for k, v in self._hold_counts.items()})
        vals.update({f"chunks.{k}": v for k, v in self.controller.chunk_issues.items()})
        if self._last_chunk_check:
            vals["last_chunk_check"] = self._last_chunk_check
        if trip is not None:
            vals["tracking_joint"], vals["tracking_error"] = trip.joint, f"{trip.error:+.3f}"
        st.values = [KeyValue(key=k, value=str(v)) for k, v in vals.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self.pub_diag.publish(arr)

    def close(self) -> None:
        self.controller.close()
        stop_forwarding(self._log_bridge)


def main(args=None) -> int:
    return run_node(WamPolicyNode, "wam_policy_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
