#!/usr/bin/env bash
# The README's figures, from nothing but the images scikit-learn and matplotlib ship: `make figures`, or
#
#     docs/figures/make_figures.sh [WORK_DIR]        (default WORK_DIR: /tmp/mae-large-figures)
#
# 1. writes the data (docs/figures/make_data.py): 1,000 training and 200 held-out digits; 1,200 crops of china.jpg,
#    flower.jpg and Minduka_Present_Blue_Pack.png to train on; grace_hopper.jpg held out (no crop of it is trained on);
# 2. pre-trains a small MAE on the digits (docs/figures/pretrain_digits.png is its preview) and one on the crops;
# 3. draws the reconstruction, sweep, error-map, animation, attention and PCA figures of the held-out grace_hopper.jpg
#    with the photographs' model, and copies every figure into docs/figures/.
#
# Every command runs in WORK_DIR, as the README shows it. MAE_LARGE names the command (default: mae-large),
# PYTHON the interpreter (default: python3). One torch thread: the small models are much faster so on shared cores.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=${1:-/tmp/mae-large-figures}
read -r -a mae <<< "${MAE_LARGE:-mae-large}"
python=${PYTHON:-python3}
export OMP_NUM_THREADS=1 MPLBACKEND=Agg

mkdir -p "$work"
cd "$work"
rm -rf runs figs
run() { echo "+ mae-large $*" >&2; "${mae[@]}" "$@"; }

"$python" "$repo/docs/figures/make_data.py" .

# Digits: the small MAE of tests/large/train/test_pretrain.py::test_a_small_mae_learns_real_digits, 40 epochs.
run pretrain digits/train --val digits/held-out --knn-train digits/train --knn-val digits/held-out --knn-every 10 \
    --from-scratch --out runs/digits --size 32 --patch-size 4 --encoder-depth 4 --encoder-dim 64 --encoder-heads 4 \
    --decoder-depth 2 --decoder-dim 64 --decoder-heads 4 --target pixels --epochs 40 --warmup-epochs 4 \
    --batch-size 32 --accum-iter 1 --blr 1.2e-2 --workers 0 --preview-every 10

# Photographs: 96x96 input, patch 8, 6 encoder blocks of 192, a 2-block decoder of 128, trained on pixels.
run pretrain photos/train --val photos/held-out --from-scratch --out runs/photos --size 96 --patch-size 8 \
    --encoder-depth 6 --encoder-dim 192 --encoder-heads 3 --decoder-depth 2 --decoder-dim 128 --decoder-heads 4 \
    --target pixels --epochs 60 --warmup-epochs 5 --batch-size 64 --accum-iter 1 --blr 6e-3 --workers 0

# The figures, all of the held-out photograph.
image=photos/held-out/grace_hopper.jpg
ckpt=runs/photos/checkpoint-last.pth
run reconstruct "$image" -c "$ckpt" --mask block:0.6 --out figs/block
run reconstruct "$image" -c "$ckpt" --mask-ratio 0.25,0.5,0.75,0.9 --out figs/sweep
run reconstruct "$image" -c "$ckpt" --panels original,masked,visible,error --out figs/error
run reconstruct "$image" -c "$ckpt" --animate --out figs/animate
run attention "$image" -c "$ckpt" --layer 0,5 --rollout --out figs
run pca "$image" -c "$ckpt" --foreground --out figs

figures="$repo/docs/figures"
cp runs/digits/preview.png "$figures/pretrain_digits.png"
cp runs/photos/preview.png "$figures/pretrain_photos.png"
cp figs/block/grace_hopper.png "$figures/mask_block.png"
cp figs/sweep/grace_hopper.png "$figures/sweep.png"
cp figs/error/grace_hopper.png "$figures/error.png"
cp figs/animate/grace_hopper.gif "$figures/animation.gif"
cp figs/grace_hopper.attention.png "$figures/attention.png"
cp figs/grace_hopper.pca.png "$figures/pca.png"
ls -l "$figures"
