""" Commands never write over what they read, and say which weights of a checkpoint they used: convert onto its
own checkpoint, publish onto the data folder training recorded or with the label names of another data set,
train.py's EMA weights in convert, selection and quantize."""
import argparse
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from timm_mod.experiments.publish import publish

from conftest import CONSOLE_SCRIPT, train_py_checkpoint, write_noise_folder


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_convert_never_replaces_the_checkpoint_it_reads(tmp_path: Path) -> None:
    checkpoint = tmp_path / 'resnet18.pth.tar'
    train_py_checkpoint(checkpoint, 'resnet18')
    before = checkpoint.read_bytes()
    for output in (checkpoint, tmp_path / '.' / 'resnet18.pth.tar'):
        run = _run('convert', '--model', 'resnet18_mod', '--checkpoint', str(checkpoint), '--output', str(output),
                   '--overwrite')
        assert run.returncode != 0 and 'is the --checkpoint it converts; name a new file' in run.stderr, run.stderr
    assert checkpoint.read_bytes() == before


def test_convert_takes_the_ema_weights_and_says_so(tmp_path: Path) -> None:
    checkpoint = tmp_path / 'resnet18.pth.tar'
    train_py_checkpoint(checkpoint, 'resnet18', ema=True)
    ema = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict_ema']
    run = _run('convert', '--model', 'resnet18_mod', '--checkpoint', str(checkpoint), '--ema',
               '--output', str(tmp_path / 'init.safetensors'))
    assert run.returncode == 0, run.stderr
    assert f'from the EMA weights (state_dict_ema) of {checkpoint}' in run.stdout
    converted = load_file(str(tmp_path / 'init.safetensors'))
    for key in ('conv1.weight', 'layer1.0.conv1.weight', 'layer2.0.bn1.running_mean', 'fc.bias'):
        assert torch.equal(converted[key], ema[key]), key


@pytest.mark.parametrize('command', ['selection', 'quantize'])
def test_selection_and_quantize_take_the_ema_weights_when_asked(digits: Path, tmp_path: Path, command: str) -> None:
    checkpoint = tmp_path / 'model.pth.tar'
    train_py_checkpoint(checkpoint, 'resnet18_mod', num_classes=10)  # no EMA weights in it
    run = _run(command, '--model', 'resnet18_mod', '--checkpoint', str(checkpoint), '--ema', '--data-dir',
               str(digits), '--output', str(tmp_path / 'out'))
    assert run.returncode != 0 and 'has no EMA weights (state_dict_ema); train with --model-ema, or leave out ' \
                                   '--ema' in run.stderr, run.stderr
    assert not (tmp_path / 'out').exists()
    train_py_checkpoint(checkpoint, 'resnet18_mod', num_classes=10, ema=True)
    if command == 'selection':
        run = _run(command, '--model', 'resnet18_mod', '--checkpoint', str(checkpoint), '--ema', '--data-dir',
                   str(digits), '--output', str(tmp_path / 'out'), '--max-per-class', '2')
        assert run.returncode == 0, run.stderr
        assert f'weights: the EMA weights (state_dict_ema) of {checkpoint}' in run.stderr


def test_publish_never_replaces_the_data_folder_training_recorded(tmp_path: Path) -> None:
    data = write_noise_folder(tmp_path / 'data', {'train': 2, 'validation': 1})
    checkpoint = tmp_path / 'model.pth.tar'
    train_py_checkpoint(checkpoint, 'resnet18_mod', num_classes=2)
    record = torch.load(checkpoint, map_location='cpu', weights_only=False)
    record['args'] = argparse.Namespace(**dict(vars(record['args']), data_dir=str(data)))
    torch.save(record, checkpoint)
    listing = sorted(p.name for p in data.rglob('*'))
    for out_dir in (data, data / 'train'):
        with pytest.raises(ValueError, match=rf'would replace or write into {data}, which this command reads'):
            publish('resnet18_mod', checkpoint, out_dir=out_dir, overwrite=True)
    assert sorted(p.name for p in data.rglob('*')) == listing


def test_publish_refuses_label_names_of_another_class_count(tmp_path: Path) -> None:
    data = write_noise_folder(tmp_path / 'data', {'train': 1})  # 2 classes
    train_py_checkpoint(tmp_path / 'model.pth.tar', 'resnet18_mod', num_classes=5)
    with pytest.raises(ValueError, match=rf'{data} has 2 classes, but the checkpoint\'s classifier has 5'):
        publish('resnet18_mod', tmp_path / 'model.pth.tar', out_dir=tmp_path / 'hub', data_dir=data)
    assert not (tmp_path / 'hub').exists()


def test_selection_names_what_bare_weights_cannot_show_and_takes_model_kwargs(digits: Path, tmp_path: Path) -> None:
    """ A bare weight file of a model trained with fusion='last', saved before weights recorded their arguments:
    selection says which arguments it assumed, and with --model-kwargs naming them builds the model as trained,
    without the warning. A file that records them needs neither."""
    model = timm.create_model('resnet18_mod', num_classes=10, fusion='last')
    save_file(model.state_dict(), str(tmp_path / 'recorded.safetensors'))
    run = _run('selection', '--model', 'resnet18_mod', '--checkpoint', str(tmp_path / 'recorded.safetensors'),
               '--data-dir', str(digits), '--max-per-class', '1', '--output', str(tmp_path / 'recorded'))
    assert run.returncode == 0 and 'cannot show' not in run.stderr, run.stderr
    save_file({name: tensor for name, tensor in model.state_dict().items() if not name.endswith('_extra_state')},
              str(tmp_path / 'w.safetensors'))
    common = ('selection', '--model', 'resnet18_mod', '--checkpoint', str(tmp_path / 'w.safetensors'), '--data-dir',
              str(digits), '--max-per-class', '1')
    run = _run(*common, '--output', str(tmp_path / 'assumed'))
    assert run.returncode == 0, run.stderr
    assert "its weights cannot show fusion, selector_act, score_scaling, selector_gain, selector_norm: assuming " \
           "fusion='first'" in run.stderr
    run = _run(*common, '--output', str(tmp_path / 'given'), '--model-kwargs', 'fusion=last', 'selector_act=relu',
               'score_scaling=multiply', 'selector_gain=1.0', 'selector_norm=False')
    assert run.returncode == 0 and 'cannot show' not in run.stderr, run.stderr
