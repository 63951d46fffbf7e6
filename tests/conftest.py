"""Shared fixtures: an exclusive ROS_DOMAIN_ID per test, an rclpy context on it, a probe node.

Every test graph runs on its own domain (file-locked lease) with loopback-only discovery, so
parallel tests (pytest -n) never cross-talk.

Tiers (markers registered in pyproject.toml): ``unit`` (pure, fast) or ``ros`` (DDS, subprocesses);
a test in both, or a ``unit`` test asking for a ROS fixture, is a usage error. Pure tests that build
models on the CPU or start worker processes have neither (``make test`` runs them; their module says why).
``gpu`` tests are skipped where torch sees no CUDA device.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import pytest  # noqa: E402


@pytest.fixture
def domain_id():
    from wam_common.launcher import DomainLease

    lease = DomainLease()
    old = os.environ.get("ROS_DOMAIN_ID")
    os.environ["ROS_DOMAIN_ID"] = str(lease.domain_id)
    yield lease.domain_id
    if old is None:
        os.environ.pop("ROS_DOMAIN_ID", None)
    else:
        os.environ["ROS_DOMAIN_ID"] = old
    lease.release()


@pytest.fixture(scope="session")
def ros2_ws(tmp_path_factory):
    """One colcon workspace of this package, built once per run, on its own leased domain, for the
    real-tools tests (tests/ros2_tools.py); skipped where the tools are missing."""
    import ros2_tools
    from wam_common.launcher import DomainLease

    if ros2_tools.missing() is not None:
        pytest.skip(str(ros2_tools.missing()))
    lease = DomainLease()
    yield ros2_tools.Workspace(tmp_path_factory.mktemp("ws"), lease.domain_id)
    lease.release()


@pytest.fixture
def ros_context(domain_id):
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    yield ctx
    ctx.try_shutdown()


@pytest.fixture
def probe(ros_context):
    from rosutil import Probe

    p = Probe(ros_context)
    yield p
    p.close()


TIERS = ("unit", "ros")
ROS_FIXTURES = {"domain_id", "ros_context", "probe", "ros2_ws"}  # a unit test uses none of these


def pytest_collection_modifyitems(config, items):
    both = [it.nodeid for it in items if all(it.get_closest_marker(t) for t in TIERS)]
    ros_in_unit = [f"{it.nodeid} ({', '.join(sorted(ROS_FIXTURES & set(it.fixturenames)))})" for it in items
                   if it.get_closest_marker("unit") and ROS_FIXTURES & set(getattr(it, "fixturenames", ()))]
    problems = ([f"both unit and ros: {n}" for n in both]
                + [f"marked unit but uses a ROS fixture: {n}" for n in ros_in_unit])
    if problems:
        raise pytest.UsageError("test tiers (tests/conftest.py):\n  " + "\n  ".join(problems))
    gpu = [it for it in items if it.get_closest_marker("gpu")]
    if gpu and not _cuda():
        skip = pytest.mark.skip(reason="gpu: torch sees no CUDA device")
        for it in gpu:
            it.add_marker(skip)


def pytest_ignore_collect(collection_path, config):
    """``-m <one marker>`` (make test-unit / test-ros): a test module whose text never names
    ``mark.<marker>`` has no such test, so it is not imported at all — collecting the model and
    engine modules (torch, transformers, diffusers) would take longer than the unit tests run."""
    expr = (config.getoption("markexpr", "") or "").strip()
    if (expr.isidentifier() and collection_path.suffix == ".py" and collection_path.name.startswith("test_")
            and f"mark.{expr}" not in collection_path.read_text(errors="replace")):
        return True
    return None


def _cuda() -> bool:
    try:
        import torch  # imported only when a gpu test is collected
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# ``unit`` stays honest at run time too: while a unit test runs (its fixtures included), starting
# DDS (rclpy.init), a subprocess or a multiprocessing worker fails the test, naming what it did.
_running_unit: list[str] = []


class UnitTierViolation(AssertionError):
    pass


def _guard(what: str, fn):
    def wrapper(*args, **kwargs):
        if _running_unit:
            raise UnitTierViolation(f"{_running_unit[0]} is marked unit but {what}: mark it ros (or no tier)")
        return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn
    return wrapper


def pytest_configure(config):
    import multiprocessing.process
    import subprocess

    subprocess.Popen.__init__ = _guard("starts a subprocess", subprocess.Popen.__init__)
    multiprocessing.process.BaseProcess.start = _guard("starts a multiprocessing worker",
                                                       multiprocessing.process.BaseProcess.start)
    try:
        import rclpy
    except ImportError:
        return
    rclpy.init = _guard("starts DDS (rclpy.init)", rclpy.init)


_sigint_leaks: list[str] = []


def _sigint_state() -> tuple[bool, bool]:
    """(ignored, blocked) for SIGINT in this thread, as the kernel has it (/proc): a C library can change it
    without Python's signal module knowing."""
    import re
    import signal
    from pathlib import Path

    try:
        txt = Path("/proc/thread-self/status").read_text()
    except OSError:
        return False, False
    bit = 1 << (signal.SIGINT - 1)
    ign = int(re.search(r"SigIgn:\s*([0-9a-f]+)", txt).group(1), 16)
    blk = int(re.search(r"SigBlk:\s*([0-9a-f]+)", txt).group(1), 16)
    return bool(ign & bit), bool(blk & bit)


def _restore_sigint() -> tuple[bool, bool]:
    ignored, blocked = _sigint_state()
    if ignored or blocked:
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return ignored, blocked


def pytest_sessionstart(session):
    """A suite started as a background job of a non-interactive shell (``make test &``, nohup, a CI step
    that backgrounds it) gets SIGINT ignored from that shell (POSIX), and every node and ``ros2 launch``
    it starts inherits that: the Ctrl-C tests would fail for a reason not theirs. Give it back."""
    ignored, blocked = _restore_sigint()
    if ignored or blocked:
        _sigint_leaks.append(f"the start of the session ({'ignored' if ignored else ''}{' blocked' if blocked else ''}: "
                             "inherited from the shell that started pytest)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("unit"):
        _running_unit.append(item.nodeid)
    try:
        return (yield)
    finally:
        _running_unit.clear()
        # SIGINT ignored or blocked in the test process is inherited by every subprocess started after it
        # (a Python child then installs no KeyboardInterrupt handler, bash keeps it ignored for `ros2 launch`):
        # Ctrl-C tests of later modules would fail for a reason not theirs. Restore it, and name the test.
        ignored, blocked = _restore_sigint()
        if ignored or blocked:
            _sigint_leaks.append(f"{item.nodeid} ({'ignored' if ignored else ''}{' blocked' if blocked else ''})")


def pytest_terminal_summary(terminalreporter):
    """Name the ROS 2 tools the real-tools tier used (tests/ros2_tools.py), also under ``-q``."""
    import ros2_tools

    terminalreporter.write_line(f"ROS 2 tools: {ros2_tools.describe() if not ros2_tools.missing() else ros2_tools.missing()}")
    for leak in _sigint_leaks:
        terminalreporter.write_line(f"SIGINT ignored/blocked in the test process (restored) after: {leak}")
