""" Exports for the CPU runtimes: the graph of a MoD block, the runtime benchmark with its parity check, and int8."""
import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
import torch.nn as nn
from onnx import numpy_helper

from timm_mod import MoDBlock
from timm_mod.benchmark import BenchSetting, profile_gap
from timm_mod.deploy import RUNTIMES, export_onnx, quantize_int8, routing_nodes, runtime_session

CONSOLE_SCRIPT = Path(sys.executable).parent / 'timm-mod'


@pytest.mark.parametrize('name, kwargs', [
    ('resnet50_mod', {}), ('mobilenetv2_mod', {}), ('resnet18_mod', {'fusion': 'last'}),
    ('resnet18_mod', {'fusion': 'original'}), ('mobilenetv2_mod', {'routing': 'random'})])
def test_exported_mod_blocks_are_what_one_would_write_by_hand(tmp_path: Path, name: str, kwargs) -> None:
    """ Per MoD block one TopK on the scores (none for random routing), one Gather of channel planes, and the
    fusion as one more Conv whose constant weight puts plane j on channel j (first) or C - k + j (last), or, for
    'original', one ScatterND at the gathered channels: no transposes, no element-wise gathers, no tie-key
    arithmetic, no shape arithmetic building the weight at run time."""
    model = timm.create_model(name, **kwargs).eval()
    blocks = [m for m in model.modules() if isinstance(m, MoDBlock)]
    graph = onnx.load(str(export_onnx(model, tmp_path / 'm.onnx', (2, 3, 64, 64)))).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops['TopK'] == (0 if kwargs.get('routing') == 'random' else len(blocks))
    assert ops['Transpose'] == ops['ScatterElements'] == ops['GatherElements'] == ops['Cast'] == 0
    assert ops['EyeLike'] == ops['Pad'] == ops['Shape'] == ops['ConstantOfShape'] == 0
    assert ops['Gather'] >= len(blocks)
    torch_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    fusion = kwargs.get('fusion', 'first')
    if fusion == 'original':
        assert ops['ScatterND'] == len(blocks) and ops['Conv'] == torch_convs
        return
    assert ops['ScatterND'] == 0 and ops['Conv'] == torch_convs + len(blocks)
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv_weights = [weights[node.input[1]] for node in graph.node if node.op_type == 'Conv']
    placements = [w for w in conv_weights if _is_one_hot(w)]
    assert len(placements) == len(blocks)
    for found, block in zip(sorted(placements, key=np.shape), sorted(blocks, key=lambda b: (b.in_channels, b.k))):
        np.testing.assert_array_equal(found, _placement(block.in_channels, block.k, fusion == 'last'))


def _is_one_hot(weight: np.ndarray) -> bool:
    return weight.ndim == 4 and weight.shape[2:] == (1, 1) and bool(np.isin(weight, (0.0, 1.0)).all()) \
        and bool((weight.sum(0) == 1).all())


def _placement(channels: int, k: int, into_last: bool) -> np.ndarray:
    """ The fusion's weight written out by hand: output channel `offset + j` takes plane j."""
    weight = np.zeros((channels, k, 1, 1), np.float32)
    offset = channels - k if into_last else 0
    for j in range(k):
        weight[offset + j, j] = 1.0
    return weight


def test_runtime_benchmark_command_exports_checks_parity_and_times(tmp_path: Path) -> None:
    """ The whole command in its own process, as users run it (OpenVINO's thread pool in a pytest process that
    later forks DataLoader workers crashed the quickstart test)."""
    command = [str(CONSOLE_SCRIPT), 'benchmark', '--models', 'resnet18_mod', '--batch-size', '1', '--threads', '1',
               '--mode', 'onnxruntime', 'openvino', '--rounds', '1', '--min-run-time', '0.01',
               '--output', str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'max abs diff vs PyTorch' in run.stdout.splitlines()[1]
    rows = json.loads((tmp_path / 'benchmark.json').read_text())
    assert [r['setting'] for r in rows] == ['b1 1thr inference onnxruntime', 'b1 1thr inference openvino']
    for row in rows:
        assert row['mod_ms'] > 0 and row['baseline_ms'] > 0 and row['identity_ms'] > 0
        assert row['max_abs_diff'] is not None and row['max_abs_diff'] < 1e-3


@pytest.mark.parametrize('kwargs, message', [
    (dict(mode='onnxruntime', task='train'), 'times CPU inference of an ONNX export'),
    (dict(mode='openvino', channels_last=True), 'without --channels-last'),
    (dict(mode='onnxruntime', bf16=True), 'onnxruntime has no bf16 CPU execution'),
    (dict(mode='eager', int8=True), '--int8 quantizes the ONNX exports'),
    (dict(mode='openvino', int8=True, bf16=True), 'without --bf16'),
])
def test_runtime_settings_that_cannot_be_timed_are_refused(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchSetting(**kwargs)


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
def test_runtime_profile_names_the_operators_only_mod_runs(runtime: str) -> None:
    """ The runtimes' own profilers, by operator type of the graph they run: TopK and ReduceSum only in the MoD
    model, the convolutions in both, sorted by the MoD model's extra time."""
    gaps = profile_gap('resnet18_mod', BenchSetting(batch_size=1, threads=1, mode=runtime), steps=1, top=1000)
    by_name = {gap.operator: gap for gap in gaps}
    for operator in ('TopK', 'ReduceSum'):
        assert by_name[operator].mod_ms > 0 and by_name[operator].identity_ms == 0, operator
    assert by_name['Conv' if runtime == 'onnxruntime' else 'Convolution'].identity_ms > 0
    assert [gap.extra_ms for gap in gaps] == sorted((gap.extra_ms for gap in gaps), reverse=True)


def test_routing_nodes_are_the_selectors_from_pooling_to_top_k(tmp_path: Path) -> None:
    """ The nodes int8 quantization leaves in float32: each selector's pooling, two linears, ReLU and sigmoid,
    found from the graph alone and checked against the selector weights the exporter named."""
    model = timm.create_model('resnet18_mod').eval()
    graph = onnx.load(str(export_onnx(model, tmp_path / 'm.onnx', (2, 3, 64, 64))))
    routing = set(routing_nodes(graph))
    nodes = {node.name: node for node in graph.graph.node}
    producers = {output: node.name for node in graph.graph.node for output in node.output}
    selector_weights = {t.name for t in graph.graph.initializer if '.selector.' in t.name}
    assert len(selector_weights) == 2 * sum(isinstance(m, MoDBlock) for m in model.modules())
    assert {name for name, node in nodes.items() if set(node.input) & selector_weights} <= routing
    assert all(producers[node.input[0]] in routing for node in nodes.values() if node.op_type == 'TopK')
    ops = Counter(nodes[name].op_type for name in routing)
    assert ops['ReduceSum'] == ops['Sigmoid'] == 4 and not ops.keys() & {'Conv', 'Gather', 'TopK', 'Add'}


def test_int8_export_quantizes_the_convolutions_and_keeps_routing_float(tmp_path: Path) -> None:
    """ QDQ int8: every Conv reads int8 weights through DequantizeLinear, no routing node reads a dequantized
    tensor, and the file runs in both runtimes at the batch it was calibrated on and at another (dynamic batch)."""
    model = timm.create_model('resnet18_mod').eval()
    fp32 = export_onnx(model, tmp_path / 'm.onnx', (2, 3, 64, 64), dynamic_batch=True)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((2, 3, 64, 64), dtype=np.float32) for _ in range(2)]
    int8 = onnx.load(str(quantize_int8(fp32, tmp_path / 'm_int8.onnx', calibration)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.onnx', 'm_int8.onnx']  # no calibration litter
    producers = {output: node for node in int8.graph.node for output in node.output}
    initializers = {t.name: t for t in int8.graph.initializer}
    convs = [node for node in int8.graph.node if node.op_type == 'Conv']
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 4  # + the one-hot fusions
    for node in convs:
        weight = producers[node.input[1]]
        assert weight.op_type == 'DequantizeLinear'
        assert initializers[weight.input[0]].data_type == onnx.TensorProto.INT8
    int8_nodes = {node.name: node for node in int8.graph.node}
    for name in routing_nodes(onnx.load(str(fp32))):
        node = int8_nodes[name]
        read = node.input[1:] if node.op_type == 'ReduceSum' else node.input  # the pooling reads the int8 map
        assert all(producers.get(i) is None or producers[i].op_type != 'DequantizeLinear' for i in read), name
    for runtime in RUNTIMES:
        run = runtime_session(tmp_path / 'm_int8.onnx', runtime, threads=1)
        for batch in (2, 3):
            assert np.asarray(run(rng.standard_normal((batch, 3, 64, 64), dtype=np.float32))).shape == (batch, 1000)


def test_quantize_command_scores_float32_and_int8_beside_pytorch(tmp_path: Path) -> None:
    """ `timm-mod quantize` on a train.py-style checkpoint and the quickstart digits with the zeros missing from
    the held-out split: PyTorch's top-1 is the one computed here image by image with the training split's labels,
    the float32 export predicts PyTorch's class and routes PyTorch's channels for every image in both runtimes,
    the int8 rows cover every image, and the int8 file serves any batch size (the last batch has 41 images).
    Nothing is written to the system's temp folder, where a killed run's files would stay."""
    from timm.data import create_dataset, create_transform, resolve_data_config
    from timm_mod.quickstart import write_digits
    digits = write_digits(tmp_path / 'digits')
    for image in (digits / 'validation' / '0').iterdir():  # timm's reader alone would number '1' as class 0
        image.unlink()
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
              'from timm_mod.cli import main\n'
              f'main(["quantize", "--model", "resnet18_mod", "--runtime", "openvino", "--output", r"{output}"])')
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and 'Traceback' not in run.stderr, run.stderr
    assert 'onnxruntime needs onnxruntime: pip install "timm-mod[deploy]"' in run.stderr
    assert not (tmp_path / 'q').exists()


def test_runtime_benchmark_times_int8_exports(tmp_path: Path) -> None:
    command = [str(CONSOLE_SCRIPT), 'benchmark', '--models', 'resnet18_mod', '--batch-size', '1', '--threads', '1',
               '--mode', 'onnxruntime', '--int8', '--rounds', '1', '--min-run-time', '0.01', '--output', str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((tmp_path / 'benchmark.json').read_text())
    assert [r['setting'] for r in rows] == ['b1 1thr inference onnxruntime int8']
    assert rows[0]['mod_ms'] > 0 and rows[0]['baseline_ms'] > 0 and rows[0]['identity_ms'] > 0


def test_int8_ranges_cover_every_calibration_batch(tmp_path: Path) -> None:
    """ The input's quantization range spans all calibration batches: the first of five is ten times wider than the
    rest, and the input scale must say so (onnxruntime's CalibMaxIntermediateOutputs drops the batches it flushes)."""
    model = timm.create_model('resnet18_mod').eval()
    fp32 = export_onnx(model, tmp_path / 'm.onnx', (2, 3, 32, 32))
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32) * (10.0 if i == 0 else 1.0) for i in range(5)]
    int8 = onnx.load(str(quantize_int8(fp32, tmp_path / 'm_int8.onnx', batches)))
    quantize_input = next(n for n in int8.graph.node if n.op_type == 'QuantizeLinear' and n.input[0] == 'x')
    scale = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}[quantize_input.input[1]]
    span = max(b.max() for b in batches) - min(b.min() for b in batches)
    assert float(scale) == pytest.approx(span / 255, rel=0.01)
