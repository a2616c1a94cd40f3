#!/usr/bin/env bash
# Why the selectors stop scoring (issue 45, step 2), measured on the hold-out carved from CIFAR-10's train/ (never
# validation/): resnet18_mod at the paper's c = 64 (k = 1 to 8) and at c = 16 (k = 4 to 32), one seed each, the
# converged study's recipe (cifar10.yaml, 30 epochs). Each arm removes one suspect and keeps the paper's parameter
# counts: weight decay on the selectors (selector_decay=False), the dying ReLU (selector_act=leaky_relu, which
# keeps ReLU's shape but never zeroes a gradient), and random routing as the floor. Every run records its
# selectors per epoch (result.json, selectors.png); the routing ablation is `timm-mod selection` on each
# checkpoint. Two lanes of one thread, resumable; from the repository root with timm-mod installed:
#   python docs/cifar10_study/make_holdout.py ../shared/data/cifar10 output/cifar10_holdout   # once
#   bash docs/selector_study/run_causes.sh output/cifar10_holdout
set -euo pipefail
DATA=${1:-output/cifar10_holdout}
OUT=output/selector_causes
export OMP_NUM_THREADS=1
study() { timm-mod compare -c train_args/cifar10.yaml --data-dir "$DATA" --no-speed "$@"; }
lane() {
    local c=$1
    study --output-dir "$OUT/c$c" --models "resnet18_mod:c=$c@0" "resnet18_mod:c=$c,selector_decay=False@0" \
        "resnet18_mod:c=$c,selector_act=leaky_relu@0" "resnet18_mod:c=$c,routing=random@0"
}
lane 16 > >(sed -u 's/^/[c=16] /') 2>&1 &
first=$!
lane 64 > >(sed -u 's/^/[c=64] /') 2>&1 &
second=$!
status=0
wait "$first" || status=$?
wait "$second" || status=$?
exit "$status"
