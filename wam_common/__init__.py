"""The ground layer of the wam_policy package: shared ROS glue, config, the graph description, codecs.

Nothing here imports a node package or an app (tests/test_layers.py). Configuration and the graph
description (`config`, `graph`, `policies`, `launch_description`, `launcher`), ROS parameter plumbing
(`params`), QoS profiles (`qos`), the zero-copy image CDR codec (`imageio`), the topic table
(`topics`), the robot's constants (`aloha`), rosbag2 MCAP bags (`bag`), and the node entry wrapper
(`node_main`). The nodes are the packages beside it; the CLI and tools are in `wam_apps`.
"""
