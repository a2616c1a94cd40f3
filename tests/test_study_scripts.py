""" The studies' shell scripts: each parses, and docs/lanes.sh runs two lanes side by side, tags every line with its
lane, lets a failing lane leave the other to finish, and returns the failure."""
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / 'docs'


@pytest.mark.parametrize('script', sorted(DOCS.glob('**/*.sh')), ids=lambda path: str(path.relative_to(DOCS)))
def test_study_script_parses(script: Path):
    subprocess.run(['bash', '-n', str(script)], check=True)


def run_lanes(first_body: str, second_body: str) -> subprocess.CompletedProcess:
    script = f"""set -euo pipefail
source {DOCS / 'lanes.sh'}
one() {{ {first_body}; }}
two() {{ {second_body}; }}
run_lanes "lane a" one "lane b" two
"""
    return subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=60)


def test_lanes_tag_each_line_and_both_finish():
    result = run_lanes('echo x; echo y >&2', 'sleep 0.2; echo z')
    assert result.returncode == 0
    assert sorted(result.stdout.splitlines()) == ['[lane a] x', '[lane a] y', '[lane b] z']


@pytest.mark.parametrize('first_status, second_status, expected', [(3, 0, 3), (0, 4, 4), (3, 4, 3)])
def test_a_failing_lane_leaves_the_other_to_finish(first_status, second_status, expected):
    result = run_lanes(f'return {first_status}', f'sleep 0.2; echo done; return {second_status}')
    assert result.returncode == expected
    assert '[lane b] done' in result.stdout.splitlines()
