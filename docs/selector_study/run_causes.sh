#!/usr/bin/env bash
# Why the selectors stop scoring (issue 45, step 2), measured on the hold-out carved from CIFAR-10's train/ (never
# validation/): resnet18_mod at c = 16 (k = 4 to 32) and at the paper's c = 64 (k = 1 to 8), one seed per arm.
# The recipe is cifar10.yaml's, shortened to 10 epochs of cosine decay (1 of warm-up, no cooldown): the scores
# collapse within the first 4 epochs of a 4-epoch schedule (issue 45), so 10 show the collapse and what follows it
# at a third of the cost of 30. Each arm removes one suspect and keeps the paper's parameter counts: weight decay on
# the selectors (selector_decay=False), the dying ReLU (selector_act=leaky_relu), the scale the slim block's last
# norm absorbs (score_scaling=straight_through), the learning rate (the whole recipe's lr at a quarter, c = 16
# only), and random routing as the floor. The candidates lane tries, at c = 16, the options made from what those
# runs showed (selectors switched off by training): a selector learning rate (selector_gain=10: 100x under SGD), an
# input without the common level its units are switched off against (selector_norm=True), both, and static routing
# (routing=fixed: one set of k channels for every image, what a switched-off selector routes). Every run
# records its selectors per epoch (result.json, selectors.png); routing_ablation.sh adds what the routing carries.
# Resumable; from the repository root:
#   python docs/cifar10_study/make_holdout.py ../shared/data/cifar10 output/cifar10_holdout   # once
#   bash docs/selector_study/run_causes.sh output/cifar10_holdout                 # the three lanes, side by side
#   bash docs/selector_study/run_causes.sh output/cifar10_holdout candidates      # one lane (16, 64, candidates)
set -euo pipefail
DATA=${1:-output/cifar10_holdout}
LANES=${2:-16 64 candidates}
OUT=output/selector_causes
export OMP_NUM_THREADS=1
source docs/selector_study/routing_ablation.sh
mkdir -p "$OUT" docs/selector_study/selection
# the recipe, derived from cifar10.yaml (never a copy of it); lr_quarter scales every learning rate by 1/4
python - "$OUT" <<'PY'
import sys, yaml
recipe = yaml.safe_load(open('train_args/cifar10.yaml'))
recipe.update(epochs=10, cooldown_epochs=0, warmup_epochs=1)
yaml.safe_dump(recipe, open(f'{sys.argv[1]}/short.yaml', 'w'), sort_keys=False)
recipe.update({key: recipe[key] / 4 for key in ('lr', 'warmup_lr', 'min_lr')})
yaml.safe_dump(recipe, open(f'{sys.argv[1]}/short_lr_quarter.yaml', 'w'), sort_keys=False)
PY
study() { timm-mod compare -c "$OUT/$1.yaml" --data-dir "$DATA" --no-speed --output-dir "$OUT/$2" --models "${@:3}"; }
lane() {
    if [ "$1" = candidates ]; then
        study short c16_candidates "resnet18_mod:c=16,selector_gain=10@0" "resnet18_mod:c=16,selector_norm=True@0" \
            "resnet18_mod:c=16,selector_gain=10,selector_norm=True@0" "resnet18_mod:c=16,routing=fixed@0"
        ablate c16_candidates validation
        return
    fi
    local c=$1
    study short "c$c" "resnet18_mod:c=$c@0" "resnet18_mod:c=$c,score_scaling=straight_through@0" \
        "resnet18_mod:c=$c,selector_decay=False@0" "resnet18_mod:c=$c,selector_act=leaky_relu@0" \
        "resnet18_mod:c=$c,routing=random@0"
    ablate "c$c" validation
    if [ "$c" = 16 ]; then
        study short_lr_quarter "c16_lr_quarter" "resnet18_mod:c=16@0"
        ablate c16_lr_quarter validation
    fi
}
pids=()
for lane in $LANES; do
    lane "$lane" > >(sed -u "s/^/[$lane] /") 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
exit "$status"
