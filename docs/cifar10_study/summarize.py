""" The CIFAR-10 study's tables (docs/cifar10_study.md), from the per-run results kept beside this script.

`--collect` first copies what run.sh finished under output/ into docs/cifar10_study/ (each run's result.json with
its learning curve, the fine-tuned run, the int8 accuracy files, the stock train.py run's summary.csv). Then it
prints, as Markdown: top-1 per arm (mean +- sample std over its seeds) with each run's convergence check, each
claim's difference with its spread and a verdict, the int8 table and the train.py run beside its twin. With
`--plot-dir` it writes compare.png/csv/json of the arms through timm-mod's own `write_comparison`. `--restore DATA_DIR`
copies the committed results back under output/, each with the identity of a run of the study's recipe on DATA_DIR,
so that run.sh on a fresh checkout trains only what is missing. Only runs of the study's recipe and epochs are
collected; paths are the repository's, from whatever folder the script runs in.
`--lane I` prints the runs of arms.txt that run.sh's lane I trains (see `lane_runs`). `--time DATA_DIR` times every
arm with a finished run, side by side, and keeps the times in timing.json for the tables and the plot: run it on an
otherwise idle machine.

    python docs/cifar10_study/summarize.py --collect --plot-dir docs/cifar10_study/summary
"""
import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import timm
import torch

from timm_mod.experiments.benchmark import device_name
from timm_mod.experiments.compare import (
    RESULT_FILE, ComparisonRow, ModelSpec, check_specs, compare, format_comparison, read_result, recorded_recipe,
    run_identity, study_record, summarize_runs, write_comparison)
from timm_mod.experiments.quantize import ACCURACY_COLUMNS, AccuracyRow, accuracy_table_rows
from timm_mod.experiments.recipe import complete_train_args, load_train_args
from timm_mod.experiments.training import RunResult
from timm_mod.models import measure
from timm_mod.utils.image_folder import check_image_folder
from timm_mod.utils.output import check_output_folder, write_text_whole
from timm_mod.utils.tables import format_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the repository: run.sh trains from there, and so every path below is under it
RUNS, FINETUNE, INT8, TRAIN_PY = HERE / 'runs', HERE / 'finetune', HERE / 'int8', HERE / 'trainpy'
ARMS = HERE / 'arms.txt'
# run.sh trains in two lanes of one thread each, side by side, each in its own folder (compare locks its folder)
LANES = (ROOT / 'output/cifar10_study', ROOT / 'output/cifar10_study_lane2')
# what run.sh's lane 1 trains before its share of arms.txt: the first seeds, which the fine-tune and int8 start from
LANE1_FIRST = (('resnet18', 0), ('resnet18_mod', 0), ('resnet18_mod', 1), ('resnet18', 1))
EPOCHS, FINETUNE_EPOCHS = 30, 7
NUM_CLASSES = 10
FINETUNE_OUTPUT = ROOT / 'output/cifar10_finetune/resnet18_mod/seed0'
INT8_OUTPUT = ROOT / 'output/cifar10_int8'
TRAIN_PY_OUTPUT = ROOT / 'output/cifar10_trainpy/resnet18_mod_seed0'
RECIPE, FINETUNE_RECIPE = ROOT / 'train_args/cifar10.yaml', ROOT / 'train_args/cifar10_finetune.yaml'
TIMING = HERE / 'timing.json'  # the arms' measured CPU times (`--time`)
SPEED_FIELDS = ('inference_ms', 'inference_speedup', 'train_step_ms', 'train_speedup', 'speed_setting')
FLAT_POINTS = 0.5  # converged: over the last fifth of the epochs, top-1 moves by less than this (max - min)

# (claim, arm, against, the paper's difference in points and where; the claim holds if the true difference of
# arm minus against exceeds the threshold: claim 1 says MoD costs at most what the paper measured)
CLAIMS = (
    ('1. MoD costs little at about half the MACs', 'resnet18_mod', 'resnet18', -1.67, 'Table 9, CIFAR-10 R18', -1.67),
    ('2. deeper MoD beats shallower plain', 'resnet34_mod', 'resnet18', 1.07, 'Table 1, ImageNet R34-MoD vs R18', 0.0),
    ('3. fusion into the first k, c = 4', 'resnet18_mod:c=4', 'resnet18_mod:c=4,fusion=original', 12.96,
     'Table 10, R50 c=4', 0.0),
    ('3. fusion into the first k, c = 64', 'resnet18_mod', 'resnet18_mod:fusion=original', 4.48,
     'Table 10, R50 c=64', 0.0),
    ('4. learned routing beats random', 'resnet18_mod', 'resnet18_mod:routing=random', 0.77,
     'Table 1, ImageNet R50-MoD', 0.0),
    ('5. MoD beats plain narrowed to its MACs', 'resnet18_mod', 'resnet18:channels=(44,88,176,352)', None,
     'not in the paper', 0.0),
)


def arm_lines(path: Path) -> List[str]:
    """ arms.txt without comments and blank lines: one `NAME[:KEY=VALUE,...]@SEEDS` per arm."""
    lines = (line.split('#', 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def read_arms(path: Optional[Path] = None) -> List[ModelSpec]:
    """ The arms (of arms.txt unless `path`) as run.sh trains them, in canonical form; a clear error for a line
    without seeds, a model or option that cannot be built, or an arm listed twice (it would count its runs twice)."""
    path = path or ARMS
    specs = []
    for line in arm_lines(path):
        spec = ModelSpec.parse(line)
        if spec.seeds is None:
            raise ValueError(f'{path}: {line!r} names no seeds; write it as {line}@0,1,2.')
        specs.append(spec)
    try:
        return check_specs(specs, NUM_CLASSES)
    except ValueError as error:
        raise ValueError(f'{path}: {error}') from None


def committed_result(spec: ModelSpec, seed: int) -> Path:
    """ Where a run's result.json is kept in git."""
    return RUNS / f'{spec.folder_name}_seed{seed}.json'


def run_files(arms: Sequence[ModelSpec]) -> Iterator[Tuple[Tuple[Path, ...], Path]]:
    """ (result.json in each folder under output/ that can hold it, its copy under docs/cifar10_study/) of every
    run and of the fine-tune."""
    for spec in arms:
        for seed in spec.seeds:
            yield (tuple(lane / spec.folder_name / f'seed{seed}' / 'result.json' for lane in LANES),
                   committed_result(spec, seed))
    yield (FINETUNE_OUTPUT / 'result.json',), FINETUNE / 'resnet18_mod_seed0.json'


def lane_runs(lane: int) -> List[str]:
    """ The unfinished runs of arms.txt that run.sh's lane `lane` (1 or 2) trains, as `compare --models` arguments.

    Lane 1 first trains the first seeds of resnet18 and resnet18_mod, the fine-tune and int8 (run.sh), lane 2 the
    stock train.py twin. A run started in a lane stays there (its checkpoints are in that lane's folder); every
    other unfinished run goes, seed by seed, to the lane with less work queued, counted in MACs times epochs. Both
    lanes are computed from the same state before either trains, so they never share a run.
    """
    arms = [(spec.folder_name.replace('@', ':', 1), spec) for spec in read_arms()]
    macs: Dict[str, float] = {}
    for _, spec in arms:
        model = timm.create_model(spec.model_name, num_classes=10, device='meta', **spec.kwargs)
        macs[spec.folder_name] = measure(model, (3, 32, 32))[1]
    queued = [0.0, 0.0]
    if not (FINETUNE_OUTPUT / 'result.json').exists():
        queued[0] += macs['resnet18_mod'] * FINETUNE_EPOCHS
    if not _twin_finished():
        queued[1] += macs['resnet18_mod'] * EPOCHS
    runs = sorted(((seed, index, text, spec) for index, (text, spec) in enumerate(arms) for seed in spec.seeds),
                  key=lambda run: run[:2])
    assigned: Dict[int, List[Tuple[str, int]]] = {0: [], 1: []}
    for seed, _, text, spec in runs:
        folders = [folder / spec.folder_name / f'seed{seed}' for folder in LANES]
        if any((folder / 'result.json').exists() for folder in folders):
            continue
        started = [index for index, folder in enumerate(folders) if folder.exists()]
        if (spec.folder_name, seed) in LANE1_FIRST:
            chosen = 0
        elif started:
            chosen = started[0]
        else:
            chosen = min((0, 1), key=lambda index: queued[index])
        queued[chosen] += macs[spec.folder_name] * EPOCHS
        assigned[chosen].append((text, seed))
    by_arm: Dict[str, List[int]] = {}
    for text, seed in assigned[lane - 1]:
        by_arm.setdefault(text, []).append(seed)
    return [f'{text}@{",".join(map(str, seeds))}' for text, seeds in by_arm.items()]


def _twin_finished() -> bool:
    """ Whether the stock train.py twin wrote its last epoch (train.py counts epochs from 0)."""
    summary = TRAIN_PY_OUTPUT / 'summary.csv'
    if not summary.exists():
        return False
    with summary.open() as file:
        return any(row['epoch'] == str(EPOCHS - 1) for row in csv.DictReader(file))


def study_recipe(path: Path = RECIPE) -> dict:
    """ The recipe every arm trains with, completed as compare records it in a run's identity."""
    return recorded_recipe(complete_train_args(load_train_args(path)))


def _of_the_study(record: dict, recipe: dict, epochs: int) -> Optional[str]:
    """ Why a result.json is not a run of the study (None when it is): other epochs, or another recipe."""
    if record.get('epochs') != epochs:
        return f"trained {record.get('epochs')} epochs, not the study's {epochs}"
    recorded = record.get('identity', {}).get('recipe')
    if recorded is not None and recorded != recipe:
        changed = sorted(key for key in set(recorded) | set(recipe) if recorded.get(key) != recipe.get(key))
        return f'trained with another recipe ({", ".join(changed)})'
    return None


def collect(arms: Sequence[ModelSpec]) -> None:
    """ Copy every finished result of the study's recipe and epochs under output/ into docs/cifar10_study/,
    checkpoint folders relative; any other (a smoke run of the same name) is named and left where it is."""
    recipes = {RUNS: (study_recipe(RECIPE), EPOCHS), FINETUNE: (study_recipe(FINETUNE_RECIPE), FINETUNE_EPOCHS)}
    for candidates, committed in run_files(arms):
        finished = next((path for path in candidates if path.exists()), None)
        if finished is None:
            continue
        record = json.loads(finished.read_text())
        reason = _of_the_study(record, *recipes[committed.parent])
        if reason is not None:
            print(f'not collected: {finished} ({reason})', file=sys.stderr)
            continue
        record['checkpoint_dir'] = str(finished.parent.relative_to(ROOT))
        committed.parent.mkdir(parents=True, exist_ok=True)
        write_text_whole(committed, json.dumps(record, indent=2) + '\n')
    for accuracy in sorted(INT8_OUTPUT.glob('*/accuracy.json')):
        INT8.mkdir(exist_ok=True)
        shutil.copyfile(accuracy, INT8 / f'{accuracy.parent.name}.json')
    if (TRAIN_PY_OUTPUT / 'summary.csv').exists():
        TRAIN_PY.mkdir(exist_ok=True)
        shutil.copyfile(TRAIN_PY_OUTPUT / 'summary.csv', TRAIN_PY / 'resnet18_mod_seed0_summary.csv')


def restore(arms: Sequence[ModelSpec], data_dir: Path) -> None:
    """ Copy the committed results back under output/, into the lane folder each trained in, where no lane has
    them, so that run.sh on a fresh checkout skips finished runs instead of training them again (their checkpoints
    are not in git). Each gets the identity of a run of the study's recipe on `data_dir`, so that compare reuses
    it there and refuses it in any other study."""
    def put_back(text: str, target: Path) -> None:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_whole(target, text)
    record = study_record(complete_train_args(load_train_args(RECIPE)), data_dir, None)
    for spec in arms:
        for seed, (candidates, committed) in zip(spec.seeds, run_files([spec])):
            if committed.exists() and not any(path.exists() for path in candidates):
                result = dict(json.loads(committed.read_text()), identity=run_identity(spec, seed, record))
                trained_in = ROOT / result.get('checkpoint_dir', '')
                put_back(json.dumps(result, indent=2), next((path for path in candidates if path.parent == trained_in),
                                                            candidates[0]))
    for accuracy in sorted(INT8.glob('*.json')):
        put_back(accuracy.read_text(), INT8_OUTPUT / accuracy.stem / 'accuracy.json')


def time_arms(arms: Sequence[ModelSpec], results: Sequence[RunResult], data_dir: Path) -> None:
    """ Time inference and a training step of every arm with a finished run, side by side in one process (one
    thread, the recipe's batch of 128 at 32 px), and keep the times in timing.json. `timm-mod compare` does the
    timing, on a scratch folder holding copies of the finished results so that it trains nothing."""
    timed = []
    study = study_record(complete_train_args(load_train_args(RECIPE)), data_dir, None)
    with tempfile.TemporaryDirectory() as scratch:
        for spec in arms:
            seeds = tuple(sorted(r.seed for r in results if r.label == spec.label))
            if not seeds:
                continue
            timed.append(replace(spec, seeds=seeds))
            for seed in seeds:
                run_dir = Path(scratch) / spec.folder_name / f'seed{seed}'
                run_dir.mkdir(parents=True)
                result = dict(json.loads(committed_result(spec, seed).read_text()),
                              identity=run_identity(spec, seed, study))
                (run_dir / RESULT_FILE).write_text(json.dumps(result))
        rows, _ = compare(timed, load_train_args(RECIPE), data_dir, Path(scratch), threads=1)
    times = {row.label: {field: getattr(row, field) for field in SPEED_FIELDS} for row in rows}
    record = {'cpu': device_name('cpu'), 'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'times': times}
    write_text_whole(TIMING, json.dumps(record, indent=2) + '\n')


def with_times(rows: Sequence[ComparisonRow]) -> List[ComparisonRow]:
    """ The rows with the CPU times of timing.json, where it has them."""
    if not TIMING.exists():
        return list(rows)
    times = json.loads(TIMING.read_text())['times']
    return [replace(row, **times[row.label]) if row.label in times else row for row in rows]


def read_results(folder: Path) -> List[RunResult]:
    return [read_result(path) for path in sorted(folder.glob('*.json'))]


def last_fifth_moves(result: RunResult) -> float:
    """ Max minus min top-1 over the last fifth of the epochs (rounded up): the convergence check."""
    top1 = [point['top1'] for point in result.curve if point['top1'] is not None]
    tail = top1[-math.ceil(len(top1) / 5):]
    return max(tail) - min(tail)


def pooled_std(rows: Sequence[ComparisonRow]) -> Optional[float]:
    """ The seed-to-seed std pooled over every arm with two or more seeds (all arms share one recipe)."""
    dof = sum(row.seeds - 1 for row in rows)
    if dof == 0:
        return None
    return math.sqrt(sum((row.seeds - 1) * row.top1_std ** 2 for row in rows) / dof)


def difference(arm: ComparisonRow, against: ComparisonRow, spread: Optional[float]
               ) -> Tuple[float, Optional[float]]:
    """ Mean top-1 of `arm` minus `against`, and its standard error from the pooled seed std."""
    error = None if spread is None else spread * math.sqrt(1 / arm.seeds + 1 / against.seeds)
    return arm.top1_mean - against.top1_mean, error


def verdict(value: float, error: Optional[float], threshold: float) -> str:
    """ Confirmed or contradicted when the difference clears the claim's threshold by two standard errors."""
    if error is None:
        return 'cannot tell (one seed per arm)'
    if value - 2 * error > threshold:
        return 'confirmed'
    if value + 2 * error < threshold:
        return 'contradicted'
    return 'cannot tell'


def arms_table(rows: Sequence[ComparisonRow], results: Sequence[RunResult], baseline_mmacs: float) -> str:
    table = []
    for row in rows:
        runs = sorted((r for r in results if r.label == row.label), key=lambda r: r.seed)
        moves = [last_fifth_moves(r) for r in runs]
        top1 = f'{row.top1_mean:.2f} +- {row.top1_std:.2f}' if row.seeds > 1 else f'{row.top1_mean:.2f}'
        table.append((row.label, str(row.seeds), top1,
                      ' '.join(f'{r.top1:.2f}' for r in runs), ' '.join(f'{m:.2f}' for m in moves),
                      'yes' if max(moves) < FLAT_POINTS else 'no', f'{row.params_m:.2f}', f'{row.mmacs:.1f}',
                      f'{row.mmacs / baseline_mmacs:.2f}'))
    return format_table(('arm', 'seeds', 'top-1 (%)', 'per seed', 'last fifth moves', 'flat', 'params (M)',
                         'MMACs', 'MACs / resnet18'), table, markdown=True)


def claims_table(rows: Sequence[ComparisonRow], finetune: Sequence[RunResult]) -> str:
    by_label = {row.label: row for row in rows}
    spread = pooled_std(rows)
    table = []
    for claim, arm, against, paper, where, threshold in CLAIMS:
        arm_row, against_row = by_label.get(ModelSpec.parse(arm).label), by_label.get(ModelSpec.parse(against).label)
        if arm_row is None or against_row is None:
            table.append((claim, '-', '-', '-' if paper is None else f'{paper:+.2f} ({where})', 'not run yet'))
            continue
        value, error = difference(arm_row, against_row, spread)
        table.append((claim, f'{arm_row.seeds} vs {against_row.seeds}',
                      f'{value:+.2f}' + ('' if error is None else f' +- {error:.2f}'),
                      '-' if paper is None else f'{paper:+.2f} ({where})', verdict(value, error, threshold)))
    scratch = by_label.get('resnet18_mod')
    for run in finetune:
        if scratch is not None:
            finetuned = ComparisonRow('fine-tuned', run.model_name, 1, run.top1, 0.0, run.params / 1e6, run.macs / 1e6)
            value, error = difference(finetuned, scratch, spread)
            table.append((f'from a trained resnet18, fine-tuned {run.epochs} epochs, vs resnet18_mod from scratch',
                          f'1 vs {scratch.seeds}', f'{value:+.2f}' + ('' if error is None else f' +- {error:.2f}'),
                          '- (not in the paper)', '-'))
    return format_table(('claim', 'seeds', 'difference (points, +- 1 s.e.)', 'paper', 'verdict'), table,
                        markdown=True)


def int8_tables() -> str:
    parts = []
    for path in sorted(INT8.glob('*.json')):
        rows = [AccuracyRow(**record) for record in json.loads(path.read_text())]
        parts.append(f'{path.stem}:\n\n' + format_table(ACCURACY_COLUMNS, accuracy_table_rows(rows), markdown=True))
    return '\n\n'.join(parts)


def train_py_twin(results: Sequence[RunResult]) -> str:
    """ The stock train.py run's last top-1 and last fifth, beside the compare run with the same seed."""
    path = TRAIN_PY / 'resnet18_mod_seed0_summary.csv'
    twin = next((r for r in results if r.label == 'resnet18_mod' and r.seed == 0), None)
    if not path.exists() or twin is None:
        return ''
    with path.open() as file:
        top1 = [float(row['eval_top1']) for row in csv.DictReader(file)]
    tail = top1[-math.ceil(len(top1) / 5):]
    return format_table(('resnet18_mod seed 0', 'epochs', 'top-1 (%)', 'last fifth moves'), [
        ("timm's train.py", str(len(top1)), f'{top1[-1]:.2f}', f'{max(tail) - min(tail):.2f}'),
        ('timm-mod compare', str(twin.epochs), f'{twin.top1:.2f}', f'{last_fifth_moves(twin):.2f}')], markdown=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--collect', action='store_true', help='first copy finished results from output/')
    parser.add_argument('--restore', type=Path, default=None, metavar='DATA_DIR',
                        help='copy committed results back to output/ (a fresh checkout) as runs on DATA_DIR, then exit')
    parser.add_argument('--plot-dir', type=Path, default=None, help='write compare.png/csv/json of the arms here')
    parser.add_argument('--time', type=Path, default=None, metavar='DATA_DIR',
                        help='first time every arm with a finished run side by side (idle machine; the data folder '
                             'is only checked), keeping the times in timing.json')
    parser.add_argument('--lane', type=int, choices=(1, 2), default=None,
                        help="print the unfinished runs of run.sh's lane 1 or 2, one compare --models argument a line")
    args = parser.parse_args()
    try:
        summarize(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as error:
        sys.exit(f'summarize.py: error: {error}')


def summarize(args: argparse.Namespace) -> None:
    """ What main asked for; every argument is checked before any work."""
    arms = read_arms()
    for data_dir in (args.restore, args.time):
        if data_dir is not None:
            for split in ('train', 'validation'):
                check_image_folder(data_dir, split)
    if args.plot_dir is not None:
        check_output_folder(args.plot_dir, '--plot-dir')
    if args.lane is not None:
        return print('\n'.join(lane_runs(args.lane)))
    if args.restore is not None:
        return restore(arms, args.restore)
    if args.collect:
        collect(arms)
    results, finetune = read_results(RUNS), read_results(FINETUNE)
    rows = summarize_runs(arms, results)
    if not rows:
        raise FileNotFoundError(f'No finished runs in {RUNS}; run run.sh, then this script with --collect.')
    if args.time is not None:
        time_arms(arms, results, args.time)
    rows = with_times(rows)
    baseline_mmacs = next((row.mmacs for row in rows if row.label == 'resnet18'), rows[0].mmacs)
    timed = [row for row in rows if row.inference_ms is not None]
    parts = (arms_table(rows, results, baseline_mmacs), claims_table(rows, finetune),
             format_comparison(timed, markdown=True) + f'\n\n{timed[0].speed_setting}' if timed else '', int8_tables(),
             train_py_twin(results))
    print('\n\n'.join(part for part in parts if part))
    if args.plot_dir is not None:
        write_comparison(rows, args.plot_dir, results)


if __name__ == '__main__':
    main()
