"""Finish MCAP files a crashed recorder left without summary and footer (``kill -9``, power cut).

:func:`repair_mcap` scans the data section record by record, keeps every complete record
(chunks are CRC-checked; a torn last chunk is dropped), and rewrites the file with the mcap
library so it gets message indexes, a summary and a footer — then ``ros2 bag``, rosbags and
Foxglove open it. :func:`repair_bag` does that for every unfinished file of a bag directory
and regenerates ``metadata.yaml`` from what the files really hold.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from mcap.writer import CompressionType, Writer

from wam_common.bag.writer import build_metadata, write_metadata_file

MAGIC = b"\x89MCAP0\r\n"
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


class RepairError(RuntimeError):
    """The file is not an MCAP file at all (bad magic / header)."""


def is_complete(path: str | os.PathLike) -> bool:
    """True when the file ends with a footer record and the closing magic."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8 + 9 + 37:
        return False
    with open(path, "rb") as f:
        f.seek(-37, 2)
        tail = f.read(37)
    return tail[-8:] == MAGIC and tail[0] == 0x02


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf, pos=0):
        self.buf, self.pos = buf, pos

    def u16(self):
        v = _U16.unpack_from(self.buf, self.pos)[0]
        self.pos += 2
        return v

    def u32(self):
        v = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u64(self):
        v = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def bytes_(self, n):
        if self.pos + n > len(self.buf):
            raise ValueError("truncated")
        v = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return v

    def string(self):
        return self.bytes_(self.u32()).decode()

    def str_map(self):
        end = self.pos + self.u32()
        out = {}
        while self.pos < end:
            k = self.string()
            out[k] = self.string()
        return out


def _records(buf, pos: int, end: int):
    """Yield (opcode, start, stop) of complete records; stop at the first torn one."""
    while pos + 9 <= end:
        op = buf[pos]
        length = _U64.unpack_from(buf, pos + 1)[0]
        start = pos + 9
        if start + length > end:
            return
        yield op, start, start + length
        pos = start + length


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    raise ValueError(f"unknown chunk compression '{compression}'")


@dataclass
class RepairReport:
    path: str
    messages: int
    dropped_tail_bytes: int
    was_complete: bool


def repair_mcap(path: str | os.PathLike) -> RepairReport:
    """Rewrite an unfinished MCAP file in place (atomically) with everything that survived."""
    path = Path(path)
    if is_complete(path):
        return RepairReport(str(path), -1, 0, True)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size < 8 or fh.read(8) != MAGIC:
            raise RepairError(f"{path}: not an MCAP file (bad magic)")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _rewrite(path, buf, size)
    finally:
        buf.close()


def _rewrite(path: Path, buf, size: int) -> RepairReport:
    tmp = path.with_name(path.name + ".repair")
    profile, library = "ros2", "wam_policy-repair"
    schemas: dict[int, int] = {}
    channels: dict[int, int] = {}
    compression = None
    messages = 0
    good_end = 8
    out = open(tmp, "wb")
    writer = None

    def ensure_writer():
        nonlocal writer
        if writer is None:
            ctype = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4}.get(compression or "", CompressionType.NONE)
            writer = Writer(out, compression=ctype, chunk_size=4 << 20)
            writer.start(profile=profile, library=library)
        return writer

    def handle(op, rec: _Cursor):
        nonlocal messages
        if op == 0x03:  # schema
            sid = rec.u16()
            name, enc = rec.string(), rec.string()
            data = rec.bytes_(rec.u32())
            if sid not in schemas:
                schemas[sid] = ensure_writer().register_schema(name, enc, data)
        elif op == 0x04:  # channel
            cid, sid = rec.u16(), rec.u16()
            topic, enc = rec.string(), rec.string()
            meta = rec.str_map()
            if cid not in channels:
                channels[cid] = ensure_writer().register_channel(topic, enc, schemas.get(sid, 0), meta)
        elif op == 0x05:  # message
            cid, seq, log_t, pub_t = rec.u16(), rec.u32(), rec.u64(), rec.u64()
            data = bytes(rec.buf[rec.pos:])
            if cid in channels:
                ensure_writer().add_message(channels[cid], log_t, data, pub_t, seq)
                messages += 1

    try:
        for op, start, stop in _records(buf, 8, size):
            rec = _Cursor(memoryview(buf)[start:stop])
            try:
                if op == 0x01:
                    profile, library = rec.string(), rec.string()
                elif op == 0x06:  # chunk
                    rec.u64(), rec.u64()
                    usize, crc = rec.u64(), rec.u32()
                    comp = rec.string()
                    data = rec.bytes_(rec.u64())
                    raw = _decompress(data, comp, usize)
                    if len(raw) != usize or (crc and zlib.crc32(raw) != crc):
                        break
                    if compression is None:
                        compression = comp
                    inner = memoryview(raw)
                    for iop, istart, istop in _records(inner, 0, len(inner)):
                        handle(iop, _Cursor(inner[istart:istop]))
                elif op in (0x03, 0x04, 0x05):
                    handle(op, rec)
                elif op == 0x0C:  # metadata
                    name = rec.string()
                    ensure_writer().add_metadata(name, rec.str_map())
                elif op in (0x0F, 0x02):  # data end / footer: the rest is summary
                    good_end = stop
                    break
            except (ValueError, struct.error, UnicodeDecodeError):
                break
            good_end = stop
        ensure_writer().finish()
        out.flush()
        os.fsync(out.fileno())
    finally:
        out.close()
    os.replace(tmp, path)
    return RepairReport(str(path), messages, max(0, size - good_end), False)


# -- bag directories ---------------------------------------------------------------------------
def _file_index(p: Path) -> tuple[int, str]:
    m = re.search(r"_(\d+)\.mcap$", p.name)
    return (int(m.group(1)) if m else 1 << 30, p.name)


def bag_mcap_files(bag_dir: Path) -> list[Path]:
    """The bag's MCAP files in order: metadata.yaml's list, then any the metadata missed."""
    listed: list[Path] = []
    meta = bag_dir / "metadata.yaml"
    if meta.is_file():
        try:
            info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
            listed = [bag_dir / Path(p).name for p in info.get("relative_file_paths", [])]
        except Exception:  # noqa: BLE001 - torn or foreign metadata: fall back to the directory
            listed = []
    found = sorted(bag_dir.glob("*.mcap"), key=_file_index)
    return [p for p in listed if p.exists()] + [p for p in found if p not in listed]


def needs_repair(bag_dir: str | os.PathLike) -> bool:
    bag_dir = Path(bag_dir)
    files = bag_mcap_files(bag_dir)
    if not (bag_dir / "metadata.yaml").is_file():
        return True
    try:
        info = yaml.safe_load((bag_dir / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        listed = {Path(p).name for p in info.get("relative_file_paths", [])}
    except Exception:  # noqa: BLE001
        return True
    return any(not is_complete(f) for f in files) or listed != {f.name for f in files}


def repair_bag(bag_dir: str | os.PathLike) -> list[RepairReport]:
    """Finish every unfinished MCAP file of ``bag_dir`` and rewrite its metadata.yaml."""
    bag_dir = Path(bag_dir)
    reports = [repair_mcap(f) for f in bag_mcap_files(bag_dir)]
    write_metadata_file(bag_dir, yaml.safe_dump(metadata_from_files(bag_dir), default_flow_style=False, sort_keys=False))
    return reports


def metadata_from_files(bag_dir: Path) -> dict:
    """rosbag2 metadata rebuilt from the MCAP summaries (custom_data kept from the old file)."""
    from mcap.reader import make_reader

    custom: dict = {}
    meta = bag_dir / "metadata.yaml"
    if meta.is_file():
        try:
            custom = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"].get("custom_data") or {}
        except Exception:  # noqa: BLE001
            custom = {}
    custom["wam_policy.repaired"] = "true"
    files, topics = [], {}
    for f in bag_mcap_files(bag_dir):
        with open(f, "rb") as fh:
            summary = make_reader(fh).get_summary()
        st = summary.statistics if summary else None
        count = st.message_count if st else 0
        start = st.message_start_time if st and count else 0
        end = st.message_end_time if st and count else 0
        files.append({"path": f.name, "start_ns": start, "duration_ns": max(0, end - start), "count": count})
        if summary is None:
            continue
        for cid, ch in summary.channels.items():
            schema = summary.schemas.get(ch.schema_id)
            t = topics.setdefault(ch.topic, {
                "name": ch.topic, "type": schema.name if schema else "",
                "qos": yaml.safe_load(ch.metadata.get("offered_qos_profiles") or "[]") or [],
                "hash": ch.metadata.get("topic_type_hash", ""), "count": 0})
            t["count"] += st.channel_message_counts.get(cid, 0) if st else 0
    nonempty = [f for f in files if f["count"]]
    start = min((f["start_ns"] for f in nonempty), default=0)
    end = max((f["start_ns"] + f["duration_ns"] for f in nonempty), default=0)
    return build_metadata(files, list(topics.values()), start, max(0, end - start),
                          sum(f["count"] for f in files), custom={k: (v if isinstance(v, str) else json.dumps(v))
                                                                  for k, v in custom.items()})
