""" Compare timm models on any ImageFolder: train each (model, kwargs, seed) with one train.py arg file
(`training.train_and_evaluate`), evaluate on the held-out split, and tabulate accuracy against cost and measured
CPU speed.

Every run lives in its own folder (`<output>/<model>[@kwargs]/seed<N>/`, kwargs in canonical form) and writes
`result.json` when it is done. A run is known by its identity: the model with its canonical kwargs, the seed, the
completed recipe and a fingerprint of the data's image listing. Started again, a study reuses a finished run and
resumes an unfinished one only when the identity matches, and refuses, naming what differs, when it does not.
"""
import ast
import dataclasses
import hashlib
import json
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.data import resolve_data_config

from ..layers import has_mod_blocks
from ..models import require_registered
from ..utils.image_folder import check_class_maps, split_fingerprint
from .in_memory_data import DATA_PATHS
from ..utils.output import (
    check_outside_data, check_writable_folder, exclusive_folder, stop_if_terminated, write_text_whole)
from ..utils.tables import format_table, pyplot, save_figure, write_records
from ..utils.timing import time_side_by_side
from .benchmark import BenchSetting, make_step
from .recipe import TRAIN_PY_DEFAULTS, check_initial_checkpoint, complete_train_args
from .training import (
    RunResult, check_initial_weights, check_trainable_split, load_teacher, num_classes_kwargs,
    read_resumable_checkpoint, run_label, train_and_evaluate)

__all__ = [
    'UNFINISHED', 'ARM_OPTIONS', 'ModelSpec', 'ComparisonRow', 'check_specs', 'compare', 'summarize_runs',
    'format_comparison', 'write_comparison', 'first_seed_curves', 'model_fingerprint', 'recorded_recipe',
    'study_record', 'run_identity', 'read_result',
]


UNFINISHED = ('resume', 'skip')  # what a study does with a run that was interrupted

RESULT_FILE = 'result.json'

STUDY_FILE = 'study.json'

RUN_FILE = 'run.json'  # an unfinished run's identity, written before it trains


def _parse_value(text: str) -> Any:
    """ A kwarg value the way train.py's `--model-kwargs` reads it: a Python literal, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _canonical_value(value: Any) -> Any:
    """ Lists as tuples, so that `channels=[32,64]` and `channels=(32,64)` name one model."""
    if isinstance(value, (list, tuple)):
        return tuple(_canonical_value(item) for item in value)
    return value


def _plain_attribute(value: Any) -> bool:
    """ A value that says how a module is built: plain values, sequences of them, and dataclasses of them (a MoD
    block's `ModArgs`, where an option that changes no weight, `selector_decay`, still changes the training)."""
    if isinstance(value, (tuple, list)):
        return all(_plain_attribute(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(_plain_attribute(getattr(value, field.name)) for field in dataclasses.fields(value))
    return value is None or isinstance(value, (bool, int, float, str))


def model_fingerprint(model_name: str, kwargs: Dict[str, Any], num_classes: Optional[int]) -> str:
    """ A hash of what `create_model` builds: every module's class and plain attributes (widths, rates, modes) and
    its weights as initialized from one seed, so that kwargs that build the same model hash the same."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model(model_name, **num_classes_kwargs(num_classes), **kwargs)
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        attributes = sorted((key, value) for key, value in vars(module).items()
                            if key != 'training' and _plain_attribute(value))
        digest.update(repr((name, type(module).__qualname__, attributes)).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f'{name}{tuple(tensor.shape)}{tensor.dtype}'.encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# train.py options an arm may set for itself (`resnet18_mod:initial_checkpoint=x.pth,kd_model_name=local-dir:t@0`):
# where it starts from and what it is distilled from; every other key is a `create_model` kwarg
ARM_OPTIONS = ('initial_checkpoint', 'kd_model_name', 'kd_temperature', 'distill_loss_weight', 'task_loss_weight')


@dataclass(frozen=True)
class ModelSpec:
    """ A timm model name with the kwargs it is built with, and the seeds it is trained with.

    Written `NAME[:KEY=VALUE,...][@SEED,...]`, e.g. `resnet18_mod:routing=random,c=16@0`; values are Python
    literals (`channels=(32,64,128,256)`) or plain strings. Without `@` the study's seeds apply. Keys of
    `ARM_OPTIONS` set that train.py option for this model's runs instead (a starting checkpoint, a teacher).
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
        """ The `create_model` kwargs."""
        return {key: value for key, value in self.model_kwargs if key not in ARM_OPTIONS}

    @property
    def train_options(self) -> Dict[str, Any]:
        """ The train.py options this model's runs set over the study's arg file (`ARM_OPTIONS`)."""
        return {key: value for key, value in self.model_kwargs if key in ARM_OPTIONS}

    def canonical(self, num_classes: Optional[int]) -> 'ModelSpec':
        """ The same model named one way: kwargs sorted, lists as tuples, and kwargs that build the same model as
        leaving them out (a default written out, `resnet18_mod:c=64`) dropped."""
        kwargs = sorted((key, _canonical_value(value)) for key, value in self.kwargs.items())
        if kwargs:
            built = model_fingerprint(self.model_name, dict(kwargs), num_classes)
            without = {key: {k: v for k, v in kwargs if k != key} for key, _ in kwargs}
            kwargs = [(key, value) for key, value in kwargs
                      if model_fingerprint(self.model_name, without[key], num_classes) != built]
        return replace(self, model_kwargs=tuple(sorted(kwargs + list(self.train_options.items()))))

    @property
    def label(self) -> str:
        """ How tables and plots name it: `resnet18_mod routing=random`."""
        return run_label(self.model_name, dict(self.model_kwargs))

    @property
    def folder_name(self) -> str:
        """ Its runs' folder: `resnet18_mod`, or `resnet18_mod@routing=random,c=16` (spaces removed); a path an
        arm option names appears as its last part and a hash of the whole (`init.pth~1a2b3c4d`), so that folder
        names stay short."""
        if not self.model_kwargs:
            return self.model_name
        def shown(key: str, value: Any) -> str:
            if key in ARM_OPTIONS and isinstance(value, str) and '/' in value:
                return f'{value.rstrip("/").rpartition("/")[2]}~{hashlib.sha256(value.encode()).hexdigest()[:8]}'
            return str(value)
        items = ','.join(f'{key}={shown(key, value)}' for key, value in self.model_kwargs)
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


def check_specs(specs: Sequence[ModelSpec], num_classes: Optional[int], seeds: Sequence[int] = (0,)
                ) -> List[ModelSpec]:
    """ The specs in canonical form (`ModelSpec.canonical`), or a clear error, before anything trains, for a model
    that cannot be built with its kwargs (each is first built on the meta device, which allocates nothing) or a
    model named twice, in any spelling."""
    _check_seeds(seeds, '--seeds')
    for spec in specs:
        try:
            timm.create_model(spec.model_name, device='meta', **num_classes_kwargs(num_classes), **spec.kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as error:
            raise ValueError(f'{spec.label!r} cannot be built with these kwargs: {error}') from None
    canonical = [spec.canonical(num_classes) for spec in specs]
    seen: Dict[str, str] = {}
    for given, spec in zip(specs, canonical):
        if spec.folder_name in seen:
            same = '' if seen[spec.folder_name] == given.label else f' (as {seen[spec.folder_name]!r}: the same model)'
            raise ValueError(f'{given.label!r} is given twice{same}; name it once, with all its seeds '
                             f'(e.g. {spec.model_name}@0,1,2).')
        seen[spec.folder_name] = given.label
    return canonical


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


def _recipe_sha256(recipe: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _legacy_recipe_sha(train_args: Dict[str, Any], epochs: Optional[int]) -> str:
    """ How timm-mod 0.3 hashed a study's recipe: the arg file as given, not completed, to adopt the studies it
    started."""
    return _recipe_sha256(recorded_recipe(train_args, train_args.get('epochs', TRAIN_PY_DEFAULTS['epochs'])
                                          if epochs is None else epochs))


def recorded_recipe(train_args: Dict[str, Any], epochs: Optional[int] = None) -> Dict[str, Any]:
    """ A completed recipe (`complete_train_args`) as studies and runs record it: `epochs` overridden, no seed
    (seeds are per run), as JSON reads it back."""
    recipe = dict(train_args, epochs=train_args['epochs'] if epochs is None else epochs)
    recipe.pop('seed', None)
    return json.loads(json.dumps(recipe, sort_keys=True, default=str))


def study_record(train_args: Dict[str, Any], data_dir: Path, epochs: Optional[int]) -> Dict[str, Any]:
    """ What one study is: its completed recipe (train.py's defaults filled in, so that a default written out is
    the same recipe), its data folder and the fingerprints of both splits."""
    recipe = recorded_recipe(train_args, epochs)
    return dict(recipe=recipe, recipe_sha256=_recipe_sha256(recipe),
                data_dir=str(Path(data_dir).expanduser().resolve()),
                data={split: split_fingerprint(data_dir, train_args[f'{split}_split']) for split in ('train', 'val')})


def _differences(recorded: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """ What differs between two study records or run identities, in words."""
    differs = []
    for key in ('model', 'model_kwargs', 'seed'):
        if key in current and recorded.get(key) != current[key]:
            differs.append(f'{key} ({recorded.get(key)!r} there, {current[key]!r} now)')
    old_recipe, new_recipe = recorded.get('recipe', {}), current['recipe']
    changed = sorted(key for key in set(old_recipe) | set(new_recipe) if old_recipe.get(key) != new_recipe.get(key))
    if changed:
        differs.append('recipe: ' + ', '.join(f'{key} ({old_recipe.get(key)!r} there, {new_recipe.get(key)!r} now)'
                                              for key in changed))
    for split, fingerprint in current['data'].items():
        old = recorded.get('data', {}).get(split)
        if old != fingerprint:
            then = 'unrecorded' if old is None else f"{old['images']} images"
            differs.append(f'{split} data ({then} there, {fingerprint["images"]} images now'
                           f'{", other files" if old and old["images"] == fingerprint["images"] else ""})')
    if 'data_dir' in current and recorded.get('data_dir') != current['data_dir']:
        differs.append(f"data dir ({recorded.get('data_dir')})")
    return differs


def _check_study(output_dir: Path, record: Dict[str, Any], legacy_sha: str) -> bool:
    """ One output folder holds one recipe on one data set: results of another are never mixed in silently.
    True when the folder holds a study that timm-mod 0.3 started (no data fingerprint): same recipe and data
    folder, so it is adopted, its record and its runs' identities written now."""
    path = output_dir / STUDY_FILE
    if path.exists():
        existing = json.loads(path.read_text())
        legacy = 'data' not in existing
        if legacy and existing.get('recipe_sha256') == legacy_sha and existing.get('data_dir') == record['data_dir']:
            write_text_whole(path, json.dumps(record, indent=2))
            return True
        differs = ['the recipe or data folder (started by timm-mod 0.3)'] if legacy else _differences(existing, record)
        if differs:
            raise ValueError(f'{output_dir} holds a study with another recipe or data set (differs in: '
                             f'{"; ".join(differs)}); choose a new --output-dir, or remove that folder to start over.')
        return False
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_whole(path, json.dumps(record, indent=2))
    return False


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
    check_outside_data(output_dir, data_dir, '--output-dir')
    legacy_sha = _legacy_recipe_sha(train_args, epochs)
    train_args = complete_train_args(train_args)
    specs = check_specs(specs, train_args['num_classes'], seeds)
    check_class_maps(data_dir, train_args['train_split'], train_args['val_split'], train_args['num_classes'])
    check_trainable_split(data_dir, train_args['train_split'], train_args['batch_size'])
    teachers_checked = set()
    for spec in specs:
        arm_args = complete_train_args(dict(train_args, **spec.train_options), source=spec.label)
        check_initial_checkpoint(arm_args)
        check_initial_weights(spec.model_name, spec.kwargs, arm_args)
        teacher = arm_args['kd_model_name']
        if teacher and teacher not in teachers_checked:  # loaded here, so that a wrong one fails before any training
            load_teacher(teacher, arm_args['num_classes'])
            teachers_checked.add(teacher)
    record = study_record(train_args, data_dir, epochs)
    output_dir = check_writable_folder(output_dir)
    with exclusive_folder(output_dir, 'compare'):
        legacy = _check_study(output_dir, record, legacy_sha)
        runs = _check_runs(specs, seeds, output_dir, record, legacy, resume=unfinished == 'resume')
        results = _train_all(runs, train_args, data_dir, epochs, unfinished, progress, data_path)
    rows = summarize_runs(specs, results)
    if measure_speed and rows:
        rows = _with_speed(specs, rows, train_args, bench_batch_size or train_args['batch_size'], threads, rounds,
                           progress)
    return rows, results


@dataclass(frozen=True)
class _Run:
    spec: ModelSpec
    seed: int
    run_dir: Path
    identity: Dict[str, Any]


def _file_sha256(source: str) -> Optional[str]:
    """ The content of a checkpoint file or `local-dir:` folder an arm reads (None for a name), so that a run
    is not reused after the file it started from or distilled from was replaced."""
    path = Path(source[len('local-dir:'):]) if source.startswith('local-dir:') else Path(source)
    files = sorted(path.rglob('*')) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()


def run_identity(spec: ModelSpec, seed: int, study: Dict[str, Any]) -> Dict[str, Any]:
    """ What makes two runs the same run: model, canonical kwargs, seed, completed recipe (with the arm's own
    options, and the content of the files they name), data fingerprints."""
    recipe = dict(study['recipe'], **_as_json(spec.train_options))
    for key in ('initial_checkpoint', 'kd_model_name'):
        if recipe.get(key):
            recipe[f'{key}_sha256'] = _file_sha256(recipe[key])
    return dict(model=spec.model_name, model_kwargs=_as_json(spec.kwargs), seed=seed, recipe=recipe,
                data=study['data'])


def _recorded_identity(run_dir: Path) -> Optional[Dict[str, Any]]:
    """ The identity a run folder records: in result.json when finished, else in run.json; None if neither."""
    for name in (RESULT_FILE, RUN_FILE):
        if (run_dir / name).exists():
            return json.loads((run_dir / name).read_text()).get('identity')
    return None


def _check_runs(specs: Sequence[ModelSpec], seeds: Sequence[int], output_dir: Path, study: Dict[str, Any],
                legacy: bool, resume: bool) -> List['_Run']:
    """ Every (spec, seed) in training order, checked before anything trains: a folder that already holds a run
    (finished, or a checkpoint to resume) must hold this very run, else a clear error names what differs; a
    checkpoint to `resume` from must be readable."""
    # seed-major: every model's first seed before any model's second, so a study cut short still compares all
    order = sorted(((spec, seed, rank, index) for index, spec in enumerate(specs)
                    for rank, seed in enumerate(spec.seeds if spec.seeds is not None else seeds)),
                   key=lambda run: (run[2], run[3]))
    identities = {spec.folder_name: run_identity(spec, 0, study) for spec in specs}  # reads the files an arm names once
    runs = []
    for spec, seed, _, _ in order:
        run = _Run(spec, seed, output_dir / spec.folder_name / f'seed{seed}',
                   dict(identities[spec.folder_name], seed=seed))
        holds_run = (run.run_dir / RESULT_FILE).exists() or (run.run_dir / 'last.pth.tar').exists()
        recorded = _recorded_identity(run.run_dir)
        if holds_run and recorded is None and legacy:  # a run of the adopted 0.3 study: its identity is this one
            _record_identity(run)
        elif holds_run and recorded is None:
            raise ValueError(f'{run.run_dir} holds a run with no record of what it trained (no identity in its '
                             f'{RESULT_FILE} or {RUN_FILE}): it may be of another study; remove that folder to train '
                             f'{spec.label} seed {seed} here, or give another --output-dir.')
        elif holds_run and recorded != run.identity:
            raise ValueError(f'{run.run_dir} holds another run than {spec.label} seed {seed} of this study (differs '
                             f'in: {"; ".join(_differences(recorded, run.identity))}); remove that folder to train it '
                             f'again, or give another --output-dir.')
        if resume and holds_run and not (run.run_dir / RESULT_FILE).exists():
            read_resumable_checkpoint(run.run_dir / 'last.pth.tar')
        runs.append(run)
    return runs


def _record_identity(run: '_Run') -> None:
    """ Write the run's identity where a later study reads it: into result.json when finished, else run.json."""
    result = run.run_dir / RESULT_FILE
    if result.exists():
        write_text_whole(result, json.dumps(dict(json.loads(result.read_text()), identity=run.identity), indent=2))
    else:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_whole(run.run_dir / RUN_FILE, json.dumps(dict(identity=run.identity), indent=2))


def read_result(path: Path) -> RunResult:
    """ A run's result.json (its identity record left out)."""
    record = json.loads(Path(path).read_text())
    record.pop('identity', None)
    return RunResult.from_json(record)


def _train_all(runs: Sequence['_Run'], train_args: Dict[str, Any], data_dir: Path, epochs: Optional[int],
               unfinished: str, progress: bool, data_path: str) -> List[RunResult]:
    """ The results of every run: read back where finished, trained (or resumed) where not."""
    results: List[RunResult] = []
    for index, run in enumerate(runs, 1):
        prefix = f'[{index}/{len(runs)}] {run.spec.label} seed {run.seed}: '
        if (run.run_dir / RESULT_FILE).exists():
            results.append(read_result(run.run_dir / RESULT_FILE))
            if progress:
                print(f'{prefix}finished before, top-1 {results[-1].top1:.2f}', file=sys.stderr, flush=True)
            continue
        if unfinished == 'skip' and (run.run_dir / 'last.pth.tar').exists():
            if progress:
                print(f'{prefix}unfinished, skipped (--unfinished skip)', file=sys.stderr, flush=True)
            continue
        _record_identity(run)
        result = train_and_evaluate(run.spec.model_name, dict(train_args, **run.spec.train_options), data_dir,
                                    run.run_dir, epochs=epochs,
                                    model_kwargs=run.spec.kwargs, seed=run.seed, progress=progress,
                                    progress_prefix=prefix, data_path=data_path)
        stop_if_terminated()  # a SIGTERM during the last evaluation leaves the run unfinished, not recorded
        result = replace(result, label=run.spec.label, train_options=_as_json(run.spec.train_options))
        write_text_whole(run.run_dir / RESULT_FILE, json.dumps(dict(result.to_json(), identity=run.identity),
                                                               indent=2))
        (run.run_dir / RUN_FILE).unlink(missing_ok=True)
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
                if r.model_name == spec.model_name and _as_json(r.model_kwargs) == _as_json(spec.kwargs)
                and _as_json(r.train_options) == _as_json(spec.train_options)]
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
    and, given the runs' `results`, the held-out learning curve of each model's first seed; with runs that recorded
    their selectors, selectors.png: per MoD block and epoch, the score spread and the dead hidden units."""
    output_dir = Path(output_dir)
    written = write_records([asdict(r) for r in rows], output_dir, 'compare')
    plots = [_plot(rows, results, output_dir / 'compare.png'),
             _plot_selectors(rows, results, output_dir / 'selectors.png')]
    return written + [plot for plot in plots if plot]


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
        for number, row in enumerate(rows, 1):
            x = getattr(row, attribute)
            ax.errorbar(x, row.top1_mean, yerr=row.top1_std, fmt='o', capsize=3, color=colours[row.label],
                        label=f'{number}  {row.label}')
            ax.annotate(str(number), (x, row.top1_mean), textcoords='offset points', xytext=(4, 4), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('held-out top-1 (%), mean +- std over seeds')
        ax.grid(alpha=0.3)
    if curves:
        ax = axes[0][-1]
        for label, points in curves.items():
            ax.plot(*zip(*points), color=colours[label], linewidth=1)
        ax.set_xlabel('epoch')
        ax.set_ylabel('held-out top-1 (%), first seed')
        ax.grid(alpha=0.3)
    fig.suptitle('accuracy against cost, one point per model (numbered below); learning curves', fontsize=10)
    return _save_with_legend_below(fig, axes[0][0], len(rows), path)


def _save_with_legend_below(fig: Any, ax: Any, entries: int, path: Path) -> Path:
    """ The figure with `ax`'s legend below its panels: labels of arms that name files are wider than a panel."""
    fig.legend(*ax.get_legend_handles_labels(), loc='lower center', fontsize=7)
    fig.tight_layout(rect=(0, 0.035 * entries + 0.02, 1, 1))
    return save_figure(fig, path)


def _plot_selectors(rows: Sequence[ComparisonRow], results: Sequence[RunResult], path: Path) -> Optional[Path]:
    """ Per MoD block (columns): each model's first-seed score spread (top) and share of dead hidden units
    (bottom) over the epochs; None when no run recorded its selectors."""
    records = {}
    for row in rows:
        runs = sorted((r for r in results if r.label == row.label), key=lambda r: r.seed)
        points = [point for point in (runs[0].curve if runs else []) if point.get('selectors')]
        if points:
            records[row.label] = points
    blocks = sorted({block for points in records.values() for point in points for block in point['selectors']})
    plt = pyplot(path.name) if blocks else None
    if plt is None:
        return None
    fig, axes = plt.subplots(2, len(blocks), figsize=(3.6 * len(blocks), 6), squeeze=False, sharex=True)
    for column, block in enumerate(blocks):
        for index, (label, points) in enumerate(records.items()):
            epochs = [point['epoch'] for point in points if block in point['selectors']]
            states = [point['selectors'][block] for point in points if block in point['selectors']]
            style = dict(color=f'C{index % 10}', linewidth=1, label=label)
            axes[0][column].plot(epochs, [state['score_spread'] for state in states], **style)
            axes[1][column].plot(epochs, [state['dead_units'] / state['hidden_units'] for state in states], **style)
        axes[0][column].set_title(block, fontsize=9)
        axes[1][column].set_xlabel('epoch')
    axes[0][0].set_ylabel('score spread per image\n(max - min, mean over images)')
    axes[1][0].set_ylabel('dead hidden units (share)')
    for ax in axes[1]:
        ax.set_ylim(-0.03, 1.03)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle('the selectors after each epoch (first seed, on held-out images, eval mode)', fontsize=10)
    return _save_with_legend_below(fig, axes[0][0], len(records), path)
