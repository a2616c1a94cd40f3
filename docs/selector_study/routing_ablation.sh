# The routing ablation of every finished run with learned routing in study folder $OUT/$1, on split $2 of $DATA:
# `timm-mod selection` on its last checkpoint (top-1 with the learned top k against a fixed random set of k
# channels), its selection.json kept as docs/selector_study/selection/<study>_<run folder>.json. Sourced by
# run_causes.sh and run_verdict.sh, which set OUT and DATA.
ablate() {
    local run name
    for run in "$OUT/$1"/*/seed*; do
        [ -f "$run/result.json" ] && [[ $run != *routing=* ]] || continue  # random or fixed: no selector
        name=$1_$(basename "$(dirname "$run")" | tr -c 'A-Za-z0-9_.=\n-' '_')_$(basename "$run")
        [ -f "docs/selector_study/selection/$name.json" ] && continue
        timm-mod selection --model resnet18_mod --checkpoint "$run/last.pth.tar" --data-dir "$DATA" \
            --split "$2" --output "$OUT/selection/$name"
        cp "$OUT/selection/$name/selection.json" "docs/selector_study/selection/$name.json"
    done
}
