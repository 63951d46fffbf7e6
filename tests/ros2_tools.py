"""The real ROS 2 tools for the front-door tests: ``colcon build`` of a copy of this package, then the
upstream ``ros2`` CLI (``launch``, ``param``, ``node``, ``topic``) in a shell that sourced the workspace;
and the readers people open our bags with (``rosbags``; ``mcap`` + ``mcap-ros2-support``).

Where a system ROS 2 is installed (``/opt/ros/<distro>/setup.bash``) it is sourced and used; otherwise
the tools come from the project venv, where ``scripts/install.sh`` put the upstream jazzy wheels of
``../shared/ros2-jazzy-tools/`` (launch, launch_ros, ros2cli, …) and colcon from PyPI.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
TOOLS = ("launch", "launch_ros", "ros2launch", "ros2cli", "ros2param", "ros2node", "ros2topic")


def system_ros() -> Path | None:
    distro = os.environ.get("ROS_DISTRO", "jazzy")
    setup = Path(f"/opt/ros/{distro}/setup.bash")
    return setup if setup.is_file() else None


def versions() -> dict[str, str]:
    """The tool versions in use (distribution name → version); empty when they are not installed."""
    out = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def missing() -> str | None:
    """Why the tools cannot run here (None: they can)."""
    if system_ros():
        return None
    have = versions()
    lack = [t for t in TOOLS if t not in have]
    if lack:
        return f"no system ROS 2 and the venv lacks {lack} (scripts/install.sh installs them from ../shared/ros2-jazzy-tools)"
    if shutil.which("colcon", path=str(VENV / "bin")) is None:
        return "colcon is not installed in the venv"
    return None


def describe() -> str:
    if system_ros():
        return f"ROS 2 from {system_ros()}"
    v = versions()
    return "ROS 2 tools from the venv (../shared/ros2-jazzy-tools wheels): " + ", ".join(f"{k} {v[k]}" for k in TOOLS if k in v)


class Workspace:
    """A colcon workspace holding a copy of this package, built once (``build_args``: e.g.
    ``--symlink-install``)."""

    def __init__(self, root: Path, domain_id: int, build_args: str = ""):
        self.root = root
        self.domain_id = domain_id
        src = root / "src" / "wam_policy"
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        for f in files:
            if (ROOT / f).is_file():
                (src / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, src / f)
        self.build_log = self.run(f"colcon build --event-handlers console_direct- {build_args}", sourced=False,
                                  timeout=600)

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COLCON_"))}
        if not system_ros():
            env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '')}"
            env["AMENT_PREFIX_PATH"] = str(VENV)
            env["VIRTUAL_ENV"] = str(VENV)
        env.update(ROS_DOMAIN_ID=str(self.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   MUJOCO_GL=env.get("MUJOCO_GL", "egl"), PYOPENGL_PLATFORM=env.get("PYOPENGL_PLATFORM", "egl"),
                   ROS_LOG_DIR=str(self.root / "ros_log"), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # the installed package, not the source tree
        return env

    def shell(self, cmd: str, sourced: bool = True) -> list[str]:
        pre = [f"source {system_ros()}"] if system_ros() else []
        if sourced:
            pre.append(f"source {self.root / 'install' / 'setup.bash'}")
        return ["bash", "-c", " && ".join(pre + [f"cd {self.root / 'run'}", cmd]) if pre else cmd]

    def run(self, cmd: str, sourced: bool = True, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        cwd = self.root if not sourced else self.root / "run"
        p = subprocess.run(self.shell(cmd, sourced) if sourced else ["bash", "-c", cmd], cwd=cwd, env=self.env(),
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"`{cmd}` exited {p.returncode}:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
        return p

    def start(self, cmd: str, log: Path) -> subprocess.Popen:
        """``cmd`` in its own process group (as a terminal runs it), output into ``log``."""
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        f = open(log, "w")  # noqa: SIM115 - closed by stop()
        p = subprocess.Popen(self.shell(cmd), cwd=self.root / "run", env=self.env(), stdout=f,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        p.log_file, p.log_path = f, log
        return p


def signal_group(p: subprocess.Popen, sig=signal.SIGINT) -> None:
    os.killpg(p.pid, sig)


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL what is left of ``p``'s process group (a launch and its nodes), e.g. after a failed test."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def wait_exit(p: subprocess.Popen, timeout: float) -> int:
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise AssertionError(f"still running after {timeout} s: {p.args}\n{read_log(p)[-4000:]}") from None
    finally:
        p.log_file.close()


def read_log(p: subprocess.Popen) -> str:
    if not p.log_file.closed:
        p.log_file.flush()
    return Path(p.log_path).read_text(errors="replace")


def wait_log(p: subprocess.Popen, text: str, timeout: float) -> bool:
    """``text`` appears in the process's output (polled), or the process ended, or ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in read_log(p):
            return True
        if p.poll() is not None:
            return text in read_log(p)
        time.sleep(0.1)  # the polling interval
    return False


def bag_messages(bag: Path) -> dict[str, list]:
    """Every message of a bag, per topic, deserialized by ``rosbags``; ``mcap`` with ``mcap-ros2-support``
    (Foxglove's reader) must decode the same messages. Both read the files as they are (no repair): a
    file that was not closed (no summary, no footer) fails here."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.highlevel import AnyReader

    msgs: dict[str, list] = {}
    with AnyReader([bag]) as reader:
        for conn, _, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    via_mcap: dict[str, int] = {}
    for f in sorted(bag.glob("*.mcap")):
        with open(f, "rb") as fh:
            r = make_reader(fh, decoder_factories=[DecoderFactory()])
            assert r.get_summary() is not None, f"{f.name}: no summary (the file was not closed)"
            for _, channel, _, _ in r.iter_decoded_messages():
                via_mcap[channel.topic] = via_mcap.get(channel.topic, 0) + 1
    assert via_mcap == {t: len(m) for t, m in msgs.items()}, (via_mcap, {t: len(m) for t, m in msgs.items()})
    return msgs


def bag_counts(bag: Path) -> dict[str, int]:
    """Messages per topic (:func:`bag_messages`)."""
    return {t: len(m) for t, m in bag_messages(bag).items()}
