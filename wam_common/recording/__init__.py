"""Recording: the recorder node and the bag layers, pure Python below the node (rosbags' model).

- :mod:`.node` — the ``recorder`` ROS node: raw subscriptions → queue → writer thread;
- :mod:`.writer` — :class:`~.writer.BagWriter`, rosbag2-layout MCAP files + ``metadata.yaml``;
- :mod:`.msgdefs` — ``ros2msg`` definitions and RIHS01 hashes from the installed packages;
- :mod:`.repair` — finish files a crashed recorder left without summary/footer;
- :mod:`.bag` — reading helpers (:class:`~.bag.Bag`, ``image``, ``json_event``, ``decode``);
- :mod:`.export_lerobot` — ``wam-policy export-lerobot``;
- :mod:`.topics` — the default topic set (the graph contract's) and its QoS.

See docs/RECORDING.md.
"""
