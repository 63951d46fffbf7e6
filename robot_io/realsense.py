"""The pyrealsense2 core, no ROS: device discovery, a colour frame source, a per-camera worker.

Devices are USB cameras, or RealSense recordings (``.db3`` written by ``rs.recorder``) found
in a folder: both are devices of a ``pyrealsense2.context`` with a serial number, so the same
code opens either by serial. :func:`write_recording` makes such a recording from numpy
frames through ``rs.software_device`` (what the tests use; no hardware needed).

- :func:`discover` → ``{serial: DeviceInfo}``; :class:`CameraNotFound` names the camera,
  the serial asked for and every serial that is connected.
- :class:`FrameSource` streams one camera's colour stream (W×H rgb8 at fps), turns
  auto-exposure off (where the device lets it), returns :class:`Frame` s.
- :class:`CameraWorker` is the reconnect loop in a thread: open → read → map the hardware
  timestamp to host time (:class:`robot_io.clock_sync.HardwareClockMapper`) → ``on_frame``;
  no frame for ``lost_after_s`` → the camera counts as unplugged, is closed and reopened
  every ``reconnect_s`` until it streams again. A frame is handed on once: a camera that
  stops never produces frozen frames downstream.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .clock_sync import HardwareClockMapper

RECORDING_SUFFIXES = (".db3", ".bag")


class CameraNotFound(RuntimeError):
    """A configured serial is not connected; the message lists what is."""

    def __init__(self, cam: str, serial: str, connected: dict):
        self.cam, self.serial, self.connected = cam, serial, dict(connected)
        have = ", ".join(f"{s} ({i.name})" for s, i in sorted(self.connected.items())) or "none"
        super().__init__(f"camera '{cam}': serial {serial} is not connected (connected serials: {have})")


class CameraError(RuntimeError):
    """The device is there but cannot stream what was asked (profile, permissions, ...)."""


@dataclass(frozen=True)
class DeviceInfo:
    serial: str
    name: str
    path: str = ""  # the recording file for playback devices, "" for USB devices

    @property
    def is_recording(self) -> bool:
        return bool(self.path)


@dataclass(frozen=True)
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str  # librealsense distortion model name
    coeffs: tuple[float, ...]


@dataclass
class Frame:
    rgb: np.ndarray  # H×W×3 uint8
    hw_ms: float  # device timestamp (ms, in ``domain``)
    domain: str  # "hardware_clock" | "system_time" | "global_time"
    number: int  # device frame counter
    host_ns: int  # host clock when the frame reached us


def _rs():
    try:
        import pyrealsense2 as rs
    except ImportError as exc:  # pragma: no cover - installed in the venv
        raise CameraError(f"pyrealsense2 is not importable ({exc}); pip install pyrealsense2 "
                          "(needs Debian's libusb-1.0-0)") from None
    return rs


def recordings_in(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in RECORDING_SUFFIXES and p.is_file())


class _Context:
    """A pyrealsense2 context holding either USB devices or the recordings in ``playback_dir``."""

    def __init__(self, playback_dir: str | Path | None = None):
        rs = _rs()
        self.rs = rs
        self.ctx = rs.context()
        self.playback_dir = Path(playback_dir) if playback_dir else None
        self._loaded = []  # the playback devices must stay referenced while the context lives
        self.paths: dict[str, str] = {}
        if self.playback_dir is not None:
            for path in recordings_in(self.playback_dir):
                try:
                    dev = self.ctx.load_device(str(path))
                except RuntimeError:
                    continue  # half-written or foreign file: not a device
                self._loaded.append(dev)
                self.paths[dev.get_info(rs.camera_info.serial_number)] = str(path)

    def devices(self) -> dict[str, DeviceInfo]:
        rs = self.rs
        out = {}
        for dev in self.ctx.query_devices():
            try:
                serial = dev.get_info(rs.camera_info.serial_number)
                name = dev.get_info(rs.camera_info.name) if dev.supports(rs.camera_info.name) else "RealSense"
            except RuntimeError:
                continue  # unplugged while we looked
            out[serial] = DeviceInfo(serial, name, self.paths.get(serial, ""))
        return out


def discover(playback_dir: str | Path | None = None) -> dict[str, DeviceInfo]:
    """Serial → DeviceInfo of every connected camera (or every recording in ``playback_dir``)."""
    return _Context(playback_dir).devices()


def check_serials(wanted: dict[str, str], connected: dict[str, DeviceInfo]) -> None:
    """Raise CameraNotFound for the first camera whose serial is not connected."""
    for cam, serial in wanted.items():
        if serial not in connected:
            raise CameraNotFound(cam, serial, connected)


# ---------------------------------------------------------------------------------------------
# sensor options


def _color_sensor(rs, device):
    """The sensor that produces the colour stream (D405: the stereo module; D435: the RGB camera)."""
    for sensor in device.query_sensors():
        for p in sensor.get_stream_profiles():
            if p.stream_type() == rs.stream.color:
                return sensor
    return None


def configure_exposure(sensor, auto_exposure: bool, exposure_us: float = 0.0) -> list[str]:
    """Turn auto-exposure on/off (and set a manual exposure if > 0) where the sensor allows it.

    Returns warnings (one line each) for what could not be done; never raises for an option
    the device does not have or cannot change (recordings are read-only)."""
    rs = _rs()
    notes: list[str] = []
    want = 1.0 if auto_exposure else 0.0
    opt = rs.option.enable_auto_exposure
    if not sensor.supports(opt):
        notes.append("auto exposure: option not supported by this sensor")
    else:
        try:
            if sensor.get_option(opt) != want:
                sensor.set_option(opt, want)
        except RuntimeError as exc:
            cur = "on" if sensor.get_option(opt) else "off"
            notes.append(f"auto exposure: cannot set {'on' if want else 'off'} ({exc}); it is {cur}")
    if not auto_exposure and exposure_us > 0:
        eo = rs.option.exposure
        if not sensor.supports(eo):
            notes.append("exposure: option not supported by this sensor")
        else:
            try:
                rng = sensor.get_option_range(eo)
                val = min(max(float(exposure_us), rng.min), rng.max)
                if rng.step > 0:  # the device accepts min + k*step only
                    val = min(rng.min + round((val - rng.min) / rng.step) * rng.step, rng.max)
                sensor.set_option(eo, float(val))
            except RuntimeError as exc:
                notes.append(f"exposure: cannot set {exposure_us} us ({exc})")
    return notes


def auto_exposure_state(sensor) -> str:
    rs = _rs()
    opt = rs.option.enable_auto_exposure
    if sensor is None or not sensor.supports(opt):
        return "unsupported"
    return "on" if sensor.get_option(opt) else "off"


# ---------------------------------------------------------------------------------------------
# one camera's stream


class FrameSource:
    """One camera's colour stream, opened by serial. ``read()`` → Frame | None (timeout)."""

    def __init__(self, cam: str, serial: str, width: int = 640, height: int = 480, fps: int = 30,
                 auto_exposure: bool = False, exposure_us: float = 0.0, playback_dir: str | Path | None = None):
        self.cam, self.serial = cam, str(serial)
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.auto_exposure, self.exposure_us = bool(auto_exposure), float(exposure_us)
        self.playback_dir = playback_dir
        self.notes: list[str] = []
        self.auto_exposure_state = "unknown"
        self.info: DeviceInfo | None = None
        self.intrinsics: Intrinsics | None = None
        self._ctx = None
        self._pipe = None
        self._playback = None

    @property
    def is_open(self) -> bool:
        return self._pipe is not None

    @property
    def ended(self) -> bool:
        """A recording that has played to its end (USB cameras never end: they time out)."""
        pb = self._playback
        if pb is None:
            return False
        try:
            return pb.current_status() == _rs().playback_status.stopped
        except RuntimeError:
            return True

    def open(self) -> DeviceInfo:
        """Find the serial and start streaming; CameraNotFound / CameraError otherwise."""
        self.close()
        ctx = _Context(self.playback_dir)
        rs = ctx.rs
        connected = ctx.devices()
        if self.serial not in connected:
            raise CameraNotFound(self.cam, self.serial, connected)
        info = connected[self.serial]
        cfg = rs.config()
        cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        pipe = rs.pipeline(ctx.ctx)
        try:
            profile = pipe.start(cfg)
        except RuntimeError as exc:
            raise CameraError(f"camera '{self.cam}' (serial {self.serial}): cannot stream color "
                              f"{self.width}x{self.height} rgb8 @ {self.fps} fps: {exc}") from None
        device = profile.get_device()
        try:
            it = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
            self.intrinsics = Intrinsics(int(it.width), int(it.height), float(it.fx), float(it.fy), float(it.ppx),
                                         float(it.ppy), str(it.model).rsplit(".", 1)[-1],
                                         tuple(float(c) for c in it.coeffs))
        except RuntimeError:
            self.intrinsics = None  # a stream without calibration: no camera_info
        self.notes = []
        playback = None
        if device.is_playback():
            playback = device.as_playback()
            playback.set_real_time(True)  # frames at their recorded pace, like a camera
        sensor = _color_sensor(rs, device)
        if sensor is not None:
            if sensor.supports(rs.option.global_time_enabled) and not device.is_playback():
                try:  # we map the raw hardware clock ourselves (clock_sync)
                    sensor.set_option(rs.option.global_time_enabled, 0)
                except RuntimeError:
                    pass
            self.notes = configure_exposure(sensor, self.auto_exposure, self.exposure_us)
        self.auto_exposure_state = auto_exposure_state(sensor)
        self._ctx, self._pipe, self._playback, self.info = ctx, pipe, playback, info
        return info

    def read(self, timeout_s: float = 0.5, host_clock: Callable[[], int] = time.time_ns) -> Frame | None:
        if self._pipe is None:
            raise CameraError(f"camera '{self.cam}': not open")
        try:
            ok, frames = self._pipe.try_wait_for_frames(max(1, int(timeout_s * 1000)))
        except RuntimeError:
            return None  # device gone mid-wait: the worker counts it as a lost frame
        host_ns = host_clock()
        if not ok:
            return None
        color = frames.get_color_frame()
        if not color:
            return None
        vf = color.as_video_frame()
        rgb = np.asanyarray(vf.get_data())
        if rgb.ndim != 3 or rgb.shape != (self.height, self.width, 3):
            return None
        return Frame(
            rgb=np.array(rgb, copy=True),  # the librealsense buffer is recycled after this call
            hw_ms=float(color.get_timestamp()),
            domain=str(color.get_frame_timestamp_domain()).rsplit(".", 1)[-1],
            number=int(color.get_frame_number()),
            host_ns=host_ns,
        )

    def close(self) -> None:
        self._playback = None
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            try:
                pipe.stop()
            except RuntimeError:
                pass
        self._ctx = None


# ---------------------------------------------------------------------------------------------
# the reconnect loop


@dataclass
class CameraStatus:
    cam: str
    serial: str
    state: str = "connecting"  # connecting | streaming | lost | missing | error
    message: str = ""
    frames: int = 0
    reconnects: int = 0
    clock_resets: int = 0
    loops: int = 0  # recordings replayed from the start (playback with loop)
    last_stamp_ns: int = 0
    offset_ns: int | None = None
    auto_exposure: str = "unknown"
    notes: list[str] = field(default_factory=list)


class CameraWorker:
    """A thread per camera: open, stream, map timestamps, reopen after an unplug.

    ``on_frame(cam, rgb, stamp_ns, frame)`` runs in the worker thread for each new frame;
    ``on_status(status)`` whenever the state changes (streaming, lost, missing, error)."""

    def __init__(self, source: FrameSource, on_frame: Callable, on_status: Callable | None = None,
                 host_clock: Callable[[], int] = time.time_ns, lost_after_s: float = 1.0,
                 reconnect_s: float = 1.0, mapper: HardwareClockMapper | None = None, loop: bool = False):
        self.source = source
        self.on_frame, self.on_status = on_frame, on_status or (lambda s: None)
        self.host_clock = host_clock
        self.lost_after_s, self.reconnect_s = float(lost_after_s), float(reconnect_s)
        self.loop = bool(loop)  # a recording that ends restarts at once (else: it counts as unplugged)
        self.mapper = mapper or HardwareClockMapper()
        self.status = CameraStatus(source.cam, source.serial)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rs_{source.cam}", daemon=True)
        self._last_number = None
        self._last_domain = None

    def start(self) -> "CameraWorker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.source.close()

    def _set(self, state: str, message: str = "") -> None:
        changed = (state, message) != (self.status.state, self.status.message)
        self.status.state, self.status.message = state, message
        if changed:
            self.on_status(self.status)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                info = self.source.open()
            except CameraNotFound as exc:
                self._set("missing", str(exc))
            except Exception as exc:  # noqa: BLE001 - a camera problem must not end the thread
                self._set("error", f"camera '{self.source.cam}': {exc}")
            else:
                if not first:
                    self.status.reconnects += 1
                first = False
                self.status.auto_exposure = self.source.auto_exposure_state
                self.status.notes = list(self.source.notes)
                where = f" from recording {Path(info.path).name}" if info.is_recording else ""
                self._set("streaming", f"camera '{self.source.cam}' streaming: serial {info.serial} ({info.name}){where}")
                ended = self._stream()
                self.source.close()
                if self._stop.is_set():
                    break
                if ended and self.loop:
                    self.status.loops += 1
                    first = True  # a replay, not a reconnect
                    continue  # replay the recording from its start right away
                self._set("lost", f"camera '{self.source.cam}' (serial {self.source.serial}): no frame for "
                                  f"{self.lost_after_s:g} s, unplugged? reconnecting every {self.reconnect_s:g} s")
            self._stop.wait(self.reconnect_s)

    def _stream(self) -> bool:
        """Hand on frames until the camera is lost (False) or its recording ended (True)."""
        last_ok = time.monotonic()
        while not self._stop.is_set():
            try:
                frame = self.source.read(min(0.05 if self.loop else 0.2, self.lost_after_s), self.host_clock)
            except Exception:  # noqa: BLE001
                frame = None
            now = time.monotonic()
            if frame is None:
                if self.loop and self.source.ended:
                    return True
                if now - last_ok > self.lost_after_s:
                    return False
                continue
            if frame.number == self._last_number and frame.domain == self._last_domain and self.status.frames:
                continue  # the same frame again: never hand on a frozen frame
            last_ok = now
            self._last_number, self._last_domain = frame.number, frame.domain
            if frame.domain != getattr(self, "_mapped_domain", frame.domain):
                self.mapper.reset()
            self._mapped_domain = frame.domain
            m = self.mapper.map(int(round(frame.hw_ms * 1e6)), frame.host_ns)
            if m.reset and self.status.frames:
                self.status.clock_resets += 1
            self.status.frames += 1
            self.status.last_stamp_ns = m.stamp_ns
            self.status.offset_ns = m.offset_ns
            try:
                self.on_frame(self.source.cam, frame.rgb, m.stamp_ns, frame)
            except Exception as exc:  # noqa: BLE001 - a publishing problem must not end the camera
                self._set("error", f"camera '{self.source.cam}': frame callback failed: {exc}")


# ---------------------------------------------------------------------------------------------
# recordings without hardware


def synthetic_frame(i: int, width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A frame whose content encodes its index (pixel [0,0] = (i % 256, i // 256 % 256, seed))."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (np.arange(width, dtype=np.uint32)[None, :] + i) % 256
    img[..., 1] = (np.arange(height, dtype=np.uint32)[:, None] + 2 * i) % 256
    img[..., 2] = seed % 256
    img[0, 0] = (i % 256, (i // 256) % 256, seed % 256)
    return img


def frame_index(rgb: np.ndarray) -> int:
    """Inverse of :func:`synthetic_frame`'s index stamp."""
    return int(rgb[0, 0, 0]) + 256 * int(rgb[0, 0, 1])


def write_recording(path: str | Path, serial: str, frames: Iterable[np.ndarray] | int, fps: int = 30,
                    t0_ms: float = 1000.0, name: str = "Intel RealSense D405", auto_exposure: bool | None = None,
                    pace: bool = True, seed: int = 0, width: int = 640, height: int = 480) -> Path:
    """Record colour frames as a RealSense recording (``rs.software_device`` + ``rs.recorder``).

    ``frames``: arrays H×W×3 uint8, or a count of :func:`synthetic_frame` s. Hardware timestamps
    start at ``t0_ms`` and advance 1000/fps ms per frame (domain hardware_clock). ``pace``
    sleeps 1/fps between frames, since playback in real time follows the recording's pace.
    ``auto_exposure`` (None → no option) is stored as the sensor's read-only option."""
    rs = _rs()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    if isinstance(frames, int):
        frames = (synthetic_frame(i, width, height, seed) for i in range(frames))
    dev = rs.software_device()
    dev.register_info(rs.camera_info.serial_number, str(serial))
    dev.register_info(rs.camera_info.name, name)
    sensor = dev.add_sensor("RGB Camera")
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid = rs.stream.color, 0, 0
    vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = width, height, fps, 3, rs.format.rgb8
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy = width, height, 0.95 * width, 0.95 * width
    intr.ppx, intr.ppy, intr.model = width / 2, height / 2, rs.distortion.none
    vs.intrinsics = intr
    profile = sensor.add_video_stream(vs).as_video_stream_profile()
    if auto_exposure is not None:
        sensor.add_read_only_option(rs.option.enable_auto_exposure, 1.0 if auto_exposure else 0.0)
    recorder = rs.recorder(str(path), dev)
    queue = rs.frame_queue(4)
    sensor.open(profile)
    sensor.start(queue)
    period = 1.0 / fps
    start = time.monotonic()
    for i, img in enumerate(frames):
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if img.shape != (height, width, 3):
            raise ValueError(f"frame {i}: shape {img.shape}, expected {(height, width, 3)}")
        if pace:
            delay = start + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        f = rs.software_video_frame()
        f.pixels = img
        f.bpp, f.stride = 3, width * 3
        f.timestamp = t0_ms + i * 1000.0 / fps
        f.domain = rs.timestamp_domain.hardware_clock
        f.frame_number = i
        f.profile = profile
        sensor.on_video_frame(f)
        while True:  # drain so the software sensor never blocks
            ok, _ = queue.try_wait_for_frame(0)
            if not ok:
                break
    sensor.stop()
    sensor.close()
    del recorder  # closes the file
    return path
