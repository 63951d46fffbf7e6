#!/usr/bin/env bash
# Fresh-machine install: Debian packages for headless MuJoCo (EGL) and pyrealsense2 (libusb),
# a Python 3.12 venv at .venv/, torch first, then the pinned requirements, then this package.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libegl1 libgl1-mesa-dri libusb-1.0-0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "[install] apt: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

find_python() {
  for cand in "${PYTHON:-}" python3.12 /root/.pyenv/versions/3.12.*/bin/python3.12 "$HOME"/.pyenv/versions/3.12.*/bin/python3.12 /usr/bin/python3.12; do
    [ -n "$cand" ] || continue
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      echo "$cand"; return 0
    fi
  done
  return 1
}
PY=$(find_python) || { echo "[install] error: Python 3.12 not found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "[install] venv with $PY"
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip wheel
echo "[install] torch (CUDA build from PyPI; runs on CPU too)"
$PIP install -q -c constraints.txt torch==2.11.0
echo "[install] requirements"
$PIP install -q -r requirements.txt -c constraints.txt
echo "[install] SAPIEN backend (no deps: its metadata would replace opencv-python-headless)"
$PIP install -q --no-deps -r requirements-sapien.txt
$PIP install -q --no-deps --no-build-isolation -e .
# the upstream ROS 2 tools (colcon, ros2 launch/param/node/topic) for the real-tools tests, where this
# machine has no ROS 2 install of its own: the jazzy wheels beside the repository (../shared/ros2-jazzy-tools)
TOOLS=../shared/ros2-jazzy-tools
if [ ! -f "/opt/ros/${ROS_DISTRO:-jazzy}/setup.bash" ] && [ -f "$TOOLS/install.sh" ]; then
  echo "[install] ROS 2 jazzy tools from $TOOLS"
  bash "$TOOLS/install.sh" .venv/bin/python
fi
touch .venv/.installed
echo "[install] done: $(.venv/bin/python --version), $(.venv/bin/python -c 'import torch, rclpy, mujoco; print("torch", torch.__version__, "mujoco", mujoco.__version__)')"
