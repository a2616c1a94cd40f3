#!/usr/bin/env bash
# The distillation study's arms on CIFAR-10 (docs/distillation.md), 3 seeds each, E = 7 (chosen on the hold-out by
# run_holdout.sh), two lanes of one thread. The teacher is resnet18 seed 0 trained on all of train/ with
# cifar10.yaml; its published folder and its conversion to resnet18_mod are made here once. Run from the
# repository root with timm-mod and docs/distillation_study/requirements.txt installed; every step skips what is finished and resumes what was interrupted:
#   bash docs/distillation_study/run_study.sh ../shared/data/cifar10
set -euo pipefail
DATA=${1:-../shared/data/cifar10}
OUT=output/cifar10_distill
TEACHER_RUN=output/teacher
TEACHER=$TEACHER_RUN/resnet18/seed0/last.pth.tar
export OMP_NUM_THREADS=1
source docs/lanes.sh
timm-mod compare -c train_args/cifar10.yaml --data-dir "$DATA" --output-dir "$TEACHER_RUN" --no-speed --models resnet18@0
[ -f "$OUT/teacher/config.json" ] || timm-mod publish --model resnet18 --checkpoint "$TEACHER" --out-dir "$OUT/teacher"
python -c 'import sys; sys.path.insert(0, "docs/distillation_study"); import pruned; pruned.write_pruned_weights()'
[ -f "$OUT/resnet18_mod_from_resnet18.pth" ] || timm-mod convert --model resnet18_mod --checkpoint "$TEACHER" \
    --output "$OUT/resnet18_mod_from_resnet18.pth"
START="initial_checkpoint=$OUT/resnet18_mod_from_resnet18.pth"
KD="kd_model_name=local-dir:$OUT/teacher"
# cifar10_finetune.yaml trains 7 epochs (6 cosine + 1 cooldown); cifar10.yaml 30 from scratch
finetune() { timm-mod compare -c train_args/cifar10_finetune.yaml --data-dir "$DATA" --no-speed "$@"; }
scratch() { timm-mod compare -c train_args/cifar10.yaml --data-dir "$DATA" --no-speed "$@"; }
lane_ce() {
    finetune --output-dir "$OUT/converted_ce" --models "resnet18_mod:$START@0,1,2"
    python docs/distillation_study/pruned.py "$DATA" --loss cross-entropy
    scratch --output-dir "$OUT/scratch_kd" --models "resnet18_mod:$KD@0,1,2"
}
lane_kd() {
    finetune --output-dir "$OUT/converted_kd" --models "resnet18_mod:$START,$KD@0,1,2"
    python docs/distillation_study/pruned.py "$DATA" --loss distilled
    scratch --output-dir "$OUT/narrow_kd" --models "resnet18:channels=(44,88,176,352),$KD@0,1,2"
}
run_lanes "cross-entropy" lane_ce "distilled" lane_kd
