""" The benchmark: identity bound construction, timed steps, and the command end to end on a tiny setting."""
import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import timm
import torch

from timm_mod import MoDBlock
from timm_mod.experiments.benchmark import BenchSetting, identity_bound, make_step, settings_grid
from timm_mod.experiments.profiling import format_time_share, mod_time_share, profile_gap
from timm_mod.utils.timing import time_side_by_side
from conftest import CONSOLE_SCRIPT



def test_identity_bound_removes_exactly_the_mod_blocks() -> None:
    model = timm.create_model('resnet50_mod', device='meta')
    bound = identity_bound(model)
    assert not any(isinstance(m, MoDBlock) for m in bound.modules())
    assert any(isinstance(m, MoDBlock) for m in model.modules()), 'the original is left intact'
    mod_params = sum(p.numel() for m in model.modules() if isinstance(m, MoDBlock) for p in m.parameters())
    assert sum(p.numel() for p in bound.parameters()) == sum(p.numel() for p in model.parameters()) - mod_params
    assert [type(b).__name__ for b in bound.layer3] == ['Bottleneck', 'Identity'] * 3


def test_train_step_updates_the_weights_and_inference_does_not() -> None:
    model = timm.create_model('resnet18_mod', num_classes=4)
    before = model.layer2[1].selector.fc1.weight.clone()
    make_step(model, BenchSetting(batch_size=2, task='inference'), num_classes=4)()
    assert torch.equal(model.layer2[1].selector.fc1.weight, before)
    make_step(model, BenchSetting(batch_size=2, task='train'), num_classes=4)()
    assert not torch.equal(model.layer2[1].selector.fc1.weight, before)


def test_side_by_side_timing_reports_every_step() -> None:
    calls = {'a': 0, 'b': 0}

    def step(name: str):
        def run() -> None:
            calls[name] += 1
        return run

    times = time_side_by_side({'a': step('a'), 'b': step('b')}, threads=1, rounds=3, min_run_time=0.001)
    assert set(times) == {'a', 'b'} and all(t > 0 for t in times.values())
    assert calls['a'] > 3 and calls['b'] > 3


def test_benchmark_command_end_to_end(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(CONSOLE_SCRIPT), 'benchmark', '--models', 'resnet18_mod', '--batch-size', '1', '--threads', '1',
         '--task', 'inference', 'train', '--rounds', '1', '--min-run-time', '0.01', '--channels-last',
         '--device', 'cpu', '--output', str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '[2/2] resnet18_mod' in run.stderr, 'progress goes to stderr'
    lines = run.stdout.splitlines()
    assert lines[0].startswith('device: ') and 'CPUs; torch ' in lines[0]
    assert lines[1].split()[:2] == ['model', 'setting'] and len(lines) == 4
    with open(tmp_path / 'benchmark.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['setting'] for r in rows] == ['b1 1thr inference eager cl', 'b1 1thr train eager cl']
    assert all(r['baseline'] == 'resnet18' and float(r['speedup']) > 0 for r in rows)
    records = json.loads((tmp_path / 'benchmark.json').read_text())
    assert records[0]['paper_speedup'] == '1.60' and records[0]['device_name'] == lines[0][8:].split('; torch')[0]
    assert (tmp_path / 'benchmark.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_modes_compile_the_step_and_unknown_modes_are_refused() -> None:
    model = timm.create_model('resnet18_mod', num_classes=4)
    for mode in ('compile', 'cudagraphs', 'freezing'):
        torch.compiler.reset()
        make_step(model, BenchSetting(batch_size=1, mode=mode), num_classes=4)()
        assert BenchSetting(mode=mode).label == f'b1 1thr inference {mode}'
    with pytest.raises(ValueError, match="Unknown benchmark mode 'jit'"):
        BenchSetting(mode='jit')
    with pytest.raises(ValueError, match='inference only; drop --task train'):
        BenchSetting(mode='freezing', task='train')


@pytest.mark.parametrize('model_name', ['resnet18_mod', 'resnet50_mod_rand'])
def test_time_share_splits_the_mod_blocks(model_name: str) -> None:
    share = mod_time_share(model_name, BenchSetting(batch_size=1, threads=1), repeats=3)
    assert 0 < share.slim_blocks_ms and 0 < share.routing_and_fusion_ms
    assert share.selectors_ms + share.slim_blocks_ms < share.mod_blocks_ms < share.forward_ms
    assert (share.selectors_ms == 0) == (model_name == 'resnet50_mod_rand'), 'random routing has no selector'
    line = format_time_share(share)
    assert line.startswith(f'{model_name} b1 1thr inference eager: MoD blocks ') and 'selectors' in line


@pytest.mark.parametrize('setting', [BenchSetting(task='train'), BenchSetting(mode='compile'),
                                     BenchSetting(device='cuda')])
def test_time_share_refuses_what_hooks_cannot_time(setting: BenchSetting) -> None:
    with pytest.raises(ValueError, match='eager CPU inference only'):
        mod_time_share('resnet18_mod', setting)


def test_breakdown_follows_the_table_and_is_refused_before_the_timing_starts() -> None:
    run = subprocess.run([str(CONSOLE_SCRIPT), 'benchmark', '--models', 'resnet18_mod', '--batch-size', '1',
                          '--threads', '1', '--rounds', '1', '--min-run-time', '0.01', '--device', 'cpu',
                          '--breakdown', '--profile'], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '[breakdown 1/1] resnet18_mod b1 1thr inference eager' in run.stderr, 'progress goes to stderr'
    lines = run.stdout.splitlines()
    profile_title = lines.index('resnet18_mod b1 1thr inference eager: operators where the MoD model spends more '
                                'than its identity bound (CPU self time, ms per step, torch.profiler)')
    assert lines[profile_title - 2].startswith('resnet18_mod b1 1thr inference eager: MoD blocks ')
    assert lines[profile_title + 1].split() == ['operator', 'extra', 'MoD', 'identity', 'bound']
    assert len(lines) == profile_title + 2 + 12, 'the twelve operators with the most extra time'
    run = subprocess.run([str(CONSOLE_SCRIPT), 'benchmark', '--models', 'resnet18_mod', '--task', 'inference',
                          'train', '--device', 'cpu', '--breakdown'], capture_output=True, text=True)
    assert run.returncode != 0 and 'eager CPU inference only, not b1 1thr train eager' in run.stderr
    assert '[breakdown' not in run.stderr and '[1/' not in run.stderr, 'nothing was timed'


def test_profile_gap_names_the_operators_only_mod_runs() -> None:
    gaps = profile_gap('resnet18_mod', BenchSetting(batch_size=1, task='train'), steps=1, top=1000)
    by_name = {gap.operator: gap for gap in gaps}
    for operator in ('aten::topk', 'aten::sigmoid', 'aten::index_add'):
        assert by_name[operator].mod_ms > 0 and by_name[operator].identity_ms == 0, operator
    assert by_name['aten::max_pool2d_with_indices'].identity_ms > 0, 'shared operators are timed in both'
    assert [gap.extra_ms for gap in gaps] == sorted((gap.extra_ms for gap in gaps), reverse=True)


def test_settings_grid_times_a_gpu_setting_once() -> None:
    cpu = settings_grid([1, 16], [1, 0], ['inference', 'train'], device='cpu')
    assert len(cpu) == 8 and {s.threads for s in cpu} == {1, os.cpu_count()}
    gpu = settings_grid([1, 256], [1, 0], ['inference'], ['eager', 'cudagraphs'], bf16=True, device='cuda')
    assert [s.label for s in gpu] == ['b1 cuda inference eager bf16', 'b256 cuda inference eager bf16',
                                      'b1 cuda inference cudagraphs bf16', 'b256 cuda inference cudagraphs bf16']
