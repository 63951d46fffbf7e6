#!/usr/bin/env bash
# Issue 8's robustness table at the paper's 50 seeds per configuration, on the GPU machine (device tool:
# 16 CPUs for the graphs' sim/render/ROS processes, the GPU for the policy nodes). The image has torch
# and numpy but neither ROS 2 nor LeRobot/MuJoCo, and one call carries ≤ 64 MiB, so it takes phases,
# each one device call on the same warm machine (/tmp survives between calls):
#   PHASE=python  carry .gpu .gl (+ the tracked tree with checkpoints/act_transfer_cube): LeRobot, MuJoCo,
#                 gym-aloha wheels → /tmp/site; the checkpoint → /tmp/ckpt
#   PHASE=ros     carry .ros (ROS 2 Jazzy wheels) → /tmp/rosp; then runs the eval like PHASE=eval
#   PHASE=eval    wam-policy eval ... for at most BUDGET seconds (default 540); finished episodes are kept in
#                 /tmp/evalout and the next call resumes there (`eval` skips what is done); what exists
#                 so far is copied to $OUT/eval each call.
# Eval settings: SUITE (paper_cam_high) POLICY (act_sim) EPISODES (50) WORKERS (nproc-2) PER_GRAPH (10)
set -u
T0=$(date +%s)
PHASE=${PHASE:-eval}; BUDGET=${BUDGET:-540}
SUITE=${SUITE:-paper_cam_high}; POLICY=${POLICY:-act_sim}; EPISODES=${EPISODES:-50}
WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}; PER_GRAPH=${PER_GRAPH:-10}
OUT=${OUT:-/tmp/out}; EVAL=/tmp/evalout; mkdir -p "$OUT" "$EVAL"
stamp() { echo "[device $(( $(date +%s) - T0 )) s] $*"; }
for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done; ldconfig
if [ "$PHASE" = python ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/*.whl 2>&1 | grep -v WARN
  rm -rf /tmp/ckpt && cp -r checkpoints/act_transfer_cube /tmp/ckpt && ls -la /tmp/ckpt
fi
if [ "$PHASE" = ros ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --prefix /tmp/rosp .ros/*.whl 2>&1 | grep -v WARN
fi
R=/tmp/rosp/lib/python3.12/site-packages
[ -d $R ] && export LD_LIBRARY_PATH=$(ls -d $R/ros_*.libs | tr '\n' ':')/tmp/rosp/lib:${LD_LIBRARY_PATH:-} \
  _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export PYTHONPATH=$R:/tmp/site:$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=egl PYOPENGL_PLATFORM=egl \
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST HF_HUB_OFFLINE=1
V=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f $V ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$V
python3 - <<'PY'
import importlib
for m in ("yaml", "cv2", "scipy", "matplotlib", "rosbags", "mcap", "msgpack", "mujoco", "gym_aloha", "lerobot",
          "rclpy", "sensor_msgs.msg", "torchvision"):
    try:
        importlib.import_module(m); print("import ok  ", m)
    except Exception as e:  # noqa: BLE001
        print("import FAIL", m, type(e).__name__, str(e)[:120])
PY
[ "$PHASE" = python ] && exit 0
[ -f checkpoints/act_transfer_cube/config.json ] || { mkdir -p checkpoints/act_transfer_cube && cp -r /tmp/ckpt/. checkpoints/act_transfer_cube/; }; ls checkpoints/act_transfer_cube; pwd
pkill -f "wam_policy_node|sim_bridge|perturbation_node|wam_common" 2>/dev/null; sleep 1
rm -rf /dev/shm/fastrtps_* /dev/shm/sem.fastrtps_* 2>/dev/null
nvidia-smi -L; nproc
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
stamp "eval $POLICY on $SUITE, $EPISODES episodes per configuration, $WORKERS workers, ${LEFT}s"
timeout -s INT -k 20 $LEFT python3 -m wam_apps.cli eval --policy "$POLICY" --suite "$SUITE" --episodes "$EPISODES" \
  --workers "$WORKERS" --episodes-per-graph "$PER_GRAPH" --bags none --out $EVAL > $EVAL/eval.log 2>&1
echo "eval exit $?"
pkill -f "wam_policy_node|sim_bridge|perturbation_node" 2>/dev/null
tail -15 $EVAL/eval.log
python3 - <<PY
import json, collections
rows = [json.loads(l) for l in open("$EVAL/episodes.jsonl")] if __import__("os").path.exists("$EVAL/episodes.jsonl") else []
print("episodes done", len(rows))
c = collections.Counter(r.get("configuration") for r in rows); print(dict(c))
PY
mkdir -p $OUT/eval && cp -r $EVAL/. $OUT/eval/
stamp done
