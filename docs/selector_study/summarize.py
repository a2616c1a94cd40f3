""" The selector study's tables (docs/selector_study.md), from the per-run results kept beside this script.

`--collect` first copies what run_causes.sh and run_verdict.sh finished under output/ into runs/ (each run's
result.json with its learning curve and per-epoch selector record) and each cause study's selectors.png. Then it
prints, as Markdown:

- the cause runs, one row per arm: hold-out top-1, what the routing carries (top-1 with the learned top k minus
  top-1 with a fixed random set of k channels, and minus top-1 with each image routed as the previous image of its
  batch, from selection/, written by routing_ablation.sh), and per MoD block
  the score spread (max - min over channels, mean over images) after the first and the last epoch, dead hidden
  units, how many distinct channels the block routes over the probe images, and how the selector's gradient
  compares with its weight decay after the last epoch's last step: |gradient| / (weight decay x |weights|), the
  ratio of the two pulls on its weights in one SGD step (one batch's gradient, so a rough figure; '-' without decay);
- the verdict runs, once there are any: top-1 and what each image's routing carries over the previous image's per
  arm (mean +- sample std over seeds),
  with the converged study's arms at c = 64, and each comparison of docs/selector_study.md with its verdict by the
  rule stated there before the runs (a difference is called beyond two standard errors, sqrt(s1^2/n1 + s2^2/n2)).
  The paper's selector at c = 64 has its routing measured on the distillation study's resnet18_mod trained from
  scratch (30 epochs, distilled), whose checkpoints outlived the converged study's.

`--plot` also draws the verdict arms, top-1 and what each image's routing carries per seed, into verdict.png.

    python docs/selector_study/summarize.py --collect --plot
"""
import argparse
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from timm_mod.utils.tables import format_table, pyplot, save_figure

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = HERE / 'runs'
SELECTION = HERE / 'selection'
CONVERGED_RUNS = ROOT / 'docs' / 'cifar10_study' / 'runs'  # the converged study's c = 64 arms
DISTILLED_RUNS = ROOT / 'docs' / 'distillation_study' / 'runs'  # resnet18_mod distilled from scratch, c = 64
DISTILLED_ARM = 'resnet18_mod distilled from scratch (c=64, distillation study)'
# study folder: the output folder holding it (run_causes.sh, run_verdict.sh)
STUDIES = {
    **{study: ROOT / 'output' / 'selector_causes' for study in ('c16', 'c64', 'c16_lr_quarter', 'c16_candidates')},
    **{study: ROOT / 'output' / 'selector_verdict'
       for study in ('verdict_c16', 'verdict_c16_option', 'verdict_c64_option', 'verdict_c64_fixed')},
}
RULE_STANDARD_ERRORS = 2
VERDICT_PLOT = HERE / 'verdict.png'


def run_file_name(study: str, run_folder: str, seed_folder: str) -> str:
    """ A run's file name in runs/ and selection/ (as routing_ablation.sh names the latter): study, run folder with
    each character outside [A-Za-z0-9_.=-] replaced by '_', seed folder."""
    keep = set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.=-')
    return f'{study}_' + ''.join(ch if ch in keep else '_' for ch in run_folder) + f'_{seed_folder}.json'


def collect() -> None:
    RUNS.mkdir(exist_ok=True)
    for study, output in STUDIES.items():
        for result in sorted((output / study).glob('*/seed*/result.json')):
            shutil.copyfile(result, RUNS / run_file_name(study, result.parent.parent.name, result.parent.name))
        if (output / study / 'selectors.png').exists():
            shutil.copyfile(output / study / 'selectors.png', HERE / f'{study}_selectors.png')


def read_runs() -> List[Dict[str, Any]]:
    """ Every collected run, with its study and its routing ablation where routing_ablation.sh measured it."""
    runs = []
    for path in sorted(RUNS.glob('*.json')):
        run = json.loads(path.read_text())
        selection = SELECTION / path.name
        run['routing_ablation'] = json.loads(selection.read_text())['routing_ablation'] if selection.exists() else None
        run['study'] = path.name.split('_resnet18_mod')[0]
        runs.append(run)
    return runs


def carried(run: Dict[str, Any], replaced_by: str = 'top1_fixed_random') -> Optional[float]:
    """ Points of top-1 the learned routing carries over a fixed random set of k channels ('top1_fixed_random')
    or over the previous image's choice ('top1_neighbour'); None where not measured."""
    ablation = run['routing_ablation']
    if ablation is None or ablation.get(replaced_by) is None:
        return None
    return ablation['top1_learned'] - ablation[replaced_by]


def points(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:+.2f}'


def per_block(states: Dict[str, Dict[str, Any]], pattern: str, separator: str = ' / ') -> str:
    """ One value per MoD block in model order, `pattern` formatted with the block's recorded state."""
    return separator.join(pattern.format(**state) for state in states.values())


def cause_table(runs: List[Dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        if run['study'].startswith('verdict'):
            continue
        first, last = run['curve'][0].get('selectors'), run['curve'][-1].get('selectors')
        routing = (points(carried(run)), points(carried(run, 'top1_neighbour')))
        if first is None:  # random routing: no selector to record
            rows.append((run['study'], run['label'], f"{run['top1']:.2f}", *routing, '-', '-', '-', '-', '-'))
            continue
        decay = run['identity']['recipe']['weight_decay'] if run['model_kwargs'].get('selector_decay', True) else 0
        pulls = per_block({name: dict(ratio=state['grad_norm'] / (decay * state['weight_norm']))
                           for name, state in last.items()}, '{ratio:.1f}') if decay else '-'
        rows.append((
            run['study'], run['label'], f"{run['top1']:.2f}", *routing,
            per_block(first, '{score_spread:.3f}'), per_block(last, '{score_spread:.3f}'),
            per_block(last, '{dead_units}/{hidden_units}', ', '), per_block(last, '{distinct_channels}'), pulls))
    header = ('study', 'arm', 'hold-out top-1 (%)', 'routing carries: over a fixed random set (points)',
              "over the previous image's choice (points)", 'score spread, epoch 1',
              'score spread, last epoch', 'dead hidden units', 'channels routed', 'gradient / decay')
    return format_table(header, rows, markdown=True)


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}'


def verdict_arms(runs: List[Dict[str, Any]]) -> Dict[str, Tuple[List[float], List[float]]]:
    """ arm name: (top-1 per seed, points each image's own routing carries over the previous image's, per
    measured seed), the verdict runs' arms and the converged study's paper and random arms at c = 64."""
    arms: Dict[str, Tuple[List[float], List[float]]] = {}
    for run in runs:
        if run['study'].startswith('verdict'):
            top1, routing = arms.setdefault(run['label'], ([], []))
            top1.append(run['top1'])
            if carried(run, 'top1_neighbour') is not None:
                routing.append(carried(run, 'top1_neighbour'))
    if arms:
        for name, pattern in (('resnet18_mod (c=64, converged study)', 'resnet18_mod_seed*.json'),
                              ('resnet18_mod routing=random (c=64, converged study)',
                               'resnet18_mod@routing=random_seed*.json')):
            arms[name] = ([json.loads(p.read_text())['top1'] for p in sorted(CONVERGED_RUNS.glob(pattern))], [])
        arms[DISTILLED_ARM] = (
            [json.loads(p.read_text())['top1'] for p in sorted(DISTILLED_RUNS.glob('scratch_kd_seed*.json'))],
            [carried(dict(routing_ablation=json.loads(p.read_text())['routing_ablation']), 'top1_neighbour')
             for p in sorted(SELECTION.glob('scratch_kd_*_seed*.json'))])
    def order(name: str) -> Tuple[bool, ...]:
        """ c = 16, then c = 64; in each the paper's selector, static and random routing, the options, then the
        other studies' arms."""
        other_study = 'study)' in name
        option = not other_study and 'routing=' not in name and name not in ('resnet18_mod c=16', 'resnet18_mod')
        return 'c=16' not in name, other_study, option, 'routing=' in name
    return dict(sorted(arms.items(), key=lambda arm: order(arm[0])))


def difference(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float]:
    """ Mean of a minus mean of b, and its standard error sqrt(s_a^2/n_a + s_b^2/n_b)."""
    return (statistics.mean(a) - statistics.mean(b),
            math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b)))


def verdict(diff: float, error: float) -> str:
    if diff > RULE_STANDARD_ERRORS * error:
        return 'first ahead'
    if diff < -RULE_STANDARD_ERRORS * error:
        return 'second ahead'
    return 'not called'


def verdict_tables(arms: Dict[str, Tuple[List[float], List[float]]], pairs: Sequence[Tuple[str, str]]) -> str:
    rows = [(name, str(len(top1)), mean_std(top1), mean_std(routing)) for name, (top1, routing) in arms.items()]
    table = format_table(('arm', 'seeds', 'top-1 (%)', "each image's routing carries (points)"), rows,
                         markdown=True)
    comparisons = []
    for first, second in pairs:
        a, b = arms[first][0], arms[second][0]
        if len(a) > 1 and len(b) > 1:
            diff, error = difference(a, b)
            comparisons.append((first, second, f'{diff:+.2f}', f'{error:.2f}', verdict(diff, error)))
    for name, (_, routing) in arms.items():
        if len(routing) > 1:
            error = statistics.stdev(routing) / math.sqrt(len(routing))
            mean = statistics.mean(routing)
            comparisons.append((name + ": each image's routing", "the previous image's", f'{mean:+.2f}',
                                f'{error:.2f}', verdict(mean, error)))
    return table + '\n\n' + format_table(('first', 'second', 'difference (points)', 's.e.', 'verdict'),
                                         comparisons, markdown=True)


def verdict_pairs(arms: Dict[str, Any]) -> List[Tuple[str, str]]:
    """ The comparisons docs/selector_study.md fixed: at c = 16 the option and the paper's selector each against
    random routing and against each other; at c = 64 the option against the converged study's random arm; and at
    both c, learned routing against fixed (static) routing."""
    names = list(arms)
    options_16 = [n for n in names if n.startswith('resnet18_mod c=16 ') and 'routing=' not in n]
    options_64 = [n for n in names if n.startswith('resnet18_mod ') and 'c=16' not in n and 'routing=' not in n
                  and 'study)' not in n]  # not the arms of other studies
    paper_16, random_16 = 'resnet18_mod c=16', 'resnet18_mod c=16 routing=random'
    fixed_16 = 'resnet18_mod c=16 routing=fixed'
    paper_64 = 'resnet18_mod (c=64, converged study)'
    random_64, fixed_64 = 'resnet18_mod routing=random (c=64, converged study)', 'resnet18_mod routing=fixed'
    pairs = [pair for option in options_16 for pair in ((option, random_16), (option, paper_16), (option, fixed_16))]
    pairs += [(paper_16, random_16), (paper_16, fixed_16)]
    pairs += [pair for option in options_64 for pair in ((option, random_64), (option, fixed_64))]
    pairs += [(paper_64, fixed_64)]
    return [(a, b) for a, b in pairs if a in arms and b in arms]


def plot_verdict(arms: Dict[str, Tuple[List[float], List[float]]], path: Path) -> Optional[Path]:
    """ Per arm, each seed's top-1 and what each image's routing carries over the previous image's, with the mean
    and the sample std: the spread the verdict's rule weighs, seen."""
    plt = pyplot(path.name)
    if plt is None:
        return None
    names = list(arms)
    figure, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 1.6), sharey=True)
    panels = (('top-1 on CIFAR-10 test (%)', 0), ("each image's routing carries (points)", 1))
    for axis, (title, column) in zip(axes, panels):
        for row, name in enumerate(names):
            values = arms[name][column]
            if not values:
                continue
            axis.plot(values, [row] * len(values), 'o', color='tab:blue', alpha=0.5, markersize=5)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            axis.errorbar(statistics.mean(values), row, xerr=spread, fmt='|', color='black', markersize=14,
                          capsize=4)
        axis.set_xlabel(title)
        axis.grid(axis='x', alpha=0.3)
    axes[1].axvline(0.0, color='grey', linewidth=1)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    figure.suptitle('Selector verdict: seeds (dots), mean +- std (bars)')
    figure.tight_layout()
    return save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--collect', action='store_true', help='copy finished runs from output/')
    parser.add_argument('--plot', action='store_true', help=f'draw the verdict arms into {VERDICT_PLOT.name}')
    args = parser.parse_args()
    if args.collect:
        collect()
    runs = read_runs()
    print(cause_table(runs))
    arms = verdict_arms(runs)
    if arms:
        print('\n' + verdict_tables(arms, verdict_pairs(arms)))
        if args.plot:
            plot_verdict(arms, VERDICT_PLOT)


if __name__ == '__main__':
    main()
