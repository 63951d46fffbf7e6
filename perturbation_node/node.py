"""perturbation_node: sensors → (profile's perturbations) → ``/perturbed/...`` → policy.

A thin ROS shell over :class:`perturbation_node.engine.Perturber`:

- every camera of ``topics.CAMERAS`` (+ ``cam_low`` when ``cam_low: true``): raw subscription to
  ``camera_topic(cam)``, ``decode_image`` (zero copy), the camera's ops, ``encode_image`` with the
  same header stamp and frame_id, raw publish on ``perturbed(topic)``; a camera with no ops is
  republished byte for byte;
- both JointStates (state noise/bias on the 6 arm joints) and the latched ``/instruction``
  (language rewrites, re-published at each episode start);
- QoS ``qos.sensor(lockstep)`` for cameras and joint states, ``qos.LATCHED`` for the instruction
  and ``ACTIVE_PERTURBATION``;
- ``EPISODE`` start events reset per-episode randomness (seeds from the profile seed and the
  episode's sim seed, or its index when the event carries no seed);
- the profile switches at runtime through the ``profile`` parameter (``ros2 param set``, i.e. the
  node's standard ``~/set_parameters`` service) and ``~/reload`` (std_srvs/Trigger: re-read the
  profile's YAML). An unknown op/level/profile is refused with an error naming it: at runtime the
  running profile stays; at start-up the node does not start (config error, exit 2) — a graph asked
  to perturb never runs on clean frames instead;
- background masks (mono8, nonzero = background) from ``background_mask_topic(cam)`` when a
  profile uses ``background``;
- malformed messages: a throttled warning, counted (``DIAGNOSTICS``), dropped — never a crash.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from wam_common import qos, topics
from wam_common.config import ConfigError
from wam_common.imageio import ImageDecodeError, Stamp, decode_image, encode_image
from wam_common.node_main import run_node
from wam_common.params import declare_tree
from wam_common.schema import Param, Service, defaults, publishes, subscribes

from .engine import Perturber, check_device
from .profiles import load_profile

NAME = "perturbation_node"

PARAMS = {
    "profile": Param("clean", "the active profile: name[@level] of config/perturbations/<name>.yaml, or a path to "
                     "one; switching loads it (a bad one is refused, naming the problem)", dynamic=True),
    "lockstep": Param(False, "reliable sensor QoS: a frame is never dropped, only late (the sim's lockstep clock)"),
    "cam_low": Param(False, "also pass cam_low through"),
    "device": Param("", "where the ops run: \"\" numpy/OpenCV; auto or a torch device (cuda, cuda:N) for the ops "
                    "with a torch path"),
    "diagnostics_period_s": Param(2.0, "period of the counters on /diagnostics (s; 0 = none)", range=(0.0, None)),
    "cv_threads": Param(1, "OpenCV worker threads (0 = OpenCV's default, one per core). A frame is ~1 ms of work: "
                        "fanning it out over cores the cameras, the policy and DDS also need costs more in "
                        "contention (p99) than it saves", range=(0, 1024), dynamic=True),
}
DEFAULTS = defaults(PARAMS)

_COLOUR = {"rgb8": None, "8UC3": None, "bgr8": "bgr"}


def endpoints(cfg: dict) -> list:
    """The node's topics and service for a validated config (docs/NODES.md; tests/test_ros2_params.py holds them
    against the running node)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_srvs.srv import Trigger

    sensor = qos.sensor(cfg["lockstep"])
    cams = list(topics.CAMERAS) + (["cam_low"] if cfg["cam_low"] else [])
    out = [
        subscribes(topics.EPISODE, String, qos.EVENTS, "episode events: a start reseeds the per-episode randomness"),
        subscribes(topics.INSTRUCTION, String, qos.LATCHED, "the task instruction"),
        publishes(topics.perturbed(topics.INSTRUCTION), String, qos.LATCHED,
                  "the instruction after the profile's language ops (again at each episode start)"),
        publishes(topics.ACTIVE_PERTURBATION, String, qos.LATCHED, "JSON: the active profile, its ops and seeds"),
    ]
    for cam in cams:
        src = topics.camera_topic(cam)
        out += [subscribes(src, Image, sensor, f"camera {cam}"),
                publishes(topics.perturbed(src), Image, sensor, f"camera {cam} after the profile's image ops"),
                subscribes(mask_topic(cam), Image, qos.SENSOR, f"background mask of {cam} (mono8, nonzero = "
                           "background) for the background op")]
    for arm in topics.ARMS:
        src = topics.joint_state_topic(arm)
        out += [subscribes(src, JointState, sensor, f"the {arm} arm's joint states"),
                publishes(topics.perturbed(src), JointState, sensor, f"the {arm} arm's joint states after the "
                          "profile's state ops")]
    if cfg["diagnostics_period_s"] > 0:
        out.append(publishes(topics.DIAGNOSTICS, DiagnosticArray, 10, "message counters and profile errors"))
    return out + [Service("~/reload", Trigger, "re-read the active profile's YAML")]


def _cv_threads(n: int) -> None:
    """OpenCV's worker threads: n, or its default for 0."""
    import cv2

    cv2.setNumThreads(n if n > 0 else -1)


def mask_topic(cam: str) -> str:
    fn = getattr(topics, "background_mask_topic", None)
    return fn(cam) if fn else f"/{cam}/camera/background_mask"


class PerturbationNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NAME, **kwargs)
        self.cfg = declare_tree(self, PARAMS, on_set=self._on_params)
        self.lockstep = bool(self.cfg["lockstep"])
        _cv_threads(int(self.cfg["cv_threads"]))
        self.cameras = list(topics.CAMERAS) + (["cam_low"] if self.cfg["cam_low"] else [])
        self.counts = {"malformed": 0, "unsupported_encoding": 0, "published": 0, "passthrough": 0}
        self._warned: dict[str, float] = {}
        self._lock = threading.Lock()
        self.device = str(self.cfg["device"] or "")
        try:
            self.device = check_device(self.device)
        except ConfigError as exc:
            self.get_logger().error(f"parameter 'device': {exc} — running the ops on the CPU")
            self.device = ""
        self.perturber = self._build(str(self.cfg["profile"]))  # ConfigError: the node does not start
        self._instruction: str | None = None
        self._masks: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple] = {}  # last frame shape per camera (warm-up at episode start)

        sensor = qos.sensor(self.lockstep)
        self._pub_active = self.create_publisher(String, topics.ACTIVE_PERTURBATION, qos.LATCHED)
        misc = MutuallyExclusiveCallbackGroup()
        # Episode events and the instruction first: when several messages are ready at once the
        # executor serves subscriptions in creation order, so a new episode's seed and rewritten
        # instruction go out before that episode's first joint states are forwarded.
        self._pub_instr = self.create_publisher(String, topics.perturbed(topics.INSTRUCTION), qos.LATCHED)
        self.create_subscription(String, topics.EPISODE, self._on_episode, qos.EVENTS, callback_group=misc)
        self.create_subscription(String, topics.INSTRUCTION, self._on_instruction, qos.LATCHED, callback_group=misc)
        for cam in self.cameras:
            group = MutuallyExclusiveCallbackGroup()
            src = topics.camera_topic(cam)
            pub = self.create_publisher(Image, topics.perturbed(src), sensor)
            self.create_subscription(Image, src, lambda raw, c=cam, p=pub: self._on_image(c, raw, p), sensor,
                                     raw=True, callback_group=group)
            self.create_subscription(Image, mask_topic(cam), lambda raw, c=cam: self._on_mask(c, raw), qos.SENSOR,
                                     raw=True, callback_group=group)
        for arm in topics.ARMS:
            group = MutuallyExclusiveCallbackGroup()
            src = topics.joint_state_topic(arm)
            pub = self.create_publisher(JointState, topics.perturbed(src), sensor)
            self.create_subscription(JointState, src, lambda raw, a=arm, p=pub: self._on_joints(a, raw, p), sensor,
                                     raw=True, callback_group=group)
        from std_srvs.srv import Trigger

        self.create_service(Trigger, "~/reload", self._on_reload, callback_group=misc)
        self._diag_pub = None
        period = float(self.cfg["diagnostics_period_s"])
        if period > 0:
            from diagnostic_msgs.msg import DiagnosticArray

            self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
            self.create_timer(period, self._publish_diagnostics, callback_group=misc)
        self._publish_active()
        self.get_logger().info(f"profile '{self.perturber.profile.ref}' ({'lockstep' if self.lockstep else 'realtime'}), "
                               f"cameras {', '.join(self.cameras)}")

    # ------------------------------------------------------------ profiles

    def _build(self, ref: str) -> Perturber:
        """Load profile ``ref``; ConfigError naming what is wrong with it."""
        p = Perturber(load_profile(ref), self.lockstep, self.device)
        idle = sorted({c for q in (p.profile.suite or [p.profile]) for c in q.cameras} - {"all"} - set(self.cameras))
        if idle:
            self.get_logger().warning(f"profile '{ref}' targets {', '.join(idle)}, which this node does not "
                                      f"pass through (cameras: {', '.join(self.cameras)}; cam_low needs cam_low: true)")
        return p

    def switch(self, ref: str) -> Perturber:
        """Load ``ref`` and make it active (keeping the episode index); ConfigError if it is bad."""
        return self._activate(ref, self._build(ref))

    def _activate(self, ref: str, new: Perturber) -> Perturber:
        old = self.perturber
        new.start_episode(old.episode, old.episode_key, old.episode_start_ns)
        new.counts = old.counts  # diagnostics count over the node's life, not per profile
        with self._lock:
            self.perturber = new
        self.get_logger().info(f"switched to profile '{ref}'")
        self._publish_active()
        self._republish_instruction()
        return new

    def _on_params(self, cfg: dict, changed: set[str]):
        """``ros2 param set`` (wam_common.params): a new ``profile`` is loaded here (a bad one raises: refused)
        and made active once set; ``cv_threads`` applies at once."""
        new = self._build(cfg["profile"]) if "profile" in changed else None

        def apply() -> None:
            if new is not None:
                self._activate(cfg["profile"], new)
            _cv_threads(int(cfg["cv_threads"]))

        return apply

    def _on_reload(self, request, response):
        try:
            self.switch(self.perturber.profile.ref)
            response.success, response.message = True, f"reloaded '{self.perturber.profile.ref}'"
        except ConfigError as exc:
            response.success, response.message = False, str(exc)
        return response

    def _publish_active(self) -> None:
        d = self.perturber.active(self.cameras)
        d["device"] = self.device or "cpu"
        d["stamp_ns"] = self.get_clock().now().nanoseconds
        self._pub_active.publish(String(data=json.dumps(d)))

    # ------------------------------------------------------------ streams

    def _warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) > 5.0:
            self._warned[key] = now
            self.get_logger().warning(text)

    def _on_image(self, cam: str, raw: bytes, pub) -> None:
        pert = self.perturber
        try:
            img = decode_image(raw)  # header parse + a view: also validates pass-through frames
        except ImageDecodeError as exc:
            self.counts["malformed"] += 1
            self._warn(f"bad/{cam}", f"{cam}: malformed Image dropped ({exc}); {self.counts['malformed']} so far")
            return
        if pert.is_clean_for(cam):
            pub.publish(raw)
            self.counts["passthrough"] += 1
            return
        enc = img.encoding
        if enc in ("rgb8", "8UC3"):
            rgb = img.array
        elif enc == "bgr8":
            rgb = img.array[:, :, ::-1]
        else:
            self.counts["unsupported_encoding"] += 1
            self._warn(f"enc/{cam}", f"{cam}: encoding '{enc}' is not perturbed (rgb8/bgr8 only); passed through")
            pub.publish(raw)
            return
        self._shapes[cam] = rgb.shape
        try:
            res = pert.image(cam, rgb, img.stamp.ns, self._masks.get(cam))
        except Exception as exc:  # noqa: BLE001 - never take a camera down
            self._warn(f"op/{cam}", f"{cam}: perturbation failed ({type(exc).__name__}: {exc}); passed clean")
            pub.publish(raw)
            return
        for err in res.errors:
            self._warn(f"operr/{cam}/{err.split(':')[0]}", f"{cam}: {err}; op skipped")
        if res.array is None:
            return
        out = res.array if enc != "bgr8" else res.array[:, :, ::-1]
        stamp = img.stamp if res.stamp_ns == img.stamp.ns else Stamp.from_ns(res.stamp_ns)
        pub.publish(encode_image(np.ascontiguousarray(out), enc, stamp, img.frame_id))
        self.counts["published"] += 1

    def _on_mask(self, cam: str, raw: bytes) -> None:
        try:
            m = decode_image(raw)
        except ImageDecodeError as exc:
            self.counts["malformed"] += 1
            self._warn(f"badmask/{cam}", f"{cam}: malformed background mask dropped ({exc})")
            return
        a = m.array if m.array.ndim == 2 else m.array[:, :, 0]
        self._masks[cam] = a

    def _on_joints(self, arm: str, raw: bytes, pub) -> None:
        pert = self.perturber
        try:
            msg = deserialize_message(raw, JointState)  # ~20 µs: also validates pass-through messages
        except Exception as exc:  # noqa: BLE001 - malformed CDR
            self.counts["malformed"] += 1
            self._warn(f"badjs/{arm}", f"{arm}: malformed JointState dropped ({exc})")
            return
        if pert.state_clean:
            pub.publish(raw)
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        try:
            msg.position = pert.joint_positions(arm, list(msg.name), list(msg.position), stamp_ns)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"jsop/{arm}", f"{arm}: state perturbation failed ({exc}); passed clean")
            pub.publish(raw)
            return
        pub.publish(serialize_message(msg))

    def _on_instruction(self, msg: String) -> None:
        self._instruction = msg.data
        self._republish_instruction()

    def _republish_instruction(self) -> None:
        if self._instruction is None:
            return
        text = self._instruction
        try:
            text = self.perturber.instruction(text)
        except Exception as exc:  # noqa: BLE001
            self._warn("lang", f"instruction rewrite failed ({exc}); passed clean")
        self._pub_instr.publish(String(data=text))

    def _on_episode(self, msg: String) -> None:
        try:
            ev = json.loads(msg.data)
            if not isinstance(ev, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self.counts["malformed"] += 1
            self._warn("badev", f"malformed EPISODE event ignored ({exc})")
            return
        if ev.get("event") != "start":
            return
        ep = ev.get("episode")
        if isinstance(ep, bool) or not isinstance(ep, int) or ep < 0:
            self.counts["malformed"] += 1
            self._warn("badep", f"EPISODE start without a valid 'episode' index ignored: {msg.data[:200]}")
            return
        seed = ev.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            seed = None  # no usable sim seed: per-episode randomness keyed by the index
        t0 = ev.get("stamp_ns")
        t0 = t0 if isinstance(t0, int) and not isinstance(t0, bool) else 0
        self.perturber.start_episode(ep, seed, t0)
        self._publish_active()
        self._republish_instruction()
        for cam, shape in list(self._shapes.items()):
            try:
                self.perturber.warm(cam, shape)
            except Exception as exc:  # noqa: BLE001 - the frame path will meet (and count) it
                self._warn(f"warm/{cam}", f"{cam}: warm-up failed ({exc})")

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        c = dict(self.counts)
        c.update({f"engine_{k}": v for k, v in self.perturber.counts.items()})
        level = (DiagnosticStatus.WARN if c["malformed"] or c["engine_op_errors"] or c["engine_mask_missing"]
                 else DiagnosticStatus.OK)
        st = DiagnosticStatus(level=level, name=f"{NAME}: perturbation", hardware_id=self.get_name(),
                              message=f"profile {self.perturber.profile.ref}",
                              values=[KeyValue(key=k, value=str(v)) for k, v in c.items()])
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


def main(args=None) -> int:
    # One thread: no callback blocks, the GIL serialises the Python part anyway (OpenCV uses its own
    # threads), and rclpy's single-threaded executor costs about half the CPU per message
    # (bench/perturb.py: ~1.5–2 ms vs ~3–4 ms per 480×640 frame on this machine).
    return run_node(PerturbationNode, NAME, args)


if __name__ == "__main__":
    raise SystemExit(main())
