"""The package's Python log lines (the lerobot backend's load and warm-up progress) reach the ROS logger
of the node that forwards them — a real rclpy node, its console output read back — and stop when the node
closes."""
from __future__ import annotations

import logging

import pytest

pytestmark = pytest.mark.ros


def test_package_log_lines_reach_the_nodes_ros_logger(ros_context, capfd):
    from rclpy.node import Node

    from wam_common.node_main import RosLogHandler, forward_logging, stop_forwarding

    node = Node("log_forwarding_probe", context=ros_context)
    logger = logging.getLogger("wam_policy.backend.lerobot")
    try:
        handler = forward_logging(node)
        logger.info("lerobot: ready, first action after %.1f s", 12.5)
        logger.warning("lerobot: something to look at")
        logger.debug("not shown")
        stop_forwarding(handler)
        logger.info("after the node closed")
    finally:
        node.destroy_node()
    err = capfd.readouterr()
    text = err.err + err.out
    assert "[log_forwarding_probe]: lerobot: ready, first action after 12.5 s" in text, text
    assert "WARN" in text and "something to look at" in text
    assert "not shown" not in text and "after the node closed" not in text
    assert not any(isinstance(h, RosLogHandler) for h in logging.getLogger("wam_policy").handlers)
    assert logging.getLogger("wam_policy").propagate


def test_a_policy_node_that_fails_to_start_leaves_no_forwarder(ros_context):
    """A config error while the node starts (here: rate_hz 0) raises, and the package logger is as it was."""
    import pytest
    from rclpy.parameter import Parameter

    from wam_common.config import ConfigError
    from wam_common.node_main import RosLogHandler
    from wam_policy_node.node import WamPolicyNode

    logger = logging.getLogger("wam_policy")
    before = (logger.level, logger.propagate)
    with pytest.raises(ConfigError, match="rate_hz"):
        WamPolicyNode(context=ros_context, parameter_overrides=[Parameter("rate_hz", value=0.0)])
    assert not any(isinstance(h, RosLogHandler) for h in logger.handlers)
    assert (logger.level, logger.propagate) == before
