"""``wam-policy operator``: the operator's side of a real-robot evaluation.

Episodes are started, ended and labelled from the keyboard (or a topic) and published as the
contract's EPISODE events (``/sim/episode``, std_msgs/String JSON, ``qos.EVENTS``), so the
recorder keeps them in the bag next to the data and the analysis reads real and sim runs alike.

Keys (single key presses in a terminal; one per line when stdin is not a terminal)::

    s  start an episode (publishes the instruction on /instruction, latched)
    y  end it: success          n  end it: failure
    x  end it: discard (a robot / setup problem, not the policy's fault)
    e  e-stop (latched true on /wam_policy/estop)     r  release the e-stop
    q  finish: a "done" event, then exit              ?  help

Between episodes the arms hold: the e-stop topic is true from start-up until ``s`` and again
after each label, so the scene can be reset by hand (``--no-hold-between`` turns this off).
``e`` engages the e-stop at any time; ``s`` refuses to start while it is engaged.

The same words on ``/wam_policy/operator`` (std_msgs/String: ``start``, ``success``,
``failure``, ``discard``, ``estop``, ``release``, ``done``, or JSON ``{"cmd": "start",
"instruction": "..."}``) drive it from a foot pedal or another UI. An episode running
longer than ``--max-duration-s`` ends by itself with reason ``timeout``.

Events (``end`` reasons are the contract's: ``success``; ``timeout``; ``aborted`` for an
operator-judged failure or a discard, told apart by the extra key ``label``)::

    {"event":"start","episode":i,"task":..,"seed":s,"stamp_ns":t,"instruction":..,"physical":{},
     "camera_every":1,"max_steps":m,"source":"operator"}
    {"event":"end","episode":i,"task":..,"seed":s,"stamp_ns":t,"success":b,"steps":n,"reason":..,
     "label":"success"|"failure"|"discard"|"timeout","max_reward":0|1,"latency_ms":{..},"duration_s":d}
    {"event":"done","episodes":N,"successes":k}

``latency_ms`` summarises ``obs_age_ms`` of the policy's ``/wam_policy/status`` during the episode
(observation stamp → command), the robot's counterpart of the sim's step latency.
"""
from __future__ import annotations

import json
import math
import os
import select
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from wam_common import topics
from wam_common.config import ConfigError

OPERATOR_TOPIC = "/wam_policy/operator"

KEYS = {
    "s": "start", "y": "success", "n": "failure", "x": "discard", "e": "estop", "r": "release",
    "q": "done", "?": "help", "h": "help",
}
WORDS = {"start", "success", "failure", "discard", "estop", "release", "done", "help"}

HELP = ("keys: s start | y success | n failure | x discard | e e-stop | r release e-stop | q quit | ? help")


class OperatorError(ValueError):
    """An action that does not fit the episode state (e.g. labelling with no episode running)."""


def latency_summary(values_ms: list[float]) -> dict:
    v = np.asarray([x for x in values_ms if isinstance(x, (int, float)) and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "p50": None, "p99": None, "n": 0}
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
            "n": int(v.size)}


@dataclass
class EpisodeBook:
    """The episode state machine (pure: events are dicts, time is passed in)."""

    task: str = "aloha_real"
    instruction: str = ""
    seed: int = 0
    first_episode: int = 0
    max_duration_s: float = 120.0
    episode: int | None = None  # running episode index
    started_ns: int = 0
    done_count: int = 0
    successes: int = 0
    finished: bool = False
    _latency: list = field(default_factory=list)
    _next: int | None = None

    def __post_init__(self):
        self._next = self.first_episode

    def next_episode(self, index: int) -> None:
        """The index (and so the seed, ``seed + index``) the next started episode gets: an evaluator
        that resumes or reruns a seed says which one comes next."""
        if self.running:
            raise ValueError("an episode is running: end it before choosing the next one")
        self._next = int(index)

    @property
    def running(self) -> bool:
        return self.episode is not None

    def start(self, now_ns: int, instruction: str | None = None) -> dict:
        if self.finished:
            raise OperatorError("the session is done; start a new operator to run more episodes")
        if self.running:
            raise OperatorError(f"episode {self.episode} is running: label it first (y success, n failure, x discard)")
        if instruction is not None:
            self.instruction = instruction
        self.episode, self.started_ns = self._next, int(now_ns)
        self._next += 1
        self._latency = []
        return {"event": "start", "episode": self.episode, "task": self.task, "seed": self.seed + self.episode,
                "stamp_ns": self.started_ns, "instruction": self.instruction, "physical": {},
                "camera_every": 1, "max_steps": int(round(self.max_duration_s / topics.DT)), "source": "operator"}

    def end(self, now_ns: int, label: str) -> dict:
        if label not in ("success", "failure", "discard", "timeout"):
            raise OperatorError(f"unknown label '{label}' (success, failure, discard, timeout)")
        if not self.running:
            raise OperatorError(f"no episode is running to label '{label}' (s starts one)")
        success = label == "success"
        reason = {"success": "success", "timeout": "timeout"}.get(label, "aborted")
        dur = max(0, int(now_ns) - self.started_ns) / 1e9
        ev = {"event": "end", "episode": self.episode, "task": self.task, "seed": self.seed + self.episode,
              "stamp_ns": int(now_ns), "success": success, "steps": int(dur / topics.DT), "reason": reason,
              "label": label, "max_reward": 1.0 if success else 0.0, "latency_ms": latency_summary(self._latency),
              "duration_s": dur, "source": "operator"}
        if label != "discard":
            self.done_count += 1
            self.successes += int(success)
        self.episode = None
        return ev

    def timed_out(self, now_ns: int) -> bool:
        return self.running and (now_ns - self.started_ns) / 1e9 >= self.max_duration_s

    def done(self) -> dict:
        self.finished = True
        return {"event": "done", "episodes": self.done_count, "successes": self.successes, "source": "operator"}

    def add_status(self, status: dict) -> None:
        if self.running and isinstance(status, dict):
            age = status.get("obs_age_ms")
            if isinstance(age, (int, float)) and math.isfinite(age):
                self._latency.append(float(age))


def parse_command(text: str) -> tuple[str, dict]:
    """A key, a word or a JSON object → (action, extras); OperatorError otherwise."""
    t = text.strip()
    if not t:
        raise OperatorError("empty command")
    if t.startswith("{"):
        try:
            obj = json.loads(t)
        except ValueError as exc:
            raise OperatorError(f"command is not valid JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str):
            raise OperatorError("JSON command needs a string key 'cmd'")
        cmd = obj["cmd"].strip().lower()
        extras = {k: v for k, v in obj.items() if k != "cmd"}
    else:
        cmd, extras = t.lower(), {}
    cmd = KEYS.get(cmd, cmd)
    if cmd not in WORDS:
        raise OperatorError(f"unknown command '{t[:40]}' ({HELP})")
    if "instruction" in extras and not isinstance(extras["instruction"], str):
        raise OperatorError("key 'instruction' must be a string")
    return cmd, extras


class Operator:
    """The ROS side: publishes EPISODE / INSTRUCTION / ESTOP, listens to the operator topic and
    the policy status; :meth:`handle` is the one entry for keys and topic commands."""

    def __init__(self, book: EpisodeBook, domain_id: int | None = None, say=print, hold_between: bool = True):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool, String

        from wam_common import qos

        self.book, self.say = book, say
        self._String, self._Bool = String, Bool
        self.ctx = Context()
        rclpy.init(context=self.ctx, **({"domain_id": domain_id} if domain_id is not None else {}))
        self.node = rclpy.create_node("wam_operator", context=self.ctx)
        self.pub_episode = self.node.create_publisher(String, topics.EPISODE, qos.EVENTS)
        self.pub_instruction = self.node.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
        self.pub_estop = self.node.create_publisher(Bool, topics.ESTOP, qos.LATCHED)
        status_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE)
        self.node.create_subscription(String, topics.POLICY_STATUS, self._on_status, status_qos)
        self.node.create_subscription(String, OPERATOR_TOPIC, self._on_command, 10)
        self.node.create_timer(0.1, self._tick)
        self._listeners = (0, 0)
        self.lock = threading.Lock()
        self.events: list[dict] = []
        # the e-stop topic carries (manual e-stop) or (between episodes, with hold_between): the
        # arms move only while an episode runs and nobody pressed e
        self.hold_between = bool(hold_between)
        self.manual = False
        self.hold = self.hold_between
        self._estop_sent: bool | None = None if self.hold_between else False  # (never release someone else's)
        self._send_estop()
        self.exec = SingleThreadedExecutor(context=self.ctx)
        self.exec.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop.is_set():
            try:
                self.exec.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down
                break

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    @property
    def estop(self) -> bool:
        return self.manual or self.hold

    def _send_estop(self) -> None:
        if self.estop != self._estop_sent:
            self._estop_sent = self.estop
            self.pub_estop.publish(self._Bool(data=self.estop))

    def _end(self, label: str) -> dict:
        ev = self.book.end(self.now_ns(), label)
        self._publish(ev)
        if self.hold_between:
            self.hold = True
            self._send_estop()
        return ev

    def _publish(self, ev: dict) -> None:
        self.events.append(ev)
        self.pub_episode.publish(self._String(data=json.dumps(ev)))

    def handle(self, text: str) -> str:
        """Apply one command; returns what to tell the operator (errors included, never raises)."""
        with self.lock:
            try:
                cmd, extras = parse_command(text)
                return self._apply(cmd, extras)
            except OperatorError as exc:
                return f"! {exc}"

    def _apply(self, cmd: str, extras: dict) -> str:
        b = self.book
        if cmd == "help":
            return HELP
        if cmd == "estop":
            self.manual = True
            self._send_estop()
            return "E-STOP ENGAGED (r releases)"
        if cmd == "release":
            self.manual = False
            self._send_estop()
            return "e-stop released" + (" (the arms hold until s starts an episode)" if self.hold else "")
        if cmd == "start":
            if self.manual:
                raise OperatorError("the e-stop is engaged: r releases it, then s starts the episode")
            ev = b.start(self.now_ns(), extras.get("instruction"))
            if b.instruction:
                self.pub_instruction.publish(self._String(data=b.instruction))
            self._publish(ev)
            self.hold = False
            self._send_estop()
            return (f"episode {ev['episode']} started ({b.task}, up to {b.max_duration_s:g} s)"
                    + (f": \"{b.instruction}\"" if b.instruction else "") + " — y success, n failure, x discard")
        if cmd in ("success", "failure", "discard"):
            ev = self._end(cmd)
            return (f"episode {ev['episode']} ended: {cmd} after {ev['duration_s']:.1f} s "
                    f"({b.successes}/{b.done_count} successes)" + ("; arms hold" if self.hold else ""))
        if cmd == "done":
            if b.running:
                raise OperatorError(f"episode {b.episode} is running: label it first (y, n or x)")
            ev = b.done()
            self._publish(ev)
            return f"done: {ev['successes']}/{ev['episodes']} successes"
        raise OperatorError(f"unknown command '{cmd}'")  # pragma: no cover - parse_command guards

    def _on_command(self, msg) -> None:
        self.say(self.handle(msg.data))

    def _on_status(self, msg) -> None:
        try:
            st = json.loads(msg.data)
        except ValueError:
            return
        with self.lock:
            self.book.add_status(st)

    def _tick(self) -> None:
        n = (self.pub_episode.get_subscription_count(), self.pub_estop.get_subscription_count())
        if n != self._listeners:
            self._listeners = n
            self.say(f"subscribers: {topics.EPISODE} {n[0]}, {topics.ESTOP} {n[1]}"
                     + ("" if n[0] else " (no recorder yet: events wait for it, latched)"))
        self._check_timeout()

    def _check_timeout(self) -> None:
        with self.lock:
            if self.book.timed_out(self.now_ns()):
                ev = self._end("timeout")
                self.say(f"episode {ev['episode']} ended: timeout after {ev['duration_s']:.1f} s")

    def wait_delivered(self, timeout: float = 2.0) -> None:
        """Give late subscribers (the recorder) a moment to fetch the last events before exiting."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.pub_episode.get_subscription_count() == 0:
            time.sleep(0.05)
        if self.pub_episode.get_subscription_count():
            from rclpy.duration import Duration

            self.pub_episode.wait_for_all_acked(Duration(seconds=max(0.1, end - time.monotonic())))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.exec.shutdown(timeout_sec=0)
        self.node.destroy_node()
        self.ctx.try_shutdown()


# ---------------------------------------------------------------------------------------------
# keyboard


def _keys(stream):
    """Yield commands from a terminal (single key presses) or a pipe (one per line)."""
    if stream.isatty():
        import termios
        import tty

        fd = stream.fileno()
        old = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while True:
                r, _, _ = select.select([fd], [], [], 0.2)
                if r:
                    # the fd itself, not the text stream: its buffer would hide keys typed together from select()
                    data = os.read(fd, 64)
                    if not data:
                        return
                    for ch in data.decode("utf-8", errors="ignore"):
                        if ch.strip():
                            yield ch
                else:
                    yield None  # a tick, so the caller can notice a topic-driven "done"
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
    else:
        for line in stream:
            if line.strip():
                yield line.strip()


def add_arguments(p) -> None:
    p.add_argument("--task", default="aloha_real", help="task name written into the episode events")
    p.add_argument("--instruction", default="", help="language instruction published on /instruction at each start")
    p.add_argument("--seed", type=int, default=0, help="base seed: episode i gets seed + i (default 0)")
    p.add_argument("--first-episode", type=int, default=0, help="index of the first episode (to continue a session)")
    p.add_argument("--max-duration-s", type=float, default=120.0, help="an episode longer than this ends as timeout")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID)")
    p.add_argument("--no-keyboard", action="store_true", help=f"only the {OPERATOR_TOPIC} topic drives episodes")
    p.add_argument("--no-hold-between", action="store_true",
                   help="let the arms move between episodes (default: the e-stop topic holds them until s)")


def run(args) -> int:
    if not args.max_duration_s > 0:
        raise ConfigError("--max-duration-s must be > 0")
    if not args.task.strip():
        raise ConfigError("--task must not be empty")
    book = EpisodeBook(task=args.task, instruction=args.instruction, seed=args.seed,
                       first_episode=args.first_episode, max_duration_s=args.max_duration_s)
    say = lambda s: print(s, flush=True)  # noqa: E731
    op = Operator(book, args.domain_id, say, hold_between=not args.no_hold_between)
    say(f"operator ready ({args.task}); {HELP}; also commands on {OPERATOR_TOPIC}")
    try:
        if args.no_keyboard:
            while not book.finished:
                time.sleep(0.1)
        else:
            for key in _keys(sys.stdin):
                if key is not None:
                    say(op.handle(key))
                if book.finished:
                    break
            else:
                if not book.finished:  # stdin closed: close the session cleanly
                    if book.running:
                        say(op.handle("discard"))
                    say(op.handle("done"))
        op.wait_delivered()
    except KeyboardInterrupt:
        with op.lock:
            if book.running:
                op._end("discard")
            if not book.finished:
                op._publish(book.done())
        op.wait_delivered()
    finally:
        op.close()
    return 0
