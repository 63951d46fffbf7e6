"""``wam-policy preflight``: checks before arming a real robot, as a pass/fail table.

Listens to the live graph for ``--duration`` seconds and checks:

- **topics**: every camera (``/<cam>/camera/color/image_rect_raw``) and follower joint-state
  topic is published, at ≥ ``--min-rate-fraction`` of its expected rate, with fresh header
  stamps (not older than ``--stale-s`` against ROS time), cameras as 640×480 rgb8 and not
  frozen (identical consecutive frames);
- **camera sync**: the cameras' frames pair up within ``--slop-ms``;
- **joint limits**: the newest joint state of each arm is finite and inside the vx300s limits
  (``wam_common.aloha.ARM_LOWER/ARM_UPPER``) and the gripper inside 0..1;
- **policy**: ``/wam_policy/status`` arrives and its ``infer_ms`` stays within
  ``--latency-budget-ms`` — or, with ``--load-backend``, the graph's backend is built here and
  answers observations made from the live frames within the budget;
- **recorder**: the graph's recorder node runs and subscribes to the checked topics
  (``--no-recorder`` skips);
- **e-stop**: some node subscribes to ``/wam_policy/estop`` (who would stop the arms) and it is
  not engaged.

Exit status 0 when every check passes, 1 otherwise (2 for a configuration error). Expected
rates, cameras, slop and the backend come from the graph description (``--graph``, default
``aloha``), overridable per flag. The checks are pure functions over what was heard
(:func:`check_topic`, :func:`check_sync`, :func:`check_joint_limits`, :func:`check_policy_status`,
:func:`check_estop`), so each failure mode has one clear message.
"""
from __future__ import annotations

import json
import math
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from wam_common import aloha, topics
from wam_common.config import ConfigError

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Check:
    name: str
    target: str
    measured: str
    result: str  # PASS | FAIL | SKIP
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.result != FAIL


@dataclass
class TopicSamples:
    """What was heard on one topic: receive times and header stamps (ns), and a few extras."""

    topic: str
    recv_ns: list[int] = field(default_factory=list)
    stamp_ns: list[int] = field(default_factory=list)
    digests: list[int] = field(default_factory=list)  # cameras: content digest per frame
    formats: set = field(default_factory=set)  # cameras: (width, height, encoding)
    errors: list[str] = field(default_factory=list)  # undecodable messages
    publishers: int = 0


# ---------------------------------------------------------------------------------------------
# pure checks


def _rate(recv_ns: list[int]) -> float:
    if len(recv_ns) < 2:
        return 0.0
    span = (recv_ns[-1] - recv_ns[0]) / 1e9
    return (len(recv_ns) - 1) / span if span > 0 else float("inf")


def check_topic(s: TopicSamples, expected_hz: float, now_ns: int, stale_s: float = 0.5,
                min_fraction: float = 0.8, image: tuple[int, int, str] | None = None) -> Check:
    """Present, at rate, fresh (and, for images, the expected format and not frozen)."""
    want = max(0.0, expected_hz * min_fraction)
    target = f">= {want:.1f} Hz, age <= {stale_s * 1e3:.0f} ms"
    if image:
        target += f", {image[0]}x{image[1]} {image[2]}"
    name = f"topic {s.topic}"
    if not s.recv_ns:
        if s.publishers == 0:
            return Check(name, target, "no publisher", FAIL, f"missing: nobody publishes {s.topic}")
        extra = f" ({s.errors[-1]})" if s.errors else ""
        return Check(name, target, f"{s.publishers} publisher(s), 0 msgs", FAIL,
                     f"silent: {s.topic} has {s.publishers} publisher(s) but no message arrived{extra}")
    hz = _rate(s.recv_ns)
    recv_age = (now_ns - s.recv_ns[-1]) / 1e9
    stamp_age = (now_ns - s.stamp_ns[-1]) / 1e9 if s.stamp_ns else float("nan")
    measured = f"{hz:.1f} Hz, age {stamp_age * 1e3:.0f} ms"
    if recv_age > stale_s:
        return Check(name, target, measured, FAIL,
                     f"stale: the last message on {s.topic} arrived {recv_age:.2f} s ago (publisher stopped?)")
    if not math.isnan(stamp_age) and abs(stamp_age) > stale_s:
        what = "behind" if stamp_age > 0 else "ahead of"
        return Check(name, target, measured, FAIL,
                     f"stale: the newest header stamp on {s.topic} is {abs(stamp_age):.2f} s {what} ROS time "
                     "(frozen source, or clocks not synced?)")
    if hz < want:
        return Check(name, target, measured, FAIL,
                     f"rate: {s.topic} at {hz:.1f} Hz, expected {expected_hz:g} Hz (>= {want:.1f})")
    if image:
        fmt = sorted(s.formats)
        if fmt != [tuple(image)]:
            got = ", ".join(f"{w}x{h} {e}" for w, h, e in fmt) or "undecodable"
            return Check(name, target, measured, FAIL,
                         f"format: {s.topic} carries {got}, expected {image[0]}x{image[1]} {image[2]}")
        if len(s.digests) >= 3 and len(set(s.digests)) == 1:
            return Check(name, target, measured, FAIL,
                         f"frozen: all {len(s.digests)} frames on {s.topic} are identical")
    if s.errors:
        return Check(name, target, measured, FAIL, f"bad messages on {s.topic}: {s.errors[-1]}")
    return Check(name, target, measured, PASS)


def check_sync(stamps: dict[str, list[int]], slop_s: float) -> Check:
    """Frames of all cameras pair up within the slop (median over the reference camera's frames)."""
    target = f"median spread <= {slop_s * 1e3:.0f} ms"
    cams = [c for c, v in stamps.items() if v]
    missing = [c for c, v in stamps.items() if not v]
    if missing:
        return Check("cameras synced", target, "-", FAIL, f"cannot sync: no frames from {', '.join(missing)}")
    if len(cams) < 2:
        return Check("cameras synced", target, "-", SKIP, "fewer than two cameras")
    ref, others = cams[0], cams[1:]
    arrays = {c: np.sort(np.asarray(stamps[c], dtype=np.int64)) for c in cams}
    spreads = []
    for t in arrays[ref]:
        group = [t]
        for c in others:
            a = arrays[c]
            i = int(np.searchsorted(a, t))
            cand = [a[j] for j in (i - 1, i) if 0 <= j < len(a)]
            group.append(min(cand, key=lambda x: abs(int(x) - int(t))))
        spreads.append((max(group) - min(group)) / 1e6)
    med, worst = float(np.median(spreads)), float(np.max(spreads))
    measured = f"median {med:.1f} ms, max {worst:.1f} ms"
    if med > slop_s * 1e3:
        return Check("cameras synced", target, measured, FAIL,
                     f"out of sync: camera frames are {med:.1f} ms apart (median), slop {slop_s * 1e3:.0f} ms")
    return Check("cameras synced", target, measured, PASS)


def check_joint_limits(arm: str, names: list[str] | None, positions: list[float] | None,
                       margin: float = 0.0, gripper_tolerance: float = 0.1) -> Check:
    name = f"joint limits {arm}"
    target = "vx300s limits, gripper 0..1"
    if names is None:
        return Check(name, target, "-", FAIL, f"no joint state from {topics.joint_state_topic(arm)}")
    try:
        s7 = aloha.arm_state_from_joint_state(list(names), list(positions))
    except (ValueError, IndexError) as exc:
        return Check(name, target, "-", FAIL, f"{arm}: bad joint state: {exc}")
    measured = "[" + ", ".join(f"{v:.2f}" for v in s7) + "]"
    if not np.all(np.isfinite(s7)):
        bad = [(topics.JOINTS_PER_ARM[i]) for i in np.flatnonzero(~np.isfinite(s7))]
        return Check(name, target, measured, FAIL, f"{arm}: non-finite joint position(s): {', '.join(bad)}")
    lo, hi = aloha.ARM_LOWER + margin, aloha.ARM_UPPER - margin
    for j, joint in enumerate(topics.ARM_JOINTS):
        if not lo[j] <= s7[j] <= hi[j]:
            return Check(name, target, measured, FAIL,
                         f"out of limits: {arm} {joint} = {s7[j]:.3f} rad, limits [{lo[j]:.3f}, {hi[j]:.3f}]")
    if not -gripper_tolerance <= s7[6] <= 1 + gripper_tolerance:
        return Check(name, target, measured, FAIL,
                     f"out of limits: {arm} gripper = {s7[6]:.3f} (normalised), expected 0..1")
    return Check(name, target, measured, PASS)


def check_policy_status(payloads: list[str], budget_ms: float, expected_hz: float | None = None,
                        recv_ns: list[int] | None = None, min_fraction: float = 0.5) -> Check:
    """POLICY_STATUS JSON: arriving, and inference times within the latency budget."""
    name = f"policy answers ({topics.POLICY_STATUS})"
    target = f"infer_ms <= {budget_ms:.0f}"
    if not payloads:
        return Check(name, target, "no status", FAIL,
                     f"missing: no {topics.POLICY_STATUS} message (is wam_policy_node running?)")
    infer, holds, bad = {}, defaultdict(int), 0
    for raw in payloads:
        try:
            st = json.loads(raw)
            if not isinstance(st, dict):
                raise ValueError("not an object")
        except ValueError:
            bad += 1
            continue
        ms = st.get("infer_ms")
        if isinstance(ms, (int, float)) and math.isfinite(ms):
            infer[(st.get("chunk_stamp_ns"), st.get("chunk_id"), ms)] = float(ms)
        if st.get("hold"):
            holds[str(st["hold"])] += 1
    hz = _rate(recv_ns or [])
    hold_txt = ", ".join(f"{k} x{v}" for k, v in sorted(holds.items()))
    if not infer:
        return Check(name, target, f"{len(payloads)} status, no infer_ms", FAIL,
                     "no inference finished yet" + (f" (holds: {hold_txt})" if hold_txt else ""))
    vals = np.array(list(infer.values()))
    p50, worst = float(np.median(vals)), float(vals.max())
    measured = f"p50 {p50:.0f} ms, max {worst:.0f} ms, n {len(vals)}"
    if worst > budget_ms:
        return Check(name, target, measured, FAIL,
                     f"too slow: inference took up to {worst:.0f} ms (p50 {p50:.0f}), budget {budget_ms:.0f} ms")
    if expected_hz and recv_ns and hz < expected_hz * min_fraction:
        return Check(name, target, measured, FAIL,
                     f"rate: {topics.POLICY_STATUS} at {hz:.1f} Hz, expected {expected_hz:g} Hz")
    if bad:
        return Check(name, target, measured, FAIL, f"{bad} status message(s) are not JSON objects")
    return Check(name, target, measured, PASS, f"holds: {hold_txt}" if hold_txt else "")


def check_backend(latencies_ms: list[float], budget_ms: float, error: str | None = None, label: str = "") -> Check:
    name = f"policy loads and answers{f' ({label})' if label else ''}"
    target = f"infer_ms <= {budget_ms:.0f}"
    if error:
        return Check(name, target, "-", FAIL, error)
    if not latencies_ms:
        return Check(name, target, "-", FAIL, "no inference ran")
    worst, p50 = max(latencies_ms), float(np.median(latencies_ms))
    measured = f"p50 {p50:.0f} ms, max {worst:.0f} ms, n {len(latencies_ms)}"
    if worst > budget_ms:
        return Check(name, target, measured, FAIL,
                     f"too slow: inference took up to {worst:.0f} ms (p50 {p50:.0f}), budget {budget_ms:.0f} ms")
    return Check(name, target, measured, PASS)


def check_recorder(name: str, running: bool, missing_topics: list[str]) -> Check:
    """The graph's recorder node is up and subscribed to the checked sensor topics."""
    target = f"node '{name}' records the sensors"
    if not running:
        return Check("recorder", target, "not running", FAIL,
                     f"not recording: no node '{name}' in the graph, so this run would leave no bag "
                     "(start the recorder, or pass --no-recorder)")
    if missing_topics:
        return Check("recorder", target, f"{len(missing_topics)} topic(s) not subscribed", FAIL,
                     f"not recording {', '.join(missing_topics)}: '{name}' has no subscription on it")
    return Check("recorder", target, "recording", PASS)


def check_estop(subscribers: list[str], engaged: bool | None, services: list[str] | None = None) -> Check:
    name = f"e-stop ({topics.ESTOP})"
    target = "a subscriber, not engaged"
    measured = ", ".join(subscribers) if subscribers else "no subscriber"
    if services:
        measured += "; services " + ", ".join(services)
    if not subscribers:
        return Check(name, target, measured, FAIL,
                     f"unreachable: no node subscribes to {topics.ESTOP}, so nothing would stop the arms "
                     "(start wam_policy_node / interbotix_adapter)")
    if engaged:
        return Check(name, target, measured + ", ENGAGED", FAIL,
                     f"engaged: {topics.ESTOP} is true; release it (publish false) before arming "
                     "(wam-policy operator holds the arms this way between episodes: s releases them)")
    return Check(name, target, measured + (", released" if engaged is False else ""), PASS)


def format_table(checks: list[Check]) -> str:
    cols = ("check", "target", "measured", "result")
    rows = [(c.name, c.target, c.measured, c.result) for c in checks]
    widths = [max(len(cols[i]), *(len(r[i]) for r in rows)) if rows else len(cols[i]) for i in range(4)]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(cols), line(tuple("-" * w for w in widths))] + [line(r) for r in rows]
    notes = [f"  {c.result}: {c.name}: {c.message}" for c in checks if c.message]
    failed = sum(c.result == FAIL for c in checks)
    out += [""] + notes if notes else []
    out.append(f"\npreflight: {'PASS' if not failed else f'FAIL ({failed} of {len(checks)} checks failed)'}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# listening to the graph


@dataclass
class Plan:
    cameras: list[str]
    arms: list[str]
    camera_hz: float
    joint_hz: float
    policy_hz: float | None
    width: int
    height: int
    slop_s: float
    stale_s: float
    min_fraction: float
    budget_ms: float
    duration_s: float
    discovery_s: float
    check_policy: bool
    load_backend: bool
    recorder: str = ""  # the graph's recorder node name ("" → not checked)
    backend_cfg: dict | None = None  # wam_policy_node's parameters (for --load-backend)
    prefix: str = ""  # "" raw topics, "/perturbed" for what the policy reads


def plan_from_args(args) -> Plan:
    from wam_common.graph import load_graph, parse_set

    cams, cam_hz, width, height, slop, policy_hz, pol_cfg = list(topics.CAMERAS), 30.0, 640, 480, 0.025, 50.0, None
    recorder = ""
    check_policy = True
    if args.graph:
        g = load_graph(args.graph, parse_set(args.set))
        rs = next((n for n in g.nodes if n.executable == "realsense_cameras"), None)
        if rs is not None:
            p = rs.parameters
            cam_hz = float(p.get("fps", cam_hz))
            width, height = int(p.get("width", width)), int(p.get("height", height))
            serials = p.get("serials", {}) or {}
            cams += [c for c in topics.OPTIONAL_CAMERAS if str(serials.get(c, "") or "").strip()]
        rec = next((n for n in g.nodes if n.executable == "recorder"), None)
        recorder = rec.name if rec is not None and not args.no_recorder else ""
        pol = next((n for n in g.nodes if n.executable == "wam_policy_node"), None)
        if pol is not None:
            pol_cfg = pol.parameters
            slop = float((pol.parameters.get("sync") or {}).get("slop_s", slop))
            policy_hz = float(pol.parameters.get("rate_hz", policy_hz)) / max(1, int(pol.parameters.get("status_every", 1)))
        else:
            check_policy = False
    if args.cameras:
        cams = [c.strip() for c in args.cameras.split(",") if c.strip()]
        unknown = [c for c in cams if c not in topics.CAMERAS + topics.OPTIONAL_CAMERAS]
        if unknown:
            raise ConfigError(f"--cameras: unknown camera '{unknown[0]}' (known: "
                              f"{', '.join(topics.CAMERAS + topics.OPTIONAL_CAMERAS)})")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for a in arms:
        if a not in topics.ARMS:
            raise ConfigError(f"--arms: unknown arm '{a}' (known: left, right)")
    return Plan(
        cameras=cams, arms=arms,
        camera_hz=args.camera_hz if args.camera_hz else cam_hz,
        joint_hz=args.joint_hz, policy_hz=policy_hz,
        width=width, height=height,
        slop_s=args.slop_ms / 1e3 if args.slop_ms else slop,
        stale_s=args.stale_s, min_fraction=args.min_rate_fraction,
        budget_ms=args.latency_budget_ms, duration_s=args.duration, discovery_s=args.discovery_s,
        check_policy=check_policy and not args.no_policy, load_backend=args.load_backend, recorder=recorder,
        backend_cfg=pol_cfg, prefix=topics.PERTURBED_PREFIX if args.perturbed else "",
    )


class Listener:
    """A node in its own rclpy context that records the topics a Plan checks."""

    def __init__(self, plan: Plan, domain_id: int | None = None):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, String

        from wam_common import qos

        self.plan = plan
        self.ctx = Context()
        kw = {"domain_id": domain_id} if domain_id is not None else {}
        rclpy.init(context=self.ctx, **kw)
        self.node = rclpy.create_node("wam_preflight", context=self.ctx)
        self.exec = SingleThreadedExecutor(context=self.ctx)
        self.exec.add_node(self.node)
        self.lock = threading.Lock()
        self.samples: dict[str, TopicSamples] = {}
        self.frames: dict[str, np.ndarray] = {}
        self.joints: dict[str, tuple[list[str], list[float]]] = {}
        self.status: list[str] = []
        self.status_recv: list[int] = []
        self.estop: bool | None = None
        self.instruction = ""
        best_effort = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                                 reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
        status_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE)
        self.camera_topics = {c: plan.prefix + topics.camera_topic(c) for c in plan.cameras}
        self.joint_topics = {a: plan.prefix + topics.joint_state_topic(a) for a in plan.arms}
        for cam, t in self.camera_topics.items():
            self.samples[t] = TopicSamples(t)
            self.node.create_subscription(Image, t, lambda raw, cam=cam, t=t: self._on_image(cam, t, raw),
                                          best_effort, raw=True)
        for arm, t in self.joint_topics.items():
            self.samples[t] = TopicSamples(t)
            self.node.create_subscription(JointState, t, lambda msg, arm=arm, t=t: self._on_joints(arm, t, msg),
                                          best_effort)
        if plan.check_policy:
            self.node.create_subscription(String, topics.POLICY_STATUS, self._on_status, status_qos)
        self.node.create_subscription(Bool, topics.ESTOP, self._on_estop, qos.LATCHED)
        self.node.create_subscription(String, topics.INSTRUCTION, self._on_instruction, qos.LATCHED)
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _spin(self):
        while not self._stop:
            try:
                self.exec.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down
                break

    def _on_image(self, cam, t, raw):
        from wam_common.imageio import ImageDecodeError, decode_image

        now = self.now_ns()
        s = self.samples[t]
        try:
            img = decode_image(raw)
        except ImageDecodeError as exc:
            with self.lock:
                s.errors.append(f"undecodable image: {exc}")
            return
        arr = img.array
        digest = zlib.crc32(np.ascontiguousarray(arr).reshape(-1)[::1031].tobytes())
        with self.lock:
            s.recv_ns.append(now)
            s.stamp_ns.append(img.stamp.ns)
            s.digests.append(digest)
            s.formats.add((arr.shape[1], arr.shape[0], img.encoding))
            if self.plan.load_backend:
                self.frames[cam] = np.array(arr) if img.encoding == "rgb8" else None

    def _on_joints(self, arm, t, msg):
        now = self.now_ns()
        s = self.samples[t]
        with self.lock:
            s.recv_ns.append(now)
            s.stamp_ns.append(int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec))
            self.joints[arm] = (list(msg.name), list(msg.position))

    def _on_status(self, msg):
        with self.lock:
            self.status.append(msg.data)
            self.status_recv.append(self.now_ns())

    def _on_estop(self, msg):
        self.estop = bool(msg.data)

    def _on_instruction(self, msg):
        self.instruction = msg.data

    def graph_info(self) -> None:
        for t, s in self.samples.items():
            s.publishers = self.node.count_publishers(t)

    def discovered(self) -> bool:
        n = self.node
        ok = all(n.count_publishers(t) > 0 for t in self.samples)
        if self.plan.check_policy:
            ok = ok and n.count_publishers(topics.POLICY_STATUS) > 0
        if self.plan.recorder:
            ok = ok and self.recorder_state(self.plan.recorder) == (True, [])
        return ok and bool(self.estop_subscribers())

    def recorder_state(self, name: str) -> tuple[bool, list[str]]:
        """(is the node running, checked topics it does not subscribe to)."""
        running = name in self.node.get_node_names()
        missing = [t for t in self.samples
                   if name not in {i.node_name for i in self.node.get_subscriptions_info_by_topic(t)}]
        return running, missing

    def estop_services(self) -> list[str]:
        """``<node>/estop`` services (std_srvs/SetBool), e.g. ``/wam_policy_node/estop``."""
        return sorted(n for n, types in self.node.get_service_names_and_types()
                      if n.endswith("/estop") and "std_srvs/srv/SetBool" in types)

    def estop_subscribers(self) -> list[str]:
        infos = self.node.get_subscriptions_info_by_topic(topics.ESTOP)
        return sorted({i.node_name for i in infos if i.node_name != self.node.get_name()})

    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        self.exec.shutdown(timeout_sec=0)
        self.node.destroy_node()
        self.ctx.try_shutdown()


def backend_latencies(plan: Plan, frames: dict, joints: dict, prompt: str, n: int = 3) -> tuple[list[float], str | None, str]:
    """Build the graph's backend here and time ``n`` inferences on observations from live data."""
    cfg = dict(plan.backend_cfg or {})
    bcfg_all = dict(cfg.get("backend") or {})
    btype = str(bcfg_all.get("type", "expert"))
    try:
        from wam_policy_node import backends
        from wam_policy_node.observation import ObservationMap
        from wam_policy_node.observation import DEFAULTS as OBS_DEFAULTS
    except ImportError as exc:
        return [], f"cannot import wam_policy_node ({exc})", btype
    bcfg = bcfg_all.get(btype) if isinstance(bcfg_all.get(btype), dict) else {}
    try:
        backend = backends.make_backend(btype, bcfg)
    except Exception as exc:  # noqa: BLE001 - report any load failure as the check's message
        return [], f"backend '{btype}' failed to load: {exc}", btype
    try:
        if getattr(backend, "needs_privileged", False):
            return [], f"backend '{btype}' needs the sim's privileged state; it cannot run on a robot", btype
        obs_cfg = dict(OBS_DEFAULTS)
        obs_cfg.update(cfg.get("observation") or {})
        obs_cfg.pop("expected_size", None)
        omap = ObservationMap.from_config(obs_cfg)
        state = np.zeros(topics.STATE_DIM)
        for k, arm in enumerate(topics.ARMS):
            if arm in joints:
                try:
                    state[7 * k:7 * k + 7] = aloha.arm_state_from_joint_state(*joints[arm])
                except ValueError as exc:
                    return [], f"bad joint state for the observation: {exc}", btype
        missing = [c for c in omap.cameras if frames.get(c) is None] if backend.needs_images else []
        if missing:
            return [], f"no rgb8 frame from {', '.join(missing)} to build an observation", btype
        from wam_policy_node.backends import Observation

        images = omap.images({c: frames[c] for c in omap.cameras}) if backend.needs_images else {}
        out = []
        for i in range(n):
            obs = Observation(stamp_ns=time.time_ns(), images=images, state=state.copy(), prompt=prompt, step=i)
            t0 = time.perf_counter()
            backend.infer(obs)
            out.append((time.perf_counter() - t0) * 1e3)
        return out, None, btype
    except Exception as exc:  # noqa: BLE001
        return [], f"backend '{btype}' failed to answer: {type(exc).__name__}: {exc}", btype
    finally:
        try:
            backend.close()
        except Exception:  # noqa: BLE001
            pass


def run_checks(plan: Plan, domain_id: int | None = None, prompt: str = "") -> list[Check]:
    listener = Listener(plan, domain_id)
    try:
        # DDS discovery first (can take seconds on a busy host); the window starts once every
        # checked topic has a publisher, or after discovery_s with what is there
        deadline = time.monotonic() + plan.discovery_s
        while time.monotonic() < deadline and not listener.discovered():
            time.sleep(0.05)
        time.sleep(plan.duration_s)
        listener.graph_info()
        now = listener.now_ns()
        with listener.lock:
            samples = {t: TopicSamples(s.topic, list(s.recv_ns), list(s.stamp_ns), list(s.digests), set(s.formats),
                                       list(s.errors), s.publishers) for t, s in listener.samples.items()}
            joints = dict(listener.joints)
            frames = dict(listener.frames)
            status, status_recv = list(listener.status), list(listener.status_recv)
        subs = listener.estop_subscribers()
        services = listener.estop_services()
        rec_state = listener.recorder_state(plan.recorder) if plan.recorder else (True, [])
        estop = listener.estop
        instruction = listener.instruction
    finally:
        listener.close()
    checks = []
    for cam, t in {c: plan.prefix + topics.camera_topic(c) for c in plan.cameras}.items():
        checks.append(check_topic(samples[t], plan.camera_hz, now, plan.stale_s, plan.min_fraction,
                                  image=(plan.width, plan.height, "rgb8")))
    for arm in plan.arms:
        t = plan.prefix + topics.joint_state_topic(arm)
        checks.append(check_topic(samples[t], plan.joint_hz, now, plan.stale_s, plan.min_fraction))
    if len(plan.cameras) >= 2:
        # sync over the last second of frames
        recent = {c: [st for st, rv in zip(samples[plan.prefix + topics.camera_topic(c)].stamp_ns,
                                          samples[plan.prefix + topics.camera_topic(c)].recv_ns) if rv >= now - 1_000_000_000]
                  for c in plan.cameras}
        checks.append(check_sync(recent, plan.slop_s))
    for arm in plan.arms:
        names, pos = joints.get(arm, (None, None))
        checks.append(check_joint_limits(arm, names, pos))
    if plan.check_policy:
        checks.append(check_policy_status(status, plan.budget_ms, plan.policy_hz, status_recv))
    if plan.load_backend:
        lat, err, label = backend_latencies(plan, frames, joints, prompt or instruction)
        checks.append(check_backend(lat, plan.budget_ms, err, label))
    if plan.recorder:
        checks.append(check_recorder(plan.recorder, *rec_state))
    checks.append(check_estop(subs, estop, services))
    return checks


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(p) -> None:
    p.add_argument("--graph", default="aloha", help="graph description for expected cameras, rates, slop, backend "
                   "(default: aloha; '' → built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.KEY=VALUE", help="override the graph, as in `up`")
    p.add_argument("--duration", type=float, default=3.0, help="seconds to listen (default 3)")
    p.add_argument("--discovery-s", type=float, default=3.0,
                   help="longest wait for the graph's publishers to be discovered before listening (3)")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID)")
    p.add_argument("--cameras", default="", help="comma-separated cameras (default: from the graph)")
    p.add_argument("--arms", default="left,right", help="follower arms to check (default: left,right)")
    p.add_argument("--camera-hz", type=float, default=0.0, help="expected camera rate (default: the graph's fps)")
    p.add_argument("--joint-hz", type=float, default=50.0, help="expected joint-state rate (default 50)")
    p.add_argument("--min-rate-fraction", type=float, default=0.8, help="pass at >= this fraction of a rate (0.8)")
    p.add_argument("--stale-s", type=float, default=0.5, help="newest message older than this → stale (0.5)")
    p.add_argument("--slop-ms", type=float, default=0.0, help="camera sync slop (default: the policy's sync.slop_s)")
    p.add_argument("--latency-budget-ms", type=float, default=500.0, help="policy inference budget (500)")
    p.add_argument("--no-policy", action="store_true", help="skip the policy status check")
    p.add_argument("--no-recorder", action="store_true", help="do not require the graph's recorder to be running")
    p.add_argument("--load-backend", action="store_true",
                   help="also build the graph's policy backend here and time it on live observations")
    p.add_argument("--prompt", default="", help="instruction for --load-backend (default: the latched /instruction)")
    p.add_argument("--perturbed", action="store_true", help="check the /perturbed topics the policy reads")
    p.add_argument("--json", default="", metavar="PATH", help="also write the results as JSON")


def run(args) -> int:
    if args.duration <= 0:
        raise ConfigError("--duration must be > 0")
    plan = plan_from_args(args)
    checks = run_checks(plan, args.domain_id, args.prompt)
    print(format_table(checks), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}, fh, indent=1)
    return 0 if all(c.ok for c in checks) else 1
