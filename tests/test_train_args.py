""" train_args/: every file is a valid train.py arg file, and the recipes are the paper's (paper Appendix A.1)."""
import argparse
from pathlib import Path
from typing import Any, Dict

import pytest

from timm_mod.experiments.quickstart import quickstart_args_file
from timm_mod.experiments.recipe import load_train_args
from timm_mod.models.zoo import PAPER_MODELS

ROOT = Path(__file__).parents[1]
TRAIN_ARGS = sorted((ROOT / 'train_args').glob('*.yaml'))

# Every option name (argparse dest) that timm's train.py defines, read off train.py at
# huggingface/pytorch-image-models aa4b5850 (2026-08-08). train.py applies an arg file with
# parser.set_defaults(**yaml.safe_load(f)), which accepts any key silently: hence this list.
TRAIN_PY_OPTIONS = frozenset({
    'aa', 'amp', 'amp_dtype', 'aug_repeats', 'aug_splits', 'batch_size', 'bce_loss', 'bce_pos_weight', 'bce_sum',
    'bce_target_thresh', 'bn_eps', 'bn_momentum', 'channels_last', 'checkpoint_hist', 'class_map', 'clip_grad',
    'clip_mode', 'color_jitter', 'color_jitter_prob', 'config', 'cooldown_epochs', 'crop_pct', 'cutmix',
    'cutmix_minmax', 'data', 'data_dir', 'dataset', 'dataset_download', 'dataset_trust_remote_code', 'decay_epochs',
    'decay_milestones', 'decay_rate', 'device', 'device_modules', 'dist_bn', 'distill_loss_weight', 'drop',
    'drop_block', 'drop_connect', 'drop_path', 'epoch_repeats', 'epochs', 'eval_metric', 'experiment', 'fast_norm',
    'fuser', 'gaussian_blur_prob', 'gp', 'grad_accum_steps', 'grad_checkpointing', 'grayscale_prob',
    'head_init_bias', 'head_init_scale', 'hflip', 'img_size', 'in_chans', 'initial_checkpoint', 'input_img_mode',
    'input_key', 'input_size', 'interpolation', 'jsd_loss', 'kd_distill_type', 'kd_loss_type', 'kd_model_name',
    'kd_student_feature_dim', 'kd_teacher_feature_dim', 'kd_temperature', 'kd_token_distill_type', 'layer_decay',
    'layer_decay_min_scale', 'layer_decay_no_opt_scale', 'local_rank', 'log_interval', 'log_wandb', 'lr', 'lr_base',
    'lr_base_scale', 'lr_base_size', 'lr_cycle_decay', 'lr_cycle_limit', 'lr_cycle_mul', 'lr_k_decay', 'lr_noise',
    'lr_noise_pct', 'lr_noise_std', 'mean', 'min_lr', 'mixup', 'mixup_mode', 'mixup_off_epoch', 'mixup_prob',
    'mixup_switch_prob', 'model', 'model_dtype', 'model_ema', 'model_ema_decay', 'model_ema_force_cpu',
    'model_ema_warmup', 'model_kwargs', 'momentum', 'naflex_loader', 'naflex_loss_scale', 'naflex_max_seq_len',
    'naflex_patch_size_probs', 'naflex_patch_sizes', 'naflex_patchify_channels_first', 'naflex_train_seq_lens',
    'no_aug', 'no_ddp_bb', 'no_prefetcher', 'no_resume_opt', 'num_classes', 'opt', 'opt_betas', 'opt_eps',
    'opt_kwargs', 'output', 'patience_epochs', 'pin_mem', 'pretrained', 'pretrained_path', 'ratio', 'recount',
    'recovery_interval', 'remode', 'reprob', 'resplit', 'resume', 'save_images', 'scale', 'sched',
    'sched_on_updates', 'seed', 'smoothing', 'split_bn', 'start_epoch', 'std', 'sync_bn', 'synchronize_step',
    'target_key', 'task_loss_weight', 'torchcompile', 'torchcompile_mode', 'torchscript', 'train_batch_sizes',
    'train_batches_per_epoch', 'train_crop_mode', 'train_img_sizes', 'train_interpolation', 'train_num_samples',
    'train_size_probs', 'train_size_random_mix', 'train_size_schedule', 'train_size_schedule_spread', 'train_split',
    'tta', 'use_multi_epochs_loader', 'val_interval', 'val_num_samples', 'val_split', 'validation_batch_size',
    'variable_batch_loss_scale', 'vflip', 'wandb_project', 'wandb_resume_id', 'wandb_tags', 'warmup_epochs',
    'warmup_lr', 'warmup_prefix', 'weight_decay', 'worker_seeding', 'workers',
})


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
        'cifar10.yaml', 'cifar10_finetune.yaml'}
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
    assert f'-c train_args/{recipe} --model {name} ' in (ROOT / 'README.md').read_text()


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
