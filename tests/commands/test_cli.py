""" The `timm-mod` command and the README tables it produces."""
import subprocess
from pathlib import Path

import pytest
import timm
import torch

from timm_mod.models import ZOO_COLUMNS, describe_zoo, zoo_table_rows
from timm_mod.utils.tables import format_table
from conftest import CONSOLE_SCRIPT

README = Path(__file__).parents[2] / 'README.md'


def test_list_command_prints_the_whole_zoo() -> None:
    result = subprocess.run([str(CONSOLE_SCRIPT), 'list'], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ['model', 'paper', 'name']
    assert [line.split()[0] for line in lines[1:]] == timm.list_models('*_mod*')
    assert 'ResNet75-MoD' in result.stdout


def test_list_filter_and_bad_subcommand() -> None:
    result = subprocess.run([str(CONSOLE_SCRIPT), 'list', '--filter', 'resnet18*'], capture_output=True, text=True)
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ['resnet18_mod']
    result = subprocess.run([str(CONSOLE_SCRIPT), 'lst'], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'lst'" in result.stderr


def test_readme_model_table_is_what_the_code_measures() -> None:
    table = format_table(ZOO_COLUMNS, zoo_table_rows(describe_zoo()), markdown=True)
    assert table in README.read_text(), 'README.md model table is stale: paste `timm-mod list --markdown`'


@pytest.mark.parametrize('arguments, message', [
    (['quickstart', '--epochs', '0'], '--epochs must be at least 1, got 0'),
    (['quickstart', '--epochs', '-1'], '--epochs must be at least 1, got -1'),
    (['dense-quickstart', '--task', 'detection', '--epochs', '0'], '--epochs must be at least 1, got 0'),
    (['benchmark', '--batch-size', '0'], '--batch-size must be positive integers, got [0]'),
    (['benchmark', '--threads', '-1'], '--threads must be 0 (all cores) or a positive count, got [-1]'),
    (['benchmark', '--rounds', '0'], '--rounds must be at least 1'),
    (['benchmark', '--device', 'cuda'], '--device cuda: no cuda device on this machine'),
    (['convert', '--model', 'resnet18_mod', '--checkpoint', 'missing.pth', '--output', '{tmp}', '--overwrite'],
     'is a folder; name the file to write'),
    (['selection', '--model', 'resnet18_mod', '--max-per-class', '0', '--output', '{tmp}/s'],
     '--max-per-class must be at least 1, got 0'),
    (['selection', '--model', 'resnet18_mod', '--output', '{tmp}/file.txt'], 'is a file; give a folder'),
    (['quantize', '--model', 'resnet18_mod', '--calibration-images', '0', '--output', '{tmp}/q'],
     '--calibration-images must be at least 1, got 0'),
    (['quantize', '--model', 'resnet18_mod', '--threads', '-1', '--output', '{tmp}/q'],
     '--threads must be at least 0, got -1'),
    (['quantize', '--model', 'resnet18_mod', '--output', '{tmp}/file.txt'], 'is a file; give a folder'),
    (['list', '--filter', 'resnet18'], "no model matches 'resnet18'"),
    (['benchmark', '--models', 'vit_tiny_patch16_224'], 'to_mod does not support VisionTransformer models'),
    (['benchmark', '--models', 'resnet18_mod', '--batch-size', '1', '--output', '{tmp}/file.txt'],
     'is a file; give a folder'),
    (['benchmark', '--models', 'resnet18_mod', '--batch-size', '1', '--output', '{tmp}/file.txt/bench'],
     'lies inside the file'),
    (['convert', '--model', 'resnet18', '--pretrained', '--output', '{tmp}/r18.pth'],
     "'resnet18' is not a MoD model; name the MoD model to convert to, e.g. resnet18_mod"),
    (['quantize', '--model', 'resnet18_mod', '--output', '.'], 'is the working folder or holds it'),
    (['quantize', '--model', 'resnet18_mod', '--output', '.', '--overwrite'], 'is the working folder or holds it'),
    (['quantize', '--model', 'resnet18_mod', '--data-dir', '{tmp}', '--output', '{tmp}/int8', '--overwrite'],
     'which this command reads; give a folder outside it'),
])
def test_bad_arguments_are_one_line_errors_before_any_work(tmp_path: Path, arguments, message: str) -> None:
    if torch.cuda.is_available() and '--device' in arguments:
        pytest.skip('this machine has a GPU')
    (tmp_path / 'file.txt').write_text('mine')
    before = sorted(p.name for p in tmp_path.iterdir())
    command = [str(CONSOLE_SCRIPT), *(a.format(tmp=tmp_path) for a in arguments)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr and 'Traceback' not in result.stderr, result.stderr[-1500:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before, 'nothing may be written'
