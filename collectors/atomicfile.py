"""Files that appear whole or not at all.

Every file gpuledger writes (traces, the ledger, summaries) is written to a temporary
name in the same directory and renamed into place, so a crash or a bad input never
leaves half a file where a reader (or the next run) would take it for a whole one.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from collectors.errors import InputError


_PENDING: set["AtomicFile"] = set()  # made and neither committed nor discarded yet: see discard_pending()


class AtomicFile:
    """A temporary file beside ``path`` that :meth:`commit` renames onto ``path``.

    Directories it has to create for it are removed again by :meth:`discard` when they
    are left empty, so a failed write leaves nothing behind: no temporary file, no folder.
    It is known to :func:`discard_pending` from before its file exists until it is
    committed or discarded, so a signal at any moment leaves nothing either.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._made: list[Path] = []  # deepest first
        self.tmp = self._name()
        _PENDING.add(self)
        try:
            folder = self.path.parent
            while not folder.exists() and folder != folder.parent:
                self._made.append(folder)
                folder = folder.parent
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                    break
                except FileExistsError:
                    self.tmp = self._name()
        except BaseException:
            self.discard()
            raise

    def _name(self) -> Path:
        return self.path.parent / f".{self.path.name}.{secrets.token_hex(8)}.tmp"

    def commit(self) -> None:
        """Give the file the usual permissions (0666 less the umask) and move it into place;
        on failure (the path is a directory, say) the temporary file is removed."""
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self.tmp, 0o666 & ~mask)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self._made = []
        _PENDING.discard(self)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
        self._remove_made()
        _PENDING.discard(self)

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (another file went there): keep it and its parents
        self._made = []


def discard_pending() -> int:
    """Remove every temporary file not committed yet (the CLI calls it on its way out,
    whatever stopped the command); returns how many there were."""
    pending = list(_PENDING)
    for atomic in pending:
        try:
            atomic.discard()
        except OSError:
            pass
    return len(pending)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on error it is removed."""
    atomic = AtomicFile(path)
    try:
        yield atomic.tmp
        atomic.commit()
    except BaseException:
        atomic.discard()
        raise


@contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary paths for files that belong together (a report's files): they replace
    their paths only once every one was written; on any error, all are removed."""
    files: list[AtomicFile] = []
    try:
        for path in paths:
            files.append(AtomicFile(path))
        yield [f.tmp for f in files]
        for f in files:
            f.commit()
    except BaseException:
        for f in reversed(files):
            f.discard()
        raise


def check_file_target(path: str | Path, flag: str = "--out") -> None:
    """InputError, before any work, when ``path`` cannot become a file: it is a directory,
    or what would hold it is a file."""
    _check_target(Path(path), flag, "file")


def check_dir_target(path: str | Path, flag: str = "--out") -> None:
    """InputError, before any work, when ``path`` cannot be (or become) a directory."""
    _check_target(Path(path), flag, "directory")


def _check_target(path: Path, flag: str, kind: str) -> None:
    if kind == "file" and path.is_dir():
        raise InputError(f"expected a file for {flag}, found a directory", file=str(path), field=flag)
    if kind == "directory" and path.exists() and not path.is_dir():
        raise InputError(f"expected a directory for {flag}, found a file", file=str(path), field=flag)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot create {path}: {folder} is a file, not a directory", file=str(path), field=flag)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` whole or not at all; ``durable``: on disk (fsync) before the rename,
    so a power cut leaves the old file or the new one (the agent's ledger)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
