""" The pruning arms of the distillation study (docs/distillation.md): the teacher resnet18 pruned by Torch-Pruning
to resnet18_mod's MACs, then fine-tuned by `timm-mod compare` with the same recipe, seeds and distillation as the
converted resnet18_mod.

Torch-Pruning is this study's requirement, never the package's (`pip install -r
docs/distillation_study/requirements.txt`). The pruner is the one its CIFAR ResNet benchmarks use without a
sparsity-training stage (which would add epochs the MoD arms do not get): group L2-norm importance over DepGraph's
coupled channel groups, ranked globally, pruned in small steps (2,000 to a ratio of 1, finer than its benchmark's
400, to land close to the target) until the MACs reach resnet18_mod's.

The pruned network is registered with timm as `resnet18_pruned`, so that compare trains it like any timm model:
it is rebuilt by pruning the teacher again (magnitude pruning is deterministic), and the arm's
`initial_checkpoint` is the pruned weights written here, so a run's identity carries their content. Run from the
repository root (the teacher and the converted model come from run_study.sh):
    python docs/distillation_study/pruned.py ../shared/data/cifar10 --loss cross-entropy
    python docs/distillation_study/pruned.py ../shared/data/cifar10 --loss distilled
"""
import argparse
import copy
import functools
from pathlib import Path
from typing import Any, Optional

import torch
import torch_pruning as tp
import yaml
from timm.models import create_model, load_checkpoint, register_model

from timm_mod.experiments.compare import ModelSpec, compare, write_comparison, format_comparison
from timm_mod.models import measure
from timm_mod.utils.output import staged_output

STUDY = Path('output/cifar10_distill')
TEACHER_CHECKPOINT = Path('output/teacher/resnet18/seed0/last.pth.tar')
PRUNED_WEIGHTS = STUDY / 'resnet18_pruned.pth'
INPUT_SIZE = (3, 32, 32)
PRUNING_STEPS = 2000


def target_macs() -> float:
    """ resnet18_mod's MACs at the study's input size, counted as compare counts every arm."""
    return measure(create_model('resnet18_mod', num_classes=10), INPUT_SIZE)[1]


@functools.lru_cache(maxsize=1)
def _pruned_teacher(checkpoint: str) -> torch.nn.Module:
    """ The teacher pruned until its MACs are at most resnet18_mod's (once per process: compare builds it often)."""
    model = create_model('resnet18', num_classes=10)
    load_checkpoint(model, checkpoint)
    model.eval()
    example = torch.randn(1, *INPUT_SIZE)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
        pruning_ratio=1.0, iterative_steps=PRUNING_STEPS, ignored_layers=[model.get_classifier()])
    target = target_macs()
    for _ in range(PRUNING_STEPS):
        pruner.step()
        if measure(model, INPUT_SIZE)[1] <= target:
            return model
    raise RuntimeError(f'{PRUNING_STEPS} pruning steps did not reach {target / 1e6:.1f} MMACs.')


@register_model
def resnet18_pruned(pretrained: bool = False, drop_rate: float = 0.0, num_classes: int = 10,
                    device: Optional[str] = None, **kwargs: Any) -> torch.nn.Module:
    """ The study's teacher pruned to resnet18_mod's MACs, with the pruned teacher's weights."""
    options = {key: value for key, value in kwargs.items() if value is not None}  # create_model's unset ones
    if pretrained or options or num_classes != 10:
        raise ValueError('resnet18_pruned is the study\'s pruned CIFAR-10 teacher; it takes no other options.')
    model = copy.deepcopy(_pruned_teacher(str(TEACHER_CHECKPOINT)))
    model.drop_rate = drop_rate
    return model if device is None else model.to(device)


def write_pruned_weights() -> None:
    """ The pruned weights every pruning arm starts from, written once (never replaced)."""
    if PRUNED_WEIGHTS.exists():
        return
    model = resnet18_pruned()
    params, macs = measure(model, INPUT_SIZE)
    print(f'resnet18 pruned to {macs / 1e6:.2f} MMACs (resnet18_mod {target_macs() / 1e6:.2f}), '
          f'{params / 1e6:.2f} M params')
    with staged_output(PRUNED_WEIGHTS) as staging:
        torch.save(model.state_dict(), staging)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('data_dir', type=Path)
    parser.add_argument('--loss', choices=('cross-entropy', 'distilled'), required=True)
    args = parser.parse_args()
    write_pruned_weights()
    arm = f'resnet18_pruned:initial_checkpoint={PRUNED_WEIGHTS}'
    if args.loss == 'distilled':
        arm += f',kd_model_name=local-dir:{STUDY / "teacher"}'
    with open('train_args/cifar10_finetune.yaml') as f:
        train_args = yaml.safe_load(f)
    output_dir = STUDY / ('pruned_ce' if args.loss == 'cross-entropy' else 'pruned_kd')
    rows, results = compare([ModelSpec.parse(arm + '@0,1,2')], train_args, args.data_dir, output_dir,
                            measure_speed=False)
    write_comparison(rows, output_dir, results)
    print(format_comparison(rows))


if __name__ == '__main__':
    main()
