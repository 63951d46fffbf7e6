"""ROS 2 message definitions for MCAP schemas, as rosbag2_storage_mcap embeds them.

A schema is the ``.msg`` text of the type followed by every type it references, each after a
line of 80 ``=`` and ``MSG: pkg/Type`` — the ``ros2msg`` encoding that ``ros2 bag``, Foxglove,
rosbags and mcap-ros2-support decode. Texts and RIHS01 type hashes come from the installed
message packages (``share/<pkg>/msg/<Type>.msg`` and the ``.json`` type descriptions next to
them); rosbags' Jazzy typestore is the fallback when a package ships no share files.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

SEPARATOR = "=" * 80


class UnknownTypeError(LookupError):
    """A message type whose definition or Python class cannot be found."""


@dataclass(frozen=True)
class MsgDef:
    msgtype: str   # "sensor_msgs/msg/Image"
    encoding: str  # "ros2msg"
    text: str      # concatenated definition
    rihs01: str    # "RIHS01_…" or "" when unknown


def _split(msgtype: str) -> tuple[str, str, str]:
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise UnknownTypeError(f"malformed message type '{msgtype}' (expected pkg/msg/Type)")
    return parts[0], parts[1], parts[2]


def _prefixes() -> list[Path]:
    out = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    out.append(Path(sys.prefix))
    return out


def _share_file(msgtype: str, suffix: str) -> Path | None:
    pkg, sub, name = _split(msgtype)
    for prefix in _prefixes():
        p = prefix / "share" / pkg / sub / f"{name}{suffix}"
        if p.is_file():
            return p
    try:  # next to the installed python package (pip wheels: <prefix>/lib/python3.x/site-packages/pkg)
        mod = importlib.import_module(pkg)
        base = Path(mod.__file__).resolve().parents[3] if mod.__file__ else None
        if base is not None:
            p = base / "share" / pkg / sub / f"{name}{suffix}"
            if p.is_file():
                return p
    except Exception:  # noqa: BLE001 - not importable: no share files
        pass
    return None


@functools.lru_cache(maxsize=None)
def message_definition(msgtype: str) -> MsgDef:
    """The concatenated ``ros2msg`` definition and RIHS01 hash of ``msgtype``."""
    pkg, sub, name = _split(msgtype)
    full = f"{pkg}/{sub}/{name}"
    msg_path, json_path = _share_file(full, ".msg"), _share_file(full, ".json")
    if msg_path is not None and json_path is not None:
        desc = json.loads(json_path.read_text())
        hashes = {h["type_name"]: h["hash_string"] for h in desc.get("type_hashes", [])}
        refs = [r["type_name"] for r in desc["type_description_msg"].get("referenced_type_descriptions", [])]
        parts = [msg_path.read_text()]
        for ref in refs:
            ref_path = _share_file(ref, ".msg")
            if ref_path is None:
                raise UnknownTypeError(f"definition of '{ref}' (referenced by {full}) not found")
            rp, _, rn = _split(ref)
            text = ref_path.read_text()
            parts.append(f"{'' if parts[-1].endswith(chr(10)) else chr(10)}{SEPARATOR}\nMSG: {rp}/{rn}\n{text}")
        return MsgDef(full, "ros2msg", "".join(parts), hashes.get(full, ""))
    return _from_typestore(full)


def _from_typestore(msgtype: str) -> MsgDef:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    if msgtype not in store.fielddefs:
        raise UnknownTypeError(f"no definition for message type '{msgtype}' (no share/ files, not in rosbags' Jazzy typestore)")
    text, _ = store.generate_msgdef(msgtype, ros_version=2)
    return MsgDef(msgtype, "ros2msg", text, store.hash_rihs01(msgtype))


@functools.lru_cache(maxsize=None)
def message_class(msgtype: str):
    """The rclpy message class for ``pkg/msg/Type``."""
    pkg, sub, name = _split(msgtype)
    try:
        mod = importlib.import_module(f"{pkg}.{sub}")
        return getattr(mod, name)
    except (ImportError, AttributeError) as exc:
        raise UnknownTypeError(f"cannot import message type '{msgtype}' ({exc})") from None


def type_name(cls) -> str:
    """``sensor_msgs.msg.Image`` class → ``sensor_msgs/msg/Image``."""
    mod = cls.__module__.split(".")
    return f"{mod[0]}/{mod[1]}/{cls.__name__}"
