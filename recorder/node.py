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
are ignored: :mod:`wam_common.node_main`); after ``kill -9`` everything the writer thread took more than
``reorder_window_s + flush_period_s`` + its 25 ms poll (0.225 s) ago is in the OS's page cache, which survives the process
(see :mod:`wam_common.bag.repair`; :func:`kill_bound_s`).
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
from wam_common.schema import Param, Service, defaults, publishes, subscribes
from wam_common.bag.msgdefs import UnknownTypeError, message_class, message_definition
from recorder.topics import contract_qos, contract_types, default_topics
from wam_common.bag.writer import BagError, BagWriter, COMPRESSION, QosSpec

PARAMS = {
    "output_dir": Param("runs/bags", "the folder the bag is created in"),
    "bag_name": Param("", "the bag's folder name (\"\" = rosbag2_YYYY_MM_DD-HH_MM_SS)"),
    "if_exists": Param("error", "when the bag exists already: error (as ros2 bag record), suffix (_1, _2 ...) or "
                       "overwrite", choices=("error", "suffix", "overwrite")),
    "topics": Param([], "the topics to record ([] = the graph contract's topics, raw and /perturbed)",
                    kind="string[]"),
    "exclude_topics": Param([], "topics not to record", kind="string[]"),
    "topic_types": Param({}, "topic → message type (\"/tf\": tf2_msgs/msg/TFMessage): topics beyond the contract, "
                         "recorded too and subscribed before a publisher shows up; a type that cannot be found is "
                         "a config error naming the key"),
    "compression": Param("none", "MCAP chunk compression", choices=tuple(COMPRESSION)),
    "split": {
        "by_episode": Param(True, "a new file at each EPISODE start event"),
        "max_bytes": Param(0, "largest file (bytes; 0 = no limit)", range=(0, None)),
        "max_duration_s": Param(0.0, "longest file (s of log time; 0 = no limit)", range=(0.0, None)),
    },
    "flush_period_s": Param(0.1, "the open chunk is closed and written to the OS at least this often; with "
                            "reorder_window_s, what a kill -9 can lose (s)", range=(0.001, None)),
    "reorder_window_s": Param(0.1, "messages wait this long to be written in log-time order; with flush_period_s, "
                              "what a kill -9 can lose (s)", range=(0.0, 0.5)),
    "metadata_period_s": Param(1.0, "metadata.yaml is rewritten this often (s)", range=(0.001, None)),
    "chunk_bytes": Param(4194304, "MCAP chunk size (bytes)", range=(1, None)),
    "queue_max_bytes": Param(1073741824, "backlog beyond this is dropped and counted, never blocks DDS (bytes)",
                             range=(1, None)),
    "qos_depth": Param(100, "keep-last depth of every subscription", range=(1, None)),
    "discovery_period_s": Param(0.2, "how often the graph is searched for new publishers (s)", range=(0.001, None)),
    "diagnostics_period_s": Param(1.0, "period of the recorder status on /diagnostics (s; 0 = none)",
                                  range=(0.0, None)),
    "fsync": Param(False, "fsync each flush (slower; survives a power cut, not only a crash)"),
    "log_time": Param("publish", "MCAP log time: publish (the DDS source stamp: causal order across publishers, "
                      "latched replays keep their time) or receive", choices=("publish", "receive")),
    "labels": Param({}, "free key → value labels (policy, dimension, level, ...) kept in the bag's metadata "
                    "(custom_data)"),
}
DEFAULTS = defaults(PARAMS)


def writer_poll_s(cfg: dict) -> float:
    """How long the writer thread waits for a message before it checks the reorder window and the flush."""
    return min(0.05, float(cfg["flush_period_s"]) / 4)


def kill_bound_s(cfg: dict) -> float:
    """What a ``kill -9`` can lose by design, in the messages' own time: a message the writer thread has
    taken is held ``reorder_window_s``, then sits in the open chunk until the next flush (``flush_period_s``,
    checked every :func:`writer_poll_s`); a flushed chunk is in the OS's page cache, which outlives the
    process. Time the recorder's threads spend waiting for a core (DDS → callback → writer) comes on top."""
    return float(cfg["reorder_window_s"]) + float(cfg["flush_period_s"]) + writer_poll_s(cfg)


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


def wanted_topics(cfg: dict) -> tuple[list[str], dict[str, str]]:
    """The topics to record (in order) and the ``topic_types`` table of a validated config."""
    typed = _topic_types(cfg["topic_types"])
    topics = _str_list(cfg["topics"], "topics") or default_topics()
    excluded = set(_str_list(cfg["exclude_topics"], "exclude_topics"))
    return [t for t in dict.fromkeys(topics + list(typed)) if t not in excluded], typed


def endpoints(cfg: dict) -> list:
    """The node's topics and service for a validated config (docs/NODES.md; tests/test_ros2_params.py holds them
    against the running node). Each topic is subscribed with the QoS its publishers offer, as ros2 bag record
    does (a contract topic already before one shows up)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_srvs.srv import Trigger

    wanted, typed = wanted_topics(cfg)
    types = {**contract_types(), **typed}
    out = [subscribes(t, types.get(t, "(as published)"), None, "recorded") for t in wanted]
    if cfg["diagnostics_period_s"] > 0:
        out.append(publishes(T.DIAGNOSTICS, DiagnosticArray, 10, "recorder status: received, written, dropped"))
    return out + [Service("~/split", Trigger, "start a new bag file now (a real robot without EPISODE events)")]


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
        cfg = declare_tree(self, PARAMS)
        self.cfg = cfg
        self.wanted, typed = wanted_topics(cfg)
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
        period = writer_poll_s(self.cfg)
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
