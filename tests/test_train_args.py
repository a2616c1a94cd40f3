""" train_args/: every file is a valid train.py arg file, and the recipes are the paper's (paper Appendix A.1)."""
import argparse
from pathlib import Path
from typing import Any, Dict

import pytest

from timm_mod.experiments.quickstart import quickstart_args_file
from timm_mod.experiments.recipe import TRAIN_PY_OPTIONS, load_train_args
from timm_mod.models import PAPER_MODELS

ROOT = Path(__file__).parents[1]
TRAIN_ARGS = sorted((ROOT / 'train_args').glob('*.yaml'))

def parse_like_train_py(path: Path) -> argparse.Namespace:
    """ train.py's rule for `-c FILE`: YAML mapping -> parser defaults -> parse the remaining command line."""
    parser = argparse.ArgumentParser()
    for name in TRAIN_PY_OPTIONS:
        parser.add_argument('--' + name.replace('_', '-'), dest=name, default=None)
    parser.set_defaults(**load_train_args(path))
    return parser.parse_args([])


def test_there_are_recipes_and_a_quickstart() -> None:
    assert {p.name for p in TRAIN_ARGS} == {
        'quickstart.yaml', 'resnet_mod_imagenet.yaml', 'mobilenetv2_mod_imagenet.yaml', 'finetune_from_plain.yaml',
        'cifar10.yaml', 'cifar10_finetune.yaml', 'cifar10_distill.yaml', 'imagenet_distill.yaml'}
    assert quickstart_args_file().read_text() == (ROOT / 'train_args' / 'quickstart.yaml').read_text()


@pytest.mark.parametrize('path', TRAIN_ARGS, ids=lambda p: p.name)
def test_every_key_is_a_train_py_option(path: Path) -> None:
    args = load_train_args(path)
    unknown = set(args) - TRAIN_PY_OPTIONS
    assert not unknown, f'{path.name}: not train.py options: {sorted(unknown)}'
    parsed = vars(parse_like_train_py(path))
    assert {key: parsed[key] for key in args} == args


def expect(args: Dict[str, Any], **expected: Any) -> None:
    assert {key: args.get(key) for key in expected} == expected


def test_resnet_recipe_is_the_papers() -> None:
    args = load_train_args(ROOT / 'train_args' / 'resnet_mod_imagenet.yaml')
    expect(args, epochs=100, opt='momentum', lr=0.1, momentum=0.9, weight_decay=1e-4, sched='step',
           decay_epochs=30, decay_rate=0.1, warmup_epochs=0, cooldown_epochs=0, smoothing=0.0,
           input_size=[3, 224, 224], crop_pct=0.875, hflip=0.5, color_jitter=0.0)
    assert args['batch_size'] * 4 == 256, 'batch 256 total over the 4 GPUs of the documented command'


def test_mobilenet_recipe_is_torchvisions_reference() -> None:
    args = load_train_args(ROOT / 'train_args' / 'mobilenetv2_mod_imagenet.yaml')
    expect(args, epochs=300, opt='momentum', lr=0.045, momentum=0.9, weight_decay=4e-5, sched='step',
           decay_epochs=1, decay_rate=0.98, warmup_epochs=0, smoothing=0.0, crop_pct=0.875)
    assert args['batch_size'] * 8 == 256, 'batch 256 total over the 8 GPUs of the documented command'


def test_finetune_recipe_keeps_the_papers_data_and_lowers_the_learning_rate() -> None:
    paper = load_train_args(ROOT / 'train_args' / 'resnet_mod_imagenet.yaml')
    finetune = load_train_args(ROOT / 'train_args' / 'finetune_from_plain.yaml')
    data_keys = ('input_size', 'crop_pct', 'interpolation', 'train_interpolation', 'scale', 'ratio', 'hflip',
                 'color_jitter', 'smoothing', 'batch_size', 'weight_decay', 'opt', 'opt_kwargs')
    assert {key: finetune[key] for key in data_keys} == {key: paper[key] for key in data_keys}
    assert finetune['lr'] == paper['lr'] / 10 and finetune['epochs'] < paper['epochs']
    assert 'initial-checkpoint' in (ROOT / 'train_args' / 'finetune_from_plain.yaml').read_text()


@pytest.mark.parametrize('name', PAPER_MODELS)
def test_every_paper_model_has_a_documented_command(name: str) -> None:
    recipe = 'mobilenetv2_mod_imagenet.yaml' if name.startswith('mobilenetv2') else 'resnet_mod_imagenet.yaml'
    assert f'-c train_args/{recipe} --model {name} ' in (ROOT / 'docs' / 'training.md').read_text()


def test_cifar10_recipe_trains_at_cifars_size_with_plain_cross_entropy() -> None:
    """ 32 px, no centre crop (the whole image is seen), the usual CIFAR augmentation and the paper's plain loss;
    its splits are the ones torchvision's CIFAR10 (train.py --dataset torch/cifar10) and an ImageFolder copy name."""
    args = load_train_args(ROOT / 'train_args' / 'cifar10.yaml')
    expect(args, num_classes=10, input_size=[3, 32, 32], crop_pct=1.0, hflip=0.5, color_jitter=0.0, smoothing=0.0,
           train_split='train', val_split='validation', opt='sgd', momentum=0.9)


def test_cifar10_finetune_keeps_the_studys_data_for_a_quarter_of_its_epochs_from_the_converted_model() -> None:
    scratch = load_train_args(ROOT / 'train_args' / 'cifar10.yaml')
    finetune = load_train_args(ROOT / 'train_args' / 'cifar10_finetune.yaml')
    data_keys = ('num_classes', 'train_split', 'val_split', 'input_size', 'crop_pct', 'interpolation',
                 'train_interpolation', 'scale', 'ratio', 'hflip', 'color_jitter', 'smoothing', 'batch_size',
                 'weight_decay', 'opt', 'momentum', 'sched')
    assert {key: finetune[key] for key in data_keys} == {key: scratch[key] for key in data_keys}
    assert finetune['model'] == 'resnet18_mod' and finetune['lr'] < scratch['lr']
    scratch_epochs = scratch['epochs'] + scratch.get('cooldown_epochs', 0)
    assert finetune['epochs'] + finetune.get('cooldown_epochs', 0) <= scratch_epochs / 4
    header = (ROOT / 'train_args' / 'cifar10_finetune.yaml').read_text()
    assert 'timm-mod convert --model resnet18_mod --checkpoint output/cifar10_study/resnet18/seed0/' in header
    assert f"--output {finetune['initial_checkpoint']}" in header, 'the header writes the file the recipe starts from'


def test_imagenet_distillation_scales_the_cifar10_fine_tune_and_keeps_the_teachers_data() -> None:
    """ resnet50_mod from timm's resnet50.a1_in1k, distilled from it: the teacher's own preprocessing (timm's
    pretrained cfg), the student's plain counterpart as teacher, and the CIFAR-10 fine-tune's share of the
    from-scratch epochs and learning rate applied to the paper's ImageNet recipe."""
    import timm
    from timm_mod.experiments.convert import plain_counterpart
    args = load_train_args(ROOT / 'train_args' / 'imagenet_distill.yaml')
    teacher = timm.models.get_pretrained_cfg(args['kd_model_name'])
    default_weights = timm.models.get_pretrained_cfg(plain_counterpart(args['model'])).hf_hub_id
    assert default_weights == f"timm/{args['kd_model_name']}", 'what `timm-mod convert --pretrained` loads'
    expect(args, input_size=list(teacher.input_size), crop_pct=teacher.crop_pct, interpolation=teacher.interpolation,
           train_interpolation=teacher.interpolation, num_classes=teacher.num_classes)
    paper = load_train_args(ROOT / 'train_args' / 'resnet_mod_imagenet.yaml')
    cifar_scratch = load_train_args(ROOT / 'train_args' / 'cifar10.yaml')
    cifar_finetune = load_train_args(ROOT / 'train_args' / 'cifar10_distill.yaml')

    def total(a: Dict[str, Any]) -> int:
        return a['epochs'] + a.get('cooldown_epochs', 0)
    assert total(args) / total(paper) == pytest.approx(total(cifar_finetune) / total(cifar_scratch), abs=0.02)
    assert args['lr'] / paper['lr'] == pytest.approx(cifar_finetune['lr'] / cifar_scratch['lr'])
    assert 'timm-mod convert --model resnet50_mod --pretrained --output ' + args['initial_checkpoint'] in (
        ROOT / 'train_args' / 'imagenet_distill.yaml').read_text()
