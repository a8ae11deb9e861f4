#!/usr/bin/env bash
# The GPU check of a training run: R50 (facebook/detr-resnet-50-panoptic's architecture, random weights) with
# finetune/configs/default.yaml on the bundled sample, a fixed number of steps of each stage in fp32, bf16 and
# fp16, one process per precision. Prints images/s, peak GPU memory and the share of the step time the GPU
# waited on the host (torch profiler); rows go to ${OUT:-outputs/gpu_check}/gpu_check.jsonl.
#
#   bench/gpu_check.sh                 # STEPS=30 WARMUP=5 PROFILE_STEPS=10 by default
#   STEPS=50 bench/gpu_check.sh
#
# Needs a CUDA GPU (fp16 and the memory/profiler figures are GPU-only); offline (no Hub access).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA GPU visible to torch" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
rm -f "$OUT/gpu_check.jsonl"
for precision in no bf16 fp16; do
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 "$PYTHON" bench/gpu_check.py \
        --mixed_precision "$precision" --steps "${STEPS:-30}" --warmup "${WARMUP:-5}" \
        --profile-steps "${PROFILE_STEPS:-10}" --output_dir "$OUT/run-$precision" --json "$OUT/gpu_check.jsonl"
done
echo "rows: $OUT/gpu_check.jsonl"
