"""Real-robot operator tools (docs/ROBOT.md): ``wam-policy preflight`` (:mod:`.preflight`), ``operator``
(:mod:`.operator`), ``cameras`` (:mod:`.cameras`). The hardware nodes themselves are in :mod:`robot_io`."""
