#!/usr/bin/env bash
# The GPU utilisation table of docs/benchmarks.md ("GPU utilisation (MFU)") in one command, at most 8 minutes:
#
#     bash bench/gpu_mfu.sh            # from the repository root of a clone, on a machine with one CUDA GPU
#
# bf16 first, then fp32 while time is left (no process starts after 430 s; the whole run is cut at 480 s). Every job
# (features, the MAE forward at 0.75, the fine-tuning step, the pre-training step) runs eager, compiled (the library's
# compile=True) and with the levers (bf16 weights for inference, fused AdamW for training), then commit 904620c's eager
# code on the same card. Each row is written as it finishes: $OUT/mfu.md (markdown), $OUT/mfu.jsonl (every field),
# $OUT/mfu-profile.md (the top kernels of each compiled variant: what a missed target is about).
#
# The baseline checkout: $BASELINE if set, else commit 904620c's `mae` package taken from this clone's git history
# into a temporary folder; without either the table has no baseline rows (said on the first line).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/mfu}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
BASE=${BASELINE:-}
if [ -z "$BASE" ] && git cat-file -e '904620c^{commit}' 2>/dev/null; then
    BASE=$(mktemp -d)/mae-904620c
    mkdir -p "$BASE"
    git archive 904620c mae | tar -x -C "$BASE"
fi
[ -n "$BASE" ] || echo "no baseline: set BASELINE to a checkout of commit 904620c (its mae/ folder)" >&2
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
exec timeout 480 "$PYTHON" bench/mfu.py --device cuda --dtypes bf16,fp32 --deadline 430 --warmup 3 --iters 20 \
    --levers "infer=compiled+bf16w;train=compiled+fused" ${BASE:+--baseline "$BASE" --baseline-label 904620c} \
    --out "$OUT/mfu.jsonl" --table "$OUT/mfu.md" --profile "$OUT/mfu-profile.md"
