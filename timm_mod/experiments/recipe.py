""" train.py arg files as a study reads them: train.py's defaults for what a file leaves out, train.py's derived
learning rate, and one-line errors for files that cannot train."""
import difflib
import logging
from pathlib import Path
from typing import Any, Dict

import yaml

__all__ = [
    'TRAIN_PY_DEFAULTS', 'TRAIN_PY_OPTIONS', 'load_train_args', 'complete_train_args', 'check_initial_checkpoint']

_logger = logging.getLogger(__name__)


# train.py's defaults (timm 1.0) for the options a study reads: what an arg file leaves out trains as train.py
# would train it. `lr: None` is derived from `lr_base` as train.py derives it (`complete_train_args`).
TRAIN_PY_DEFAULTS: Dict[str, Any] = dict(
    train_split='train', val_split='validation', num_classes=None, input_size=None, img_size=None, crop_pct=None,
    mean=None, std=None, interpolation='', train_interpolation='random', scale=[0.08, 1.0],
    ratio=[3 / 4, 4 / 3], hflip=0.5, vflip=0.0, color_jitter=0.4, drop=0.0, smoothing=0.1, batch_size=128,
    workers=4, epochs=300, seed=42, opt='sgd', lr=None, lr_base=0.1, lr_base_size=256, lr_base_scale='',
    momentum=0.9, weight_decay=2e-5, sched='cosine', warmup_epochs=5, warmup_lr=1e-5, min_lr=0.0,
    decay_epochs=90, decay_milestones=[90, 180, 270], decay_rate=0.1, cooldown_epochs=0, patience_epochs=10,
    lr_noise=None, lr_noise_pct=0.67, lr_noise_std=1.0, lr_cycle_mul=1.0, lr_cycle_decay=0.5, lr_cycle_limit=1,
    lr_k_decay=1.0, sched_on_updates=False, warmup_prefix=False, val_interval=1, channels_last=False, amp=False,
    amp_dtype='float16', initial_checkpoint='', kd_model_name=None, kd_loss_type='kl', distill_loss_weight=None,
    task_loss_weight=None, kd_temperature=4.0)

# Every option name (argparse dest) timm's train.py defines, read off train.py at huggingface/pytorch-image-models
# aa4b5850 (2026-08-08). train.py applies an arg file with parser.set_defaults(**yaml.safe_load(f)), which accepts any
# key silently, so a study warns about the others (`weight-decay` for `weight_decay`).
TRAIN_PY_OPTIONS = frozenset("""
    aa amp amp_dtype aug_repeats aug_splits batch_size bce_loss bce_pos_weight bce_sum bce_target_thresh bn_eps
    bn_momentum channels_last checkpoint_hist class_map clip_grad clip_mode color_jitter color_jitter_prob
    cooldown_epochs crop_pct cutmix cutmix_minmax data data_dir dataset dataset_download dataset_trust_remote_code
    decay_epochs decay_milestones decay_rate device device_modules dist_bn distill_loss_weight drop drop_block
    drop_connect drop_path epoch_repeats epochs eval_metric experiment fast_norm fuser gaussian_blur_prob gp
    grad_accum_steps grad_checkpointing grayscale_prob head_init_bias head_init_scale hflip img_size in_chans
    initial_checkpoint input_img_mode input_key input_size interpolation jsd_loss kd_distill_type kd_loss_type
    kd_model_name kd_student_feature_dim kd_teacher_feature_dim kd_temperature kd_token_distill_type layer_decay
    layer_decay_min_scale layer_decay_no_opt_scale local_rank log_interval log_wandb lr lr_base lr_base_scale
    lr_base_size
    lr_cycle_decay lr_cycle_limit lr_cycle_mul lr_k_decay lr_noise lr_noise_pct lr_noise_std mean min_lr mixup
    mixup_mode mixup_off_epoch mixup_prob mixup_switch_prob model model_dtype model_ema model_ema_decay
    model_ema_force_cpu model_ema_warmup model_kwargs momentum naflex_loader naflex_loss_scale naflex_max_seq_len
    naflex_patch_size_probs naflex_patch_sizes naflex_patchify_channels_first naflex_train_seq_lens no_aug no_ddp_bb
    no_prefetcher no_resume_opt num_classes opt opt_betas opt_eps opt_kwargs output patience_epochs pin_mem
    pretrained pretrained_path ratio recount recovery_interval remode reprob resplit resume save_images scale sched
    sched_on_updates seed smoothing split_bn start_epoch std sync_bn synchronize_step target_key task_loss_weight
    torchcompile torchcompile_mode torchscript train_batch_sizes train_batches_per_epoch train_crop_mode
    train_img_sizes train_interpolation train_num_samples train_size_probs train_size_random_mix train_size_schedule
    train_size_schedule_spread train_split tta use_multi_epochs_loader val_interval val_num_samples val_split
    validation_batch_size variable_batch_loss_scale vflip wandb_project wandb_resume_id wandb_tags warmup_epochs
    warmup_lr warmup_prefix weight_decay worker_seeding workers
""".split())

# train.py options that change training and that a study does not implement, with train.py's defaults: an arg file
# that sets one otherwise is refused rather than trained without it.
_NOT_IMPLEMENTED = dict(
    aa=None, reprob=0.0, mixup=0.0, cutmix=0.0, cutmix_minmax=None, drop_connect=None, drop_path=None,
    drop_block=None, model_ema=False, clip_grad=None, grad_accum_steps=1, bce_loss=False, jsd_loss=False,
    aug_repeats=0, aug_splits=0, train_crop_mode=None, gp=None, bn_momentum=None, bn_eps=None,
    pretrained=False, resume='', start_epoch=None, epoch_repeats=0.0, class_map='',
    train_num_samples=None, kd_distill_type='logit')


def load_train_args(path: Path) -> Dict[str, Any]:
    """ A train.py arg file, read the way train.py reads `-c FILE` (a flat YAML mapping of option names), checked
    (`complete_train_args`) so that a mistake is a one-line error naming the file, before any work."""
    path = Path(path)
    try:
        args = yaml.safe_load(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise FileNotFoundError(f'No arg file {path}; give a train.py YAML file, e.g. train_args/cifar10.yaml.') \
            from None
    except UnicodeDecodeError:
        raise ValueError(f'{path} is not a text file; give a train.py arg file (YAML).') from None
    except yaml.YAMLError as error:
        where = getattr(error, 'problem_mark', None)
        raise ValueError(f'{path} is not valid YAML{f" (line {where.line + 1})" if where else ""}: '
                         f'{getattr(error, "problem", None) or error}.') from None
    if not isinstance(args, dict):
        raise ValueError(f'{path} is not a train.py arg file: expected a mapping of train.py option names.')
    complete_train_args(args, source=str(path))
    for key in sorted(set(map(str, args)) - TRAIN_PY_OPTIONS):
        close = difflib.get_close_matches(key.replace('-', '_'), TRAIN_PY_OPTIONS, n=1)
        _logger.warning(f'warning: {path}: {key!r} is not a train.py option; train.py ignores it, and so does this '
                        f'study{f" (did you mean {close[0]!r}?)" if close else ""}.')
    if 'epochs' not in args:
        _logger.warning(f'note: {path} sets no epochs; train.py\'s default of {TRAIN_PY_DEFAULTS["epochs"]} applies.')
    return args


def complete_train_args(train_args: Dict[str, Any], source: str = 'the train args') -> Dict[str, Any]:
    """ The arg file's options over train.py's defaults, with the learning rate train.py derives when `lr` is
    not given; a clear error for values that cannot train, or options a study does not implement."""
    args = dict(TRAIN_PY_DEFAULTS, **train_args)
    for key in ('epochs', 'batch_size'):
        if not isinstance(args[key], int) or isinstance(args[key], bool) or args[key] < 1:
            raise ValueError(f'{source}: {key} must be a whole number of at least 1, got {args[key]!r}.')
    if args['num_classes'] is not None and (not isinstance(args['num_classes'], int) or args['num_classes'] < 1):
        raise ValueError(f'{source}: num_classes must be a whole number of at least 1, got {args["num_classes"]!r}.')
    if not isinstance(args['workers'], int) or args['workers'] < 0:
        raise ValueError(f'{source}: workers must be a whole number of at least 0, got {args["workers"]!r}.')
    if args['kd_model_name'] is not None and not (isinstance(args['kd_model_name'], str) and args['kd_model_name']):
        raise ValueError(f'{source}: kd_model_name must name the teacher (local-dir:FOLDER, hf-hub:ORG/NAME, a timm '
                         f'model name or a checkpoint file), got {args["kd_model_name"]!r}.')
    unsupported = sorted(key for key, default in _NOT_IMPLEMENTED.items() if args.get(key) not in (default, None))
    if unsupported:
        raise ValueError(f'{source} sets {", ".join(unsupported)}, which timm-mod compare does not implement; train '
                         f'with timm\'s train.py, or remove them.')
    if not args['lr']:  # train.py: lr = lr_base * global batch / lr_base_size, sqrt-scaled for adaptive optimizers
        ratio = args['batch_size'] / args['lr_base_size']
        scale = args['lr_base_scale'] or ('sqrt' if any(name in args['opt'].lower() for name in ('ada', 'lamb'))
                                          else 'linear')
        args['lr'] = args['lr_base'] * (ratio ** 0.5 if scale == 'sqrt' else ratio)
    return args


def check_initial_checkpoint(train_args: Dict[str, Any]) -> None:
    """ A clear error, before any training, when the arg file's `initial_checkpoint` is not there (an arg file may
    name one that a documented earlier step writes, so loading the file does not check it)."""
    path = train_args.get('initial_checkpoint')
    if path and not Path(path).is_file():
        raise FileNotFoundError(f'No initial_checkpoint file {path}: give a state dict or checkpoint to start from, '
                                f'e.g. one written by `timm-mod convert`.')
