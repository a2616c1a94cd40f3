""" Compare timm models on any ImageFolder: train each (model, kwargs, seed) with one train.py arg file
(`training.train_and_evaluate`), evaluate on the held-out split, and tabulate accuracy against cost and measured
CPU speed.

Every run lives in its own folder (`<output>/<model>[@kwargs]/seed<N>/`) and writes `result.json` when it is done.
Started again, a study skips finished runs and resumes unfinished ones from their last epoch.
"""
import ast
import hashlib
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.data import resolve_data_config

from ..layers import has_mod_blocks
from ..models import require_registered
from ..utils.image_folder import check_class_maps
from ..utils.in_memory_data import DATA_PATHS
from ..utils.output import check_writable_folder, exclusive_folder, stop_if_terminated, write_text_whole
from ..utils.tables import format_table, pyplot, save_figure, write_records
from ..utils.timing import time_side_by_side
from .benchmark import BenchSetting, make_step
from .recipe import check_initial_checkpoint, complete_train_args
from .training import RunResult, num_classes_kwargs, run_label, train_and_evaluate

__all__ = [
    'UNFINISHED', 'ModelSpec', 'ComparisonRow', 'check_specs', 'compare', 'summarize_runs', 'format_comparison',
    'write_comparison', 'first_seed_curves',
]


UNFINISHED = ('resume', 'skip')  # what a study does with a run that was interrupted

RESULT_FILE = 'result.json'

STUDY_FILE = 'study.json'


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
        return run_label(self.model_name, self.kwargs)

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
            timm.create_model(spec.model_name, device='meta', **num_classes_kwargs(num_classes), **spec.kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as error:
            raise ValueError(f'{spec.label!r} cannot be built with these kwargs: {error}') from None


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
    check_initial_checkpoint(train_args)
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


def _with_speed(specs: Sequence[ModelSpec], rows: List[ComparisonRow], train_args: Dict[str, Any],
                batch_size: int, threads: int, rounds: int, progress: bool) -> List[ComparisonRow]:
    """ The rows with inference and training-step times, every model timed round-robin in this process, at the
    input size training resolved (the arg file's, else the model's own)."""
    by_label = {spec.label: spec for spec in specs}
    models = {}
    for row in rows:
        torch.manual_seed(0)
        spec = by_label[row.label]
        models[row.label] = timm.create_model(spec.model_name, **num_classes_kwargs(train_args['num_classes']),
                                              **spec.kwargs)
    num_classes = next(iter(models.values())).num_classes
    input_size = tuple(resolve_data_config(train_args, model=next(iter(models.values())))['input_size'])
    baseline = next((label for label, model in models.items() if not has_mod_blocks(model)), rows[0].label)
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


def write_comparison(rows: Sequence[ComparisonRow], output_dir: Path, results: Sequence[RunResult] = ()
                     ) -> List[Path]:
    """ compare.csv, compare.json and compare.png in `output_dir`: top-1 against MACs and against measured time,
    and, given the runs' `results`, the held-out learning curve of each model's first seed."""
    output_dir = Path(output_dir)
    written = write_records([asdict(r) for r in rows], output_dir, 'compare')
    plot = _plot(rows, results, output_dir / 'compare.png')
    return written + ([plot] if plot else [])


def first_seed_curves(rows: Sequence[ComparisonRow], results: Sequence[RunResult]
                      ) -> Dict[str, List[Tuple[int, float]]]:
    """ Per row label, (epoch, held-out top-1) of its lowest seed's run, over the epochs that were evaluated."""
    curves = {}
    for row in rows:
        runs = sorted((r for r in results if r.label == row.label), key=lambda r: r.seed)
        if runs and runs[0].curve:
            curves[row.label] = [(point['epoch'], point['top1']) for point in runs[0].curve
                                 if point['top1'] is not None]
    return curves


def _plot(rows: Sequence[ComparisonRow], results: Sequence[RunResult], path: Path) -> Optional[Path]:
    plt = pyplot(path.name)
    if plt is None:
        return None
    timed = all(r.inference_ms is not None for r in rows)
    curves = first_seed_curves(rows, results)
    panels = [('mmacs', 'MMACs per image')]
    if timed:
        panels.append(('inference_ms', f'measured inference ms per batch\n({rows[0].speed_setting})'))
    columns = len(panels) + bool(curves)
    fig, axes = plt.subplots(1, columns, figsize=(5.5 * columns, 4.5), squeeze=False)
    colours = {row.label: f'C{index % 10}' for index, row in enumerate(rows)}
    for ax, (attribute, xlabel) in zip(axes[0], panels):
        for row in rows:
            x = getattr(row, attribute)
            ax.errorbar(x, row.top1_mean, yerr=row.top1_std, fmt='o', capsize=3, color=colours[row.label])
            ax.annotate(row.label, (x, row.top1_mean), textcoords='offset points', xytext=(4, 4), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('held-out top-1 (%), mean +- std over seeds')
        ax.grid(alpha=0.3)
    if curves:
        ax = axes[0][-1]
        for label, points in curves.items():
            ax.plot(*zip(*points), label=label, color=colours[label], linewidth=1)
        ax.set_xlabel('epoch')
        ax.set_ylabel('held-out top-1 (%), first seed')
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle('accuracy against cost, one point per model; learning curves', fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
