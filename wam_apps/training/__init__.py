"""Demonstrations → LeRobotDataset (``collect``), LeRobot training + shipping (``train``), and a
ROS-free closed-loop check of a checkpoint in the sim core (``rollout``)."""
