"""Files that appear whole or not at all.

Every file gpuledger writes (traces, the ledger, summaries) is written to a temporary
name in the same directory and renamed into place, so a crash or a bad input never
leaves half a file where a reader (or the next run) would take it for a whole one.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class AtomicFile:
    """A temporary file beside ``path`` that :meth:`commit` renames onto ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        """Give the file the usual permissions (0666 less the umask) and move it into place."""
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.tmp, 0o666 & ~mask)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.tmp.exists():
            self.tmp.unlink()


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


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
