"""Mutation fuzzing of every decoder that takes outside bytes; prints one JSON object.

Each target is the code a node or tool runs on bytes it did not make, called as they call it:

- ``image_raw``: sensor_msgs/Image CDR → ``imageio.decode_image`` → ``to_rgb`` → the policy node's
  ``FrameSizeGate``; clean: ``ImageDecodeError``, ``FrameSizeError``;
- ``image_compressed``: sensor_msgs/CompressedImage CDR → ``decode_compressed`` → ``compressed_to_array``
  (jpeg/png, OpenCV); clean: ``ImageDecodeError``;
- ``joint_state``: sensor_msgs/JointState CDR → rclpy's deserializer (what a subscription runs) →
  ``aloha.arm_state_from_joint_state``; clean: rclpy's ``RMWError`` ("failed to deserialize ..."), ``ValueError``;
- ``instruction``: std_msgs/String CDR (/instruction) → rclpy's deserializer and ``bag.reader.string``
  (analyze); clean: ``RMWError``, ``ValueError`` (``UnicodeDecodeError`` included);
- ``episode_event``: std_msgs/String CDR (/sim/episode) → deserializer → ``events.parse_episode_event`` →
  ``FrameSizeGate.announce``; clean: ``RMWError``, ``EventError``;
- ``policy_request``: a websocket frame → ``server.read_request`` (msgpack-numpy → Observation); clean:
  ``RequestError``;
- ``policy_reply``: a server's reply → ``backends.openpi.read_reply``; clean: ``BackendError``;
- ``graph_yaml`` / ``policy_yaml`` / ``suite_yaml``: a YAML file → ``graph.load_graph`` /
  ``policies.load_policy_config`` / ``suites.load_suite``; clean: ``ConfigError``;
- ``bag``: an MCAP bag directory → ``analysis.episodes.analyze_bag`` (repair, rosbags, decoding); clean:
  ``BagReadError``.

A clean rejection must also carry a message (an exception of a clean type with an empty message counts
as a crash).

Mutations (seeded, ``random.Random(seed)`` per target): bit flips, byte sets to boundary values,
truncation, splicing two seeds (of this target or another target: type confusion at the byte level),
chunk insert/delete/duplicate, a 32-bit word set to a huge size (0x7fffffff, 0xffffffff, 2^28, ...);
for msgpack/JSON/YAML inputs also structural mutations on the parsed value (a field replaced by another
type, a huge array header, deep nesting) re-encoded. Outcomes: ``accepted``, ``rejected`` (a clean
exception, with its message), ``crash`` (any other exception: listed with its traceback tail) or
``hang`` (over ``--timeout`` seconds of CPU time, ``--file-timeout`` for the YAML and bag targets, or
``WALL_FACTOR`` times that of wall time; the timers' signals interrupt Python code, and a C call that
returns late counts too).

    PYTHONPATH=. .venv/bin/python bench/fuzz.py [--total 100000] [--seed 0] [--timeout 2]
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# share of --total per target (bags and YAML files cost milliseconds each, the codecs microseconds)
SHARES = {"image_raw": 0.23, "image_compressed": 0.10, "joint_state": 0.16, "instruction": 0.06,
          "episode_event": 0.14, "policy_request": 0.17, "policy_reply": 0.08, "graph_yaml": 0.015,
          "policy_yaml": 0.015, "suite_yaml": 0.015, "bag": 0.01}
WALL_FACTOR = 15  # wall-time backstop: this many timeouts (the 2-core machine ran at load ~20)
HUGE = (0x7FFFFFFF, 0xFFFFFFFF, 1 << 28, 1 << 31, 0x10000, 0xFFFF)


class Hang(BaseException):
    """Raised by the timers (a BaseException: no ``except Exception`` of the code under test swallows it)."""


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    run: Callable[[bytes], Any]
    clean: tuple[type[BaseException], ...]
    structured: str = ""  # "msgpack" | "json_cdr" | "yaml": also mutate the parsed value
    slow: bool = False  # a file through pure-Python parsers (YAML, rosbags): --file-timeout applies
    quiet: bool = False  # silence C libraries' stderr (libjpeg warnings) while it runs
    counts: dict = field(default_factory=lambda: {"accepted": 0, "rejected": 0, "crash": 0, "hang": 0})
    crashes: list = field(default_factory=list)
    messages: dict = field(default_factory=dict)  # rejection message (digits blanked) → count
    max_ms: float = 0.0  # wall
    max_cpu_ms: float = 0.0


# -- seeds ----------------------------------------------------------------------------------------
def _cdr(msg) -> bytes:
    from rclpy.serialization import serialize_message

    return bytes(serialize_message(msg))


def _string_cdr(text: str) -> bytes:
    from std_msgs.msg import String

    return _cdr(String(data=text))


def image_seeds() -> list[bytes]:
    from wam_common.imageio import Stamp, encode_image

    rng = np.random.default_rng(0)
    st = Stamp(12, 345_000_000)
    out = [encode_image(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), enc, st, "cam_high")
           for (h, w), enc in (((48, 64), "rgb8"), ((16, 24), "bgr8"), ((9, 9), "rgb8"))]
    out.append(encode_image(rng.integers(0, 255, (12, 16, 4), dtype=np.uint8), "rgba8", st, "x"))
    out.append(encode_image(rng.integers(0, 255, (12, 16), dtype=np.uint8), "mono8", st))
    out.append(encode_image(rng.integers(0, 4000, (12, 16), dtype=np.uint16), "16UC1", st, "depth"))
    out.append(encode_image(rng.random((8, 10), dtype=np.float32), "32FC1", st))
    return [bytes(b) for b in out]


def compressed_seeds() -> list[bytes]:
    import cv2

    from wam_common.imageio import Stamp, encode_compressed

    rng = np.random.default_rng(1)
    st = Stamp(3, 0)
    img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    out = []
    for fmt, ext, a in (("jpeg", ".jpg", img), ("png", ".png", img), ("rgb8; png compressed", ".png", img[:, :, 0]),
                        ("16UC1; png compressed", ".png", rng.integers(0, 4000, (16, 16), dtype=np.uint16))):
        ok, buf = cv2.imencode(ext, a)
        assert ok
        out.append(encode_compressed(buf.tobytes(), fmt, st, "cam"))
    return out


def joint_state_seeds() -> list[bytes]:
    from sensor_msgs.msg import JointState

    from wam_common import aloha

    out = []
    for k, names in enumerate((aloha.JOINT_STATE_NAMES, list(aloha.ARM_JOINTS) + ["gripper"])):
        m = JointState()
        m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id = 5 + k, 20_000_000, ""
        m.name = list(names)
        m.position = [0.1 * i for i in range(len(names))]
        m.velocity = [0.0] * len(names) if k == 0 else []
        m.effort = []
        out.append(_cdr(m))
    return out


def instruction_seeds() -> list[bytes]:
    return [_string_cdr(t) for t in ("transfer the cube", "", "pick up the red block and put it in the bin ✓")]


EVENTS = [
    {"event": "start", "episode": 3, "task": "transfer_cube", "seed": 1003, "stamp_ns": 123456789, "instruction":
     "transfer the cube", "physical": {"cube_xy": [0.1, 0.5]}, "camera_every": 5, "max_steps": 400, "clock": "sim",
     "backend": "mujoco", "width": 320, "height": 240, "cameras": ["cam_high"]},
    {"event": "end", "episode": 3, "task": "transfer_cube", "seed": 1003, "stamp_ns": 8123456789, "success": True,
     "steps": 400, "reason": "success", "max_reward": 4, "latency_ms": {"p50": 3.1}},
]


def event_seeds() -> list[bytes]:
    return [_string_cdr(json.dumps(e)) for e in EVENTS]


def request_seeds() -> list[bytes]:
    from wam_policy_node.backends import msgpack_numpy

    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (3, 12, 16), dtype=np.uint8)
    return [msgpack_numpy.packb(m) for m in (
        {"state": rng.uniform(-1, 1, 14).astype(np.float32), "prompt": "transfer the cube",
         "images": {"cam_high": img, "cam_left_wrist": img.transpose(1, 2, 0).copy()}},
        {"state": np.zeros(14), "images": {}, "prompt": "", "step": 4, "stamp_ns": 10**9, "inference_delay": 2,
         "privileged": {"qpos": [0.0] * 3}},
        {"__ctrl__": "episode_start", "__episode__": {"episode": 1, "seed": 5}},
    )]


def reply_seeds() -> list[bytes]:
    from wam_policy_node.backends import msgpack_numpy

    rng = np.random.default_rng(3)
    return [msgpack_numpy.packb(m) for m in (
        {"actions": rng.uniform(-1, 1, (20, 14)), "server_timing": {"infer_ms": 3.5, "queue_ms": 0.1}},
        {"actions": rng.uniform(-1, 1, (5, 16)).astype(np.float32)},
        {"policy": "x", "backend": "lerobot", "wam_policy": {"protocol": 1, "image_sizes": {"k": [240, 320]}}},
    )]


def yaml_seeds(sub: str) -> list[bytes]:
    d = ROOT / "config" / sub if sub else ROOT / "config"
    return [p.read_bytes() for p in sorted(d.glob("*.yaml"))[:6]]


def bag_seeds(tmp: Path) -> list[bytes]:
    """One small bag as the recorder writes it: events, joint states, commands, status, one image."""
    from std_msgs.msg import Float64MultiArray

    from wam_common import topics as T
    from wam_common.bag.writer import BagWriter

    js = joint_state_seeds()[0]
    d = tmp / "seed_bag"
    w = BagWriter(d)
    for topic, typ in ((T.EPISODE, "std_msgs/msg/String"), (T.COMMAND, "std_msgs/msg/Float64MultiArray"),
                       (T.POLICY_STATUS, "std_msgs/msg/String"), (T.perturbed(T.camera_topic("cam_high")),
                                                                    "sensor_msgs/msg/Image"),
                       *[(T.joint_state_topic(a), "sensor_msgs/msg/JointState") for a in T.ARMS]):
        w.add_topic(topic, typ)
    t = 10**9
    w.write(T.EPISODE, t, _string_cdr(json.dumps({**EVENTS[0], "stamp_ns": t})))
    for k in range(6):
        ts = t + k * 20_000_000
        for a in T.ARMS:
            w.write(T.joint_state_topic(a), ts, js)
        w.write(T.COMMAND, ts + 1000, _cdr(Float64MultiArray(data=[0.01 * k] * 14)))
        w.write(T.POLICY_STATUS, ts + 2000, _string_cdr(json.dumps({"step": k, "hold": None, "infer_ms": 2.0})))
    w.write(T.perturbed(T.camera_topic("cam_high")), t, image_seeds()[2])
    w.write(T.EPISODE, t + 10**8, _string_cdr(json.dumps({**EVENTS[1], "stamp_ns": t + 10**8})))
    w.close()
    files = sorted(d.glob("*.mcap"))
    return [f.read_bytes() for f in files]


# -- decoders as the nodes / tools call them --------------------------------------------------------
def run_image_raw(b: bytes):
    from wam_common.imageio import decode_image, to_rgb
    from wam_policy_node.framesize import FrameSizeGate

    img = decode_image(b)
    if img.encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "8UC3", "mono8", "8UC1"):
        rgb = to_rgb(img)
        FrameSizeGate().check("cam_high", *rgb.shape[:2])
        return int(rgb[-1, -1, 0])  # touch the last pixel: the view stays inside the buffer
    return float(np.asarray(img.array).reshape(-1)[-1]) if img.array.size else None


def run_image_compressed(b: bytes):
    from wam_common.imageio import compressed_to_array, decode_compressed

    arr, _ = compressed_to_array(decode_compressed(b))
    return arr.shape


def run_joint_state(b: bytes):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import JointState

    from wam_common import aloha

    m = deserialize_message(b, JointState)
    _ = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
    return aloha.arm_state_from_joint_state(list(m.name), list(m.position))


def run_instruction(b: bytes):
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import String

    from wam_common.bag.reader import BagMessage, string

    text = deserialize_message(b, String).data
    string(BagMessage("/instruction", "std_msgs/msg/String", 0, b))
    return len(text)


def run_episode_event(b: bytes):
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import String

    from wam_common.events import parse_episode_event
    from wam_policy_node.framesize import FrameSizeGate

    ev = parse_episode_event(deserialize_message(b, String).data)
    if ev["event"] == "start":
        FrameSizeGate().announce(ev)
    return ev["event"]


def run_policy_request(b: bytes):
    from wam_policy_node.server import read_request

    return read_request(b)


def run_policy_reply(b: bytes):
    from wam_policy_node.backends.openpi import read_reply

    return read_reply(b)


def _yaml_runner(tmp: Path, load: Callable[[str], Any]):
    path = tmp / "fuzz.yaml"

    def run(b: bytes):
        path.write_bytes(b)
        return load(str(path))

    return run


def _bag_runner(tmp: Path):
    import shutil

    from wam_apps.analysis.episodes import analyze_bag

    d = tmp / "fuzz_bag"

    def run(b: bytes):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        (d / "fuzz_bag_0.mcap").write_bytes(b)  # no metadata.yaml: as a recorder killed early leaves it
        return len(analyze_bag(d))

    return run


def targets(tmp: Path) -> list[Target]:
    from rclpy._rclpy_pybind11 import RMWError

    from wam_apps.evaluation.suites import load_suite
    from wam_common.bag.reader import BagReadError
    from wam_common.config import ConfigError
    from wam_common.events import EventError
    from wam_common.graph import load_graph
    from wam_common.imageio import ImageDecodeError
    from wam_common.policies import load_policy_config
    from wam_policy_node.backends import BackendError
    from wam_policy_node.framesize import FrameSizeError
    from wam_policy_node.server import RequestError

    return [
        Target("image_raw", image_seeds(), run_image_raw, (ImageDecodeError, FrameSizeError)),
        Target("image_compressed", compressed_seeds(), run_image_compressed, (ImageDecodeError,), quiet=True),
        Target("joint_state", joint_state_seeds(), run_joint_state, (RMWError, ValueError)),
        Target("instruction", instruction_seeds(), run_instruction, (RMWError, ValueError)),
        Target("episode_event", event_seeds(), run_episode_event, (RMWError, EventError), structured="json_cdr"),
        Target("policy_request", request_seeds(), run_policy_request, (RequestError,), structured="msgpack"),
        Target("policy_reply", reply_seeds(), run_policy_reply, (BackendError,), structured="msgpack"),
        Target("graph_yaml", yaml_seeds(""), _yaml_runner(tmp, load_graph), (ConfigError,), structured="yaml", slow=True),
        Target("policy_yaml", yaml_seeds("policies"), _yaml_runner(tmp, load_policy_config), (ConfigError,),
               structured="yaml", slow=True),
        Target("suite_yaml", yaml_seeds("suites"), _yaml_runner(tmp, load_suite), (ConfigError,), structured="yaml", slow=True),
        Target("bag", bag_seeds(tmp), _bag_runner(tmp), (BagReadError,), slow=True),
    ]


# -- mutations -----------------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, b: bytes, pool: list[bytes]) -> tuple[str, bytes]:
    a = bytearray(b)
    op = rng.choice(("flip", "flip", "set", "truncate", "splice", "insert", "delete", "dup", "huge", "huge"))
    if not a and op not in ("insert", "splice"):
        op = "insert"
    if op == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(a))
            a[i] ^= 1 << rng.randrange(8)
    elif op == "set":
        for _ in range(rng.randint(1, 4)):
            a[rng.randrange(len(a))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
    elif op == "truncate":
        a = a[: rng.randrange(len(a))]
    elif op == "splice":  # a prefix of this input + the tail of another (any target's: type confusion)
        other = rng.choice(pool)
        a = a[: rng.randint(0, len(a))] + other[rng.randint(0, len(other)):]
    elif op == "insert":
        i = rng.randint(0, len(a))
        a[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == "delete":
        i = rng.randrange(len(a))
        del a[i: i + rng.randint(1, 16)]
    elif op == "dup":
        i = rng.randrange(len(a))
        j = min(len(a), i + rng.randint(1, 64))
        a[j:j] = a[i:j] * rng.randint(1, 4)
    elif op == "huge" and len(a) >= 4:  # a 32-bit length / size / count word set huge
        i = rng.randrange(0, len(a) - 3)
        i -= i % 4
        a[i:i + 4] = struct.pack("<I", rng.choice(HUGE))
    return op, bytes(a)


def _confuse(rng: random.Random, v: Any, depth: int = 0) -> Any:
    """The value of one random field of a parsed structure replaced by another type."""
    if isinstance(v, dict) and v and depth < 6 and rng.random() < 0.7:
        k = rng.choice(list(v))
        v = dict(v)
        v[k] = _confuse(rng, v[k], depth + 1)
        return v
    if isinstance(v, list) and v and depth < 6 and rng.random() < 0.7:
        v = list(v)
        i = rng.randrange(len(v))
        v[i] = _confuse(rng, v[i], depth + 1)
        return v
    return rng.choice((None, True, -1, 0, 2**63 - 1, -(2**63), 1e308, float("nan"), float("inf"), "",
                       "x" * rng.choice((1, 1000, 100_000)), [], {}, [[[[[[]]]]]], {"a": {"b": {"c": None}}},
                       list(range(rng.choice((1, 1000)))), b"\x00\xff", v if depth else {"nested": v}))


def mutate_structure(rng: random.Random, kind: str, b: bytes) -> tuple[str, bytes] | None:
    if kind == "msgpack":
        import msgpack

        try:
            raw = msgpack.unpackb(b, strict_map_key=False)  # arrays stay {b"__ndarray__": ...} maps
        except Exception:  # noqa: BLE001 - seeds always parse
            return None
        if rng.random() < 0.4:
            arrs = [v for v in _walk(raw) if isinstance(v, dict) and b"__ndarray__" in v]
            if arrs:  # an array header lying about its shape / dtype
                h = rng.choice(arrs)
                what = rng.choice((b"shape", b"dtype", b"data"))
                h[what] = {b"shape": rng.choice(([1 << 40], [2**31, 2**31], [-1, 14], [14, 0], "14", [14.5])),
                           b"dtype": rng.choice(("|O", "V8", "<c16", "bogus", "", 3, "S0", "<f8,<f8")),
                           b"data": rng.choice((b"", "text", 0, b"\x00" * 7))}[what]
                return "array_header", msgpack.packb(raw)
        try:
            return "type_confusion", msgpack.packb(_confuse(rng, raw))
        except (TypeError, ValueError, OverflowError):
            return None
    if kind == "json_cdr":
        from rclpy.serialization import deserialize_message
        from std_msgs.msg import String

        ev = json.loads(deserialize_message(b, String).data)
        text = json.dumps(_confuse(rng, ev), default=repr) if rng.random() < 0.8 else "[" * rng.choice((10, 100_000))
        return "type_confusion", _string_cdr(text)
    if kind == "yaml":
        import yaml

        try:
            data = yaml.safe_load(b)
            return "type_confusion", yaml.safe_dump(_confuse(rng, data), allow_unicode=True).encode()
        except (yaml.YAMLError, ValueError, TypeError, RecursionError):
            return None
    return None


def _walk(v):
    yield v
    if isinstance(v, dict):
        for x in v.values():
            yield from _walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk(x)


# -- the campaign ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_stderr(on: bool):
    if not on:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _alarm(signum, frame):
    raise Hang()


def _key(msg: str) -> str:
    import re

    return re.sub(r"\d+", "N", msg)[:90]


def run_one(t: Target, data: bytes, how: str, timeout: float) -> None:
    """One input: a hang is over ``timeout`` s of this process's CPU time (SIGPROF: robust to a loaded
    machine, where wall time is mostly waiting for a core) or over ``WALL_FACTOR`` x that of wall time
    (SIGALRM: a decoder that blocks)."""
    signal.setitimer(signal.ITIMER_PROF, timeout)
    signal.setitimer(signal.ITIMER_REAL, timeout * WALL_FACTOR)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        t.run(data)
        outcome, exc = "accepted", None
    except Hang:
        outcome, exc = "hang", None
    except t.clean as e:
        outcome, exc = "rejected", e
    except BaseException as e:  # noqa: BLE001 - what the campaign is looking for
        if isinstance(e, KeyboardInterrupt):
            raise
        outcome, exc = "crash", e
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
    ms, cpu_ms = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
    t.max_ms, t.max_cpu_ms = max(t.max_ms, ms), max(t.max_cpu_ms, cpu_ms)
    if outcome != "hang" and (cpu_ms > timeout * 1e3 or ms > timeout * WALL_FACTOR * 1e3):
        outcome = "hang"
    t.counts[outcome] += 1
    if outcome == "rejected":
        k = f"{type(exc).__name__}: {_key(str(exc))}"
        t.messages[k] = t.messages.get(k, 0) + 1
        if not str(exc).strip():
            t.counts["rejected"] -= 1  # a clean type with no message is no clear error
            t.counts["crash"] += 1
            t.crashes.append({"mutation": how, "error": f"{type(exc).__name__} without a message",
                              "input_hex": data[:64].hex()})
    elif outcome in ("crash", "hang") and len(t.crashes) < 20:
        tb = traceback.format_exception(exc) if exc is not None else ["(timeout)"]
        t.crashes.append({"mutation": how, "outcome": outcome, "ms": round(ms, 1), "cpu_ms": round(cpu_ms, 1),
                          "error": f"{type(exc).__name__}: {str(exc)[:200]}" if exc else "hang",
                          "where": "".join(tb[-6:])[-1500:], "input_hex": data[:64].hex(), "size": len(data),
                          **({"input_b64": base64.b64encode(data).decode()} if len(data) <= 4096 else {})})


def campaign(total: int, seed: int = 0, timeout: float = 2.0, only: list[str] | None = None,
             progress: bool = False, file_timeout: float = 5.0) -> dict:
    t_start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm), signal.signal(signal.SIGPROF, _alarm)
    with tempfile.TemporaryDirectory(prefix="wam_fuzz_") as tmp:
        ts = [t for t in targets(Path(tmp)) if not only or t.name in only]
        pool = [s for t in ts for s in t.seeds]
        shares = {t.name: SHARES[t.name] for t in ts}
        norm = sum(shares.values())
        for t in ts:
            n = max(len(t.seeds) + 1, int(round(total * shares[t.name] / norm)))
            rng = random.Random(f"{seed}:{t.name}")
            t0 = time.perf_counter()
            limit = file_timeout if t.slow else timeout
            with _quiet_stderr(t.quiet):
                for s in t.seeds:  # the seeds themselves must be accepted
                    run_one(t, s, "seed", limit)
                for i in range(n - len(t.seeds)):
                    base = rng.choice(t.seeds)
                    m = mutate_structure(rng, t.structured, base) if t.structured and rng.random() < 0.35 else None
                    if m is None:
                        m = mutate_bytes(rng, base, pool if rng.random() < 0.5 else t.seeds)
                        if rng.random() < 0.25:  # stacked mutations
                            m = (m[0] + "+", mutate_bytes(rng, m[1], t.seeds)[1])
                    run_one(t, m[1], m[0], limit)
            if progress:
                print(f"{t.name}: {n} inputs in {time.perf_counter() - t0:.1f} s {t.counts}", file=sys.stderr,
                      flush=True)
            t.seconds = time.perf_counter() - t0
    signal.signal(signal.SIGALRM, old[0])
    signal.signal(signal.SIGPROF, old[1])
    out = {"seed": seed, "timeout_s": timeout, "file_timeout_s": file_timeout,
           "inputs": 0, "accepted": 0, "rejected": 0, "crash": 0, "hang": 0,
           "targets": {}}
    for t in ts:
        n = sum(t.counts.values())
        out["inputs"] += n
        for k, v in t.counts.items():
            out[k] += v
        top = sorted(t.messages.items(), key=lambda kv: -kv[1])[:5]
        out["targets"][t.name] = {"inputs": n, **t.counts, "seconds": round(t.seconds, 1),
                                  "max_ms": round(t.max_ms, 1), "max_cpu_ms": round(t.max_cpu_ms, 1),
                                  "top_rejections": dict(top),
                                  "crashes": t.crashes}
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--total", type=int, default=100_000, help="inputs over all targets (shared by SHARES)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per input before it counts as a hang")
    ap.add_argument("--file-timeout", type=float, default=5.0,
                    help="the same for the file targets (YAML, bags: pure-Python parsers; PyYAML's SafeLoader takes "
                         "~0.3 s of CPU for a 100 kB file)")
    ap.add_argument("--only", nargs="*", help="these targets only")
    ap.add_argument("--progress", action="store_true", help="one line per target on stderr")
    args = ap.parse_args()
    res = campaign(args.total, args.seed, args.timeout, args.only, args.progress, args.file_timeout)
    print(json.dumps(res, indent=1))
    return 0 if res["crash"] == 0 and res["hang"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
