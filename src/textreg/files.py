"""Files written whole or not at all: every write goes to a unique temporary file beside its target, then an
atomic rename. A crash, a full disk or a second process writing the same file never leaves a half-written one."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from textreg.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a fresh temporary path in `path`'s folder, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The suffix keeps the extension: writers that pick a format by it (matplotlib) still do.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # the mode of a plain open(), not mkstemp's owner-only 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_folder_once(path: Path, write: Callable[[Path], object]) -> None:
    """A folder written whole or not at all, once: `write(tmp)` fills a temporary folder beside it, which is then
    renamed to `path`. An existing `path` is complete (only whole folders are renamed into place) and kept, also
    when another process writes the same folder at the same time (launches of several folds of one run)."""
    path = Path(path)
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp)  # another process renamed its whole copy into place first: keep that one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One process at a time inside the block: an advisory lock on the file `path` (made if missing), released at
    the block's end or when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits for the process holding it
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def folder_lock(folder: Path) -> AbstractContextManager[None]:
    """`locked` on `<folder>/.lock`, for a read-modify-write of a folder's shared files (launches of several folds
    into one run folder)."""
    return locked(folder / ".lock")


def write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(obj: object, path: Path) -> None:
    write_text(json.dumps(obj, indent=2), path)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def check_safetensors(path: Path) -> None:
    """Raises (safetensors' own error types) when the file's header does not read: a damaged checkpoint."""
    with safe_open(path, framework="pt") as weights:
        weights.keys()


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    return json.loads(path.read_text())
