#!/usr/bin/env bash
# Choosing E, the fine-tune length of the distillation study (docs/distillation.md), on the hold-out carved from
# CIFAR-10's train/ (docs/cifar10_study/make_holdout.py), never on validation/: resnet18_mod converted from a
# resnet18 trained on the 45,000 remaining images (cifar10.yaml, seed 0), fine-tuned 3, 7 and 15 epochs with
# cross-entropy (lane 1) and distilled from that resnet18 (lane 2), one seed. Run from the repository root with
# timm-mod installed; every step skips what is finished and resumes what was interrupted.
#   python docs/cifar10_study/make_holdout.py ../shared/data/cifar10 output/cifar10_holdout
#   bash docs/distillation_study/run_holdout.sh output/cifar10_holdout
set -euo pipefail
DATA=${1:-output/cifar10_holdout}
OUT=output/distill_holdout
TEACHER_RUN=output/teacher_holdout
TEACHER=$TEACHER_RUN/resnet18/seed0/last.pth.tar
export OMP_NUM_THREADS=1
timm-mod compare -c train_args/cifar10.yaml --data-dir "$DATA" --output-dir "$TEACHER_RUN" --no-speed --models resnet18@0
[ -f "$OUT/teacher/config.json" ] || timm-mod publish --model resnet18 --checkpoint "$TEACHER" --out-dir "$OUT/teacher"
[ -f "$OUT/resnet18_mod_from_resnet18.pth" ] || timm-mod convert --model resnet18_mod --checkpoint "$TEACHER" \
    --output "$OUT/resnet18_mod_from_resnet18.pth"
START="initial_checkpoint=$OUT/resnet18_mod_from_resnet18.pth"
# cifar10_finetune.yaml: 1 warm-up epoch, cosine to the end of `epochs`, 1 cooldown epoch: --epochs E-1 trains E
lane() {
    local kind=$1 arm=$2
    for epochs in 3 7 15; do
        timm-mod compare -c train_args/cifar10_finetune.yaml --data-dir "$DATA" --output-dir "$OUT/${kind}_E$epochs" \
            --epochs $((epochs - 1)) --no-speed --models "$arm"
    done
}
lane ce "resnet18_mod:$START@0" > >(sed -u 's/^/[cross-entropy] /') 2>&1 &
first=$!
lane kd "resnet18_mod:$START,kd_model_name=local-dir:$OUT/teacher@0" > >(sed -u 's/^/[distilled] /') 2>&1 &
second=$!
status=0
wait "$first" || status=$?
wait "$second" || status=$?
exit "$status"
