#!/usr/bin/env bash
# The selector study's verdict (issue 45, step 4; docs/selector_study.md): 3 seeds each, cifar10.yaml's recipe
# (30 epochs, all of train/, scored on validation/). At c = 16 the paper's selector, the options chosen on the
# hold-out by run_causes.sh, random routing and fixed (static) routing; at c = 64 those options and fixed routing
# (the paper's selector and random routing at c = 64 are the converged study's arms). Then the routing ablation of
# every learned-routing run. Two lanes of one thread, resumable; from the repository root:
#   bash docs/selector_study/run_verdict.sh ../shared/data/cifar10 score_scaling=straight_through \
#       selector_gain=10,selector_norm=True
set -euo pipefail
DATA=${1:-../shared/data/cifar10}
[ $# -ge 2 ] || { echo "name the options chosen on the hold-out, e.g. score_scaling=straight_through" >&2; exit 2; }
OPTIONS=("${@:2}")
OUT=output/selector_verdict
export OMP_NUM_THREADS=1
source docs/lanes.sh
source docs/selector_study/routing_ablation.sh
study() { timm-mod compare -c train_args/cifar10.yaml --data-dir "$DATA" --no-speed --output-dir "$OUT/$1" \
    --models "${@:2}"; }
lane_paper() {
    study verdict_c16 "resnet18_mod:c=16@0,1,2" "resnet18_mod:c=16,routing=random@0,1,2" \
        "resnet18_mod:c=16,routing=fixed@0,1,2"
    study verdict_c64_fixed "resnet18_mod:routing=fixed@0,1,2"
    ablate verdict_c16 validation
}
lane_option() {
    local option c16=() c64=()
    for option in "${OPTIONS[@]}"; do
        c16+=("resnet18_mod:c=16,$option@0,1,2")
        c64+=("resnet18_mod:$option@0,1,2")
    done
    study verdict_c16_option "${c16[@]}"
    study verdict_c64_option "${c64[@]}"
    ablate verdict_c16_option validation
    ablate verdict_c64_option validation
}
mkdir -p docs/selector_study/selection
run_lanes "paper" lane_paper "option" lane_option
