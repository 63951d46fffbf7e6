"""A rosbag2-layout MCAP bag writer (pure Python, no ROS runtime): the recorder's storage layer.

A bag is a directory ``<bag>/`` holding ``<bag>_0.mcap``, ``<bag>_1.mcap``, … and a rosbag2
``metadata.yaml`` (version 9, as ``ros2 bag`` on Jazzy writes it). Each MCAP file is complete
on its own (profile ``ros2``, ``ros2msg`` schemas with the concatenated definitions, ``cdr``
channels carrying ``offered_qos_profiles`` and ``topic_type_hash`` like rosbag2_storage_mcap),
so ``ros2 bag info/play``, Foxglove, rosbags and the mcap tools open it.

Crash safety: :meth:`BagWriter.maybe_flush` closes the chunk in progress and writes it to the
OS (``mcap.writer.Writer.flush``: chunk record + message indexes, then the Python file buffer) at
least every ``flush_period_s``; what the OS has survives a ``kill -9`` of the process (``fsync``:
a power cut too). So the only data a killed process takes with it is the open chunk — its
messages of the last ``flush_period_s`` — whatever the chunk size: a chunk closes on whichever
comes first, ``chunk_bytes`` or ``flush_period_s``. ``metadata.yaml`` is rewritten (atomically)
as files are added and every ``metadata_period_s``. After ``kill -9`` the files lack only their
summary and footer; :func:`wam_common.bag.repair.repair_bag` finishes them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml
from mcap.writer import CompressionType, Writer

from wam_common.bag.msgdefs import message_definition

COMPRESSION = {"none": CompressionType.NONE, "": CompressionType.NONE, "zstd": CompressionType.ZSTD,
               "lz4": CompressionType.LZ4}
LIBRARY = "wam_policy-recorder"
#: libyaml's emitter where PyYAML has it (the same text): the pure-Python one took 60-240 ms of the writer
#: thread (holding the GIL) for each metadata.yaml rewrite, every metadata_period_s, on a 2-core machine;
#: the chunk in progress waited for it — time a kill -9 could lose on top of flush_period_s
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(obj) -> str:
    return yaml.dump(obj, Dumper=_DUMPER, default_flow_style=False, sort_keys=False)


class BagError(RuntimeError):
    """The bag cannot be written (path exists, bad option)."""


@dataclass
class QosSpec:
    """One offered QoS profile, in the words of rosbag2's metadata (v9)."""
    reliability: str = "reliable"      # reliable | best_effort
    durability: str = "volatile"       # volatile | transient_local
    history: str = "keep_last"
    depth: int = 10

    def as_dict(self) -> dict:
        inf = {"sec": 9223372036, "nsec": 854775807}
        return {"history": self.history, "depth": int(self.depth), "reliability": self.reliability,
                "durability": self.durability, "deadline": dict(inf), "lifespan": dict(inf),
                "liveliness": "automatic", "liveliness_lease_duration": dict(inf),
                "avoid_ros_namespace_conventions": False}


def qos_yaml(profiles: Sequence[QosSpec]) -> str:
    """The ``offered_qos_profiles`` string rosbag2 stores in MCAP channel metadata."""
    return _dump([p.as_dict() for p in profiles]).strip() if profiles else ""


@dataclass
class _Topic:
    name: str
    msgtype: str
    qos: list[QosSpec]
    count: int = 0
    channel_id: int | None = None  # in the current file


@dataclass
class _File:
    path: Path
    start_ns: int = 0
    end_ns: int = 0
    count: int = 0
    bytes: int = 0
    episodes: list[int] = field(default_factory=list)


class BagWriter:
    """Writes a rosbag2 MCAP bag; not thread-safe (the recorder's writer thread owns it)."""

    def __init__(self, path: str | os.PathLike, compression: str = "none", chunk_bytes: int = 4 << 20,
                 max_file_bytes: int = 0, max_file_duration_s: float = 0.0, flush_period_s: float = 0.1,
                 metadata_period_s: float = 1.0, fsync: bool = False):
        self.path = Path(path)
        if compression not in COMPRESSION:
            raise BagError(f"compression '{compression}' is not one of {', '.join(k for k in COMPRESSION if k)}")
        if self.path.exists() and any(self.path.iterdir()):
            raise BagError(f"bag '{self.path}' exists and is not empty; not overwriting")
        self.path.mkdir(parents=True, exist_ok=True)
        self.compression = compression if compression != "" else "none"
        self.chunk_bytes = int(chunk_bytes)
        self.max_file_bytes = int(max_file_bytes)
        self.max_file_duration_ns = int(max_file_duration_s * 1e9)
        self.flush_period_s = float(flush_period_s)
        self.metadata_period_s = float(metadata_period_s)
        self.fsync = bool(fsync)
        self.topics: dict[str, _Topic] = {}
        self.files: list[_File] = []
        self.custom: dict[str, str] = {}
        self._writer: Writer | None = None
        self._stream = None
        self._schemas: dict[str, int] = {}
        self._dirty = False
        self._last_flush = time.monotonic()
        self._last_meta = 0.0
        self.closed = False
        self._open_file()

    # -- topics and messages -------------------------------------------------------------
    def add_topic(self, name: str, msgtype: str, qos: Sequence[QosSpec] = ()) -> None:
        """Declare a topic (idempotent for the same type); its definition must be resolvable."""
        old = self.topics.get(name)
        if old is not None and (old.count or old.msgtype == msgtype):
            if old.msgtype != msgtype:
                raise BagError(f"topic '{name}' already recorded as {old.msgtype}, not {msgtype}")
            if qos and old.count == 0:  # nothing written yet: the offered QoS may still be corrected
                old.qos = list(qos)
            return
        message_definition(msgtype)  # raises UnknownTypeError early
        self.topics[name] = _Topic(name, msgtype, list(qos))
        self._write_metadata()

    def _channel(self, t: _Topic) -> int:
        if t.channel_id is None:
            assert self._writer is not None
            if t.msgtype not in self._schemas:
                d = message_definition(t.msgtype)
                self._schemas[t.msgtype] = self._writer.register_schema(t.msgtype, d.encoding, d.text.encode())
            d = message_definition(t.msgtype)
            t.channel_id = self._writer.register_channel(
                t.name, "cdr", self._schemas[t.msgtype],
                {"offered_qos_profiles": qos_yaml(t.qos), "topic_type_hash": d.rihs01})
        return t.channel_id

    def write(self, topic: str, log_ns: int, data: bytes | memoryview, publish_ns: int | None = None) -> None:
        t = self.topics.get(topic)
        if t is None:
            raise BagError(f"topic '{topic}' was not added")
        f = self.files[-1]
        if f.count and ((self.max_file_bytes and f.bytes + len(data) > self.max_file_bytes)
                        or (self.max_file_duration_ns and log_ns - f.start_ns > self.max_file_duration_ns)):
            self.split()
            f = self.files[-1]
        cid = self._channel(t)
        assert self._writer is not None
        self._writer.add_message(cid, int(log_ns), data, int(publish_ns if publish_ns is not None else log_ns), t.count)
        t.count += 1
        if f.count == 0:
            f.start_ns = f.end_ns = int(log_ns)
        f.start_ns = min(f.start_ns, int(log_ns))
        f.end_ns = max(f.end_ns, int(log_ns))
        f.count += 1
        f.bytes += len(data) + 31
        self._dirty = True

    def mark_episode(self, episode: int) -> None:
        """Note that the current file holds (the start of) ``episode`` (metadata custom_data)."""
        f = self.files[-1]
        if episode not in f.episodes:
            f.episodes.append(int(episode))

    @property
    def current_file_episodes(self) -> list[int]:
        return list(self.files[-1].episodes) if self.files else []

    @property
    def current_file_messages(self) -> int:
        return self.files[-1].count if self.files else 0

    # -- files -----------------------------------------------------------------------------
    def _open_file(self) -> None:
        idx = len(self.files)
        fpath = self.path / f"{self.path.name}_{idx}.mcap"
        self._stream = open(fpath, "xb")
        self._writer = Writer(self._stream, chunk_size=self.chunk_bytes, compression=COMPRESSION[self.compression])
        self._writer.start(profile="ros2", library=LIBRARY)
        self._stream.flush()
        self._schemas = {}
        for t in self.topics.values():
            t.channel_id = None
        self.files.append(_File(fpath))
        self._write_metadata()

    def _finish_file(self) -> None:
        if self._writer is None:
            return
        self._writer.add_metadata("rosbag2", {"serialized_metadata": self._metadata_text(inner=True)})
        self._writer.finish()
        self._stream.flush()
        if self.fsync:
            os.fsync(self._stream.fileno())
        self._stream.close()
        self._writer = self._stream = None

    def split(self) -> None:
        """Close the current file and continue in the next one (no-op on an empty file)."""
        if not self.files[-1].count:
            return
        self._finish_file()
        self._open_file()

    def maybe_flush(self, now: float | None = None) -> bool:
        """Flush the chunk in progress when ``flush_period_s`` has passed; rewrite metadata when due."""
        now = time.monotonic() if now is None else now
        flushed = False
        if self._dirty and now - self._last_flush >= self.flush_period_s:
            self.flush()
            flushed = True
        if now - self._last_meta >= self.metadata_period_s:
            self._write_metadata()
        return flushed

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            if self.fsync:
                os.fsync(self._stream.fileno())
        self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self.closed:
            return
        self._finish_file()
        self.closed = True
        self._write_metadata()

    # -- metadata.yaml ---------------------------------------------------------------------
    def metadata(self) -> dict:
        files = [f for f in self.files]
        counts = sum(f.count for f in files)
        nonempty = [f for f in files if f.count]
        start = min((f.start_ns for f in nonempty), default=0)
        end = max((f.end_ns for f in nonempty), default=0)
        custom = dict(self.custom)
        custom["wam_policy.file_episodes"] = json.dumps({f.path.name: f.episodes for f in files})
        return build_metadata(
            files=[{"path": f.path.name, "start_ns": f.start_ns, "duration_ns": max(0, f.end_ns - f.start_ns),
                    "count": f.count} for f in files],
            topics=[{"name": t.name, "type": t.msgtype, "qos": [q.as_dict() for q in t.qos],
                     "hash": message_definition(t.msgtype).rihs01, "count": t.count}
                    for t in self.topics.values() if t.count],
            start_ns=start, duration_ns=max(0, end - start), count=counts,
            compression=self.compression, custom=custom)

    def _metadata_text(self, inner: bool = False) -> str:
        meta = self.metadata()
        return _dump(meta["rosbag2_bagfile_information"] if inner else meta)

    def _write_metadata(self) -> None:
        write_metadata_file(self.path, self._metadata_text())
        self._last_meta = time.monotonic()


def build_metadata(files: list[dict], topics: list[dict], start_ns: int, duration_ns: int, count: int,
                   compression: str = "none", custom: dict | None = None) -> dict:
    """rosbag2 ``metadata.yaml`` content (version 9) from file and topic summaries."""
    return {"rosbag2_bagfile_information": {
        "version": 9,
        "storage_identifier": "mcap",
        "duration": {"nanoseconds": int(duration_ns)},
        "starting_time": {"nanoseconds_since_epoch": int(start_ns)},
        "message_count": int(count),
        "topics_with_message_count": [
            {"topic_metadata": {"name": t["name"], "type": t["type"], "serialization_format": "cdr",
                                "offered_qos_profiles": t["qos"], "type_description_hash": t["hash"]},
             "message_count": int(t["count"])} for t in topics],
        "compression_format": "",
        "compression_mode": "",
        "relative_file_paths": [f["path"] for f in files],
        "files": [{"path": f["path"], "starting_time": {"nanoseconds_since_epoch": int(f["start_ns"])},
                   "duration": {"nanoseconds": int(f["duration_ns"])}, "message_count": int(f["count"])}
                  for f in files],
        "custom_data": {str(k): str(v) for k, v in (custom or {}).items()},
        "ros_distro": "jazzy",
    }}


def write_metadata_file(bag_dir: Path, text: str) -> None:
    tmp = Path(bag_dir) / "metadata.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, Path(bag_dir) / "metadata.yaml")
