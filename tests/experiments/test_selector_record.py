""" The selectors' record: what `selector_states` reports against a hand computation from each selector's input,
a dead unit counted dead and a constant selector's spread and routed channels exact; compare keeps it per epoch
in the runs' curves and plots it; `timm-mod selection` reports it."""
import json
import subprocess
from pathlib import Path

import pytest
import timm
import torch

from timm_mod.experiments.compare import ModelSpec, compare, write_comparison
from timm_mod.experiments.selection import selector_states
from timm_mod.layers import selector_blocks

from conftest import CONSOLE_SCRIPT, TINY_RECIPE


def _selector_inputs(model: torch.nn.Module, images: torch.Tensor) -> dict:
    inputs = {}
    handles = [block.selector.register_forward_hook(
        lambda module, args, output, name=name: inputs.__setitem__(name, args[0].detach().clone()))
        for name, block in selector_blocks(model).items()]
    with torch.no_grad():
        model.eval()(images)
    for handle in handles:
        handle.remove()
    return inputs


def test_selector_states_match_a_hand_computation() -> None:
    torch.manual_seed(0)
    model = timm.create_model('resnet18_mod', num_classes=2)
    blocks = selector_blocks(model)
    with torch.no_grad():
        blocks['layer2.1'].selector.fc1.weight[1] = -blocks['layer2.1'].selector.fc1.weight[1].abs()  # dead: the
        # pooled input is >= 0 (it follows a ReLU), so this unit's input is never positive
        blocks['layer3.1'].selector.fc2.weight.zero_()  # every score 0.5: top-k is the tie rule for every image
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model.train()
    torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 0, 1, 0, 1])).backward()
    states = selector_states(model, images)
    assert model.training, 'the training mode is put back'
    for name, x in _selector_inputs(model, images).items():
        selector, k = blocks[name].selector, blocks[name].k
        with torch.no_grad():
            hidden = x.mean((2, 3)) @ selector.fc1.weight.T
            scores = torch.sigmoid(torch.relu(hidden) @ selector.fc2.weight.T)
        spread = (scores.max(1).values - scores.min(1).values).mean()
        routed = torch.topk(scores, k, dim=1).indices
        weights = torch.cat([selector.fc1.weight.detach().flatten(), selector.fc2.weight.detach().flatten()])
        grads = torch.cat([selector.fc1.weight.grad.flatten(), selector.fc2.weight.grad.flatten()])
        state = states[name]
        assert (state.hidden_units, state.k, state.channels) == (hidden.shape[1], k, x.shape[1])
        assert state.dead_units == int(sum(bool((hidden[:, unit] <= 0).all()) for unit in range(hidden.shape[1])))
        assert state.score_spread == pytest.approx(float(spread), abs=1e-6)
        assert state.distinct_channels == len({int(c) for c in routed.flatten()})
        assert state.weight_norm == pytest.approx(float(weights.norm()), rel=1e-6)
        assert state.grad_norm == pytest.approx(float(grads.norm()), rel=1e-5)
    assert states['layer2.1'].dead_units >= 1
    assert states['layer3.1'].score_spread == 0.0 and states['layer3.1'].distinct_channels == blocks['layer3.1'].k
    assert selector_states(timm.create_model('resnet18_mod', num_classes=2), images)['layer1.1'].grad_norm is None


def test_compare_records_the_selectors_every_epoch_and_plots_them(image_folder: Path, tmp_path: Path) -> None:
    rows, results = compare([ModelSpec('resnet18_mod', seeds=(0,)), ModelSpec.parse('resnet18_mod:routing=random@0')],
                            dict(TINY_RECIPE), image_folder, tmp_path, measure_speed=False, progress=False)
    curve = json.loads((results[0].checkpoint_dir / 'result.json').read_text())['curve']
    assert [sorted(point['selectors']) for point in curve] == [['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']] * 2
    assert curve[0]['selectors'] != curve[1]['selectors'] and curve[1]['selectors']['layer4.1']['grad_norm'] > 0
    assert 'selectors' not in results[1].curve[0], 'random routing has no selector'
    assert tmp_path / 'selectors.png' in write_comparison(rows, tmp_path, results)


def test_the_selection_command_reports_the_selectors(digits: Path, tmp_path: Path) -> None:
    run = subprocess.run([str(CONSOLE_SCRIPT), 'selection', '--model', 'resnet18_mod', '--data-dir', str(digits),
                          '--output', str(tmp_path / 'out'), '--max-per-class', '30', '--num-classes', '10'],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert 'the selectors on the first 256 images (eval mode):' in run.stdout and 'dead hidden units' in run.stdout
    states = json.loads((tmp_path / 'out' / 'selection.json').read_text())['selector_states']
    assert sorted(states) == ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    assert all(0 < s['distinct_channels'] <= s['channels'] and s['grad_norm'] is None for s in states.values())
