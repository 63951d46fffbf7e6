"""MuJoCo ALOHA simulation bridge: the real robot's topics, from the gym-aloha bimanual ViperX scenes.

Pure core (no ROS): :mod:`sim_bridge.mujoco_aloha` (physics + rendering), :mod:`sim_bridge.tasks`
(task registry), :mod:`sim_bridge.experts` (scripted experts), :mod:`sim_bridge.physical`
(physical perturbations), :mod:`sim_bridge.episode` (one episode's bookkeeping).
ROS shell: :mod:`sim_bridge.node`.
"""
import os as _os

# Headless rendering: mujoco reads MUJOCO_GL when first imported, so set it before any submodule does.
_os.environ.setdefault("MUJOCO_GL", "egl")
_os.environ.setdefault("PYOPENGL_PLATFORM", _os.environ["MUJOCO_GL"])
