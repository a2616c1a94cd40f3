""" The distillation study's tables (docs/distillation.md), from the per-run results kept beside this script.

`--collect` first copies what run_study.sh finished under output/cifar10_distill/ into runs/ (each run's
result.json with its learning curve and selector record). Then it prints, as Markdown: top-1 per arm (mean +-
sample std over its seeds, each run's convergence check, params, MACs and, from timing.json, measured CPU speed)
and each comparison of docs/distillation.md with its difference, standard error and verdict, by the rules stated
there before the runs. `--time` times the students' architectures side by side in one process (resnet18, the
teacher, as the baseline; resnet18_mod, its identity bound, the pruned and the narrowed resnet18), one thread,
the recipe's batch of 128 at 32 px, and keeps the times in timing.json: run it on an otherwise idle machine.
`--plot-dir` writes compare.png/csv/json of the arms through timm-mod's own `write_comparison`.

    python docs/distillation_study/summarize.py --collect --plot-dir docs/distillation_study/summary
"""
import argparse
import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

import timm
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import pruned  # noqa: E402,F401  (registers resnet18_pruned with timm)

from timm_mod.experiments.benchmark import BenchSetting, device_name, identity_bound, make_step  # noqa: E402
from timm_mod.experiments.compare import (  # noqa: E402
    ComparisonRow, ModelSpec, read_result, summarize_runs, write_comparison)
from timm_mod.experiments.training import RunResult  # noqa: E402
from timm_mod.utils.output import check_output_folder, write_text_whole  # noqa: E402
from timm_mod.utils.tables import format_table  # noqa: E402
from timm_mod.utils.timing import time_side_by_side  # noqa: E402


def _converged_study() -> ModuleType:
    """ docs/cifar10_study/summarize.py, whose convergence check and pooled spread this study shares."""
    spec = importlib.util.spec_from_file_location('cifar10_summarize', ROOT / 'docs/cifar10_study/summarize.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONVERGED = _converged_study()
RUNS = HERE / 'runs'
OUTPUT = ROOT / 'output' / 'cifar10_distill'
TIMING = HERE / 'timing.json'
SCRATCH_RUNS = ROOT / 'docs' / 'cifar10_study' / 'runs'  # the converged study's arms without a teacher
GOAL_POINTS = 0.3  # the converted and distilled student is within this of its teacher
NARROW = 'resnet18:channels=(44,88,176,352)'

# arm: (folder under output/cifar10_distill/, the architecture timed for it, its name in the tables)
ARMS = {
    'converted_ce': ('resnet18_mod', 'converted resnet18_mod, cross-entropy, 7 epochs'),
    'converted_kd': ('resnet18_mod', 'converted resnet18_mod, distilled, 7 epochs'),
    'pruned_ce': ('resnet18_pruned', 'pruned resnet18 (Torch-Pruning), cross-entropy, 7 epochs'),
    'pruned_kd': ('resnet18_pruned', 'pruned resnet18 (Torch-Pruning), distilled, 7 epochs'),
    'scratch_kd': ('resnet18_mod', 'resnet18_mod from scratch, distilled, 30 epochs'),
    'narrow_kd': (NARROW, 'narrowed resnet18 from scratch, distilled, 30 epochs'),
    'scratch': ('resnet18_mod', 'resnet18_mod from scratch, cross-entropy, 30 epochs (converged study)'),
    'narrow': (NARROW, 'narrowed resnet18 from scratch, cross-entropy, 30 epochs (converged study)'),
}
SCRATCH_FILES = {'scratch': 'resnet18_mod_seed', 'narrow': 'resnet18@channels=(44,88,176,352)_seed'}
TEACHER_RESULT = RUNS / 'teacher_resnet18_seed0.json'
# (claim, arm, against): the claim is that `arm` scores higher than `against`
HEAD_TO_HEAD = (
    ('MoD beats pruning, both distilled', 'converted_kd', 'pruned_kd'),
    ('MoD beats pruning, both with cross-entropy', 'converted_ce', 'pruned_ce'),
    ('the teacher helps the converted model', 'converted_kd', 'converted_ce'),
    ('conversion beats training from scratch, both distilled', 'converted_kd', 'scratch_kd'),
)


def collect() -> None:
    """ Copy every finished run of the study under output/cifar10_distill/ into runs/, checkpoint folders
    relative to the repository."""
    for arm in ARMS:
        for finished in sorted((OUTPUT / arm).glob('*/seed*/result.json')):
            record = json.loads(finished.read_text())
            record['checkpoint_dir'] = str(finished.parent.relative_to(ROOT))
            RUNS.mkdir(exist_ok=True)
            write_text_whole(RUNS / f'{arm}_{finished.parent.name}.json', json.dumps(record, indent=2) + '\n')


def read_arms() -> Dict[str, List[RunResult]]:
    """ The finished runs of every arm, by arm, those of the converged study included."""
    runs = {arm: [read_result(path) for path in sorted(RUNS.glob(f'{arm}_seed*.json'))] for arm in ARMS
            if arm not in SCRATCH_FILES}
    for arm, prefix in SCRATCH_FILES.items():
        runs[arm] = [read_result(path) for path in sorted(SCRATCH_RUNS.glob(f'{prefix}*.json'))]
    return {arm: [replace(r, label=ARMS[arm][1]) for r in results] for arm, results in runs.items() if results}


def arm_rows(runs: Dict[str, List[RunResult]]) -> Dict[str, ComparisonRow]:
    """ Each arm's row (compare's own summary of its seeds), named as in the tables, with its measured speed."""
    rows = {}
    for arm, results in runs.items():
        first = results[0]
        spec = ModelSpec(first.model_name, tuple(sorted({**first.model_kwargs, **first.train_options}.items())))
        row = summarize_runs([spec], results)[0]
        rows[arm] = with_times(replace(row, label=ARMS[arm][1]), ARMS[arm][0])
    return rows


def with_times(row: ComparisonRow, architecture: str) -> ComparisonRow:
    if not TIMING.exists():
        return row
    times = json.loads(TIMING.read_text())['times'].get(architecture)
    return replace(row, **times) if times else row


def build(architecture: str) -> torch.nn.Module:
    name, _, kwargs = architecture.partition(':')
    extra = {'channels': (44, 88, 176, 352)} if kwargs else {}
    return timm.create_model(name, num_classes=10, **extra)


def time_architectures(rounds: int = 5) -> None:
    """ Inference and a training step of each student architecture beside the teacher's and resnet18_mod's identity
    bound, round-robin in this process, one thread, batch 128 at 32 px; kept in timing.json."""
    torch.manual_seed(0)
    models = {name: build(name) for name in ('resnet18', 'resnet18_mod', 'resnet18_pruned', NARROW)}
    models['resnet18_mod identity bound'] = identity_bound(models['resnet18_mod'])
    times = {}
    for task in ('inference', 'train'):
        print(f'timing {task} of {len(models)} models side by side', file=sys.stderr, flush=True)
        setting = BenchSetting(batch_size=128, threads=1, task=task)
        steps = {name: make_step(model, setting, num_classes=10, input_size=(3, 32, 32))
                 for name, model in models.items()}
        times[task] = time_side_by_side(steps, threads=1, rounds=rounds)
    record = {'cpu': device_name('cpu'), 'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'times': {
        name: dict(inference_ms=times['inference'][name] * 1e3,
                   inference_speedup=times['inference']['resnet18'] / times['inference'][name],
                   train_step_ms=times['train'][name] * 1e3,
                   train_speedup=times['train']['resnet18'] / times['train'][name],
                   speed_setting='CPU, batch 128 of 3x32x32, 1 thread, speed-ups against resnet18')
        for name in models}}
    write_text_whole(TIMING, json.dumps(record, indent=2) + '\n')


def arms_table(rows: Dict[str, ComparisonRow], runs: Dict[str, List[RunResult]], teacher_mmacs: float) -> str:
    def number(value: Optional[float], spec: str) -> str:
        return '-' if value is None else format(value, spec)
    table = []
    for arm, row in rows.items():
        results = sorted(runs[arm], key=lambda r: r.seed)
        moves = [CONVERGED.last_fifth_moves(r) for r in results]
        top1 = f'{row.top1_mean:.2f} +- {row.top1_std:.2f}' if row.seeds > 1 else f'{row.top1_mean:.2f}'
        table.append((row.label, str(row.seeds), top1, ' '.join(f'{r.top1:.2f}' for r in results),
                      ' '.join(f'{m:.2f}' for m in moves), 'yes' if max(moves) < CONVERGED.FLAT_POINTS else 'no',
                      f'{row.params_m:.2f}', f'{row.mmacs:.1f}', f'{row.mmacs / teacher_mmacs:.2f}',
                      number(row.inference_speedup, '.2f'), number(row.train_speedup, '.2f')))
    return format_table(('arm', 'seeds', 'top-1 (%)', 'per seed', 'last fifth moves', 'flat', 'params (M)', 'MMACs',
                         'MACs / teacher', 'inference speed-up', 'train speed-up'), table, markdown=True)


def comparisons(rows: Dict[str, ComparisonRow], teacher_top1: float) -> str:
    """ Each claim of docs/distillation.md with its difference, standard error (from the seed std pooled over the
    arms) and verdict: confirmed or contradicted when the difference clears the claim's threshold by two standard
    errors (the converged study's rule)."""
    spread = CONVERGED.pooled_std(list(rows.values()))

    def error_of(*arms: str) -> Optional[float]:
        return None if spread is None else spread * math.sqrt(sum(1 / rows[arm].seeds for arm in arms))
    claims = []
    if 'converted_kd' in rows:  # the student's top-1 minus the teacher's, above -GOAL_POINTS
        claims.append((f'converted + distilled is within {GOAL_POINTS} of its teacher ({teacher_top1:.2f})',
                       rows['converted_kd'].top1_mean - teacher_top1, error_of('converted_kd'), -GOAL_POINTS))
    for name, arm, against in HEAD_TO_HEAD:
        if arm in rows and against in rows:
            claims.append((name, rows[arm].top1_mean - rows[against].top1_mean, error_of(arm, against), 0.0))
    if all(arm in rows for arm in ('scratch_kd', 'scratch', 'narrow_kd', 'narrow')):
        gain = (rows['scratch_kd'].top1_mean - rows['scratch'].top1_mean) - (
            rows['narrow_kd'].top1_mean - rows['narrow'].top1_mean)
        claims.append(("MoD gains more from the teacher than the narrowed net", gain,
                       error_of('scratch_kd', 'scratch', 'narrow_kd', 'narrow'), 0.0))
    table = [(name, f'{value:+.2f}', _points(error), f'{threshold:+.2f}', CONVERGED.verdict(value, error, threshold))
             for name, value, error, threshold in claims]
    note = '' if spread is None else f'\n\nPooled seed std {spread:.2f} points over {len(rows)} arms.'
    return format_table(('claim', 'difference (points)', 's.e.', 'threshold', 'verdict'), table,
                        markdown=True) + note


def _points(error: Optional[float]) -> str:
    return '-' if error is None else f'{error:.2f}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--collect', action='store_true', help='first copy finished results from output/')
    parser.add_argument('--time', action='store_true', help='time the architectures (idle machine) into timing.json')
    parser.add_argument('--plot-dir', type=Path, default=None, help='write compare.png/csv/json of the arms here')
    args = parser.parse_args()
    if args.plot_dir is not None:
        check_output_folder(args.plot_dir, '--plot-dir')
    if args.collect:
        collect()
    if args.time:
        time_architectures()
    runs = read_arms()
    teacher = read_result(TEACHER_RESULT)
    rows = arm_rows(runs)
    print(arms_table(rows, runs, teacher.macs / 1e6))
    print()
    print(comparisons(rows, teacher.top1))
    if args.plot_dir is not None and rows:
        write_comparison(list(rows.values()), args.plot_dir, [r for results in runs.values() for r in results])


if __name__ == '__main__':
    main()
