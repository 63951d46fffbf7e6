"""Shared fixtures: an exclusive ROS_DOMAIN_ID per test, an rclpy context on it, a probe node.

Every test graph runs on its own domain (file-locked lease) with loopback-only discovery, so
parallel tests (pytest -n) never cross-talk.
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
