""" Exports for the CPU runtimes: the graph of a MoD block, and the runtime benchmark with its parity check."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch.nn as nn
from onnx import numpy_helper

from timm_mod import MoDBlock
from timm_mod.benchmark import BenchSetting, profile_gap
from timm_mod.deploy import export_onnx

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
