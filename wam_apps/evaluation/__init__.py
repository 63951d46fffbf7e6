"""Robustness evaluation: suites of perturbation configurations × seeds, run through the full graph.

- :mod:`.suites` — suite YAML (``config/suites/``): configurations, their dimension/level and
  which part is physical (sim_bridge) or stream-level (perturbation_node) or operator-set.
- :mod:`.results` — the per-episode result store (JSONL, append-only: resumable), and outcomes
  recomputed from bags.
- :mod:`.table` — the study's table (Camera, Robot, Language, Light, Background, Noise, Layout,
  Total) with Wilson 95 % intervals: Markdown, CSV, JSON, PNG.
- :mod:`.runner` — jobs (one graph, a run of seeds) in worker processes or on Ray.
- :mod:`.cli` — ``wam-policy eval``.
"""
