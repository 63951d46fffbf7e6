"""perturbation_node: the study's sensor-stream perturbations, injected into a live ROS 2 graph.

- :mod:`.ops`: pure numpy/OpenCV operations, registered by name, levels 1–5, deterministic for a seed;
- :mod:`.language`: instruction rewrites (paraphrase, synonym, reorder, distractor, typo);
- :mod:`.profiles`: ``config/perturbations/*.yaml`` → validated :class:`~.profiles.Profile`;
- :mod:`.engine`: the pure core the node wraps (per-episode seeds, per-camera targeting, temporal ops);
- :mod:`.node`: the thin ROS shell. (``wam-policy perturb-sheet`` is :mod:`wam_apps.sheets.perturb`.)
"""
