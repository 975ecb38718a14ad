#!/usr/bin/env bash
# The one prepared command for a session that has a GPU machine (the `device` tool):
#
#     run(command="bash bench/run_gpu.sh", timeout_s=540)
#
# It runs bench/gpu.py there (VGG-16, 224 px, 3,130 images, both JPEG paths) and writes
# env.txt, gpu.log, gpu.json and gpu.md to $OUT (what the tool fetches back; else
# bench/results/gpu), then, time allowing, the same finetune with torch.compile to
# $OUT/compile/. Expected about 2-3 minutes; the steps are capped at 5 + 3 minutes.
#
# The machine's own python3 is used: it has torch, torchvision, pillow, numpy and
# huggingface_hub (KINDS.md); the project's venv does not travel and nothing is installed.
# Images: generated there, JPEGs of the flower photos' sizes (nothing to carry). To use
# real photos instead, copy a few hundred into an ignored folder of the checkout here
# (`echo /.gpudata/ >> .git/info/exclude`, one sub-folder per class) and name `.gpudata`
# in the call's `carry`: they are repeated up to 3,130. Never commit them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
  nproc
  "$PY" -c "import sys, torch, torchvision, PIL; print('python', sys.version.split()[0], 'torch', torch.__version__,
'torchvision', torchvision.__version__, 'pillow', PIL.__version__, 'cuda', torch.cuda.is_available())"
  "$PY" -c "import xfer; print('xfer', xfer.__version__, 'imports')"
} 2>&1 | tee "$OUT/env.txt"

DATA=()
[ -d .gpudata ] && DATA=(--data .gpudata)

timeout 300 "$PY" bench/gpu.py --device cuda --out "$OUT" "${DATA[@]}" 2>&1 | tee "$OUT/gpu.log"
rc=${PIPESTATUS[0]}

if [ "$rc" = 0 ] && [ "${XFER_BENCH_COMPILE:-1}" = 1 ]; then
  # torch.compile on top, GPU decoding only; compiling takes a minute or two, so it comes last.
  timeout 180 "$PY" bench/gpu.py --device cuda --decode gpu --compile --head-epochs 1 --out "$OUT/compile" \
    "${DATA[@]}" > "$OUT/compile.log" 2>&1 || echo "compile run failed or timed out (see compile.log)"
  tail -n 20 "$OUT/compile.log"
fi
exit "$rc"
