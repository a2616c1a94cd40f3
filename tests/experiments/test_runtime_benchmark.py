""" `timm-mod benchmark` in onnxruntime and OpenVINO: exports timed side by side with parity checked, int8,
profiles, and settings refused."""
import json
import subprocess
from pathlib import Path

import pytest

from timm_mod.experiments.benchmark import BenchSetting
from timm_mod.experiments.profiling import profile_gap
from conftest import CONSOLE_SCRIPT




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


def test_runtime_benchmark_times_int8_exports(tmp_path: Path) -> None:
    command = [str(CONSOLE_SCRIPT), 'benchmark', '--models', 'resnet18_mod', '--batch-size', '1', '--threads', '1',
               '--mode', 'onnxruntime', '--int8', '--rounds', '1', '--min-run-time', '0.01', '--output', str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((tmp_path / 'benchmark.json').read_text())
    assert [r['setting'] for r in rows] == ['b1 1thr inference onnxruntime int8']
    assert rows[0]['mod_ms'] > 0 and rows[0]['baseline_ms'] > 0 and rows[0]['identity_ms'] > 0
