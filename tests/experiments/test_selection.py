""" Channel-selection statistics: exact counts under a forced selector, the command, and its errors."""
import argparse
import csv
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timm_mod.experiments.selection import count_selections, summarize, write_selection
from conftest import CONSOLE_SCRIPT

FORCED = [5, 30, 1, 17, 9, 22, 12, 3]  # layer3.1 of resnet18_mod: C=256, k=4; layer4.1: C=512, k=8


@pytest.fixture(scope='module')
def animal_folder(tmp_path_factory) -> Path:
    """ A real ImageFolder split: 3 classes of 4, 2 and 3 random RGB images."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for name, count in (('cat', 4), ('dog', 2), ('owl', 3)):
        (root / 'validation' / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / 'validation' / name / f'{index}.png')
    return root


def forced_model() -> torch.nn.Module:
    """ resnet18_mod whose layer4.1 selector always ranks the FORCED channels first, in that order."""
    model = timm.create_model('resnet18_mod', num_classes=3).eval()
    selector = model.layer4[1].selector
    with torch.no_grad():
        selector.fc1.weight.zero_()
        selector.fc1.weight[0].fill_(1.0)  # hidden 0 = sum of the (post-ReLU, positive) channel means
        selector.fc2.weight.fill_(-1.0)
        selector.fc2.weight[FORCED, 0] = torch.linspace(3.0, 2.0, len(FORCED))
    return model


def test_counts_are_exact_under_a_forced_selector(animal_folder: Path) -> None:
    selection = count_selections(forced_model(), animal_folder, 'validation', progress=False)
    assert selection.class_names == ['cat', 'dog', 'owl'] and selection.samples.tolist() == [4, 2, 3]
    counts = selection.counts['layer4.1']
    expected = torch.zeros(3, 512, dtype=torch.long)
    expected[:, FORCED] = torch.tensor([4, 2, 3])[:, None]
    assert torch.equal(counts, expected)
    for name, block_counts in selection.counts.items():
        assert block_counts.sum(1).tolist() == [n * selection.k[name] for n in (4, 2, 3)]
    percent = selection.percent('layer4.1')
    assert torch.allclose(percent[FORCED], torch.full((8,), 12.5, dtype=torch.double)) and percent.sum() == 100
    forced = next(s for s in summarize(selection) if s.block == 'layer4.1')
    assert (forced.channels, forced.k, forced.ever_selected) == (512, 8, 8)
    assert forced.entropy_bits == pytest.approx(3.0) and forced.max_entropy_bits == pytest.approx(9.0)
    assert forced.class_overlap == 1.0


def test_class_subset_and_cap(animal_folder: Path) -> None:
    selection = count_selections(
        forced_model(), animal_folder, 'validation', classes=['cat', 'owl'], max_per_class=2, progress=False)
    assert selection.samples.tolist() == [2, 0, 2]
    assert selection.counts['layer4.1'][:, FORCED[0]].tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match=r"Unknown classes \['cow'\]"):
        count_selections(forced_model(), animal_folder, 'validation', classes=['cow'], progress=False)


def test_outputs_are_readable(animal_folder: Path, tmp_path: Path) -> None:
    selection = count_selections(forced_model(), animal_folder, 'validation', progress=False)
    paths = write_selection(selection, tmp_path, plot_classes=['dog'])
    with open(tmp_path / 'selection.csv', newline='') as f:
        rows = [r for r in csv.DictReader(f) if r['block'] == 'layer4.1' and r['class'] == 'dog']
    assert len(rows) == 512 and {int(r['channel']) for r in rows if int(r['count'])} == set(FORCED)
    report = json.loads((tmp_path / 'selection.json').read_text())
    assert report['blocks']['layer4.1']['k'] == 8 and report['samples'] == [4, 2, 3]
    pngs = [p for p in paths if p.suffix == '.png']
    assert len(pngs) == 4 and all(p.read_bytes()[:4] == b'\x89PNG' for p in pngs)


def test_entropy_of_a_uniform_selection() -> None:
    from timm_mod.experiments.selection import SelectionCounts
    selection = SelectionCounts(['a', 'b'], torch.tensor([1, 1]), {'x': torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])},
                                {'x': 2})
    (summary,) = summarize(selection)
    assert summary.entropy_bits == pytest.approx(2.0) and summary.class_overlap == 0.0
    assert math.isclose(summary.max_entropy_bits, 2.0)


def test_model_without_mod_blocks_is_a_clear_error(animal_folder: Path) -> None:
    with pytest.raises(ValueError, match='has no MoD block with a channel selector'):
        count_selections(timm.create_model('resnet18', num_classes=3), animal_folder, 'validation', progress=False)


def test_command_on_quickstart_data_and_mismatched_checkpoint(tmp_path: Path) -> None:
    from timm_mod.experiments.quickstart import write_digits
    digits = write_digits(tmp_path / 'digits')
    checkpoint = tmp_path / 'model.pth.tar'
    model = timm.create_model('resnet18_mod', num_classes=10)
    args = argparse.Namespace(model='resnet18_mod', input_size=[3, 32, 32], crop_pct=1.0, interpolation='bicubic')
    torch.save({'state_dict': model.state_dict(), 'args': args}, checkpoint)
    run = subprocess.run(
        [str(CONSOLE_SCRIPT), 'selection', '--model', 'resnet18_mod', '--checkpoint', str(checkpoint),
         '--data-dir', str(digits), '--max-per-class', '3', '--classes', '0', '1', '7',
         '--output', str(tmp_path / 'out')],
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0].split()[:3] == ['block', 'C', 'k']
    counts, states, ablation = run.stdout.split('\n\n')
    assert [line.split()[0] for line in counts.splitlines()[1:]] == ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    assert states.splitlines()[0] == 'the selectors on the first 256 images (eval mode):'
    assert [line.split()[0] for line in states.splitlines()[2:]] == ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    report = json.loads((tmp_path / 'out' / 'selection.json').read_text())['routing_ablation']
    assert report['images'] == 9 and ablation.strip() == (
        f"what the routing carries, on the 9 images counted: top-1 {report['top1_learned']:.2f} with the learned "
        f"top k, {report['top1_fixed_random']:.2f} with a fixed random set of k channels per block (seed 0): "
        f"{report['top1_learned'] - report['top1_fixed_random']:+.2f} points; {report['top1_neighbour']:.2f} with "
        f"each image routed as the previous image of its batch: "
        f"{report['top1_learned'] - report['top1_neighbour']:+.2f} points")
    assert (tmp_path / 'out' / 'selection_layer3_1.png').read_bytes()[:4] == b'\x89PNG'

    other = tmp_path / 'other.pth.tar'
    torch.save({'state_dict': timm.create_model('resnet18_mod', c=32, num_classes=10).state_dict()}, other)
    run = subprocess.run(
        [str(CONSOLE_SCRIPT), 'selection', '--model', 'resnet18_mod', '--checkpoint', str(other),
         '--data-dir', str(digits), '--output', str(tmp_path / 'out2')], capture_output=True, text=True)
    assert run.returncode != 0 and 'another c' in run.stderr


def output_with_hooks(model: torch.nn.Module, x: torch.Tensor, hooks: dict) -> torch.Tensor:
    """ model(x) with each module's forward hook of `hooks` (module: hook) in place, removed afterwards."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        return model(x)
    finally:
        for handle in handles:
            handle.remove()


def test_fixed_random_routing_is_the_block_written_out_with_a_fixed_channel_set() -> None:
    """ The routing ablation: each MoD block processes the k channels drawn from the seed (torch.randperm, blocks
    in model order), scaled by its selector's scores for them and added to the first k channels, for every image;
    afterwards the blocks route by their selectors again."""
    from timm_mod.experiments.selection import fixed_random_routing
    from timm_mod.layers import MoDBlock
    torch.manual_seed(0)
    model = timm.create_model('resnet18_mod', num_classes=3, c=16).eval()
    x = torch.randn(4, 3, 32, 32)
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, MoDBlock)}
    generator = torch.Generator().manual_seed(7)
    expected_channels = {name: torch.randperm(b.in_channels, generator=generator)[:b.k] for name, b in blocks.items()}

    def written_out(block: MoDBlock, channels: torch.Tensor):
        def hook(_module, inputs, _output):
            (features,) = inputs
            scores = block.selector(features)[:, channels]
            out = features.clone()
            out[:, :block.k] += scores[:, :, None, None] * block.block(features[:, channels])
            return out
        return hook

    with torch.no_grad():
        learned = model(x)
        with fixed_random_routing(model, seed=7) as drawn:
            ablated = model(x)
        assert {name: c.tolist() for name, c in drawn.items()} == {
            name: c.tolist() for name, c in expected_channels.items()}
        reference = output_with_hooks(
            model, x, {b: written_out(b, expected_channels[name]) for name, b in blocks.items()})
        torch.testing.assert_close(ablated, reference)
        assert not torch.allclose(ablated, learned)
        torch.testing.assert_close(model(x), learned, rtol=0, atol=0)


def test_neighbour_routing_is_the_block_written_out_with_the_previous_images_choice() -> None:
    """ Per-image ablation: image b of a batch routes the top k (by score, ties to the lower channel) that its
    block's selector gives image b - 1 (image 0: the last image's), scaled by its own scores for those channels;
    afterwards the blocks route by their selectors again."""
    from timm_mod.experiments.selection import neighbour_routing
    from timm_mod.layers import MoDBlock
    torch.manual_seed(0)
    model = timm.create_model('resnet18_mod', num_classes=3, c=16).eval()
    x = torch.randn(4, 3, 32, 32)
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, MoDBlock)}

    def written_out(block: MoDBlock):
        def hook(_module, inputs, _output):
            (features,) = inputs
            scores = block.selector(features)
            out = features.clone()
            for b in range(features.shape[0]):
                other = (b - 1) % features.shape[0]
                channels = scores[other].argsort(descending=True, stable=True)[:block.k]
                update = block.block(features[b:b + 1, channels])
                out[b, :block.k] += scores[b, channels][:, None, None] * update[0]
            return out
        return hook

    with torch.no_grad():
        learned = model(x)
        with neighbour_routing(model):
            ablated = model(x)
        reference = output_with_hooks(model, x, {b: written_out(b) for b in blocks.values()})
        torch.testing.assert_close(ablated, reference)
        assert not torch.allclose(ablated, learned)
        torch.testing.assert_close(model(x), learned, rtol=0, atol=0)
        alone = model(x[:1])
        with neighbour_routing(model):  # one image routes its own choice
            torch.testing.assert_close(model(x[:1]), alone, rtol=0, atol=0)


def test_selection_reports_the_accuracy_the_routing_carries(animal_folder: Path) -> None:
    """ top-1 with the learned top k and with the fixed random sets, over the images counted, against the same
    predictions made directly; counting is unchanged by the extra pass; no number for a model of other classes."""
    from timm_mod.experiments.selection import ABLATION_SEED, fixed_random_routing, neighbour_routing
    model = forced_model()
    selection = count_selections(model, animal_folder, 'validation', progress=False)
    dataset = timm.data.create_dataset('', root=str(animal_folder), split='validation',
                                       transform=timm.data.create_transform(**timm.data.resolve_data_config({},
                                                                                                           model=model)))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    targets = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        learned = (model(images).argmax(1) == targets).float().mean() * 100
        with fixed_random_routing(model, ABLATION_SEED):
            ablated = (model(images).argmax(1) == targets).float().mean() * 100
        batches = torch.utils.data.DataLoader(list(zip(images, targets)), batch_size=32)  # selection's batches
        with neighbour_routing(model):
            neighbour = sum(int((model(b).argmax(1) == t).sum()) for b, t in batches) / len(targets) * 100
    report = selection.ablation
    assert (report.images, report.seed) == (9, ABLATION_SEED)
    assert report.top1_learned == pytest.approx(float(learned)) and report.top1_fixed_random == pytest.approx(
        float(ablated))
    assert report.carried == pytest.approx(float(learned - ablated))
    assert report.top1_neighbour == pytest.approx(neighbour)
    assert report.carried_per_image == pytest.approx(float(learned) - neighbour, abs=1e-4)
    other_classes = timm.create_model('resnet18_mod', num_classes=5).eval()
    assert count_selections(other_classes, animal_folder, 'validation', progress=False).ablation is None
