""" The released package: a wheel installed (not editable) into a fresh venv registers the zoo for programs
that import only timm, and the sdist carries the licence and no command outputs."""
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

ROOT = Path(__file__).parents[1]

STOCK_SCRIPT_LIKE = '''
import sys
import timm
import torch
names = timm.list_models('*_mod*')
model = timm.create_model('resnet75_mod', num_classes=10).eval()
with torch.no_grad():
    logits = model(torch.randn(1, 3, 64, 64))
print(len(names), 'resnet75_mod' in names, 'x'.join(map(str, logits.shape)), sys.modules['timm_mod'].__file__)
'''


def test_wheel_in_a_fresh_venv_serves_a_program_that_imports_only_timm(tmp_path: Path) -> None:
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', str(ROOT), '-w', str(tmp_path)],
                   check=True)
    (wheel,) = tmp_path.glob('timm_mod-*.whl')
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    python = venv / 'bin' / 'python'
    subprocess.run([sys.executable, '-m', 'pip', '--python', str(python), 'install', '--quiet', '--no-deps',
                    str(wheel)], check=True)
    # torch and timm from this environment's site-packages, appended after the venv's own (where timm-mod is)
    venv_site = Path(subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                                    capture_output=True, text=True, check=True).stdout.strip())
    (venv_site / 'dependencies.pth').write_text(sysconfig.get_path('purelib') + '\n')
    run = subprocess.run([str(python), '-c', STOCK_SCRIPT_LIKE], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    count, listed, shape, location = run.stdout.split(maxsplit=3)
    assert int(count) >= 20 and listed == 'True' and shape == '1x10'
    assert location.strip().startswith(str(venv_site)), 'timm_mod must come from the installed wheel'


def test_sdist_has_the_licence_and_no_command_outputs(tmp_path: Path) -> None:
    subprocess.run([sys.executable, '-m', 'build', '--sdist', '--outdir', str(tmp_path), str(ROOT)], check=True,
                   capture_output=True)
    (sdist,) = tmp_path.glob('timm_mod-*.tar.gz')
    names = [name.split('/', 1)[1] for name in tarfile.open(sdist).getnames() if '/' in name]
    assert {'LICENSE', 'CHANGELOG.md', 'timm_mod/py.typed', 'pyproject.toml'} <= set(names)
    outputs = [n for n in names if n.split('/')[0] in ('output', 'selection', '.venv', 'dist') or n.endswith('.onnx')]
    assert not outputs
