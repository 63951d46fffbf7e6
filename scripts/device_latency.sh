#!/usr/bin/env bash
# Issue 24 item 4: the study's models side by side on one GPU, through the node's backend path
# (bench/gpu_latency.py). Device tool, carry .whl (lerobot 0.6.1, transformers 5.5.4, tokenizers,
# huggingface_hub, diffusers 0.39.0, draccus and small deps; torch is the machine's own):
#   bash scripts/device_latency.sh     (env JOBS, BUDGET, ITERS, WAM_SIZE=reduced|full, NAME override)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
JOBS=${JOBS:-pi05:fast,pi05:eager,xvla:eager,vla_jepa:eager,pi0:fast,smolvla:fast,act:eager,fastwam:eager,lingbot_va:eager}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | grep -v WARN
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi -L; python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
python3 -c "import lerobot, transformers, diffusers, yaml; print('imports ok')" || exit 3
python3 bench/gpu_latency.py --out "$OUT/${NAME:-gpu_latency_models}.json" --budget-s "${BUDGET:-480}" --workdir /tmp/gl \
  --iters "${ITERS:-30}" --warmup 3 --wam-size "${WAM_SIZE:-reduced}" --wam-layers 2 --jobs "$JOBS" 2>&1 | tail -60
