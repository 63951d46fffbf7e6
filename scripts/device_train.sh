#!/usr/bin/env bash
# Issue 8 on the GPU machine (device tool), one call: scripted demos from the sim core → LeRobotDataset,
# LeRobot training of the reduced ACT for TRAIN_S seconds (checkpoint every SAVE_FREQ steps; the last
# complete one is shipped), fp16 export, a quick ROS-free closed-loop check, all back through $OUT.
#   carry: .whl_train (lerobot 0.6.1 + deps the image lacks), .gl (EGL loader debs)
#   bash scripts/device_train.sh            # env: EPISODES TRAIN_S BATCH LR STEPS SAVE_FREQ EVAL_EPISODES
set -u
T0=$(date +%s)
stamp() { echo "[device $(( $(date +%s) - T0 )) s] $*"; }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
EPISODES=${EPISODES:-64}; BUDGET=${BUDGET:-570}; TRAIN_S=${TRAIN_S:-0};  # TRAIN_S 0: what BUDGET leaves
 BATCH=${BATCH:-32}; LR=${LR:-1e-4}; STEPS=${STEPS:-100000}
SAVE_FREQ=${SAVE_FREQ:-1000}; EVAL_EPISODES=${EVAL_EPISODES:-14}; NCPU=$(nproc)
W=/tmp/wam; mkdir -p $W/logs
MAX_STEPS=${MAX_STEPS:-0}; TRAIN_ARGS=${TRAIN_ARGS:-}  # CPU dry run: MAX_STEPS=40 TRAIN_ARGS="--dim-model 32 ..."
if command -v nvidia-smi >/dev/null; then  # the GPU machine: EGL loaders + the carried wheels
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl_train/*.whl || exit 1
  nvidia-smi -L
fi
export PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
       HF_LEROBOT_HOME=$W/hf TOKENIZERS_PARALLELISM=false
stamp "setup done; $NCPU cpus"
python3 - <<'PY' || exit 1
import numpy, torch, lerobot, mujoco, datasets, accelerate
print("versions", numpy.__version__, torch.__version__, lerobot.__version__, mujoco.__version__, datasets.__version__,
      accelerate.__version__, torch.cuda.is_available())
from sim_bridge.env import SimEnv
e = SimEnv("transfer_cube"); e.reset(0); print("render", e.render("cam_high", 240, 320).mean())
PY
stamp "collect $EPISODES episodes"
[ -f $W/ds/transfer_cube/meta/wam_collect.json ] && [ -z "${RECOLLECT:-}" ] && echo "dataset already here (warm machine)" || \
python3 -m wam_apps.cli collect --episodes $EPISODES --max-steps $MAX_STEPS --workers $((NCPU > 2 ? NCPU - 1 : 2)) ${COLLECT_ARGS:-} --overwrite --out $W/ds/transfer_cube \
  > $W/logs/collect.log 2>&1 || { tail -30 $W/logs/collect.log; tar czf $OUT/logs.tar.gz -C $W logs; exit 1; }
tail -4 $W/logs/collect.log; cp $W/ds/transfer_cube/meta/wam_collect.json $W/logs/
[ "$TRAIN_S" -gt 0 ] || TRAIN_S=$(( BUDGET - 130 - ($(date +%s) - T0) )); [ $TRAIN_S -ge 60 ] || TRAIN_S=60
stamp "train for ${TRAIN_S}s"
timeout -s INT $TRAIN_S python3 -m wam_apps.cli train --dataset $W/ds/transfer_cube --steps $STEPS \
  --batch-size $BATCH --lr $LR --workers $((NCPU > 5 ? NCPU - 2 : 1)) --amp $TRAIN_ARGS --save-freq $SAVE_FREQ --log-freq 250 \
  --overwrite --out $W/train --export $W/ship/act_transfer_cube > $W/logs/train.log 2>&1
echo "train exit $?"; grep -E "step:|Error|error" $W/logs/train.log | tail -8
stamp "export"
if [ ! -f $W/ship/act_transfer_cube/model.safetensors ]; then
  python3 - <<PY
import json, pathlib
from wam_apps.training.train import export_checkpoint
steps = sorted(p for p in pathlib.Path("$W/train/checkpoints").iterdir() if p.name.isdigit())
last = steps[-1] / "pretrained_model"
step = steps[-1].name
log = [l.strip() for l in open("$W/logs/train.log", errors="replace") if "step:" in l and "loss:" in l]
meta = {"policy": "act", "dataset": "$W/ds/transfer_cube", "steps": int(step), "batch_size": $BATCH, "lr": $LR,
        "device": "cuda", "amp": True, "seconds": $TRAIN_S, "stopped_by": "time budget", "checkpoint": str(last),
        "log": log[-50:], "collect": json.load(open("$W/logs/wam_collect.json"))}
print(export_checkpoint(last, pathlib.Path("$W/ship/act_transfer_cube"), meta))
PY
fi
ls -la $W/ship/act_transfer_cube
RT=$(( BUDGET - 30 - ($(date +%s) - T0) )); [ $RT -le 90 ] || RT=90; [ $RT -ge 20 ] || RT=20
stamp "rollouts (${RT}s)"
for strat in "sync:20" "te:5"; do
  name=${strat%%:*}; n=${strat##*:}
  if [ $name = sync ]; then sets="--set runtime.strategy=sync --set runtime.execute_steps=$n"
  else sets="--set runtime.strategy=temporal_ensemble --set runtime.ensemble_every=$n"; fi
  timeout $RT python3 -m wam_apps.training.rollout --policy config/policies/act_sim.yaml \
    --set backend.lerobot.path=$W/ship/act_transfer_cube $sets --episodes $EVAL_EPISODES --seed 100000 \
    --max-steps $MAX_STEPS --workers $((NCPU > 15 ? 7 : 1)) --json $W/logs/rollout_${name}${n}.json > $W/logs/rollout_${name}${n}.log 2>&1 &
done
wait
tail -n 1 $W/logs/rollout_*.log
tar cf $W/ship.tar -C $W/ship act_transfer_cube && split -b 15M -d $W/ship.tar $OUT/ship.tar.part
tar czf $OUT/logs.tar.gz -C $W logs
ls -la $OUT; stamp "done"
