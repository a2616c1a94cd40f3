""" Compare timm models on any ImageFolder: train each (model, kwargs, seed) with one train.py arg file, evaluate on
the held-out split, and tabulate accuracy against cost and measured CPU speed.

Training uses the components timm's train.py uses (`create_dataset`, `create_loader`, `optimizer_kwargs` +
`create_optimizer_v2`, `scheduler_kwargs` + `create_scheduler_v2`, the loss, `CheckpointSaver`, `accuracy`),
configured by the same YAML file train.py reads with `-c`, so stock train.py and validate.py reproduce a run on the
same data folder.

Studies are long and die: every run lives in its own folder (`<output>/<model>[@kwargs]/seed<N>/`), keeps train.py's
`last.pth.tar` after every epoch and writes `result.json` when it is done. Started again, a study skips finished
runs and resumes unfinished ones from their last epoch. Each epoch draws its randomness (shuffling, augmentation,
random routing) from generators seeded by (seed, epoch), so a resumed run trains exactly as an uninterrupted one.
"""
import argparse
import ast
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
import yaml
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import resume_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import AverageMeter, CheckpointSaver, accuracy, random_seed

from ._builder import require_registered
from ._output import (
    check_writable_folder, exclusive_folder, stop_if_terminated, write_records, write_text_whole)
from .benchmark import BenchSetting, make_step, time_side_by_side
from .in_memory_data import (
    DATA_PATHS, InMemorySplit, eval_batches, eval_split, in_memory_unsupported, train_batches)
from .mod import MoDBlock
from .zoo import format_table, measure

__all__ = [
    'UNFINISHED', 'TRAIN_PY_DEFAULTS', 'ModelSpec', 'RunResult', 'ComparisonRow', 'load_train_args',
    'complete_train_args', 'check_image_folder', 'split_classes', 'check_specs', 'train_and_evaluate', 'compare',
    'summarize_runs', 'format_comparison', 'write_comparison',
]

UNFINISHED = ('resume', 'skip')  # what a study does with a run that was interrupted
RESULT_FILE = 'result.json'
STUDY_FILE = 'study.json'


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
    amp_dtype='float16')

# train.py options that change training and that a study does not implement, with train.py's defaults: an arg file
# that sets one otherwise is refused rather than trained without it.
_NOT_IMPLEMENTED = dict(
    aa=None, reprob=0.0, mixup=0.0, cutmix=0.0, cutmix_minmax=None, drop_connect=None, drop_path=None,
    drop_block=None, model_ema=False, clip_grad=None, grad_accum_steps=1, bce_loss=False, jsd_loss=False,
    aug_repeats=0, aug_splits=0, train_crop_mode=None, gp=None, bn_momentum=None, bn_eps=None,
    initial_checkpoint='', pretrained=False, resume='', start_epoch=None, epoch_repeats=0.0, class_map='',
    train_num_samples=None)


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


def check_image_folder(root: Path, split: str) -> Path:
    """ The split folder, or a clear error when it is not an ImageFolder (class subfolders of images)."""
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise FileNotFoundError(f'No {split!r} split in {root}: expected the folder {folder}/<class name>/<images>.')
    if not any(child.is_dir() for child in folder.iterdir()):
        raise ValueError(
            f'{folder} has no class subfolders: an ImageFolder split holds one folder per class, '
            f'{folder}/<class name>/<image files>.')
    return folder


def split_classes(root: Path, split: str) -> Dict[str, int]:
    """ The class map timm's ImageFolder reader builds for a split: class folders holding at least one image."""
    from timm.data.readers.reader_image_folder import find_images_and_targets
    return find_images_and_targets(str(check_image_folder(root, split)))[1]


def check_class_maps(root: Path, train_split: str, val_split: str, num_classes: Optional[int]) -> Dict[str, int]:
    """ The training split's class map, with which the held-out split is labelled; a clear error when the
    held-out split has classes training never saw, or the classifier is smaller than the class count.

    timm's reader numbers each split's classes on its own, so a class folder empty in one split would shift
    every label after it and report a wrong accuracy.
    """
    train_classes = split_classes(root, train_split)
    unseen = sorted(set(split_classes(root, val_split)) - set(train_classes))
    if unseen:
        raise ValueError(f'{Path(root) / val_split} has classes with no image in {Path(root) / train_split}: '
                         f'{", ".join(unseen[:5])}{" ..." if len(unseen) > 5 else ""}; a model cannot learn them. '
                         f'Give both splits the same class folders.')
    if num_classes is not None and num_classes < len(train_classes):
        raise ValueError(f'num_classes is {num_classes}, but {Path(root) / train_split} has {len(train_classes)} '
                         f'classes; set num_classes to at least {len(train_classes)}.')
    return train_classes


def _parse_value(text: str) -> Any:
    """ A kwarg value the way train.py's `--model-kwargs` reads it: a Python literal, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@dataclass(frozen=True)
class ModelSpec:
    """ A timm model name with the kwargs it is built with, and the seeds it is trained with.

    Written `NAME[:KEY=VALUE,...][@SEED,...]`, e.g. `resnet18_mod:routing=random,c=16@0`; values are Python
    literals (`channels=(32,64,128,256)`) or plain strings. Without `@` the study's seeds apply.
    """
    model_name: str
    model_kwargs: Tuple[Tuple[str, Any], ...] = ()
    seeds: Optional[Tuple[int, ...]] = None

    @classmethod
    def parse(cls, text: str) -> 'ModelSpec':
        spec, _, seeds_text = text.partition('@')
        name, _, kwargs_text = spec.partition(':')
        kwargs = []
        for item in _split_top_level(kwargs_text) if kwargs_text else []:
            key, equals, value = item.partition('=')
            if not equals or not key.strip().isidentifier():
                raise ValueError(f'Model {text!r}: {item!r} is not KEY=VALUE; write NAME:KEY=VALUE,KEY=VALUE@SEEDS, '
                                 f'e.g. resnet18_mod:routing=random@0.')
            kwargs.append((key.strip(), _parse_value(value.strip())))
        seeds = None
        if '@' in text:
            try:
                seeds = tuple(int(seed) for seed in seeds_text.split(','))
            except ValueError:
                raise ValueError(f'Model {text!r}: the seeds after @ must be integers, e.g. {spec}@0,1,2.') from None
            _check_seeds(seeds, f'Model {text!r}')
        return cls(require_registered(name.strip()), tuple(kwargs), seeds)

    @property
    def kwargs(self) -> Dict[str, Any]:
        return dict(self.model_kwargs)

    @property
    def label(self) -> str:
        """ How tables and plots name it: `resnet18_mod routing=random`."""
        return ' '.join([self.model_name] + [f'{key}={value!r}' if isinstance(value, str) else f'{key}={value}'
                                             for key, value in self.model_kwargs]).replace("'", '')

    @property
    def folder_name(self) -> str:
        """ Its runs' folder: `resnet18_mod`, or `resnet18_mod@routing=random,c=16` (spaces removed)."""
        if not self.model_kwargs:
            return self.model_name
        items = ','.join(f'{key}={value}' for key, value in self.model_kwargs)
        return f'{self.model_name}@{items}'.replace(' ', '').replace('/', '_')


def _check_seeds(seeds: Sequence[int], where: str) -> None:
    bad = [seed for seed in seeds if not 0 <= seed < 2 ** 32]
    if bad:
        raise ValueError(f'{where}: seed {bad[0]} is out of range; seeds are whole numbers from 0 to 2**32 - 1.')
    if len(set(seeds)) < len(seeds):
        raise ValueError(f'{where}: a seed is given twice ({", ".join(map(str, seeds))}); a seed count counts runs.')


def check_specs(specs: Sequence[ModelSpec], num_classes: Optional[int], seeds: Sequence[int] = (0,)) -> None:
    """ A clear error, before anything trains, for a model named twice or one that cannot be built with its
    kwargs (each is built on the meta device, which allocates nothing)."""
    _check_seeds(seeds, '--seeds')
    seen: Dict[str, str] = {}
    for spec in specs:
        if spec.folder_name in seen:
            raise ValueError(f'{spec.label!r} is given twice; name it once, with all its seeds '
                             f'(e.g. {spec.model_name}@0,1,2).')
        seen[spec.folder_name] = spec.label
        try:
            timm.create_model(spec.model_name, device='meta', **_num_classes(num_classes), **spec.kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as error:
            raise ValueError(f'{spec.label!r} cannot be built with these kwargs: {error}') from None


def _num_classes(num_classes: Optional[int]) -> Dict[str, int]:
    """ create_model's num_classes, left to the model's default where train.py leaves it (None)."""
    return {} if num_classes is None else dict(num_classes=num_classes)


def _split_top_level(text: str) -> List[str]:
    """ Split on commas outside brackets, so that `channels=(32,64),c=16` is two items."""
    items, depth, current = [], 0, ''
    for char in text:
        depth += char in '([{'
        depth -= char in ')]}'
        if char == ',' and depth == 0:
            items.append(current)
            current = ''
        else:
            current += char
    return items + [current]


@dataclass(frozen=True)
class RunResult:
    """ One trained model, evaluated on the held-out split after its last epoch."""
    model_name: str
    params: int
    macs: float
    top1: float
    checkpoint_dir: Path
    label: str = ''
    seed: int = 0
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    train_seconds: float = 0.0  # wall time of the training epochs (evaluation excluded), as run
    curve: List[Dict[str, Any]] = field(default_factory=list)  # per epoch: train_loss, top1 (None: not evaluated)

    def to_json(self) -> Dict[str, Any]:
        return dict(asdict(self), checkpoint_dir=str(self.checkpoint_dir))

    @classmethod
    def from_json(cls, record: Dict[str, Any]) -> 'RunResult':
        return cls(**dict(record, checkpoint_dir=Path(record['checkpoint_dir'])))


def _evaluate(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
              autocast: Callable[[], ContextManager]) -> float:
    model.eval()
    top1 = AverageMeter()
    with torch.no_grad(), autocast():
        for images, targets in batches:
            top1.update(accuracy(model(images), targets)[0].item(), images.shape[0])
    return top1.avg


def _autocast(cfg: argparse.Namespace) -> Callable[[], ContextManager]:
    """ train.py's `amp`: CPU autocast to `amp_dtype`; without it, nothing."""
    if not cfg.amp:
        return contextlib.nullcontext
    dtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}[cfg.amp_dtype]
    return lambda: torch.autocast('cpu', dtype=dtype)


def _data_path(data_path: str, cfg: argparse.Namespace, data_dir: Path, class_map: Dict[str, int],
               data_config: Dict[str, Any], progress: bool, progress_prefix: str
               ) -> Tuple[Callable[[int], Iterable], Callable[[], Iterable]]:
    """ (one epoch's training batches for a seed, the held-out batches): decoded once and augmented as tensors
    where the data fit in memory (`in_memory_data`), else timm's loaders; `data_path` forces either."""
    if data_path not in DATA_PATHS:
        raise ValueError(f'--data-path must be one of {DATA_PATHS}, got {data_path!r}.')
    reason = in_memory_unsupported(cfg, data_dir, data_config['input_size']) if data_path != 'loader' else 'asked'
    if data_path == 'memory' and reason:
        raise ValueError(f'--data-path memory cannot train this run: {reason}; use --data-path loader.')
    if reason is None:
        train_split = InMemorySplit.load(data_dir, cfg.train_split, class_map)
        held_out = eval_split(data_dir, cfg.val_split, class_map, data_config)
        return (lambda seed: train_batches(train_split, cfg, data_config, torch.Generator().manual_seed(seed),
                                           cfg.channels_last),
                lambda: eval_batches(held_out, cfg.batch_size, cfg.channels_last))
    if progress and data_path == 'auto':
        print(f'{progress_prefix}timm\'s loader: {reason}', file=sys.stderr, flush=True)
    loader_kwargs = dict(
        input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
        num_workers=cfg.workers, use_prefetcher=False, device=torch.device('cpu'), persistent_workers=False)
    loader_train = create_loader(
        create_dataset('', root=str(data_dir), split=cfg.train_split, is_training=True, class_map=class_map),
        batch_size=cfg.batch_size, is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
        vflip=cfg.vflip, color_jitter=cfg.color_jitter, interpolation=cfg.train_interpolation, **loader_kwargs)
    loader_eval = create_loader(
        create_dataset('', root=str(data_dir), split=cfg.val_split, class_map=class_map),
        batch_size=cfg.batch_size, interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
        **loader_kwargs)
    return (lambda seed: _channels_last_batches(loader_train, cfg.channels_last),
            lambda: _channels_last_batches(loader_eval, cfg.channels_last))


def _channels_last_batches(batches: Iterable, channels_last: bool) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    for images, targets in batches:
        yield (images.contiguous(memory_format=torch.channels_last) if channels_last else images), targets


def _epoch_seed(seed: int, epoch: int) -> int:
    """ A seed of its own for every (run seed, epoch): no two runs or epochs share a random stream."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _save_checkpoint(saver: CheckpointSaver, epoch: int, metric: float) -> None:
    """ CheckpointSaver's save; where the disk refuses (full, read-only), a clear error and no half-written
    `tmp.pth.tar` left behind (the previous epoch's last.pth.tar stays, so the run resumes from it)."""
    try:
        saver.save_checkpoint(epoch, metric=metric)
    except (OSError, RuntimeError) as error:  # torch.save's zip writer reports a short write as a RuntimeError
        Path(saver.checkpoint_dir, f'tmp{saver.extension}').unlink(missing_ok=True)
        reason = getattr(error, 'strerror', None) or 'the write was cut short'
        free = shutil.disk_usage(saver.checkpoint_dir).free / 2 ** 30
        raise PermissionError(f'Cannot write the checkpoint of epoch {epoch + 1} to {saver.checkpoint_dir} '
                              f'({reason}; {free:.1f} GiB free there): free space or choose a writable --output-dir, '
                              f'then run again to resume.') from None


def train_and_evaluate(
        model_name: str,
        train_args: Dict[str, Any],
        data_dir: Path,
        output_dir: Path,
        epochs: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        seed: Optional[int] = None,
        progress: bool = True,
        progress_prefix: str = '',
        data_path: str = 'auto',
) -> RunResult:
    """ Train `model_name` from scratch with train.py's recipe semantics and evaluate on the held-out split.

    A `last.pth.tar` already in `output_dir` (an interrupted run of the same recipe) is resumed from.

    Args:
        model_name: Any timm model name.
        train_args: train.py options (a loaded arg file); `epochs` and `seed` override its values.
        data_dir: ImageFolder root with the arg file's train and validation splits.
        output_dir: Where CheckpointSaver writes last.pth.tar / model_best.pth.tar and args.yaml.
        model_kwargs: Passed to `timm.create_model`, as train.py's `--model-kwargs`.
        progress: Print one line per epoch to stderr, after `progress_prefix`.
        data_path: 'memory' decodes the images once and augments batches as tensors, 'loader' uses timm's
            loaders, 'auto' the first where the data fit in memory and the recipe allows it.
    """
    model_kwargs = dict(model_kwargs or {})
    train_args = complete_train_args(train_args)
    cfg = argparse.Namespace(**dict(
        train_args, model=model_name, epochs=train_args['epochs'] if epochs is None else epochs,
        seed=train_args['seed'] if seed is None else seed, model_kwargs=model_kwargs, data_dir=str(data_dir)))
    class_map = check_class_maps(data_dir, cfg.train_split, cfg.val_split, cfg.num_classes)
    random_seed(cfg.seed)
    model = timm.create_model(
        require_registered(model_name), drop_rate=cfg.drop, **_num_classes(cfg.num_classes), **model_kwargs)
    cfg.num_classes = model.num_classes
    data_config = resolve_data_config(vars(cfg), model=model)

    train_epoch, evaluate = _data_path(data_path, cfg, data_dir, class_map, data_config, progress, progress_prefix)

    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg))
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(cfg))
    loss_fn = LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing else nn.CrossEntropyLoss()
    autocast = _autocast(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / 'args.yaml', 'w') as f:
        yaml.safe_dump(vars(cfg), f)
    saver = CheckpointSaver(
        model, optimizer, args=cfg, checkpoint_dir=str(output_dir), recovery_dir=str(output_dir),
        decreasing=False, max_history=1)
    start_epoch, cfg.curve = 0, []
    last = output_dir / 'last.pth.tar'
    if last.exists():
        start_epoch = resume_checkpoint(model, str(last), optimizer=optimizer, log_info=False)
        cfg.curve = getattr(torch.load(last, map_location='cpu', weights_only=False).get('args'), 'curve', [])
        saver.load_state_dict_from_checkpoint(str(last))
        scheduler.step(start_epoch)
        if progress:
            print(f'{progress_prefix}resumed after epoch {start_epoch}/{num_epochs}', file=sys.stderr, flush=True)

    for epoch in range(start_epoch, num_epochs):
        random_seed(_epoch_seed(cfg.seed, epoch))  # torch, numpy and Python's random (timm's crops draw from it)
        start, losses, data_seconds = time.perf_counter(), AverageMeter(), 0.0
        model.train()
        batches = iter(train_epoch(_epoch_seed(cfg.seed, epoch)))
        while True:
            fetch = time.perf_counter()
            images, targets = next(batches, (None, None))
            data_seconds += time.perf_counter() - fetch
            if images is None:
                break
            stop_if_terminated()
            with autocast():
                loss = loss_fn(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.update(loss.item(), images.shape[0])
        scheduler.step(epoch + 1)
        epoch_seconds = time.perf_counter() - start
        top1, eval_seconds = None, 0.0
        if (epoch + 1) % cfg.val_interval == 0 or epoch + 1 == num_epochs:  # train.py's val_interval
            top1, eval_seconds = _evaluate(model, evaluate(), autocast), time.perf_counter() - start - epoch_seconds
        cfg.curve.append(dict(epoch=epoch + 1, train_loss=losses.avg, top1=top1, train_seconds=epoch_seconds,
                              data_seconds=data_seconds, eval_seconds=eval_seconds))
        _save_checkpoint(saver, epoch, top1)  # the curve travels in the checkpoint's args, so a resumed run keeps it
        if progress:
            held_out = '' if top1 is None else f'  held-out top-1 {top1:.2f}'
            print(f'{progress_prefix}epoch {epoch + 1}/{num_epochs}  loss {losses.avg:.3f}{held_out}  '
                  f'({epoch_seconds:.1f} s, data {data_seconds:.1f} s; eval {eval_seconds:.1f} s)',
                  file=sys.stderr, flush=True)

    top1 = next(point['top1'] for point in reversed(cfg.curve) if point['top1'] is not None)
    train_seconds = sum(point['train_seconds'] for point in cfg.curve)
    params, macs = measure(model, input_size=data_config['input_size'])
    return RunResult(model_name, params, macs, top1, output_dir, label=ModelSpec(model_name, tuple(
        model_kwargs.items())).label, seed=cfg.seed, model_kwargs=model_kwargs, epochs=num_epochs,
        train_seconds=train_seconds, curve=list(cfg.curve))


@dataclass(frozen=True)
class ComparisonRow:
    """ One model of a study: its seeds' accuracy, its cost, and its speed measured beside the baseline's."""
    label: str
    model_name: str
    seeds: int
    top1_mean: float
    top1_std: float  # sample standard deviation over seeds; 0 for one seed
    params_m: float
    mmacs: float
    inference_ms: Optional[float] = None  # one batch of the recipe's batch size, eval, measured side by side
    inference_speedup: Optional[float] = None  # the baseline's time over this model's
    train_step_ms: Optional[float] = None  # forward, backward and SGD step on one batch
    train_speedup: Optional[float] = None
    speed_setting: str = ''  # what the times were measured on: 'CPU, batch 128 of 3x32x32, 1 thread'


def _recipe_record(train_args: Dict[str, Any], data_dir: Path, epochs: Optional[int]) -> Dict[str, Any]:
    recipe = dict(train_args, epochs=train_args['epochs'] if epochs is None else epochs)
    recipe.pop('seed', None)  # seeds are per run
    text = json.dumps(recipe, sort_keys=True, default=str)
    return dict(recipe=recipe, data_dir=str(Path(data_dir).expanduser().resolve()),
                recipe_sha256=hashlib.sha256(text.encode()).hexdigest())


def _check_study(output_dir: Path, record: Dict[str, Any]) -> None:
    """ One output folder holds one recipe on one data set: results of another are never mixed in silently."""
    path = output_dir / STUDY_FILE
    if not path.exists():
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_whole(path, json.dumps(record, indent=2))
        return
    existing = json.loads(path.read_text())
    if existing.get('recipe_sha256') != record['recipe_sha256'] or existing.get('data_dir') != record['data_dir']:
        changed = sorted(key for key in set(existing.get('recipe', {})) | set(record['recipe'])
                         if existing.get('recipe', {}).get(key) != record['recipe'].get(key))
        if existing.get('data_dir') != record['data_dir']:
            changed.append(f"data dir ({existing.get('data_dir')})")
        raise ValueError(f'{output_dir} holds a study with another recipe or data set (differs in: '
                         f'{", ".join(changed)}); choose a new --output-dir, or remove that folder to start over.')


def compare(
        specs: Sequence[ModelSpec],
        train_args: Dict[str, Any],
        data_dir: Path,
        output_dir: Path,
        seeds: Sequence[int] = (0,),
        epochs: Optional[int] = None,
        unfinished: str = 'resume',
        measure_speed: bool = True,
        bench_batch_size: Optional[int] = None,
        threads: int = 1,
        rounds: int = 5,
        progress: bool = True,
        data_path: str = 'auto',
) -> Tuple[List[ComparisonRow], List[RunResult]]:
    """ Train and evaluate every (spec, seed) not finished yet, then summarize all of them.

    Args:
        specs: The models, the first plain (MoD-free) one being the baseline that speed-ups are measured against.
        seeds: Seeds for every spec that names none itself.
        unfinished: 'resume' an interrupted run from its last epoch, or 'skip' it (left out of the table).
        measure_speed: Time inference and a training step of every model side by side on random inputs of the
            recipe's input size (`bench_batch_size`, default the recipe's batch size; `threads` CPU threads).
        data_path: How runs read images (`train_and_evaluate`); it does not change what they compute.
    """
    if not specs:
        raise ValueError('Give at least one model to compare.')
    if unfinished not in UNFINISHED:
        raise ValueError(f'--unfinished must be one of {UNFINISHED}, got {unfinished!r}.')
    if epochs is not None and epochs < 1:
        raise ValueError(f'--epochs must be at least 1, got {epochs}; leave it out for the arg file\'s epochs.')
    if not seeds and any(spec.seeds is None for spec in specs):
        raise ValueError('--seeds is empty and some models name no seeds of their own (NAME@SEED,...).')
    if bench_batch_size is not None and bench_batch_size < 1:
        raise ValueError(f'--bench-batch-size must be at least 1, got {bench_batch_size}.')
    if threads < 1 or rounds < 1:
        raise ValueError(f'--threads and --rounds must be at least 1, got {threads} and {rounds}.')
    if data_path not in DATA_PATHS:
        raise ValueError(f'--data-path must be one of {DATA_PATHS}, got {data_path!r}.')
    recipe = _recipe_record(train_args, data_dir, epochs)
    train_args = complete_train_args(train_args)
    check_specs(specs, train_args['num_classes'], seeds)
    check_class_maps(data_dir, train_args['train_split'], train_args['val_split'], train_args['num_classes'])
    output_dir = check_writable_folder(output_dir)
    with exclusive_folder(output_dir, 'compare'):
        _check_study(output_dir, recipe)
        results = _train_all(specs, train_args, data_dir, output_dir, seeds, epochs, unfinished, progress, data_path)
    rows = summarize_runs(specs, results)
    if measure_speed and rows:
        rows = _with_speed(specs, rows, train_args, bench_batch_size or train_args['batch_size'], threads, rounds,
                           progress)
    return rows, results


def _train_all(specs: Sequence[ModelSpec], train_args: Dict[str, Any], data_dir: Path, output_dir: Path,
               seeds: Sequence[int], epochs: Optional[int], unfinished: str, progress: bool, data_path: str
               ) -> List[RunResult]:
    """ The results of every (spec, seed): read back where finished, trained (or resumed) where not."""
    # seed-major: every model's first seed before any model's second, so a study cut short still compares all
    runs = sorted(((spec, seed, rank, index) for index, spec in enumerate(specs)
                   for rank, seed in enumerate(spec.seeds if spec.seeds is not None else seeds)),
                  key=lambda run: (run[2], run[3]))
    results: List[RunResult] = []
    for index, (spec, seed, _, _) in enumerate(runs, 1):
        run_dir = output_dir / spec.folder_name / f'seed{seed}'
        prefix = f'[{index}/{len(runs)}] {spec.label} seed {seed}: '
        if (run_dir / RESULT_FILE).exists():
            results.append(RunResult.from_json(json.loads((run_dir / RESULT_FILE).read_text())))
            if progress:
                print(f'{prefix}finished before, top-1 {results[-1].top1:.2f}', file=sys.stderr, flush=True)
            continue
        if unfinished == 'skip' and (run_dir / 'last.pth.tar').exists():
            if progress:
                print(f'{prefix}unfinished, skipped (--unfinished skip)', file=sys.stderr, flush=True)
            continue
        result = train_and_evaluate(spec.model_name, train_args, data_dir, run_dir, epochs=epochs,
                                    model_kwargs=spec.kwargs, seed=seed, progress=progress, progress_prefix=prefix,
                                    data_path=data_path)
        stop_if_terminated()  # a SIGTERM during the last evaluation leaves the run unfinished, not recorded
        write_text_whole(run_dir / RESULT_FILE, json.dumps(result.to_json(), indent=2))
        results.append(result)
    return results


def _as_json(kwargs: Dict[str, Any]) -> Any:
    """ Kwargs as result.json holds them (tuples become lists), so that a run read back matches its spec."""
    return json.loads(json.dumps(kwargs, default=str))


def summarize_runs(specs: Sequence[ModelSpec], results: Sequence[RunResult]) -> List[ComparisonRow]:
    """ One row per spec with finished runs: top-1 mean and sample std over its seeds, params and MACs."""
    rows = []
    for spec in specs:
        runs = [r for r in results
                if r.model_name == spec.model_name and _as_json(r.model_kwargs) == _as_json(spec.kwargs)]
        if not runs:
            continue
        top1 = [r.top1 for r in runs]
        rows.append(ComparisonRow(
            spec.label, spec.model_name, len(runs), statistics.fmean(top1),
            statistics.stdev(top1) if len(top1) > 1 else 0.0, runs[0].params / 1e6, runs[0].macs / 1e6))
    return rows


def _is_mod(model: nn.Module) -> bool:
    return any(isinstance(module, MoDBlock) for module in model.modules())


def _with_speed(specs: Sequence[ModelSpec], rows: List[ComparisonRow], train_args: Dict[str, Any],
                batch_size: int, threads: int, rounds: int, progress: bool) -> List[ComparisonRow]:
    """ The rows with inference and training-step times, every model timed round-robin in this process, at the
    input size training resolved (the arg file's, else the model's own)."""
    by_label = {spec.label: spec for spec in specs}
    models = {}
    for row in rows:
        torch.manual_seed(0)
        spec = by_label[row.label]
        models[row.label] = timm.create_model(spec.model_name, **_num_classes(train_args['num_classes']),
                                              **spec.kwargs)
    num_classes = next(iter(models.values())).num_classes
    input_size = tuple(resolve_data_config(train_args, model=next(iter(models.values())))['input_size'])
    baseline = next((label for label, model in models.items() if not _is_mod(model)), rows[0].label)
    times = {}
    for task in ('inference', 'train'):
        if progress:
            print(f'timing {task} of {len(models)} models side by side ({threads} thread(s), batch {batch_size})',
                  file=sys.stderr, flush=True)
        setting = BenchSetting(batch_size=batch_size, threads=threads, task=task)
        steps = {label: make_step(model, setting, num_classes=num_classes, input_size=input_size)
                 for label, model in models.items()}
        times[task] = time_side_by_side(steps, threads=threads, rounds=rounds)
    return [ComparisonRow(**dict(
        asdict(row),
        inference_ms=times['inference'][row.label] * 1e3,
        inference_speedup=times['inference'][baseline] / times['inference'][row.label],
        train_step_ms=times['train'][row.label] * 1e3,
        train_speedup=times['train'][baseline] / times['train'][row.label],
        speed_setting=f"CPU, batch {batch_size} of {'x'.join(map(str, input_size))}, {threads} thread(s), "
                      f"speed-ups against {baseline}")) for row in rows]


COMPARISON_COLUMNS = ('model', 'seeds', 'held-out top-1 (%)', 'params (M)', 'MMACs', 'inference ms',
                      'inference speed-up', 'train step ms', 'train speed-up')


def format_comparison(rows: Sequence[ComparisonRow], markdown: bool = False) -> str:
    """ The results table; speed columns read '-' where speed was not measured."""
    def number(value: Optional[float], spec: str) -> str:
        return '-' if value is None else format(value, spec)
    table = [(r.label, str(r.seeds), f'{r.top1_mean:.2f} +- {r.top1_std:.2f}' if r.seeds > 1 else f'{r.top1_mean:.2f}',
              f'{r.params_m:.2f}', f'{r.mmacs:.1f}', number(r.inference_ms, '.2f'), number(r.inference_speedup, '.2f'),
              number(r.train_step_ms, '.1f'), number(r.train_speedup, '.2f')) for r in rows]
    return format_table(COMPARISON_COLUMNS, table, markdown=markdown)


def write_comparison(rows: Sequence[ComparisonRow], output_dir: Path) -> List[Path]:
    """ compare.csv, compare.json and compare.png (top-1 against MACs and against measured time) in `output_dir`."""
    output_dir = Path(output_dir)
    written = write_records([asdict(r) for r in rows], output_dir, 'compare')
    plot = _plot(rows, output_dir / 'compare.png')
    return written + ([plot] if plot else [])


def _plot(rows: Sequence[ComparisonRow], path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare.png skipped: pip install 'timm-mod[plots]' for matplotlib", file=sys.stderr)
        return None
    timed = all(r.inference_ms is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 5.5, 4.5), squeeze=False)
    panels = [('mmacs', 'MMACs per image')]
    if timed:
        panels.append(('inference_ms', f'measured inference ms per batch\n({rows[0].speed_setting})'))
    for ax, (attribute, xlabel) in zip(axes[0], panels):
        for index, row in enumerate(rows):
            x = getattr(row, attribute)
            ax.errorbar(x, row.top1_mean, yerr=row.top1_std, fmt='o', capsize=3, color=f'C{index % 10}')
            ax.annotate(row.label, (x, row.top1_mean), textcoords='offset points', xytext=(4, 4), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('held-out top-1 (%), mean +- std over seeds')
        ax.grid(alpha=0.3)
    fig.suptitle('accuracy against cost, one point per model', fontsize=10)
    fig.tight_layout()
    staging = path.with_name(f'.{path.stem}.partial{path.suffix}')
    fig.savefig(staging, dpi=120)
    plt.close(fig)
    os.replace(staging, path)
    return path
