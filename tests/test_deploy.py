""" Exports for the CPU runtimes: the graph of a MoD block, and the runtime benchmark with its parity check."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import onnx
import pytest
import timm

from timm_mod import MoDBlock
from timm_mod.benchmark import BenchSetting
from timm_mod.deploy import export_onnx

CONSOLE_SCRIPT = Path(sys.executable).parent / 'timm-mod'


@pytest.mark.parametrize('name, kwargs', [
    ('resnet50_mod', {}), ('mobilenetv2_mod', {}), ('resnet18_mod', {'fusion': 'last'}),
    ('resnet18_mod', {'fusion': 'original'})])
def test_exported_mod_blocks_are_what_one_would_write_by_hand(tmp_path: Path, name: str, kwargs) -> None:
    """ Per MoD block one TopK on the scores, one Gather of channel planes and one ScatterND of the fused planes:
    no transposes, no element-wise gathers, no tie-key arithmetic."""
    model = timm.create_model(name, **kwargs).eval()
    mod_blocks = sum(isinstance(m, MoDBlock) for m in model.modules())
    graph = onnx.load(str(export_onnx(model, tmp_path / 'm.onnx', (2, 3, 64, 64)))).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops['TopK'] == mod_blocks
    assert ops['ScatterND'] == mod_blocks and ops['Transpose'] == 0 and ops['ScatterElements'] == 0
    assert ops['GatherElements'] == 0, 'the scores come out of TopK; nothing gathers element-wise'
    assert ops['Gather'] >= mod_blocks and ops['Cast'] == 0


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
