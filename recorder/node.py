"""The recorder node: raw subscriptions → a queue → a writer thread → a rosbag2 MCAP bag.

Every configured topic (``topics``; ``[]`` → every topic of the graph contract, raw and
``/perturbed``; plus the keys of ``topic_types``) is subscribed once a publisher shows up, with
the QoS adapted to the offers (reliable / transient-local only when every publisher offers it,
like ``ros2 bag record``) and the type on the wire (a ``topic_types`` entry insists on its type),
with ``raw=True``: the CDR bytes go unchanged into the bag. Callbacks only enqueue; one writer
thread owns the :class:`~wam_common.bag.writer.BagWriter`, so DDS never waits on disk.
A full queue (``queue_max_bytes``) drops and counts messages instead of blocking.

The node spins a single-threaded executor: no callback blocks, and rclpy's multi-threaded
executor (its spinning main thread competes for the GIL, as in wam_policy_node) delivered a
100 Hz reliable topic in bursts after stalls of up to 1 s on a 2-core machine, long enough for
the subscription's keep-last history (``qos_depth``) to overwrite messages nobody had taken
yet: silent loss, never counted as dropped.

Message log time = the DDS source (publish) timestamp by default (``log_time: receive`` for the
receive time): episode boundaries, latched replays and obs→command latencies then follow the order
in which things were published (one host, one clock); MCAP publish time = the source stamp.
Files split on each EPISODE ``start`` event (``split.by_episode``), by size
(``split.max_bytes``) and by duration (``split.max_duration_s``). SIGINT/SIGTERM close the bag
cleanly, however many arrive (the first stops the node after ``DRAIN_S`` more callbacks, the others
are ignored: :mod:`wam_common.node_main`); after ``kill -9`` everything older than ``flush_period_s`` is on disk
(see :mod:`wam_common.bag.repair`).
"""
from __future__ import annotations

import collections
import heapq
import json
import os
import queue
import threading
import time
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from wam_common import topics as T
from wam_common.config import ConfigError
from wam_common.node_main import run_node
from wam_common.params import declare_tree
from wam_common.bag.msgdefs import UnknownTypeError, message_class, message_definition
from recorder.topics import contract_qos, contract_types, default_topics
from wam_common.bag.writer import BagError, BagWriter, COMPRESSION, QosSpec

DEFAULTS = {
    "output_dir": "runs/bags",
    "bag_name": "",            # "" → rosbag2_YYYY_MM_DD-HH_MM_SS
    "if_exists": "error",      # the bag exists already: error (as ros2 bag record) | suffix (_1, _2 …) | overwrite
    "topics": [],              # [] → the graph contract's topics (raw and /perturbed)
    "exclude_topics": [],
    "topic_types": {},         # topic → message type ("/tf": tf2_msgs/msg/TFMessage): topics beyond the
                               # contract, recorded too and subscribed before a publisher shows up;
                               # a type that cannot be found is a config error naming the key
    "compression": "none",     # none | zstd | lz4 (MCAP chunk compression)
    "split": {
        "by_episode": True,    # a new file at each EPISODE "start" event
        "max_bytes": 0,        # 0 → no size limit per file
        "max_duration_s": 0.0, # 0 → no duration limit per file
    },
    "flush_period_s": 0.5,     # chunk closed and flushed to the OS at least this often (crash safety)
    "reorder_window_s": 0.2,   # messages wait this long to be written in log-time order
    "metadata_period_s": 1.0,  # metadata.yaml rewritten this often
    "chunk_bytes": 4194304,
    "queue_max_bytes": 1073741824,  # backlog beyond this is dropped (and counted), never blocks DDS
    "qos_depth": 100,
    "discovery_period_s": 0.2,
    "diagnostics_period_s": 1.0,  # 0 → no recorder status on /diagnostics
    "fsync": False,
    "log_time": "publish",     # MCAP log time: "publish" (DDS source stamp: causal order across
                               # publishers, latched replays keep their time) or "receive"
    "labels": {},              # free key → value labels (policy, dimension, level, …) kept in metadata custom_data
}

_STOP = object()


def _str_list(val, key: str) -> list[str]:
    if val in (None, "", b""):
        return []
    if isinstance(val, str):
        val = [v.strip() for v in val.split(",") if v.strip()]
    if not isinstance(val, (list, tuple)) or not all(isinstance(v, str) and v for v in val):
        raise ConfigError(f"node 'recorder': key '{key}' must be a list of topic names, got {val!r}")
    return [v if v.startswith("/") else "/" + v for v in val]


def _topic_types(table) -> dict[str, str]:
    """``topic_types`` → {topic: full message type}; a type the recorder cannot load (no Python
    class or no definition to embed) is a :class:`ConfigError` naming its key."""
    out = {}
    for topic, msgtype in (table or {}).items():
        key = f"topic_types.{topic}"
        if not isinstance(msgtype, str):
            raise ConfigError(f"node 'recorder': key '{key}' must be a message type like std_msgs/msg/String, got {msgtype!r}")
        try:
            message_class(msgtype)
            full = message_definition(msgtype).msgtype
        except UnknownTypeError as exc:
            raise ConfigError(f"node 'recorder': key '{key}': {exc}") from None
        out[topic if topic.startswith("/") else "/" + topic] = full
    return out


def default_bag_name() -> str:
    return time.strftime("rosbag2_%Y_%m_%d-%H_%M_%S", time.localtime())


def _episode_event(raw: bytes) -> dict | None:
    """Parse a std_msgs/String CDR payload as a JSON object (None when it is not one)."""
    try:
        from rclpy.serialization import deserialize_message
        from std_msgs.msg import String

        obj = json.loads(deserialize_message(raw, String).data)
        return obj if isinstance(obj, dict) else None
    except Exception:  # noqa: BLE001 - malformed events are recorded, not interpreted
        return None


class Recorder(Node):
    def __init__(self, **kwargs):
        super().__init__("recorder", **kwargs)
        cfg = declare_tree(self, DEFAULTS)
        self.cfg = cfg
        typed = _topic_types(cfg["topic_types"])
        topics = _str_list(cfg["topics"], "topics") or default_topics()
        excluded = set(_str_list(cfg["exclude_topics"], "exclude_topics"))
        self.wanted = [t for t in dict.fromkeys(topics + list(typed)) if t not in excluded]
        if cfg["compression"] not in COMPRESSION:
            raise ConfigError(f"node 'recorder': key 'compression' must be one of none, zstd, lz4, got {cfg['compression']!r}")
        if not 0 <= cfg["reorder_window_s"] <= 0.5:
            raise ConfigError(f"node 'recorder': key 'reorder_window_s' must be within 0..0.5 s, got {cfg['reorder_window_s']!r}")
        for key in ("flush_period_s", "metadata_period_s", "discovery_period_s"):
            if not cfg[key] > 0:
                raise ConfigError(f"node 'recorder': key '{key}' must be > 0, got {cfg[key]!r}")
        for key in ("chunk_bytes", "queue_max_bytes", "qos_depth"):
            if cfg[key] <= 0:
                raise ConfigError(f"node 'recorder': key '{key}' must be > 0, got {cfg[key]!r}")
        if cfg["split"]["max_bytes"] < 0 or cfg["split"]["max_duration_s"] < 0:
            raise ConfigError("node 'recorder': keys 'split.max_bytes' and 'split.max_duration_s' must be >= 0")
        if cfg["log_time"] not in ("publish", "receive"):
            raise ConfigError(f"node 'recorder': key 'log_time' must be 'publish' or 'receive', got {cfg['log_time']!r}")
        if cfg["if_exists"] not in ("error", "suffix", "overwrite"):
            raise ConfigError(f"node 'recorder': key 'if_exists' must be error, suffix or overwrite, got {cfg['if_exists']!r}")
        name = cfg["bag_name"] or default_bag_name()
        out = Path(os.path.expanduser(cfg["output_dir"])).absolute() / name
        if out.exists() and (not cfg["bag_name"] or cfg["if_exists"] == "suffix"):
            k = 1
            while out.exists():
                out = out.with_name(f"{name}_{k}")
                k += 1
        elif out.exists() and cfg["if_exists"] == "overwrite":
            if not (out / "metadata.yaml").exists() and not any(out.glob("*.mcap")):
                raise ConfigError(f"node 'recorder': key 'if_exists': {out} exists and is not a bag; not overwriting it")
            import shutil

            shutil.rmtree(out)
        try:
            self.bag = BagWriter(out, compression=cfg["compression"], chunk_bytes=cfg["chunk_bytes"],
                                 max_file_bytes=cfg["split"]["max_bytes"],
                                 max_file_duration_s=cfg["split"]["max_duration_s"],
                                 flush_period_s=cfg["flush_period_s"], metadata_period_s=cfg["metadata_period_s"],
                                 fsync=cfg["fsync"])
        except (BagError, OSError) as exc:
            raise ConfigError(f"node 'recorder': key 'output_dir'/'bag_name': cannot create bag {out}: {exc}") from None
        self._log_publish = cfg["log_time"] == "publish"
        self.bag.custom["wam_policy.log_time"] = ("DDS source (publish) timestamp, system clock ns" if self._log_publish
                                                  else "DDS receive timestamp, system clock ns")
        self.bag.custom["wam_policy.labels"] = json.dumps(cfg["labels"] or {}, sort_keys=True, default=str)
        self.bag_path = out
        self._types = {**contract_types(), **typed}
        self._typed = set(typed)
        self._type_mismatch: set[str] = set()
        self._subs: dict[str, tuple[tuple, object]] = {}
        self._bad_topics: set[str] = set()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._qlock = threading.Lock()
        self._qbytes = 0
        self.received = 0
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self.duplicates = 0
        self._seen: dict[str, tuple[dict, collections.deque]] = {}
        self._closing = False
        self._retiring: list[tuple] = []  # (old subscription, its replacement, publishers, deadline)
        self._thread = threading.Thread(target=self._writer_loop, name="bag-writer", daemon=True)
        self._thread.start()
        self._diag_pub = None
        if cfg["diagnostics_period_s"] > 0:
            from diagnostic_msgs.msg import DiagnosticArray

            self._diag_pub = self.create_publisher(DiagnosticArray, T.DIAGNOSTICS, 10)
            self.create_timer(cfg["diagnostics_period_s"], self._publish_diagnostics)
        self._actual_qos: set[str] = set()
        try:
            self._eager()
            self.create_timer(cfg["discovery_period_s"], self._discover)
            from std_srvs.srv import Trigger

            self.create_service(Trigger, "~/split", self._on_split)
            self._discover()
        except Exception:
            self.close()  # the bag is finished even when the start-up fails
            raise
        self.get_logger().info(f"recording {len(self.wanted)} topics to {out} (output_dir "
                               f"{cfg['output_dir']!r}: relative paths start at the working directory)")

    # -- discovery and subscriptions ---------------------------------------------------------
    def _eager(self) -> None:
        """Subscribe to the contract's topics before their publishers exist (with the QoS the
        contract says they offer), so the first messages of a graph are not lost to discovery.
        A ``topic_types`` topic beyond the contract: best effort and volatile, which match any
        publisher until discovery sees what it really offers."""
        for topic in self.wanted:
            cq = contract_qos(topic)
            if cq is None and topic in self._typed:
                cq = (False, False, int(self.cfg["qos_depth"]))
            if cq is None:
                continue
            reliable, latched, depth = cq
            spec = QosSpec(reliability="reliable" if reliable else "best_effort",
                           durability="transient_local" if latched else "volatile", depth=depth)
            self._subscribe(topic, (self._types[topic], reliable, latched), None, [spec])

    def _retire(self) -> None:
        keep = []
        for old, new, n_pubs, deadline in self._retiring:
            try:
                matched = new.get_publisher_count() >= max(1, n_pubs)
            except Exception:  # noqa: BLE001
                matched = True
            if matched or time.monotonic() > deadline:
                try:
                    self.destroy_subscription(old)
                except Exception:  # noqa: BLE001
                    pass
            else:
                keep.append((old, new, n_pubs, deadline))
        self._retiring = keep

    def _discover(self) -> None:
        if self._closing:
            return
        self._retire()
        for topic in self.wanted:
            if topic in self._bad_topics:
                continue
            try:
                infos = list(self.get_publishers_info_by_topic(topic))
            except Exception:  # noqa: BLE001 - graph queries fail only while shutting down
                return
            if not infos:
                continue
            current = self._subs.get(topic)
            types = [i.topic_type for i in infos]
            msgtype = current[0][0] if current else types[0]
            if msgtype not in types and topic not in self._typed and topic not in self._actual_qos:
                msgtype = types[0]  # the eager subscription's contract type is not on the wire: take the wire's
            if len(set(types)) > 1 and topic not in self._bad_topics:
                self.get_logger().warn(f"topic {topic} has publishers of several types {sorted(set(types))}; recording {msgtype}")
            infos = [i for i in infos if i.topic_type == msgtype]
            if not infos:  # only publishers of another type than topic_types (or the topic so far) says
                if topic not in self._type_mismatch:
                    self._type_mismatch.add(topic)
                    self.get_logger().warn(f"not recording {topic}: its publishers carry {sorted(set(types))}, "
                                           f"not {msgtype}")
                continue
            reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
            latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
            key = (msgtype, reliable, latched)
            if current and current[0] == key:
                if topic not in self._actual_qos:  # eager subscription: note what is really offered
                    self._actual_qos.add(topic)
                    self._q.put(("add", topic, msgtype, self._offered(infos)[:1]))
                continue
            self._subscribe(topic, key, infos)

    @staticmethod
    def _offered(infos) -> list[QosSpec]:
        offered = []
        for i in infos:
            q = i.qos_profile
            offered.append(QosSpec(
                reliability="reliable" if q.reliability == ReliabilityPolicy.RELIABLE else "best_effort",
                durability="transient_local" if q.durability == DurabilityPolicy.TRANSIENT_LOCAL else "volatile",
                history="keep_all" if q.history == HistoryPolicy.KEEP_ALL else "keep_last",
                depth=int(q.depth)))
        return offered

    def _subscribe(self, topic: str, key: tuple, infos, offered: list | None = None) -> None:
        msgtype, reliable, latched = key
        try:
            cls = message_class(msgtype)
            message_definition(msgtype)
        except UnknownTypeError as exc:
            self._bad_topics.add(topic)
            self.get_logger().error(f"not recording {topic}: {exc}")
            return
        expected = self._types.get(topic)
        if expected and expected != msgtype:
            self.get_logger().warn(f"topic {topic} carries {msgtype}, the graph contract says {expected}")
        old = self._subs.pop(topic, None)
        if old is not None and old[0][0] != msgtype:
            # another type: DDS allows one type per topic in a participant, and nothing of the old
            # type is on the wire, so the old subscriptions go before the new one is created
            for sub in [old[1]] + [r[0] for r in self._retiring if r[1] is old[1]]:
                self.destroy_subscription(sub)
            self._retiring = [r for r in self._retiring if r[1] is not old[1]]
            old = None
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(self.cfg["qos_depth"]),
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        if infos is not None:
            offered = self._offered(infos)
            self._actual_qos.add(topic)
        self._q.put(("add", topic, msgtype, list(offered or [])[:1]))

        def cb(raw, info, topic=topic):
            self._on_message(topic, raw, info)

        sub = self.create_subscription(cls, topic, cb, qos, raw=True)
        self._subs[topic] = (key, sub)
        if old is not None:
            # the old subscription lives on until the new one has matched the publishers (or 3 s):
            # no gap; what both deliver meanwhile is de-duplicated
            self._retiring.append((old[1], sub, len(infos or ()), time.monotonic() + 3.0))
        self.get_logger().info(f"recording {topic} [{msgtype}] ({'reliable' if reliable else 'best effort'}"
                               f"{', transient local' if latched else ''})")

    def _on_message(self, topic: str, raw: bytes, info: dict) -> None:
        n = len(raw)
        src = info.get("source_timestamp") or 0
        if src:
            # a subscription re-created as transient-local replays history already recorded
            key = (src, info.get("publication_sequence_number"))
            seen = self._seen.setdefault(topic, ({}, collections.deque()))
            if key in seen[0]:
                self.duplicates += 1
                return
            seen[0][key] = None
            seen[1].append(key)
            if len(seen[1]) > 256:
                seen[0].pop(seen[1].popleft(), None)
        with self._qlock:
            self.received += 1
            if self._qbytes + n > self.cfg["queue_max_bytes"] or self._closing:
                self.dropped += 1
                return
            self._qbytes += n
        recv = info.get("received_timestamp") or time.time_ns()
        src = src or recv
        self._q.put(("msg", topic, src if self._log_publish else recv, src, raw))

    def _on_split(self, _req, resp):
        """``~/split`` (std_srvs/Trigger): start a new file now (a real robot without EPISODE events)."""
        self._q.put(("split",))
        resp.success, resp.message = True, f"split requested ({self.bag_path})"
        return resp

    # -- the writer thread -----------------------------------------------------------------
    def _writer_loop(self) -> None:
        """Take items off the queue; hold messages ``reorder_window_s`` in a heap and write them
        in log-time order, so files are time-ordered and episode splits fall where the EPISODE
        start event was published, even when callbacks of different topics ran out of order."""
        bag = self.bag
        window = float(self.cfg["reorder_window_s"])
        period = min(0.05, self.cfg["flush_period_s"] / 4)
        heap: list = []
        seq = 0
        stop = False
        while not stop:
            try:
                item = self._q.get(timeout=period)
            except queue.Empty:
                item = None
            while item is not None:  # drain what is there without blocking
                if item is _STOP:
                    stop = True
                    break
                if item[0] == "msg":
                    heapq.heappush(heap, (item[2], seq, time.monotonic(), item))
                    seq += 1
                else:
                    self._safe(bag, item)
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    item = None
            now = time.monotonic()
            while heap and (stop or now - heap[0][2] >= window):
                self._safe(bag, heapq.heappop(heap)[3])
            try:
                bag.maybe_flush()
            except Exception as exc:  # noqa: BLE001
                self.write_errors += 1
                if self.write_errors <= 5:
                    self.get_logger().error(f"bag flush failed: {exc!r}")

    def _safe(self, bag: BagWriter, item) -> None:
        try:
            self._handle(bag, item)
        except Exception as exc:  # noqa: BLE001 - a bad write never kills the recorder
            self.write_errors += 1
            if self.write_errors <= 5:
                self.get_logger().error(f"bag write failed: {exc!r}")
        finally:
            if item[0] == "msg":
                with self._qlock:
                    self._qbytes -= len(item[4])

    def _handle(self, bag: BagWriter, item) -> None:
        if item[0] == "add":
            _, topic, msgtype, offered = item
            bag.add_topic(topic, msgtype, offered)
            return
        if item[0] == "split":
            bag.split()
            return
        _, topic, log_ns, src, raw = item
        if topic == T.EPISODE:
            ev = _episode_event(raw)
            if ev and ev.get("event") == "start":
                # messages before the first start stay with episode 0's file
                if self.cfg["split"]["by_episode"] and bag.current_file_episodes:
                    bag.split()
                ep = ev.get("episode")
                bag.mark_episode(ep if isinstance(ep, int) and not isinstance(ep, bool) else -1)
        bag.write(topic, log_ns, raw, src)
        self.written += 1

    # -- status and shutdown ---------------------------------------------------------------
    def status(self) -> dict:
        with self._qlock:
            qb = self._qbytes
        return {"bag": str(self.bag_path), "received": self.received, "written": self.written,
                "dropped": self.dropped, "duplicates": self.duplicates, "queue_bytes": qb, "write_errors": self.write_errors,
                "files": len(self.bag.files), "topics": len(self._subs)}

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        st = self.status()
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        level = DiagnosticStatus.OK if not (st["dropped"] or st["write_errors"]) else DiagnosticStatus.WARN
        msg = "recording" if level == DiagnosticStatus.OK else "recording with drops/errors"
        arr.status.append(DiagnosticStatus(level=level, name="recorder", message=msg, hardware_id="",
                                           values=[KeyValue(key=k, value=str(v)) for k, v in st.items()]))
        try:
            self._diag_pub.publish(arr)
        except Exception:  # noqa: BLE001 - shutting down
            pass

    def close(self) -> None:
        """Stop taking messages, write everything queued, finish the bag (idempotent)."""
        if self._closing and not self._thread.is_alive():
            return
        with self._qlock:
            self._closing = True
        for sub in [s for _, s in self._subs.values()] + [r[0] for r in self._retiring]:
            try:
                self.destroy_subscription(sub)
            except Exception:  # noqa: BLE001
                pass
        self._subs.clear()
        self._retiring = []
        self._q.put(_STOP)
        self._thread.join()
        try:
            self.bag.close()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"closing the bag failed: {exc!r}")
        st = self.status()
        print(f"[recorder] closed {st['bag']}: {st['written']} messages in {st['files']} file(s), "
              f"{st['dropped']} dropped, {st['duplicates']} duplicates", flush=True)


#: after SIGINT/SIGTERM, callbacks are served this much longer: messages published before the signal
#: and already on their way (in DDS, not yet taken) still reach the bag
DRAIN_S = 0.3


def main(args=None) -> int:
    # not interruptible during start-up: the bag is created there, and close() must finish it
    return run_node(Recorder, "recorder", args, drain_s=DRAIN_S, interruptible_start=False)


if __name__ == "__main__":
    raise SystemExit(main())
