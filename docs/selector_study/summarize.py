""" The selector study's cause table (docs/selector_study.md), from the per-run results kept beside this script.

`--collect` first copies what run_causes.sh finished under output/selector_causes/ into runs/ (each run's
result.json with its learning curve and per-epoch selector record) and each study's selectors.png. Then it prints,
as Markdown, one row per arm: hold-out top-1, what the routing carries (top-1 with the learned top k minus top-1
with a fixed random set of k channels, from selection/, written by `timm-mod selection`), and per MoD block the
score spread (max - min over channels, mean over images) after the first and the last epoch, dead hidden units,
how many distinct channels the block routes over the probe images, and how the selector's gradient compares with
its weight decay after the last epoch's last step: |gradient| / (weight decay x |weights|), the ratio of the two
pulls on its weights in one SGD step (one batch's gradient, so a rough figure; '-' without decay).

    python docs/selector_study/summarize.py --collect
"""
import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

from timm_mod.utils.tables import format_table

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parents[1] / 'output' / 'selector_causes'
RUNS = HERE / 'runs'
SELECTION = HERE / 'selection'
STUDIES = ('c16', 'c64', 'c16_lr_quarter')  # run_causes.sh's study folders


def run_file_name(study: str, label: str) -> str:
    """ A run's file name in runs/ and selection/ (as run_causes.sh names the latter): study, then the label's
    options, each character outside [A-Za-z0-9_.=-] replaced by '_'."""
    keep = set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.=-')
    return f'{study}_' + ''.join(ch if ch in keep else '_' for ch in label) + '.json'


def collect() -> None:
    RUNS.mkdir(exist_ok=True)
    for study in STUDIES:
        for result in sorted((OUTPUT / study).glob('*/seed0/result.json')):
            run_folder = result.parent.parent.name
            shutil.copyfile(result, RUNS / run_file_name(study, run_folder))
        if (OUTPUT / study / 'selectors.png').exists():
            shutil.copyfile(OUTPUT / study / 'selectors.png', HERE / f'{study}_selectors.png')


def read_runs() -> List[Dict[str, Any]]:
    """ Every collected run, with its routing ablation where `timm-mod selection` was run on it."""
    runs = []
    for path in sorted(RUNS.glob('*.json')):
        run = json.loads(path.read_text())
        selection = SELECTION / path.name
        run['routing_ablation'] = json.loads(selection.read_text())['routing_ablation'] if selection.exists() else None
        run['study'] = path.name.split('_resnet18_mod')[0]
        runs.append(run)
    return runs


def per_block(states: Dict[str, Dict[str, Any]], pattern: str, separator: str = ' / ') -> str:
    """ One value per MoD block in model order, `pattern` formatted with the block's recorded state."""
    return separator.join(pattern.format(**state) for state in states.values())


def cause_table(runs: List[Dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        first, last = run['curve'][0].get('selectors'), run['curve'][-1].get('selectors')
        ablation = run['routing_ablation']
        carried = '-' if ablation is None else f"{ablation['top1_learned'] - ablation['top1_fixed_random']:+.2f}"
        if first is None:  # random routing: no selector to record
            rows.append((run['study'], run['label'], f"{run['top1']:.2f}", carried, '-', '-', '-', '-', '-'))
            continue
        decay = run['identity']['recipe']['weight_decay'] if run['model_kwargs'].get('selector_decay', True) else 0
        pulls = per_block({name: dict(ratio=state['grad_norm'] / (decay * state['weight_norm']))
                           for name, state in last.items()}, '{ratio:.1f}') if decay else '-'
        rows.append((
            run['study'], run['label'], f"{run['top1']:.2f}", carried,
            per_block(first, '{score_spread:.3f}'), per_block(last, '{score_spread:.3f}'),
            per_block(last, '{dead_units}/{hidden_units}', ', '), per_block(last, '{distinct_channels}'), pulls))
    header = ('study', 'arm', 'hold-out top-1 (%)', 'routing carries (points)', 'score spread, epoch 1',
              'score spread, last epoch', 'dead hidden units', 'channels routed',
              'gradient / decay')
    return format_table(header, rows, markdown=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--collect', action='store_true', help='copy finished runs from output/selector_causes/')
    args = parser.parse_args()
    if args.collect:
        collect()
    print(cause_table(read_runs()))


if __name__ == '__main__':
    main()
