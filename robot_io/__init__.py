"""Real ALOHA hardware (docs/ROBOT.md).

- ``realsense``: pyrealsense2 core without ROS — discovery by serial, a colour frame source,
  the reconnect worker; recordings via ``rs.software_device`` stand in for cameras.
- ``clock_sync``: hardware clock → ROS time (lower-envelope offset, drift, wrap, restart).
- ``realsense_node``: the ``realsense_cameras`` node (realsense2_camera topic names).
- ``interbotix_adapter``: COMMAND → Interbotix follower arms (or per-arm Float64MultiArray).

The operator tools (``wam-policy preflight``, ``operator``, ``cameras``) are in :mod:`wam_apps.robot`.
"""
