""" timm's own model conformance suite (tests/test_models.py of the installed timm's sdist) on the MoD zoo.

The sdist is fetched from PyPI once per checkout (cached in pytest's cache dir); timm's file runs in a
subprocess with the `timm_mod_only` plugin, and each (timm test, model) pair is reported here, so a
test that timm skipped or never ran for a model fails just like one that failed.
"""
import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, Tuple

import pytest
import timm

import timm_mod  # noqa: F401

# timm's tests that are parametrized over every model with the ResNet API (features, intermediates, FX).
TIMM_MODEL_TESTS = [
    'test_model_forward',
    'test_model_backward',
    'test_model_default_cfgs',
    'test_model_forward_torchscript',
    'test_model_forward_features',
    'test_model_forward_intermediates_features',
    'test_model_forward_intermediates',
    'test_model_forward_fx',
    'test_model_backward_fx',
    'test_model_forward_fx_torchscript',
    'test_prune_intermediate_layers_contract',
]
MOD_MODELS = timm.list_models('*_mod*')
CONFORMANCE_DIR = Path(__file__).parent / 'conformance'


def fetch_timm_tests(cache_dir: Path) -> Path:
    """ tests/ of the installed timm version's sdist, downloaded from PyPI on first use."""
    target = cache_dir / f'timm-{timm.__version__}'
    test_file = target / 'tests' / 'test_models.py'
    if not test_file.exists():
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
             f'timm=={timm.__version__}', '--dest', str(cache_dir)],
            check=True,
        )
        with tarfile.open(cache_dir / f'timm-{timm.__version__}.tar.gz') as sdist:
            members = [m for m in sdist.getmembers() if re.match(r'[^/]+/tests/[^/]+\.py$', m.name)]
            for member in members:
                member.name = 'tests/' + Path(member.name).name
            sdist.extractall(target, members=members, filter='data')
    return test_file


@pytest.fixture(scope='session')
def timm_results(pytestconfig: pytest.Config, tmp_path_factory) -> Dict[Tuple[str, str], str]:
    """ Outcome of every timm test on every MoD model: 'passed', 'failed: ...' or 'skipped: ...'."""
    test_file = fetch_timm_tests(pytestconfig.cache.mkdir('timm-sdist'))
    report = tmp_path_factory.mktemp('timm-conformance') / 'report.xml'
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', str(test_file), '-p', 'timm_mod_only', '-p', 'no:cacheprovider',
         '-q', '--no-header', f'--junitxml={report}', '-W', 'ignore::FutureWarning'],
        cwd=test_file.parent,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(CONFORMANCE_DIR), os.environ.get('PYTHONPATH')]))),
        capture_output=True, text=True,
    )
    if not report.exists():
        pytest.fail(f'timm test_models.py did not run:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}')
    results = {}
    for case in ElementTree.parse(report).iter('testcase'):
        match = re.match(r'(\w+)\[(.*)\]$', case.get('name', ''))
        if not match:
            continue
        model = next((part for part in match.group(2).split('-') if part in MOD_MODELS), None)
        problem = next(iter(case), None)
        outcome = 'passed' if problem is None else f'{problem.tag}: {problem.get("message", "")[:2000]}'
        results[(match.group(1), model)] = outcome
    return results


@pytest.mark.conformance
@pytest.mark.parametrize('model_name', MOD_MODELS)
@pytest.mark.parametrize('timm_test', TIMM_MODEL_TESTS)
def test_timm_model_conformance(timm_results: Dict[Tuple[str, str], str], timm_test: str, model_name: str) -> None:
    outcome = timm_results.get((timm_test, model_name), 'not run: timm collected no such test for this model')
    assert outcome == 'passed', f'timm {timm_test}[{model_name}] {outcome}'
