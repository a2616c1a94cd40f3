""" One model trained with train.py's recipe semantics and evaluated on the held-out split.

Training uses the components timm's train.py uses (`create_dataset`, `create_loader`, `optimizer_kwargs` +
`create_optimizer_v2`, `scheduler_kwargs` + `create_scheduler_v2`, the loss, `LogitDistillationTask` when the
recipe names a teacher (`kd_model_name`), `CheckpointSaver`, `accuracy`),
configured by the same YAML file train.py reads with `-c`, so stock train.py and validate.py reproduce a run on the
same data folder. Where the images fit in memory they are decoded once and augmented as tensors
(`in_memory_data`), which a CPU trains at the speed of its arithmetic.

Runs are long and die: a run keeps train.py's `last.pth.tar` after every epoch and resumes from it. Each epoch
draws its randomness (shuffling, augmentation, random routing) from generators seeded by (seed, epoch), so a
resumed run trains exactly as an uninterrupted one.
"""
import argparse
import contextlib
import itertools
import shutil
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
from timm.models import load_checkpoint, load_state_dict, resume_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import LogitDistillationTask
from timm.utils import AverageMeter, CheckpointSaver, accuracy, random_seed

from ..layers import selector_blocks
from ..models import (
    describe_state_dict_mismatch, infer_num_classes, is_mod_model_name, load_checkpoint_file, measure,
    require_registered)
from ..utils.image_folder import check_class_maps, split_fingerprint
from ..utils.output import stop_if_terminated
from .in_memory_data import (
    DATA_PATHS, InMemorySplit, eval_batches, eval_split, in_memory_unsupported, train_batches)
from .recipe import check_initial_checkpoint, complete_train_args
from .selection import PROBE_IMAGES, selector_states

__all__ = [
    'RunResult', 'run_label', 'train_and_evaluate', 'num_classes_kwargs', 'check_trainable_split',
    'check_initial_weights', 'read_resumable_checkpoint', 'load_teacher', 'training_loss']


def run_label(model_name: str, model_kwargs: Dict[str, Any]) -> str:
    """ How tables and plots name a model with kwargs: `resnet18_mod routing=random`."""
    return ' '.join([model_name] + [f'{key}={value!r}' if isinstance(value, str) else f'{key}={value}'
                                    for key, value in model_kwargs.items()]).replace("'", '')


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
    train_options: Dict[str, Any] = field(default_factory=dict)  # train.py options of this run: start, teacher

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


def _resolve_data_path(data_path: str, cfg: argparse.Namespace, data_dir: Path, input_size: Sequence[int]
                       ) -> Tuple[str, Optional[str]]:
    """ ('memory' or 'loader', why not memory): the in-memory path where the data fit in memory and the recipe
    allows it, unless `data_path` forces either."""
    if data_path not in DATA_PATHS:
        raise ValueError(f'--data-path must be one of {DATA_PATHS}, got {data_path!r}.')
    reason = in_memory_unsupported(cfg, data_dir, input_size) if data_path != 'loader' else 'asked'
    if data_path == 'memory' and reason:
        raise ValueError(f'--data-path memory cannot train this run: {reason}; use --data-path loader.')
    return ('memory' if reason is None else 'loader'), reason


def _data_path(resolved: str, cfg: argparse.Namespace, data_dir: Path, class_map: Dict[str, int],
               data_config: Dict[str, Any]) -> Tuple[Callable[[int], Iterable], Callable[[], Iterable]]:
    """ (one epoch's training batches for a seed, the held-out batches): decoded once and augmented as tensors
    on the 'memory' path (`in_memory_data`), else timm's loaders."""
    if resolved == 'memory':
        train_split = InMemorySplit.load(data_dir, cfg.train_split, class_map)
        held_out = eval_split(data_dir, cfg.val_split, class_map, data_config)
        return (lambda seed: train_batches(train_split, cfg, data_config, torch.Generator().manual_seed(seed),
                                           cfg.channels_last),
                lambda: eval_batches(held_out, cfg.batch_size, cfg.channels_last))
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


def _first_images(batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], count: int) -> torch.Tensor:
    """ The first `count` images of the held-out batches (fewer if the split is smaller)."""
    images = []
    for batch, _ in batches:
        images.append(batch)
        if sum(len(b) for b in images) >= count:
            break
    return torch.cat(images)[:count]


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


def check_trainable_split(data_dir: Path, split: str, batch_size: int) -> None:
    """ A clear error before training when the split holds less than one batch: training drops the last partial
    batch (as train.py's loader does), so such a run would take no step and score an untrained model."""
    images = split_fingerprint(data_dir, split)['images']
    if images < batch_size:
        raise ValueError(f'{Path(data_dir) / split} has {images} training images, fewer than one batch of '
                         f'{batch_size}: training would take no step. Lower batch_size in the arg file to at most '
                         f'{images}, or add images.')


def check_initial_weights(model_name: str, model_kwargs: Dict[str, Any], train_args: Dict[str, Any]) -> None:
    """ A clear error before any training when the arg file's `initial_checkpoint` does not fit the model (another
    architecture, c, r, routing or class count), named as `describe_state_dict_mismatch` names it."""
    path = train_args.get('initial_checkpoint')
    if not path:
        return
    model = timm.create_model(model_name, device='meta', **num_classes_kwargs(train_args.get('num_classes')),
                              **model_kwargs)
    mismatch = describe_state_dict_mismatch(model, load_state_dict(path))
    if mismatch:
        convert = (f' (`timm-mod convert --model {model_name}` makes one from its plain counterpart)'
                   if is_mod_model_name(model_name) else '')
        raise ValueError(f'initial_checkpoint {path} does not fit {model_name} with num_classes '
                         f'{train_args.get("num_classes")}: {mismatch}; give a checkpoint written for this model and '
                         f'class count{convert}.')


def load_teacher(source: str, num_classes: Optional[int]) -> nn.Module:
    """ The teacher a recipe's `kd_model_name` names, in eval mode: a checkpoint file (train.py's, which records
    its architecture and model kwargs), else anything `timm.create_model(..., pretrained=True)` loads
    (`local-dir:FOLDER`, `hf-hub:ORG/NAME`, a timm name). Refused when its classifier does not have the student's
    `num_classes`: train.py would replace it by a random one and distil that without a word."""
    if Path(source).is_file():
        checkpoint = load_checkpoint_file(Path(source))
        arch = checkpoint.train_args.get('model')
        if not arch:
            raise ValueError(f'kd_model_name {source} records no architecture (a bare state dict); give a checkpoint '
                             f'written by train.py or timm-mod compare, or publish the teacher and give local-dir:.')
        teacher = timm.create_model(arch, num_classes=infer_num_classes(arch, checkpoint.state_dict),
                                    **(checkpoint.train_args.get('model_kwargs') or {}))
        teacher.load_state_dict(checkpoint.state_dict)
    else:
        try:
            teacher = timm.create_model(source, pretrained=True)
        except (RuntimeError, ValueError, OSError) as error:
            raise ValueError(f'Cannot load the teacher kd_model_name {source!r}: {error}') from None
    if num_classes is not None and teacher.num_classes != num_classes:
        raise ValueError(f'The teacher {source} has a classifier of {teacher.num_classes} classes, the student '
                         f'{num_classes}: timm would distil a randomly initialised classifier. Give a teacher trained '
                         f'on these classes.')
    return teacher.eval()


def training_loss(model: nn.Module, cfg: argparse.Namespace, teacher: Optional[nn.Module] = None
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """ The loss of one training batch, as train.py computes it: cross-entropy (label smoothing with `smoothing`),
    and with a `teacher`, timm's `LogitDistillationTask` over it (`kd_temperature`, `distill_loss_weight`,
    `task_loss_weight`)."""
    criterion = LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing else nn.CrossEntropyLoss()
    if teacher is None:
        return lambda images, targets: criterion(model(images), targets)
    task = LogitDistillationTask(
        model, teacher, criterion=criterion, loss_type=cfg.kd_loss_type, distill_loss_weight=cfg.distill_loss_weight,
        task_loss_weight=cfg.task_loss_weight, temperature=cfg.kd_temperature, verbose=False)
    return lambda images, targets: task(images, targets)['loss']


def read_resumable_checkpoint(last: Path) -> Dict[str, Any]:
    """ An interrupted run's last.pth.tar, or a clear error naming it when it cannot be read (empty, truncated)."""
    try:
        checkpoint = torch.load(last, map_location='cpu', weights_only=False)
        if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint or 'epoch' not in checkpoint:
            raise ValueError('not a train.py checkpoint')
    except Exception as error:  # torch.load reports a cut-short file as EOFError, RuntimeError or UnpicklingError
        raise ValueError(f'{last} cannot be resumed from ({type(error).__name__}: {error}); remove the folder '
                         f'{last.parent} and run the same command again to train that run from the start.') from None
    return checkpoint


def _check_same_data(recorded: Optional[argparse.Namespace], cfg: argparse.Namespace, last: Path) -> None:
    """ A run resumes on the data folder and data path it started on: another would change what it trains on,
    or its random stream, halfway."""
    for key, option in (('data_dir', '--data-dir'), ('data_path', '--data-path')):
        started, now = getattr(recorded, key, None), getattr(cfg, key)
        if key == 'data_dir' and started is not None:
            started, now = str(Path(started).resolve()), str(Path(now).resolve())
        if started is not None and started != now:
            raise ValueError(f'{last} started with {option} {started}, not {now}: resume it with the '
                             f'same {option}, or remove {last.parent} to train that run from the start.')


def train_one_epoch(
        batches: Iterable[Tuple[Any, Any]],
        loss_fn: Callable[[Any, Any], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        autocast: Callable[[], ContextManager] = contextlib.nullcontext,
        after_step: Optional[Callable[[], None]] = None,
        max_steps: Optional[int] = None,
) -> Tuple[float, float]:
    """ The steps every training here takes (compare's runs and both quickstarts): for each batch, the loss, its
    gradient and an optimizer step, then `after_step` (a per-step scheduler). A SIGTERM stops it between steps.

    Returns the mean loss per sample and the seconds spent waiting for batches.
    """
    losses, data_seconds = AverageMeter(), 0.0
    batches = iter(batches)
    for _ in range(max_steps) if max_steps is not None else itertools.count():
        fetch = time.perf_counter()
        inputs, targets = next(batches, (None, None))
        data_seconds += time.perf_counter() - fetch
        if inputs is None:
            break
        stop_if_terminated()
        with autocast():
            loss = loss_fn(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        losses.update(loss.item(), len(inputs))
    return losses.avg, data_seconds


def num_classes_kwargs(num_classes: Optional[int]) -> Dict[str, int]:
    """ create_model's num_classes, left to the model's default where train.py leaves it (None)."""
    return {} if num_classes is None else dict(num_classes=num_classes)


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
    """ Train `model_name` with train.py's recipe semantics and evaluate on the held-out split: from scratch, or
    from the arg file's `initial_checkpoint` (e.g. a plain model's weights converted by `timm-mod convert`).

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
    data_dir = Path(data_dir).expanduser().absolute()  # recorded in args.yaml: publish finds the labels from anywhere
    cfg = argparse.Namespace(**dict(
        train_args, model=model_name, epochs=train_args['epochs'] if epochs is None else epochs,
        seed=train_args['seed'] if seed is None else seed, model_kwargs=model_kwargs, data_dir=str(data_dir)))
    class_map = check_class_maps(data_dir, cfg.train_split, cfg.val_split, cfg.num_classes)
    check_trainable_split(data_dir, cfg.train_split, cfg.batch_size)
    check_initial_checkpoint(train_args)
    check_initial_weights(model_name, model_kwargs, train_args)
    output_dir = Path(output_dir)
    last = output_dir / 'last.pth.tar'
    resumed = read_resumable_checkpoint(last) if last.exists() else None
    random_seed(cfg.seed)
    model = timm.create_model(
        require_registered(model_name), drop_rate=cfg.drop, **num_classes_kwargs(cfg.num_classes), **model_kwargs)
    if cfg.initial_checkpoint:  # as train.py: the weights to start from (a resumed run then replaces them)
        load_checkpoint(model, cfg.initial_checkpoint)
    cfg.num_classes = model.num_classes
    data_config = resolve_data_config(vars(cfg), model=model)
    cfg.data_path, reason = _resolve_data_path(data_path, cfg, data_dir, data_config['input_size'])
    if resumed is not None:
        _check_same_data(resumed.get('args'), cfg, last)
    if progress and cfg.data_path == 'loader' and data_path == 'auto':
        print(f'{progress_prefix}timm\'s loader: {reason}', file=sys.stderr, flush=True)
    train_epoch, evaluate = _data_path(cfg.data_path, cfg, data_dir, class_map, data_config)
    probe = _first_images(evaluate(), PROBE_IMAGES) if selector_blocks(model) else None

    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg))
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(cfg))
    teacher = load_teacher(cfg.kd_model_name, model.num_classes) if cfg.kd_model_name else None
    loss_fn = training_loss(model, cfg, teacher)
    autocast = _autocast(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / 'args.yaml', 'w') as f:
        yaml.safe_dump(vars(cfg), f)
    saver = CheckpointSaver(
        model, optimizer, args=cfg, checkpoint_dir=str(output_dir), recovery_dir=str(output_dir),
        decreasing=False, max_history=1)
    start_epoch, cfg.curve = 0, []
    if resumed is not None:
        start_epoch = resume_checkpoint(model, str(last), optimizer=optimizer, log_info=False)
        cfg.curve = getattr(resumed.get('args'), 'curve', [])
        saver.load_state_dict_from_checkpoint(str(last))
        scheduler.step(start_epoch)
        if progress:
            print(f'{progress_prefix}resumed after epoch {start_epoch}/{num_epochs}', file=sys.stderr, flush=True)
    elif progress and num_epochs != cfg.epochs:  # train.py adds the scheduler's cooldown epochs to `epochs`
        print(f'{progress_prefix}training {num_epochs} epochs: {cfg.epochs} and the arg file\'s {cfg.cooldown_epochs} '
              f'cooldown epochs', file=sys.stderr, flush=True)

    for epoch in range(start_epoch, num_epochs):
        epoch_seed = _epoch_seed(cfg.seed, epoch)
        random_seed(epoch_seed)  # torch, numpy and Python's random (timm's crops draw from it)
        start = time.perf_counter()
        model.train()
        train_loss, data_seconds = train_one_epoch(train_epoch(epoch_seed), loss_fn, optimizer, autocast)
        scheduler.step(epoch + 1)
        epoch_seconds = time.perf_counter() - start
        top1, eval_seconds = None, 0.0
        if (epoch + 1) % cfg.val_interval == 0 or epoch + 1 == num_epochs:  # train.py's val_interval
            top1, eval_seconds = _evaluate(model, evaluate(), autocast), time.perf_counter() - start - epoch_seconds
        cfg.curve.append(dict(epoch=epoch + 1, train_loss=train_loss, top1=top1, train_seconds=epoch_seconds,
                              data_seconds=data_seconds, eval_seconds=eval_seconds))
        if probe is not None:  # whether the selectors still tell channels apart, after this epoch's last step
            cfg.curve[-1]['selectors'] = {name: asdict(state) for name, state in selector_states(model, probe).items()}
        _save_checkpoint(saver, epoch, top1)  # the curve travels in the checkpoint's args, so a resumed run keeps it
        if progress:
            held_out = '' if top1 is None else f'  held-out top-1 {top1:.2f}'
            print(f'{progress_prefix}epoch {epoch + 1}/{num_epochs}  loss {train_loss:.3f}{held_out}  '
                  f'({epoch_seconds:.1f} s, data {data_seconds:.1f} s; eval {eval_seconds:.1f} s)',
                  file=sys.stderr, flush=True)

    top1 = next(point['top1'] for point in reversed(cfg.curve) if point['top1'] is not None)
    train_seconds = sum(point['train_seconds'] for point in cfg.curve)
    params, macs = measure(model, input_size=data_config['input_size'])
    return RunResult(model_name, params, macs, top1, output_dir, label=run_label(model_name, model_kwargs),
                     seed=cfg.seed, model_kwargs=model_kwargs, epochs=num_epochs, train_seconds=train_seconds,
                     curve=list(cfg.curve))
