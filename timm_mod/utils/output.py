""" Command outputs written whole or not at all.

A command builds its output (a file or a folder) at a staging path beside the target and swaps it in only
when it is complete, so an interruption leaves the old output or the new one, never half of either. The
staging and backup names are fixed per target, so what a killed run (SIGKILL) left is cleared, or put
back, by the next run instead of piling up.
"""
import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

__all__ = [
    'staged_output', 'check_replaceable_folder', 'check_output_folder', 'check_outside_data', 'check_writable_folder',
    'exclusive_folder', 'scratch_folder', 'fresh_folder', 'exit_cleanly_on_sigterm', 'stop_if_terminated',
    'write_text_whole',
]

_RENAME_EXCHANGE = 2  # linux/fs.h


def _staging_path(target: Path) -> Path:
    return target.with_name(f'.timm-mod-partial-{target.name}')


def _backup_path(target: Path) -> Path:
    return target.with_name(f'.timm-mod-old-{target.name}')


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _exchange(first: Path, second: Path) -> bool:
    """ Swap two existing paths in one atomic step (Linux renameat2); False where the system cannot."""
    libc_name = ctypes.util.find_library('c')
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), 'renameat2', None) if libc_name else None
    if renameat2 is None:
        return False
    at_cwd = -100
    return renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE) == 0


def _recover(target: Path) -> None:
    """ Undo what a killed run left: its unfinished staging, and the old output it had moved aside."""
    backup = _backup_path(target)
    if backup.exists():
        if target.exists():
            _remove(backup)
        else:
            backup.rename(target)
    _remove(_staging_path(target))


def _swap_in(staged: Path, target: Path) -> None:
    """ Put the finished output in place of the old one; a folder cannot be replaced by `os.replace`, so it is
    exchanged atomically where the system can, else the old folder waits aside until the new one is in place."""
    if not (staged.is_dir() and target.exists()):
        os.replace(staged, target)
        return
    if _exchange(staged, target):
        _remove(staged)  # now the old output
        return
    backup = _backup_path(target)
    target.rename(backup)
    staged.rename(target)
    _remove(backup)


@contextmanager
def staged_output(target: Path) -> Iterator[Path]:
    """ A path beside `target` to write the output to; it replaces `target` when the block ends without error
    and is removed when it raises (KeyboardInterrupt and, with `exit_cleanly_on_sigterm`, SIGTERM included)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    staging = _staging_path(target)
    try:
        yield staging
        _swap_in(staging, target)
    finally:
        _remove(staging)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_replaceable_folder(target: Path, overwrite: bool = False, keep: Iterable[Optional[Path]] = (),
                             option: str = '--output') -> Path:
    """ The folder a command will replace whole (`staged_output`), or a clear error before any work when that
    would destroy what the command did not write: a non-empty folder without `overwrite`, and, even with it,
    the working folder or one above it, or a folder holding (or inside) one of the `keep` paths (the data set,
    the checkpoint being read)."""
    target = Path(target).expanduser()
    resolved = target.resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f'{option} {target} is a file; give a folder for the results.')
    if _inside(Path.cwd().resolve(), resolved):
        raise ValueError(f'{option} {target} is the working folder or holds it, and the output replaces its folder '
                         f'whole; give a new folder, e.g. {target / "output"}.')
    for path in keep:
        if path is not None and (_inside(Path(path).expanduser().resolve(), resolved)
                                 or _inside(resolved, Path(path).expanduser().resolve())):
            raise ValueError(f'{option} {target} would replace or write into {path}, which this command reads; '
                             f'give a folder outside it.')
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f'{target} exists and is not empty; choose another {option} or pass --overwrite '
                              f'to replace it whole.')
    return target


def check_outside_data(output: Path, data_dir: Path, option: str = '--output') -> None:
    """ A clear error before any work when a command would write into the data it reads: a file written into an
    ImageFolder split becomes a training image, a folder a class."""
    resolved, data = Path(output).expanduser().resolve(), Path(data_dir).expanduser().resolve()
    if _inside(resolved, data):
        raise ValueError(f'{option} {output} lies inside the data folder {data_dir}, where what is written would be '
                         f'read as images or classes; give a folder outside it, e.g. output/.')


def check_output_folder(output: Path, option: str = '--output') -> Path:
    """ A folder results will be written into, or a clear error before any work when it is a file, lies inside
    one, or cannot be written to; nothing is created yet."""
    output = Path(output).expanduser()
    existing = next(path for path in (output, *output.absolute().parents) if path.exists())
    if not existing.is_dir():
        where = 'is a file' if existing == output else f'lies inside the file {existing}'
        raise ValueError(f'{option} {output} {where}; give a folder for the results.')
    if not os.access(existing, os.W_OK):
        raise PermissionError(f'{option} {output}: {existing} is not writable; choose a writable folder.')
    return output


def check_writable_folder(folder: Path) -> Path:
    """ The folder, created if absent, or a clear error before any work when files cannot be written there
    (read-only, full, not a folder)."""
    folder = Path(folder).expanduser()
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b'0' * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        if created and folder.is_dir():
            folder.rmdir()
        raise PermissionError(f'Cannot write to {folder}: {error.strerror or error}; '
                              f'choose a writable folder with free space.') from error
    return folder


@contextmanager
def exclusive_folder(folder: Path, command: str) -> Iterator[None]:
    """ Hold `folder` for this process (an advisory lock on the folder itself, released when the process ends
    however it ends, so nothing is left behind); a second process asking for it gets a clear error at once.
    Where the system has no `flock` (Windows), nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise FileExistsError(f'Another timm-mod {command} is running in {folder}; wait for it to end, or give '
                                  f'another output folder.') from None
        yield
    finally:
        os.close(descriptor)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """ A temporary folder named after this process, removed on exit; the ones killed processes (SIGKILL) left
    with the same prefix are removed first, so scratch files never pile up in the system's temp folder."""
    root = Path(tempfile.gettempdir())
    for leftover in root.glob(f'{prefix}-*'):
        pid = leftover.name.rpartition('-')[2]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    with fresh_folder(root / f'{prefix}-{os.getpid()}') as folder:
        yield folder


@contextmanager
def fresh_folder(folder: Path) -> Iterator[Path]:
    """ `folder`, created empty for the block and removed after it; what a killed run left there is removed first."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_terminated_by: Optional[int] = None


def _on_sigterm(signum: int, frame: Any) -> None:
    global _terminated_by
    _terminated_by = signum
    sys.exit(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """ Turn SIGTERM into SystemExit, so `finally` blocks (and `staged_output`'s clean-up) run as on Ctrl-C.

    Python runs the handler wherever the main thread is; when that is a finalizer (`__del__`, a weakref
    callback), the SystemExit is printed as "ignored" and lost. Long loops therefore also call
    `stop_if_terminated`, which raises it again.
    """
    signal.signal(signal.SIGTERM, _on_sigterm)


def stop_if_terminated() -> None:
    """ Raise the SystemExit of a SIGTERM received earlier, in case the handler's own raise was swallowed."""
    if _terminated_by is not None:
        sys.exit(128 + _terminated_by)


def write_text_whole(path: Path, text: str) -> None:
    """ `text` written beside `path` and swapped in, so readers see the old file or the new one, never half."""
    staging = path.with_name(f'.{path.name}.partial')
    staging.write_text(text, newline='')
    os.replace(staging, path)
