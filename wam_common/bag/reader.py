"""Reading bags for analysis, evaluation, replay and export (rosbags' ``AnyReader``, no ROS runtime).

``open_bag(path)`` accepts a rosbag2 directory or a single ``.mcap`` file; a bag a crashed
recorder left unfinished is repaired first (see :mod:`.repair`). Messages come back in log
time order as :class:`BagMessage` with the raw CDR bytes; :meth:`Bag.decode` turns them into
rosbags message objects (types from the definitions embedded in the bag), :func:`image` into
numpy through :mod:`wam_common.imageio`, :func:`json_event` into dicts.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from wam_common import imageio
from wam_common.bag.repair import RepairError, bag_mcap_files, is_complete, needs_repair, repair_bag, repair_mcap

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"


class BagReadError(RuntimeError):
    """A path that is not a readable bag (message names the path and why)."""


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_ns: int
    data: bytes


def _corrupt() -> tuple[type[BaseException], ...]:
    """What the MCAP / rosbags readers raise on damaged bytes (a bad record length, a chunk whose CRC
    fails, a file that ends mid-record, a torn compressed chunk): reported as :class:`BagReadError`."""
    import struct
    import zlib

    from mcap.exceptions import McapError
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2.errors import ReaderError

    out: list[type[BaseException]] = [McapError, ReaderError, AnyReaderError, struct.error, zlib.error, EOFError,
                                      ValueError, KeyError, IndexError, UnicodeDecodeError]
    with _suppress_import():
        import zstandard

        out.append(zstandard.ZstdError)
    with _suppress_import():
        import lz4.frame  # noqa: F401

        out.append(RuntimeError)  # lz4.frame raises RuntimeError on a damaged frame
    return tuple(out)


class _suppress_import:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, ImportError)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def prepare(path: str | os.PathLike, repair: bool = True) -> Path:
    """A bag path ready for rosbags: repairs an unfinished bag (in place) when ``repair``."""
    try:
        return _prepare(Path(path), repair)
    except BagReadError:
        raise
    except (RepairError, OSError, *_corrupt()) as exc:
        raise BagReadError(f"{path}: cannot read ({_why(exc)})") from None


def _prepare(p: Path, repair: bool) -> Path:
    if not p.exists():
        raise BagReadError(f"{p}: no such bag")
    if p.is_dir():
        if not any(p.glob("*.mcap")) and not (p / "metadata.yaml").is_file():
            raise BagReadError(f"{p}: not a bag directory (no metadata.yaml, no .mcap files)")
        if any(p.glob("*.mcap")) and needs_repair(p):
            if not repair:
                raise BagReadError(f"{p}: unfinished bag (recorder crashed?); repair it first")
            repair_bag(p)
        return p
    if p.suffix == ".mcap" and not is_complete(p):
        if not repair:
            raise BagReadError(f"{p}: unfinished MCAP file; repair it first")
        repair_mcap(p)
    return p


class Bag:
    """One or more bags read together, messages merged in log time order."""

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike], repair: bool = True):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [prepare(p, repair) for p in paths]
        if not self.paths:
            raise BagReadError("no bag given")
        self._reader = None
        self._custom: dict = {}

    def __enter__(self) -> "Bag":
        from rosbags.highlevel import AnyReader

        # Every MCAP file is its own reader: AnyReader merges readers by log time, whereas a
        # rosbag2 directory reader plays its files one after the other (a message received just
        # before an episode split but written after it would come out of order).
        files: list[Path] = []
        self._custom = {}
        for p in self.paths:
            if p.is_dir():
                files += bag_mcap_files(p)
                self._custom.update(_custom_data(p))
            else:
                files.append(p)
        try:
            self._reader = AnyReader(files)
            self._reader.open()
        except Exception as exc:  # noqa: BLE001 - name the bag
            self._reader = None
            raise BagReadError(f"{', '.join(map(str, self.paths))}: cannot open ({exc})") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self):
        if self._reader is None:
            raise BagReadError("bag is not open (use 'with Bag(...) as bag')")
        return self._reader

    @property
    def topics(self) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self.reader.connections}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.reader.connections:
            out[c.topic] = out.get(c.topic, 0) + c.msgcount
        return out

    @property
    def custom_data(self) -> dict:
        """metadata.yaml ``custom_data`` of the bag directories (labels, file → episodes)."""
        return dict(self._custom)

    @property
    def start_ns(self) -> int:
        return self.reader.start_time

    @property
    def end_ns(self) -> int:
        return self.reader.end_time

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        wanted = set(topics) if topics is not None else None
        conns = [c for c in self.reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        it = self.reader.messages(connections=conns)
        while True:
            try:
                c, t, raw = next(it)
            except StopIteration:
                return
            except _corrupt() as exc:  # damaged bytes in a chunk: name the bag, not rosbags' internals
                raise BagReadError(f"{', '.join(map(str, self.paths))}: corrupt data ({_why(exc)})") from None
            yield BagMessage(c.topic, c.msgtype, t, raw)

    def decode(self, msg: BagMessage):
        """The message object: rclpy's class when the type is installed (its deserializer is the
        one the wire was written with, and it tolerates the trailing bytes Fast-CDR's size
        computation leaves after empty float64 sequences, which rosbags rejects), else a rosbags
        dataclass built from the bag's own definitions."""
        return decode(msg, self.reader)


def _custom_data(bag_dir: Path) -> dict:
    import yaml

    try:
        info = yaml.safe_load((bag_dir / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        custom = info.get("custom_data") or {}
        return custom if isinstance(custom, dict) else {}
    except Exception:  # noqa: BLE001 - metadata is optional for reading
        return {}


def decode(msg: BagMessage, reader=None):
    """See :meth:`Bag.decode`; without a reader only installed (rclpy) types decode."""
    from rclpy.serialization import deserialize_message

    from wam_common.bag.msgdefs import UnknownTypeError, message_class

    try:
        cls = message_class(msg.msgtype)
    except UnknownTypeError:
        if reader is None:
            raise
        return reader.deserialize(msg.data, msg.msgtype)
    return deserialize_message(msg.data, cls)


def image(msg: BagMessage) -> imageio.DecodedImage:
    """An Image / CompressedImage message as a DecodedImage (rgb8 for compressed colour)."""
    if msg.msgtype == IMAGE:
        return imageio.decode_image(msg.data)
    if msg.msgtype == COMPRESSED:
        c = imageio.decode_compressed(msg.data)
        arr, enc = imageio.compressed_to_array(c)
        return imageio.DecodedImage(c.stamp, c.frame_id, enc, arr)
    raise imageio.ImageDecodeError(f"{msg.topic}: {msg.msgtype} is not an image type")


def rgb(msg: BagMessage) -> np.ndarray:
    return imageio.to_rgb(image(msg))


def string(msg: BagMessage) -> str:
    """The text of a std_msgs/String without a full deserializer."""
    b = msg.data
    if len(b) < 8:
        raise ValueError(f"{msg.topic}: truncated std_msgs/String")
    n = int.from_bytes(b[4:8], "little")
    return bytes(b[8:8 + max(0, n - 1)]).decode("utf-8", errors="replace")


def json_event(msg: BagMessage) -> dict | None:
    """A JSON-object std_msgs/String payload as a dict; None when it is not one."""
    try:
        obj = json.loads(string(msg))
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None
