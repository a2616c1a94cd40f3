""" Zero-edit registration: installing timm-mod makes every program that imports timm see the zoo."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]

PROBE = '''
import importlib.util
import sys
print('torch' in sys.modules, 'timm' in sys.modules, 'timm_mod' in sys.modules)
assert importlib.util.find_spec('timm') is not None  # probed first, as transformers' is_timm_available does
import timm
print(timm.is_model('resnet75_mod'), 'timm_mod' in sys.modules)
if timm.is_model('resnet75_mod'):
    print(type(timm.create_model('resnet75_mod', device='meta')).__name__)
'''


def run_probe(**env: str) -> list:
    result = subprocess.run(
        [sys.executable, '-c', PROBE], capture_output=True, text=True, check=True, cwd=os.path.expanduser('~'),
        env=dict(os.environ, **env))
    return result.stdout.split()


def test_importing_only_timm_registers_the_zoo_without_start_up_imports() -> None:
    assert run_probe() == ['False', 'False', 'False', 'True', 'True', 'MoDResNet']


def test_environment_variable_turns_registration_off() -> None:
    assert run_probe(TIMM_MOD_AUTOREGISTER='0') == ['False', 'False', 'False', 'False', 'False']


def test_wheel_installs_the_start_up_hook_arg_files_and_card_template(tmp_path: Path) -> None:
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', str(ROOT), '-w', str(tmp_path)],
                   check=True)
    (wheel,) = tmp_path.glob('timm_mod-*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {'timm_mod_autoload.pth', 'timm_mod_autoload.py', 'timm_mod/__init__.py',
            'timm_mod/train_args/quickstart.yaml', 'timm_mod/train_args/resnet_mod_imagenet.yaml',
            'timm_mod/hub_cards/model_card.md'} <= names
    assert zipfile.ZipFile(wheel).read('timm_mod_autoload.pth').decode().strip() == 'import timm_mod_autoload'
