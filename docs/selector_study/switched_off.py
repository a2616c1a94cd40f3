""" Whether training switches the selectors off, or their input drifts away from them (docs/selector_study.md).

For each finished run given, on 250 images of the data folder's validation split (every 20th, timm's eval
transform with the run's preprocessing), per MoD block with a selector:
- `on_trained`: the share of (hidden unit, image) pairs whose pre-activation is positive with the trained weights;
- `on_initial`: the same share on the same trained features with the selector's *initial* weights (the model
  rebuilt from the run's seed as `timm-mod compare` built it): high here and low above means training moved the
  weights to switch the units off, low in both that the input drifted away from them;
- `cosine_to_initial`: cosine similarity of the trained first-layer weights with the initial ones;
- `common_mode_share`: mean |unit weight sum x mean input level| over mean |pre-activation|: how much of a unit's
  input is the level all (non-negative, pooled) channels share rather than their pattern.
Prints a Markdown table and writes switched_off.json beside this script.

    python docs/selector_study/switched_off.py output/cifar10_holdout \
        output/selector_causes/c16/*/seed0 output/selector_causes/c64/*/seed0
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import timm
import torch
from timm.data import resolve_data_config
from timm.utils import random_seed

from timm_mod.layers import selector_blocks
from timm_mod.models import model_from_checkpoint
from timm_mod.utils.image_folder import eval_image_folder
from timm_mod.utils.output import write_text_whole
from timm_mod.utils.tables import format_table

HERE = Path(__file__).resolve().parent
EVERY = 20
MEASURES = {'on_trained': 'units on, trained weights', 'on_initial': 'units on, initial weights',
            'cosine_to_initial': 'cos(trained, initial)', 'common_mode_share': 'common-mode share'}


def measure(run_dir: Path, data_dir: Path) -> Dict[str, Dict[str, float]]:
    checkpoint = run_dir / 'last.pth.tar'
    model, weights, model_kwargs = model_from_checkpoint('resnet18_mod', checkpoint)
    random_seed(weights.train_args['seed'])  # as compare builds the run's model, so its initial weights
    initial = selector_blocks(timm.create_model('resnet18_mod', num_classes=model.num_classes, **model_kwargs))
    dataset = eval_image_folder(data_dir, 'validation', resolve_data_config(weights.train_args, model=model))
    images = torch.stack([dataset[i][0] for i in range(0, len(dataset), EVERY)])
    found: Dict[str, Dict[str, float]] = {}

    def hook(name: str):
        def record(selector: torch.nn.Module, inputs, _scores) -> None:
            pooled = inputs[0].mean((2, 3))
            if selector.normalize_input:
                pooled = torch.nn.functional.layer_norm(pooled, pooled.shape[1:])
            trained, start = selector.fc1.weight, initial[name].selector.fc1.weight
            pre_activation = pooled @ trained.T
            common = (trained.sum(1) * pooled.mean(1, keepdim=True)).abs().mean()
            found[name] = dict(
                on_trained=(pre_activation > 0).float().mean().item(),
                on_initial=((pooled @ start.T) > 0).float().mean().item(),
                cosine_to_initial=torch.nn.functional.cosine_similarity(
                    trained.flatten(), start.flatten(), dim=0).item(),
                common_mode_share=(common / pre_activation.abs().mean()).item())
        return record

    handles = [block.selector.register_forward_hook(hook(name)) for name, block in selector_blocks(model).items()]
    with torch.no_grad():
        model.eval()(images)
    for handle in handles:
        handle.remove()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('data_dir', type=Path, help='ImageFolder root whose validation/ split is scored')
    parser.add_argument('runs', type=Path, nargs='+', help='finished run folders (seedN/ with last.pth.tar)')
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    rows: List[tuple] = []
    for run in args.runs:
        if not (run / 'result.json').exists() or 'routing=random' in run.parent.name:
            continue
        name = f'{run.parent.parent.name}/{run.parent.name}'
        print(f'measuring {name}', file=sys.stderr, flush=True)
        results[name] = measure(run, args.data_dir)
        for value, label in MEASURES.items():
            rows.append((name, label, ' / '.join(f'{block[value]:.2f}' for block in results[name].values())))
    write_text_whole(HERE / 'switched_off.json', json.dumps(results, indent=1) + '\n')
    print(format_table(('run', 'measure', 'layer1.1 / 2.1 / 3.1 / 4.1'), rows, markdown=True))


if __name__ == '__main__':
    main()
