"""The applications on top of the graph: they start nodes, read bags and print tables; no node imports them.

- :mod:`.cli` — the ``wam-policy`` command (``demo``, ``up``, ``graph``, and the verbs below);
- :mod:`.evaluation` — ``wam-policy eval``: suites × seeds through the full graph, the study's table;
- :mod:`.training` — ``wam-policy collect`` / ``train``: scripted demos → dataset → LeRobot training;
- :mod:`.analysis` — ``wam-policy analyze`` / ``parity``: per-episode metrics from bags, sim vs real;
- :mod:`.export_lerobot` — ``wam-policy export-lerobot``: bags → LeRobotDataset;
- :mod:`.sheets` — ``perturb-sheet`` / ``contact-sheet``: what the perturbations look like;
- :mod:`.robot` — ``preflight`` / ``operator`` / ``cameras``: the real robot's operator tools.

Layers (tests/test_layers.py checks them): ``wam_common`` (ground) ← node packages (``sim_bridge``,
``perturbation_node``, ``wam_policy_node``, ``recorder``, ``robot_io``) ← ``wam_apps``.
"""
