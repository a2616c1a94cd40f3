""" The `timm-mod` command and the README tables it produces."""
import subprocess
import sys
from pathlib import Path

import timm

from timm_mod.zoo import ZOO_COLUMNS, describe_zoo, format_table, zoo_table_rows

README = Path(__file__).parents[1] / 'README.md'
CONSOLE_SCRIPT = Path(sys.executable).parent / 'timm-mod'


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
