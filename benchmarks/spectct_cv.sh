#!/usr/bin/env bash
# Paper 003's table on simulated hybrid exams: simulate a cohort (dicomnode synth --spect-ct), run
# 5-fold cross-validation of MT-UNet on SPECT, CT and SPECT/CT plus SPECT/CT transfer-learned from
# SPECT (dicomnode/train/spectct.py), train the shipped SPECT/CT model on all exams, write table + weights.
#
#   OUT=runs/spectct benchmarks/spectct_cv.sh          # the device run (docs/training.md "SPECT/CT")
#   OUT=/tmp/x EXAMS=6 SIZE=tiny FOLDS=3 MAX_SECONDS=3 BATCH=2 ALLOW_CPU=1 benchmarks/spectct_cv.sh
#
# Everything it keeps goes under $OUT (table, crossval.json, final weights + card, log); the
# simulated cohort goes to a temporary folder and is removed. The study itself is capped by
# STUDY_TIMEOUT seconds; crossval.partial.* hold the variants finished when a cap strikes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
EXAMS=${EXAMS:-50}
SIZE=${SIZE:-small}
FOLDS=${FOLDS:-5}
MAX_SECONDS=${MAX_SECONDS:-14}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-$(nproc)}
STUDY_TIMEOUT=${STUDY_TIMEOUT:-470}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
start=$(date +%s)
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")'
if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' && [ "${ALLOW_CPU:-0}" != 1 ]; then
  echo "no CUDA device seen by torch; stopping (ALLOW_CPU=1 runs on the CPU)"; exit 3
fi
python3 -c 'import dicomnode.segmentation, dicomnode.train, pydicom, scipy, typer' 2>/dev/null || pip install --no-build-isolation --no-deps -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
python3 -c 'from dicomnode.cli import main; main()' synth "$DATA" --spect-ct --size "$SIZE" --studies "$EXAMS" --seed 2025 --workers "$WORKERS"
echo "simulated $EXAMS exams in $(( $(date +%s) - start )) s"
timeout "$STUDY_TIMEOUT" python3 -c 'from dicomnode.cli import main; main()' train --data "$DATA" --out "$OUT" \
  --config config/train/spectct-spect.toml --config config/train/spectct-ct.toml \
  --config config/train/spectct-spectct.toml --transfer spectct-spectct:spectct-spect \
  --folds "$FOLDS" --final spectct-spectct --max-seconds "$MAX_SECONDS" --batch-size "$BATCH" --workers "$WORKERS" \
  || echo "dicomnode train stopped with status $? (partial results in crossval.partial.*)"
echo "total wall $(( $(date +%s) - start )) s"
