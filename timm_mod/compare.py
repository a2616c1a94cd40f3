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
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
from ._output import write_records, write_text_whole
from .benchmark import BenchSetting, make_step, time_side_by_side
from .mod import MoDBlock
from .zoo import format_table, measure

__all__ = [
    'UNFINISHED', 'ModelSpec', 'RunResult', 'ComparisonRow', 'load_train_args', 'check_image_folder',
    'train_and_evaluate', 'compare', 'summarize_runs', 'format_comparison', 'write_comparison',
]

UNFINISHED = ('resume', 'skip')  # what a study does with a run that was interrupted
RESULT_FILE = 'result.json'
STUDY_FILE = 'study.json'


def load_train_args(path: Path) -> Dict[str, Any]:
    """ A train.py arg file, read the way train.py reads `-c FILE` (a flat YAML mapping of option names)."""
    with open(path) as f:
        args = yaml.safe_load(f)
    if not isinstance(args, dict):
        raise ValueError(f'{path} is not a train.py arg file: expected a mapping of train.py option names.')
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
        if seeds_text:
            try:
                seeds = tuple(int(seed) for seed in seeds_text.split(','))
            except ValueError:
                raise ValueError(f'Model {text!r}: the seeds after @ must be integers, e.g. {spec}@0,1,2.') from None
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

    def to_json(self) -> Dict[str, Any]:
        return dict(asdict(self), checkpoint_dir=str(self.checkpoint_dir))

    @classmethod
    def from_json(cls, record: Dict[str, Any]) -> 'RunResult':
        return cls(**dict(record, checkpoint_dir=Path(record['checkpoint_dir'])))


def _evaluate(model: nn.Module, loader) -> float:
    model.eval()
    top1 = AverageMeter()
    with torch.no_grad():
        for images, targets in loader:
            top1.update(accuracy(model(images), targets)[0].item(), images.shape[0])
    return top1.avg


def _epoch_seed(seed: int, epoch: int) -> int:
    """ A seed of its own for every (run seed, epoch): no two runs or epochs share a random stream."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _restore_saver(saver: CheckpointSaver, output_dir: Path) -> None:
    """ Give a resumed run's CheckpointSaver the history it had, so it keeps one checkpoint-N and the right best."""
    for path in sorted(output_dir.glob(f'{saver.save_prefix}-*{saver.extension}')):
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
        saver.checkpoint_files.append((str(path), checkpoint.get('metric')))
    saver.checkpoint_files.sort(key=lambda entry: entry[1], reverse=not saver.decreasing)
    if saver.checkpoint_files:
        saver.best_metric = saver.checkpoint_files[0][1]
        saver.best_epoch = torch.load(saver.checkpoint_files[0][0], map_location='cpu', weights_only=False)['epoch']


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
    """
    model_kwargs = dict(model_kwargs or {})
    cfg = argparse.Namespace(**dict(
        train_args, model=model_name, epochs=train_args['epochs'] if epochs is None else epochs,
        seed=train_args.get('seed', 0) if seed is None else seed, model_kwargs=model_kwargs, data_dir=str(data_dir)))
    for split in (cfg.train_split, cfg.val_split):
        check_image_folder(data_dir, split)
    random_seed(cfg.seed)
    model = timm.create_model(
        require_registered(model_name), num_classes=cfg.num_classes, drop_rate=getattr(cfg, 'drop', 0.0),
        **model_kwargs)
    data_config = resolve_data_config(vars(cfg), model=model)

    dataset_train = create_dataset('', root=str(data_dir), split=cfg.train_split, is_training=True)
    dataset_eval = create_dataset('', root=str(data_dir), split=cfg.val_split)
    loader_kwargs = dict(
        input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
        num_workers=cfg.workers, use_prefetcher=False, device=torch.device('cpu'), persistent_workers=False)
    loader_train = create_loader(
        dataset_train, batch_size=cfg.batch_size, is_training=True, scale=cfg.scale, ratio=cfg.ratio,
        hflip=cfg.hflip, color_jitter=cfg.color_jitter, interpolation=cfg.train_interpolation, **loader_kwargs)
    loader_eval = create_loader(
        dataset_eval, batch_size=cfg.batch_size, interpolation=data_config['interpolation'],
        crop_pct=data_config['crop_pct'], **loader_kwargs)

    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg))
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(cfg))
    loss_fn = LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing else nn.CrossEntropyLoss()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / 'args.yaml', 'w') as f:
        yaml.safe_dump(vars(cfg), f)
    saver = CheckpointSaver(
        model, optimizer, args=cfg, checkpoint_dir=str(output_dir), recovery_dir=str(output_dir),
        decreasing=False, max_history=1)
    start_epoch, top1, train_seconds = 0, 0.0, 0.0
    last = output_dir / 'last.pth.tar'
    if last.exists():
        start_epoch = resume_checkpoint(model, str(last), optimizer=optimizer, log_info=False)
        state = torch.load(last, map_location='cpu', weights_only=False)
        top1, train_seconds = state.get('metric') or 0.0, getattr(state.get('args'), 'train_seconds', 0.0)
        _restore_saver(saver, output_dir)
        scheduler.step(start_epoch)
        if progress:
            print(f'{progress_prefix}resumed after epoch {start_epoch}/{num_epochs}', file=sys.stderr, flush=True)

    for epoch in range(start_epoch, num_epochs):
        random_seed(_epoch_seed(cfg.seed, epoch))  # torch, numpy and Python's random (timm's crops draw from it)
        start, losses = time.perf_counter(), AverageMeter()
        model.train()
        for images, targets in loader_train:
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.update(loss.item(), images.shape[0])
        scheduler.step(epoch + 1)
        epoch_seconds = time.perf_counter() - start
        train_seconds += epoch_seconds
        top1 = _evaluate(model, loader_eval)
        cfg.train_seconds = train_seconds  # stored with the checkpoint, so a resumed run keeps counting
        saver.save_checkpoint(epoch, metric=top1)
        if progress:
            print(f'{progress_prefix}epoch {epoch + 1}/{num_epochs}  loss {losses.avg:.3f}  held-out top-1 '
                  f'{top1:.2f}  ({epoch_seconds:.1f} s)', file=sys.stderr, flush=True)

    params, macs = measure(model, input_size=data_config['input_size'])
    return RunResult(model_name, params, macs, top1, output_dir, label=ModelSpec(model_name, tuple(
        model_kwargs.items())).label, seed=cfg.seed, model_kwargs=model_kwargs, epochs=num_epochs,
        train_seconds=train_seconds)


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
) -> Tuple[List[ComparisonRow], List[RunResult]]:
    """ Train and evaluate every (spec, seed) not finished yet, then summarize all of them.

    Args:
        specs: The models, the first plain (MoD-free) one being the baseline that speed-ups are measured against.
        seeds: Seeds for every spec that names none itself.
        unfinished: 'resume' an interrupted run from its last epoch, or 'skip' it (left out of the table).
        measure_speed: Time inference and a training step of every model side by side on random inputs of the
            recipe's input size (`bench_batch_size`, default the recipe's batch size; `threads` CPU threads).
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
    for split in (train_args['train_split'], train_args['val_split']):
        check_image_folder(data_dir, split)
    output_dir = Path(output_dir)
    _check_study(output_dir, _recipe_record(train_args, data_dir, epochs))

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
                                    model_kwargs=spec.kwargs, seed=seed, progress=progress, progress_prefix=prefix)
        write_text_whole(run_dir / RESULT_FILE, json.dumps(result.to_json(), indent=2))
        results.append(result)

    rows = summarize_runs(specs, results)
    if measure_speed and rows:
        rows = _with_speed(specs, rows, train_args, bench_batch_size or train_args['batch_size'], threads, rounds,
                           progress)
    return rows, results


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
    """ The rows with inference and training-step times, every model timed round-robin in this process."""
    input_size = tuple(train_args.get('input_size') or (3, train_args['img_size'], train_args['img_size']))
    by_label = {spec.label: spec for spec in specs}
    models = {}
    for row in rows:
        torch.manual_seed(0)
        spec = by_label[row.label]
        models[row.label] = timm.create_model(spec.model_name, num_classes=train_args['num_classes'], **spec.kwargs)
    baseline = next((label for label, model in models.items() if not _is_mod(model)), rows[0].label)
    times = {}
    for task in ('inference', 'train'):
        if progress:
            print(f'timing {task} of {len(models)} models side by side ({threads} thread(s), batch {batch_size})',
                  file=sys.stderr, flush=True)
        setting = BenchSetting(batch_size=batch_size, threads=threads, task=task)
        steps = {label: make_step(model, setting, num_classes=train_args['num_classes'], input_size=input_size)
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
