"""``realsense_cameras``: RealSense colour cameras by serial → realsense2_camera topics.

Publishes ``/<cam>/camera/color/image_rect_raw`` (sensor_msgs/Image rgb8, frame_id
``<cam>_color_optical_frame``, raw CDR via :mod:`wam_common.imageio`) and
``/<cam>/camera/color/camera_info`` (intrinsics, same stamp) for cam_high,
cam_left_wrist, cam_right_wrist and, when its serial is set, cam_low — the names
realsense2_camera uses with ``camera_namespace:=<cam>``, so the rest of the graph does not
care which of the two runs. Stamps are the frames' hardware timestamps mapped onto ROS time
(:mod:`robot_io.clock_sync`). An unplugged camera is reported (log + /diagnostics) and
reopened every ``reconnect_s``; a missing serial is an error that lists the connected ones.

``playback_dir`` replaces USB devices with the RealSense recordings (``.db3``) in a folder,
one per serial (see :func:`robot_io.realsense.write_recording`).
"""
from __future__ import annotations

import os
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from wam_common import qos, topics
from wam_common.config import ConfigError
from wam_common.imageio import Stamp, encode_image
from wam_common.node_main import run_node
from wam_common.params import declare_tree
from wam_common.schema import Param, check, defaults, publishes

from .realsense import CameraStatus, CameraWorker, FrameSource, discover

NAME = "realsense_cameras"

PARAMS = {
    "serials": {cam: Param(None, f"serial number of {cam} (quote it in YAML: \"0123...\" must stay a string; a bare "
                                 "number is taken too)" + (" — \"\" = not started" if cam in topics.OPTIONAL_CAMERAS
                                                           else ""), kind="string")
                for cam in topics.CAMERAS + topics.OPTIONAL_CAMERAS},
    "width": Param(640, "colour image width (px)", range=(1, 1920)),
    "height": Param(480, "colour image height (px)", range=(1, 1080)),
    "fps": Param(30, "frame rate the cameras are opened with", range=(1, 90)),
    "auto_exposure": Param(False, "auto exposure (ALOHA runs with fixed exposure)"),
    "exposure_us": Param(0.0, "manual exposure when > 0 (auto exposure off; µs); 0 keeps the device's value",
                         range=(0.0, None)),
    "lost_after_s": Param(1.0, "no frame this long → the camera counts as unplugged (s)", range=(0.001, None)),
    "reconnect_s": Param(1.0, "how often an unplugged or missing camera is looked for again (s)",
                         range=(0.001, None)),
    "playback_dir": Param("", "a folder of RealSense recordings (.db3, one per serial) streamed instead of USB "
                          "cameras"),
    "playback_loop": Param(False, "a recording that ends restarts at once (false: it counts as unplugged)"),
    "diagnostics_period_s": Param(1.0, "period of the camera status on /diagnostics (s)", range=(0.001, None)),
}
DEFAULTS = defaults(PARAMS)


def camera_info_topic(cam: str) -> str:
    """realsense2_camera's ``/<cam>/camera/color/camera_info``."""
    return topics.camera_topic(cam).rsplit("/", 1)[0] + "/camera_info"


def endpoints(cfg: dict) -> list:
    """The node's topics for a validated config (docs/NODES.md; tests/test_ros2_params.py holds them against the
    running node): one image and one camera_info topic per camera (cam_low when it has a serial)."""
    out = []
    for cam in [*topics.CAMERAS, *(c for c in topics.OPTIONAL_CAMERAS if cfg["serials"][c] not in (None, ""))]:
        out += [publishes(topics.camera_topic(cam), Image, qos.sensor(False), f"camera {cam} (rgb8, hardware "
                          "timestamps on ROS time)"),
                publishes(camera_info_topic(cam), CameraInfo, qos.sensor(False), f"intrinsics of {cam} (same stamp)")]
    return out + [publishes(topics.DIAGNOSTICS, DiagnosticArray, 10, "per camera: state, fps, reconnects, clock "
                            "offset")]


def camera_info(intr, frame_id: str) -> CameraInfo:
    """sensor_msgs/CameraInfo from librealsense intrinsics (as realsense2_camera fills it)."""
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.width, msg.height = intr.width, intr.height
    msg.distortion_model = "plumb_bob"
    msg.d = list(intr.coeffs[:5]) + [0.0] * max(0, 5 - len(intr.coeffs))
    msg.k = [intr.fx, 0.0, intr.ppx, 0.0, intr.fy, intr.ppy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [intr.fx, 0.0, intr.ppx, 0.0, 0.0, intr.fy, intr.ppy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def validate(cfg: dict, connected: dict | None = None) -> dict[str, str]:
    """The cameras to open (cam → serial); ConfigError naming the key otherwise."""
    have = ""
    if connected is not None:
        have = " (connected serials: " + (", ".join(f"{s} ({i.name})" for s, i in sorted(connected.items())) or "none") + ")"
    cams: dict[str, str] = {}
    for cam, serial in cfg["serials"].items():
        if isinstance(serial, bool) or not isinstance(serial, (str, int)) and serial is not None:
            raise ConfigError(f"node '{NAME}': parameter 'serials.{cam}' must be a serial number string, got {serial!r}")
        serial = "" if serial is None else str(serial).strip()
        if cam in topics.CAMERAS and not serial:
            raise ConfigError(f"node '{NAME}': parameter 'serials.{cam}' is empty: set the camera's serial number{have}")
        if serial:
            cams[cam] = serial
    seen: dict[str, str] = {}
    for cam, serial in cams.items():
        if serial in seen:
            raise ConfigError(f"node '{NAME}': parameters 'serials.{seen[serial]}' and 'serials.{cam}' "
                              f"are the same serial {serial}")
        seen[serial] = cam
    check(PARAMS, cfg, f"node '{NAME}'")
    return cams


class RealsenseNode(Node):
    def __init__(self):
        super().__init__(NAME, automatically_declare_parameters_from_overrides=False)
        cfg = declare_tree(self, PARAMS)
        playback = cfg["playback_dir"] or None
        if playback and not os.path.isdir(playback):
            raise ConfigError(f"node '{NAME}': parameter 'playback_dir': no such folder {playback}")
        try:
            connected = discover(playback)
        except Exception as exc:  # noqa: BLE001 - e.g. libusb missing: say so, do not crash
            raise ConfigError(f"node '{NAME}': cannot list RealSense devices: {exc}") from None
        self.cameras = validate(cfg, connected)
        self.cfg = cfg
        self._lock = threading.Lock()
        self._pubs = {cam: self.create_publisher(Image, topics.camera_topic(cam), qos.sensor(False))
                      for cam in self.cameras}
        self._info_pubs = {cam: self.create_publisher(CameraInfo, camera_info_topic(cam), qos.sensor(False))
                           for cam in self.cameras}
        self._info: dict[str, tuple] = {}  # cam → (intrinsics, CameraInfo)
        self._diag = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self._rate: dict[str, list] = {cam: [0, time.monotonic()] for cam in self.cameras}
        missing = [c for c, s in self.cameras.items() if s not in connected]
        if missing:
            from .realsense import CameraNotFound

            for cam in missing:
                self.get_logger().error(str(CameraNotFound(cam, self.cameras[cam], connected))
                                        + f"; retrying every {cfg['reconnect_s']:g} s")
        self.workers = [
            CameraWorker(
                FrameSource(cam, serial, cfg["width"], cfg["height"], cfg["fps"], cfg["auto_exposure"],
                            cfg["exposure_us"], playback),
                on_frame=self._on_frame, on_status=self._on_status, host_clock=self._now_ns,
                lost_after_s=cfg["lost_after_s"], reconnect_s=cfg["reconnect_s"], loop=cfg["playback_loop"],
            )
            for cam, serial in self.cameras.items()
        ]
        self._workers = {w.source.cam: w for w in self.workers}
        for w in self.workers:
            w.start()
        self.create_timer(float(cfg["diagnostics_period_s"]), self._publish_diagnostics)
        self.get_logger().info(
            f"cameras {', '.join(f'{c}={s}' for c, s in self.cameras.items())}; "
            f"{cfg['width']}x{cfg['height']} rgb8 @ {cfg['fps']} fps; auto exposure "
            f"{'on' if cfg['auto_exposure'] else 'off'}" + (f"; playback from {playback}" if playback else ""))

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_frame(self, cam: str, rgb, stamp_ns: int, frame) -> None:
        stamp = Stamp.from_ns(stamp_ns)
        raw = encode_image(rgb, "rgb8", stamp, topics.camera_frame(cam))
        self._pubs[cam].publish(raw)
        intr = self._workers[cam].source.intrinsics
        if intr is not None:
            cached = self._info.get(cam)
            if cached is None or cached[0] != intr:
                cached = self._info[cam] = (intr, camera_info(intr, topics.camera_frame(cam)))
            info = cached[1]
            info.header.stamp.sec, info.header.stamp.nanosec = stamp.sec, stamp.nanosec
            self._info_pubs[cam].publish(info)
        with self._lock:
            self._rate[cam][0] += 1

    def _on_status(self, st: CameraStatus) -> None:
        log = self.get_logger()
        if st.state == "streaming":
            log.info(st.message)
            for note in st.notes:
                log.warning(f"camera '{st.cam}': {note}")
        elif st.state in ("missing", "lost", "error"):
            log.error(st.message)

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        now = time.monotonic()
        for w in self.workers:
            st = w.status
            with self._lock:
                n, t0 = self._rate[st.cam]
                self._rate[st.cam] = [0, now]
            fps = n / max(1e-6, now - t0)
            level = DiagnosticStatus.OK if st.state == "streaming" else DiagnosticStatus.ERROR
            if level == DiagnosticStatus.OK and st.notes:
                level = DiagnosticStatus.WARN
            ds = DiagnosticStatus(level=level, name=f"{NAME}: {st.cam}", hardware_id=st.serial, message=st.message)
            vals = {"state": st.state, "serial": st.serial, "frames": st.frames, "fps": f"{fps:.2f}",
                    "reconnects": st.reconnects, "clock_resets": st.clock_resets, "loops": st.loops,
                    "auto_exposure": st.auto_exposure, "topic": topics.camera_topic(st.cam),
                    "offset_ms": "" if st.offset_ns is None else f"{st.offset_ns / 1e6:.3f}",
                    "notes": "; ".join(st.notes)}
            ds.values = [KeyValue(key=k, value=str(v)) for k, v in vals.items()]
            arr.status.append(ds)
        self._diag.publish(arr)

    def close(self) -> None:
        for w in self.workers:
            w.stop()


def main(args: list[str] | None = None) -> int:
    return run_node(RealsenseNode, NAME, args)


if __name__ == "__main__":
    sys.exit(main())
