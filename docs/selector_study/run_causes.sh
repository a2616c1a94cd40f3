#!/usr/bin/env bash
# Why the selectors stop scoring (issue 45, step 2), measured on the hold-out carved from CIFAR-10's train/ (never
# validation/): resnet18_mod at c = 16 (k = 4 to 32) and at the paper's c = 64 (k = 1 to 8), one seed per arm.
# The recipe is cifar10.yaml's, shortened to 10 epochs of cosine decay (1 of warm-up, no cooldown): the scores
# collapse within the first 4 epochs of a 4-epoch schedule (issue 45), so 10 show the collapse and what follows it
# at a third of the cost of 30. Each arm removes one suspect and keeps the paper's parameter counts: weight decay on
# the selectors (selector_decay=False), the dying ReLU (selector_act=leaky_relu), the scale the slim block's last
# norm absorbs (score_scaling=straight_through), the learning rate (the whole recipe's lr at a quarter, c = 16
# only), and random routing as the floor. Every run records its selectors per epoch (result.json, selectors.png);
# `timm-mod selection` on each finished run adds the routing ablation (top-1 with each learned top k replaced by a
# fixed random set), kept in docs/selector_study/selection/. Resumable; from the repository root:
#   python docs/cifar10_study/make_holdout.py ../shared/data/cifar10 output/cifar10_holdout   # once
#   bash docs/selector_study/run_causes.sh output/cifar10_holdout          # both lanes (c = 16 and c = 64)
#   bash docs/selector_study/run_causes.sh output/cifar10_holdout 16       # one lane
set -euo pipefail
DATA=${1:-output/cifar10_holdout}
LANES=${2:-16 64}
OUT=output/selector_causes
export OMP_NUM_THREADS=1
mkdir -p "$OUT" docs/selector_study/selection
# the recipe, derived from cifar10.yaml (never a copy of it); lr_quarter scales every learning rate by 1/4
python - "$OUT" <<'EOF'
import sys, yaml
recipe = yaml.safe_load(open('train_args/cifar10.yaml'))
recipe.update(epochs=10, cooldown_epochs=0, warmup_epochs=1)
yaml.safe_dump(recipe, open(f'{sys.argv[1]}/short.yaml', 'w'), sort_keys=False)
recipe.update({key: recipe[key] / 4 for key in ('lr', 'warmup_lr', 'min_lr')})
yaml.safe_dump(recipe, open(f'{sys.argv[1]}/short_lr_quarter.yaml', 'w'), sort_keys=False)
EOF
study() { timm-mod compare -c "$OUT/$1.yaml" --data-dir "$DATA" --no-speed --output-dir "$OUT/$2" --models "${@:3}"; }
ablate() {  # the routing ablation of every finished run of study folder $1 with learned routing
    local run name
    for run in "$OUT/$1"/*/seed0; do
        [ -f "$run/result.json" ] && [[ $run != *routing=random* ]] || continue
        name=$1_$(basename "$(dirname "$run")" | tr -c 'A-Za-z0-9_.=\n-' '_')
        [ -f "docs/selector_study/selection/$name.json" ] && continue
        timm-mod selection --model resnet18_mod --checkpoint "$run/last.pth.tar" --data-dir "$DATA" \
            --split validation --output "$OUT/selection/$name"
        cp "$OUT/selection/$name/selection.json" "docs/selector_study/selection/$name.json"
    done
}
lane() {
    local c=$1
    study short "c$c" "resnet18_mod:c=$c@0" "resnet18_mod:c=$c,score_scaling=straight_through@0" \
        "resnet18_mod:c=$c,selector_decay=False@0" "resnet18_mod:c=$c,selector_act=leaky_relu@0" \
        "resnet18_mod:c=$c,routing=random@0"
    ablate "c$c"
    if [ "$c" = 16 ]; then
        study short_lr_quarter "c16_lr_quarter" "resnet18_mod:c=16@0"
        ablate c16_lr_quarter
    fi
}
pids=()
for c in $LANES; do
    lane "$c" > >(sed -u "s/^/[c=$c] /") 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
exit "$status"
