#!/usr/bin/env bash
# The converged CIFAR-10 study (docs/cifar10_study.md): every run, in the order it trains. Run it from the
# repository root with timm-mod installed; every step skips what is finished and resumes what was interrupted,
# so after an interruption run it again; on a fresh checkout first run `python docs/cifar10_study/summarize.py
# --restore DATA`, which puts the committed results back under output/ as runs of this study on DATA. Data: an
# ImageFolder copy of CIFAR-10 (train/ and validation/).
# It trains in two lanes side by side, one thread each, each in its own output folder: on 2 cores that trains
# 1.18x (resnet18) to 1.31x (resnet18_mod) the steps per hour of one lane with two threads (docs/cifar10_study.md).
# `summarize.py --lane I` shares arms.txt's runs between the lanes. Each lane's output goes to stdout with its tag.
# Nothing here times anything: time the finished study on an idle machine (the last command of the doc).
set -euo pipefail
DATA=${1:-../shared/data/cifar10}
OUT=output/cifar10_study         # lane 1
OUT2=output/cifar10_study_lane2  # lane 2
export OMP_NUM_THREADS=1
source docs/lanes.sh
study() { local out=$1; shift; timm-mod compare -c train_args/cifar10.yaml --data-dir "$DATA" --output-dir "$out" --no-speed "$@"; }
done_in() { [ -f "$1" ]; }
# both lanes' runs, computed before either trains, so that they never share a run
runs1=$(python docs/cifar10_study/summarize.py --lane 1)
runs2=$(python docs/cifar10_study/summarize.py --lane 2)
LANE1=() LANE2=()
[ -z "$runs1" ] || mapfile -t LANE1 <<< "$runs1"
[ -z "$runs2" ] || mapfile -t LANE2 <<< "$runs2"

lane1() {
    # 1. first seed of the baseline and of MoD: the fine-tune starts from resnet18's
    study "$OUT" --models resnet18@0 resnet18_mod@0

    # 2. from a trained plain model: resnet18 seed 0 converted to resnet18_mod, fine-tuned a quarter of the epochs
    if ! done_in output/cifar10_finetune/resnet18_mod/seed0/result.json; then
        done_in "$OUT/resnet18_mod_from_resnet18.pth" || timm-mod convert --model resnet18_mod \
            --checkpoint "$OUT/resnet18/seed0/last.pth.tar" --output "$OUT/resnet18_mod_from_resnet18.pth"
        timm-mod compare -c train_args/cifar10_finetune.yaml --data-dir "$DATA" --output-dir output/cifar10_finetune \
            --models resnet18_mod@0 --no-speed
    fi

    # 3. int8: top-1 and routing agreement of converged models in onnxruntime and OpenVINO, from their second seed
    #    (the seed-0 checkpoints were lost with a machine before quantize_int8 kept the first convolution float32)
    study "$OUT" --models resnet18_mod@1 resnet18@1
    for model in resnet18 resnet18_mod; do
        done_in "output/cifar10_int8/$model/accuracy.json" || timm-mod quantize --model "$model" \
            --checkpoint "$OUT/$model/seed1/last.pth.tar" --data-dir "$DATA" --output "output/cifar10_int8/$model"
    done

    # 5. lane 1's share of arms.txt
    [ ${#LANE1[@]} -eq 0 ] || study "$OUT" --models "${LANE1[@]}"
}

lane2() {
    # 4. the same run as resnet18_mod seed 0 through timm's stock train.py, when given its path (it is not in timm's
    #    wheel): TRAIN_PY=path/to/train.py bash docs/cifar10_study/run.sh. Its last line in summary.csv is epoch 29.
    if [ -n "${TRAIN_PY:-}" ]; then
        twin=output/cifar10_trainpy/resnet18_mod_seed0
        if ! grep -q '^29,' "$twin/summary.csv" 2>/dev/null; then
            resume=()
            [ -f "$twin/last.pth.tar" ] && resume=(--resume "$twin/last.pth.tar")
            python "$TRAIN_PY" -c train_args/cifar10.yaml --data-dir "$DATA" --model resnet18_mod --seed 0 \
                --device cpu --output output/cifar10_trainpy --experiment resnet18_mod_seed0 "${resume[@]}"
        fi
    fi

    # 5. lane 2's share of arms.txt
    [ ${#LANE2[@]} -eq 0 ] || study "$OUT2" --models "${LANE2[@]}"
}

run_lanes "lane 1" lane1 "lane 2" lane2
