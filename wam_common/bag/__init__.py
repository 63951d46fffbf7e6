"""rosbag2 MCAP bags, pure Python (no ROS runtime): the format layer under the recorder node and the apps.

- :mod:`.writer` — :class:`~.writer.BagWriter`, rosbag2-layout MCAP files + ``metadata.yaml``;
- :mod:`.reader` — reading helpers (:class:`~.reader.Bag`, ``image``, ``json_event``, ``decode``);
- :mod:`.msgdefs` — ``ros2msg`` definitions and RIHS01 hashes from the installed packages;
- :mod:`.repair` — finish files a crashed recorder left without summary/footer.

The ``recorder`` node is :mod:`recorder.node`; ``wam-policy export-lerobot`` is
:mod:`wam_apps.export_lerobot`. See docs/RECORDING.md.
"""
