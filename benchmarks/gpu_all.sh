#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one go, on one CUDA GPU; results and logs go under OUT.
#
#   1. benchmarks/gpu_speed.py: the cifar10 preset against diffusers' UNet2DModel, training img/s at batch 128
#      (eager and compiled), sampling img-steps/s at batch 512, model-FLOP utilisation   (4-5 minutes)
#   2. the digits preset trained for STEPS steps (default 30,000; the CPU tables stop at 10,000), then
#      benchmarks/quality_vs_steps.py on it with 1,000 samples per row, in fp32, and
#      benchmarks/ode_artifacts.py (background haze and speckle of the ODE samplers)   (a few minutes)
#
#   bash benchmarks/gpu_all.sh runs/gpu                 # one GPU
#   STEPS=50000 bash benchmarks/gpu_all.sh runs/gpu     # train longer
#   DRY_RUN=1 bash benchmarks/gpu_all.sh /tmp/gpu-dry   # on the CPU: tiny settings, checks the plumbing
#
# Either stage can be skipped with SKIP_SPEED=1 or SKIP_QUALITY=1.  The digit classifier behind the quality
# yardstick is trained on first use (on the CPU, about a minute) and cached in $DDPM_CACHE or ~/.cache/ddpm.
set -euo pipefail
export PYTHONUNBUFFERED=1

out=${1:-runs/gpu}
steps=${STEPS:-30000}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)

if [ -n "${DRY_RUN:-}" ]; then
  speed_args=(--dry-run)
  train_args=(--preset tiny --data sklearn-digits --image-size 8 --steps "${STEPS:-20}" --batch-size 16 --device cpu
              --sample-every 1000000)
  quality_args=(-n 40 --steps 2 5 --batch-size 40 --device cpu)
else
  speed_args=()
  train_args=(--steps "$steps" --device cuda --sample-every 10000)
  quality_args=(-n 1000 --batch-size 1000 --device cuda)
fi

stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "torch $(python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA)")')"

if [ -z "${SKIP_SPEED:-}" ]; then
  stamp "1/2 throughput against diffusers"
  python "$here/gpu_speed.py" "${speed_args[@]}" --json "$out/gpu_speed.json" 2>&1 | tee "$out/gpu_speed.txt"
fi

if [ -z "${SKIP_QUALITY:-}" ]; then
  run="$out/digits"
  stamp "2/2 digits preset, $(printf '%s ' "${train_args[@]}")-> $run"
  if [ -d "$run/checkpoints" ]; then
    python -m ddpm train --resume "$run" --no-progress 2>&1 | tee "$out/train.log"
  else
    python -m ddpm train --run-dir "$run" --no-progress "${train_args[@]}" 2>&1 | tee "$out/train.log"
  fi
  python "$here/quality_vs_steps.py" "$run" "${quality_args[@]}" --samplers ddim ddim-quadratic dpm++2m dpm++2m-quadratic ddim-eta1 \
    --out "$out/quality_vs_steps.json" 2>&1 | tee "$out/quality_vs_steps.txt"
  if [ -z "${DRY_RUN:-}" ]; then  # the background haze and speckle of the ODE samplers (32x32 digits only)
    python "$here/ode_artifacts.py" "$run" -n 1000 --batch-size 1000 --device cuda \
      --samplers ddim-50 dpm++2m-20 ddim-50-eta1 2>&1 | tee "$out/ode_artifacts.txt"
  fi
fi
stamp "done: $out"
