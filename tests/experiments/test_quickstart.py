""" The quickstart: embedded digits data, the training path end to end on one epoch, checkpoints, errors."""
import re
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from timm.data import create_dataset, create_loader
from timm.models import load_checkpoint

from timm_mod.experiments.quickstart import (
    DIGITS_COUNT, format_results, quickstart_args_file, run_quickstart, write_digits)
from timm_mod.experiments.recipe import load_train_args
from timm_mod.utils.image_folder import check_image_folder
from conftest import CONSOLE_SCRIPT



@pytest.fixture(scope='module')
def quickstart_run(digits: Path, tmp_path_factory):
    return run_quickstart(data_dir=digits, output_dir=tmp_path_factory.mktemp('output'), epochs=1, progress=False)


def test_digits_are_an_image_folder_with_a_stratified_split(digits: Path) -> None:
    counts = {split: [len(list((digits / split / str(d)).glob('*.png'))) for d in range(10)]
              for split in ('train', 'validation')}
    assert sum(map(sum, counts.values())) == DIGITS_COUNT
    for train, validation in zip(counts['train'], counts['validation']):
        assert validation == round((train + validation) * 0.2)
    train_files = {p.name for p in (digits / 'train').glob('*/*.png')}
    assert train_files.isdisjoint(p.name for p in (digits / 'validation').glob('*/*.png'))


def test_digits_are_written_once_and_never_over_other_files(digits: Path, tmp_path: Path) -> None:
    stamp = (digits / 'train' / '0').stat().st_mtime_ns
    assert write_digits(digits) == digits
    assert (digits / 'train' / '0').stat().st_mtime_ns == stamp
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='not a complete copy of the digits'):
        write_digits(tmp_path)
    assert (tmp_path / 'notes.txt').read_text() == 'mine' and len(list(tmp_path.iterdir())) == 1


def test_folder_without_class_subfolders_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / 'train').mkdir()
    (tmp_path / 'train' / 'image.png').write_bytes(b'')
    with pytest.raises(ValueError, match='has no class subfolders'):
        check_image_folder(tmp_path, 'train')
    with pytest.raises(FileNotFoundError, match="No 'validation' split"):
        check_image_folder(tmp_path, 'validation')


def test_quickstart_trains_mod_model_and_its_timm_counterpart(quickstart_run) -> None:
    rows, (mod, baseline) = quickstart_run
    assert (mod.model_name, baseline.model_name) == ('resnet18_mod', 'resnet18')
    assert mod.params < baseline.params and mod.macs < baseline.macs
    assert 0.0 <= mod.top1 <= 100.0
    for result in (mod, baseline):
        assert result.checkpoint_dir.parts[-2:] == (result.model_name, 'seed0')
        assert {'last.pth.tar', 'model_best.pth.tar', 'args.yaml', 'result.json'} <= {
            p.name for p in result.checkpoint_dir.iterdir()}
    assert [row.top1_mean for row in rows] == [mod.top1, baseline.top1]
    assert rows[1].inference_speedup == rows[1].train_speedup == 1.0, 'speed-ups are against the baseline'
    assert rows[0].inference_speedup > 0 and rows[0].train_speedup > 0
    lines = format_results(rows).splitlines()
    assert lines[-1] == f'top-1: {mod.top1:.2f}'
    assert [line.split()[0] for line in lines[1:3]] == ['resnet18_mod', 'resnet18']


def _held_out_top1(model: torch.nn.Module, digits: Path) -> float:
    dataset = create_dataset('', root=str(digits), split='validation')
    loader = create_loader(dataset, input_size=(3, 32, 32), batch_size=128, interpolation='bicubic', crop_pct=1.0,
                           use_prefetcher=False, num_workers=0)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, targets in loader:
            correct += (model(images).argmax(1) == targets).sum().item()
    return 100.0 * correct / len(dataset)


def test_train_py_checkpoints_load_every_way_and_reproduce_the_result(quickstart_run, digits: Path) -> None:
    result = quickstart_run[1][0]
    checkpoint = result.checkpoint_dir / 'last.pth.tar'
    through_overlay = timm.create_model(
        'resnet18_mod', pretrained=True, num_classes=10,
        pretrained_cfg_overlay=dict(file=str(checkpoint), num_classes=10))
    through_validate_py = timm.create_model('resnet18_mod', num_classes=10)
    load_checkpoint(through_validate_py, str(checkpoint))  # what validate.py --checkpoint does
    for model in (through_overlay, through_validate_py):
        assert _held_out_top1(model, digits) == pytest.approx(result.top1)


def test_ema_weights_are_preferred_as_by_validate_py(quickstart_run, tmp_path: Path) -> None:
    state_dict = torch.load(quickstart_run[1][0].checkpoint_dir / 'last.pth.tar', weights_only=False)['state_dict']
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state_dict.items()}
    path = tmp_path / 'model_best.pth.tar'
    torch.save({'state_dict': state_dict, 'state_dict_ema': ema}, path)
    model = timm.create_model(
        'resnet18_mod', pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    torch.testing.assert_close(model.state_dict()['layer2.1.selector.fc1.weight'], ema['layer2.1.selector.fc1.weight'])


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / 'resnet18.pth.tar'
    torch.save({'state_dict': timm.create_model('resnet18', num_classes=10).state_dict()}, path)
    message = r"do not fit 'resnet18_mod': layer1.1 is a MoD block in the model, a dense block in the checkpoint"
    with pytest.raises(RuntimeError, match=message):
        timm.create_model('resnet18_mod', pretrained=True, num_classes=10,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=10))


def test_quickstart_command_output_and_unknown_model(digits: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [str(CONSOLE_SCRIPT), 'quickstart', '--epochs', '1', '--data-dir', str(digits), '--output', str(tmp_path),
         '--model', 'resnet18_mod'], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r'top-1: \d{1,3}\.\d\d', run.stdout.splitlines()[-1])
    assert 'epoch 1/1' in run.stderr, 'progress goes to stderr'
    run = subprocess.run([str(CONSOLE_SCRIPT), 'quickstart', '--model', 'resnet18_moe'], capture_output=True, text=True)
    assert run.returncode != 0 and "Unknown model 'resnet18_moe'" in run.stderr


def test_quickstart_recipe_is_the_packaged_file() -> None:
    args = load_train_args(quickstart_args_file())
    assert args['model'] == 'resnet18_mod' and args['num_classes'] == 10 and args['hflip'] == 0.0
