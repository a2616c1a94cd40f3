""" `timm-mod quantize`: PyTorch, float32 and int8 exports scored side by side on held-out images, and its refusals."""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from timm_mod.experiments.runtimes import RUNTIMES, runtime_session
from conftest import CONSOLE_SCRIPT




def test_quantize_command_scores_float32_and_int8_beside_pytorch(tmp_path: Path) -> None:
    """ `timm-mod quantize` on a train.py-style checkpoint and the quickstart digits with the zeros missing from
    the held-out split: PyTorch's top-1 is the one computed here image by image with the training split's labels,
    the float32 export predicts PyTorch's class and routes PyTorch's channels for every image in both runtimes,
    the int8 rows cover every image, and the int8 file serves any batch size (the last batch has 41 images).
    Nothing is written to the system's temp folder, where a killed run's files would stay."""
    from timm.data import create_dataset, create_transform, resolve_data_config
    from timm_mod.experiments.quickstart import write_digits
    digits = write_digits(tmp_path / 'digits')
    for image in (digits / 'validation' / '0').iterdir():  # timm's reader alone would number '1' as class 0
        image.unlink()
    torch.manual_seed(0)  # one fixed model: the float32 rows must route exactly as PyTorch
    model = timm.create_model('resnet18_mod', num_classes=10).eval()
    args = argparse.Namespace(model='resnet18_mod', input_size=[3, 32, 32], crop_pct=1.0, interpolation='bicubic')
    torch.save({'state_dict': model.state_dict(), 'args': args}, tmp_path / 'last.pth.tar')
    system_temp = tmp_path / 'system_temp'
    system_temp.mkdir()
    command = [str(CONSOLE_SCRIPT), 'quantize', '--model', 'resnet18_mod', '--checkpoint',
               str(tmp_path / 'last.pth.tar'), '--data-dir', str(digits), '--calibration-images', '64', '-b', '50',
               '--threads', '1', '--output', str(tmp_path / 'int8')]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TMPDIR=str(system_temp)))
    seen_in_temp = set()
    while process.poll() is None:
        seen_in_temp |= {p.name for p in system_temp.rglob('*') if p.suffix == '.onnx' or 'quant' in p.name}
        time.sleep(0.005)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr[-2000:]
    assert not seen_in_temp, 'exports and quantizer files belong in the staging folder beside the output'
    assert stdout.splitlines()[0].split()[:2] == ['precision', 'runtime']
    assert sorted(p.name for p in (tmp_path / 'int8').iterdir()) == ['accuracy.json', 'model.onnx', 'model_int8.onnx']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['digits', 'int8', 'last.pth.tar', 'system_temp']

    dataset = create_dataset('', root=str(digits), split='validation')
    transform = create_transform(**resolve_data_config(vars(args), model=model))
    with torch.no_grad():  # a digit's class index is its folder's name
        correct = sum(int(model(transform(image)[None]).argmax(1)) == int(Path(dataset.filename(i)).parent.name)
                      for i, (image, _) in enumerate(dataset))
    records = json.loads((tmp_path / 'int8' / 'accuracy.json').read_text())
    rows = {(row['precision'], row['runtime']): row for row in records}
    assert set(rows) == {('float32', 'PyTorch')} | {(p, r) for p in ('float32', 'int8') for r in RUNTIMES}
    assert rows['float32', 'PyTorch']['top1'] == pytest.approx(100 * correct / len(dataset))
    for (precision, runtime), row in rows.items():
        assert row['images'] == len(dataset) == 359 - 36
        if precision == 'float32':  # the exports route every image through PyTorch's channels in every block
            assert row['agreement'] == row['same_routing'] == 100.0 and row['max_abs_diff'] < 1e-4, (runtime, row)
        else:
            assert 0.0 <= row['same_routing'] <= 100.0
    one = runtime_session(tmp_path / 'int8' / 'model_int8.onnx', 'onnxruntime', threads=1)
    assert np.asarray(one(np.zeros((1, 3, 32, 32), np.float32))).shape == (1, 10)

    # an existing folder, the user's or an earlier run's, is replaced only when asked, and never the data
    (tmp_path / 'int8' / 'NOTES.txt').write_text('mine')
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and 'exists and is not empty' in again.stderr, again.stderr
    assert (tmp_path / 'int8' / 'NOTES.txt').read_text() == 'mine'
    into_data = subprocess.run(command[:-1] + [str(digits), '--overwrite'], capture_output=True, text=True,
                               timeout=120)
    assert into_data.returncode != 0 and 'which this command reads' in into_data.stderr, into_data.stderr
    assert len(list(digits.glob('*/*/*.png'))) == 1797 - 36


def test_quantize_needs_onnxruntime_even_to_score_in_openvino_alone(tmp_path: Path) -> None:
    """ onnxruntime quantizes whatever runtimes score: without it, a one-line error before anything is exported."""
    output = tmp_path / 'q'
    script = ('import sys; sys.modules["onnxruntime"] = None\n'  # how Python reads a package that is not there
              'from timm_mod.commands.cli import main\n'
              f'main(["quantize", "--model", "resnet18_mod", "--runtime", "openvino", "--output", r"{output}"])')
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and 'Traceback' not in run.stderr, run.stderr
    assert 'onnxruntime needs onnxruntime: pip install "timm-mod[deploy]"' in run.stderr
    assert not (tmp_path / 'q').exists()
