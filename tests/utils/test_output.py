""" Command outputs are written whole or not at all: the old output or the new one, whatever interrupts."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from timm_mod.utils.output import fresh_folder, scratch_folder, staged_output

from conftest import CONSOLE_SCRIPT, train_py_checkpoint



def litter(parent: Path) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith('.timm-mod-'))


@pytest.mark.parametrize('kind', ['file', 'folder'])
def test_the_new_output_replaces_the_old_only_when_complete(tmp_path: Path, kind: str) -> None:
    target = tmp_path / 'out'

    def write(path: Path, text: str) -> None:
        if kind == 'folder':
            path.mkdir()
            (path / 'part.txt').write_text(text)
        else:
            path.write_text(text)

    def read(path: Path) -> str:
        return (path / 'part.txt').read_text() if kind == 'folder' else path.read_text()

    with staged_output(target) as staging:
        write(staging, 'old')
    with pytest.raises(RuntimeError):
        with staged_output(target) as staging:
            write(staging, 'half')
            raise RuntimeError('interrupted')
    assert read(target) == 'old' and litter(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with staged_output(target) as staging:
            write(staging, 'half')
            raise KeyboardInterrupt
    assert read(target) == 'old' and litter(tmp_path) == []
    with staged_output(target) as staging:
        write(staging, 'new')
    assert read(target) == 'new' and litter(tmp_path) == []
    if kind == 'folder':
        assert [p.name for p in target.iterdir()] == ['part.txt'], 'nothing of the old folder stays'


def run_and_signal(tmp_path: Path, signum: int) -> subprocess.CompletedProcess:
    """ A process that stages a half-written folder over an old one and is then hit by `signum`."""
    target = tmp_path / 'out'
    target.mkdir()
    (target / 'part.txt').write_text('old')
    script = (
        'import os, signal\n'
        'from timm_mod.utils.output import exit_cleanly_on_sigterm, staged_output\n'
        'exit_cleanly_on_sigterm()\n'
        f'with staged_output({str(target)!r}) as staging:\n'
        '    staging.mkdir()\n'
        "    (staging / 'part.txt').write_text('half')\n"
        f'    os.kill(os.getpid(), {signum})\n'
    )
    return subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)


def test_sigterm_cleans_up_and_keeps_the_old_output(tmp_path: Path) -> None:
    result = run_and_signal(tmp_path, signal.SIGTERM)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert (tmp_path / 'out' / 'part.txt').read_text() == 'old'
    assert litter(tmp_path) == []


def test_sigkill_leftovers_are_cleared_by_the_next_run(tmp_path: Path) -> None:
    result = run_and_signal(tmp_path, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    assert (tmp_path / 'out' / 'part.txt').read_text() == 'old'
    assert litter(tmp_path) == ['.timm-mod-partial-out'], 'a killed process cannot clean up'
    with staged_output(tmp_path / 'out') as staging:
        staging.mkdir()
        (staging / 'part.txt').write_text('new')
    assert (tmp_path / 'out' / 'part.txt').read_text() == 'new' and litter(tmp_path) == []


def test_scratch_folders_start_empty_and_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('TMPDIR', str(tmp_path))
    monkeypatch.setattr('tempfile.tempdir', None)
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    killed_run = tmp_path / f'probe-{int(dead.stdout)}'  # left by a process that no longer runs
    (killed_run / 'sub').mkdir(parents=True)
    (tmp_path / 'fresh' / 'old.onnx').parent.mkdir()
    (tmp_path / 'fresh' / 'old.onnx').write_text('left by a killed run')
    with pytest.raises(RuntimeError), fresh_folder(tmp_path / 'fresh') as folder:
        assert list(folder.iterdir()) == []
        (folder / 'new.onnx').write_text('x')
        raise RuntimeError('the block fails')
    with scratch_folder('probe') as scratch:
        assert list(scratch.iterdir()) == [] and not killed_run.exists()
        (scratch / 'model.onnx').write_text('x')
    assert list(tmp_path.iterdir()) == []


def test_an_old_folder_moved_aside_by_a_killed_swap_is_put_back(tmp_path: Path) -> None:
    """ Where folders cannot be exchanged atomically, the old one waits aside while the new one moves in; a run
    killed between the two renames leaves it there, and the next run puts it back before anything else."""
    aside = tmp_path / '.timm-mod-old-out'
    aside.mkdir()
    (aside / 'part.txt').write_text('old')
    with pytest.raises(RuntimeError):
        with staged_output(tmp_path / 'out'):
            raise RuntimeError('interrupted again')
    assert (tmp_path / 'out' / 'part.txt').read_text() == 'old' and litter(tmp_path) == []


def assert_old_or_new_whole(out: Path) -> str:
    names = sorted(p.name for p in out.iterdir())
    if names == ['keep.txt']:
        assert (out / 'keep.txt').read_text() == 'old'
        return 'old'
    assert names == ['README.md', 'config.json', 'model.safetensors']
    assert load_file(str(out / 'model.safetensors'))
    return 'new'


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGKILL], ids=['sigterm', 'sigkill'])
def test_publish_killed_while_writing_leaves_the_old_folder_or_the_new_one(tmp_path: Path, signum: int) -> None:
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod')
    out = tmp_path / 'hub'
    out.mkdir()
    (out / 'keep.txt').write_text('old')
    command = [str(CONSOLE_SCRIPT), 'publish', '--model', 'resnet18_mod', '--checkpoint',
               str(tmp_path / 'ckpt.pth.tar'), '--out-dir', str(out), '--overwrite']
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while process.poll() is None and not litter(tmp_path) and time.monotonic() < deadline:  # until it stages
        time.sleep(0.001)
    if process.poll() is None:
        process.send_signal(signum)
    process.wait(timeout=120)
    assert_old_or_new_whole(out)
    if signum == signal.SIGTERM:
        assert litter(tmp_path) == []
    subprocess.run(command, check=True, capture_output=True)
    assert assert_old_or_new_whole(out) == 'new' and litter(tmp_path) == []

