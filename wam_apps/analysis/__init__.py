"""Offline analysis of recorded bags.

- :mod:`.episodes` — per-episode metrics (outcome, timing, latency, inference, holds, smoothness,
  perturbation label);
- :mod:`.report` — tables (Markdown/CSV/JSON, the study table via
  :mod:`wam_apps.evaluation.table`) and PNG plots; :mod:`.cli_analyze` — ``wam-policy analyze``;
- :mod:`.parity` / :mod:`.cli_parity` — ``wam-policy parity SIM_BAG REAL_BAG``.
"""
