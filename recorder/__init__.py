"""The ``recorder`` node: every topic of the graph contract into rosbag2 MCAP bags (docs/RECORDING.md).

- :mod:`.node` — the ROS shell: raw subscriptions → queue → writer thread (:mod:`wam_common.bag.writer`);
- :mod:`.topics` — the default topic set (the graph contract's) and the QoS it asks for.
"""
