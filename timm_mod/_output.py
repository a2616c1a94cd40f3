""" Command outputs written whole or not at all.

A command builds its output (a file or a folder) at a staging path beside the target and swaps it in only
when it is complete, so an interruption leaves the old output or the new one, never half of either. The
staging and backup names are fixed per target, so what a killed run (SIGKILL) left is cleared, or put
back, by the next run instead of piling up.
"""
import csv
import ctypes
import ctypes.util
import io
import json
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

__all__ = ['staged_output', 'exit_cleanly_on_sigterm', 'write_text_whole', 'write_records']

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


def exit_cleanly_on_sigterm() -> None:
    """ Turn SIGTERM into SystemExit, so `finally` blocks (and `staged_output`'s clean-up) run as on Ctrl-C."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def write_text_whole(path: Path, text: str) -> None:
    """ `text` written beside `path` and swapped in, so readers see the old file or the new one, never half."""
    staging = path.with_name(f'.{path.name}.partial')
    staging.write_text(text, newline='')
    os.replace(staging, path)


def write_records(records: Sequence[Dict[str, Any]], output_dir: Path, stem: str) -> List[Path]:
    """ `stem`.csv and `stem`.json of one table's rows in `output_dir`, each written beside and swapped in whole."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    paths = [output_dir / f'{stem}.csv', output_dir / f'{stem}.json']
    for path, text in zip(paths, (table.getvalue(), json.dumps(list(records), indent=2))):
        write_text_whole(path, text)
    return paths
