"""Writing trace files: JSON Lines, plain or gzip, atomically.

One JSON object per line, to a temporary file renamed into place on success, so a
failed run never leaves half a trace. This module imports neither Arrow nor NumPy:
the recorder runs on every GPU node, and its memory matters.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from collectors.atomicfile import AtomicFile
from collectors.records import Meta, Record, to_json


class TraceWriter:
    """Writes records to ``path`` (gzip when it ends in ``.gz``), atomically on close.

    Use as a context manager; if the block raises, nothing is left behind.
    """

    def __init__(self, path: str | Path, meta: Meta) -> None:
        self.path = Path(path)
        self._file = AtomicFile(self.path)
        try:
            raw = open(self._file.tmp, "wb")
        except BaseException:
            self._file.discard()
            raise
        self._raw = raw
        stream: BinaryIO = gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=5, mtime=0) if self.path.name.endswith(".gz") else raw  # type: ignore[assignment]
        self._out = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
        self.count = 0
        try:
            self.write(meta)
        except BaseException:
            self.abort()
            raise

    def write(self, record: Record) -> None:
        self.write_json(to_json(record))

    def write_json(self, obj: dict[str, Any]) -> None:
        self._out.write(json.dumps(obj, separators=(",", ":"), allow_nan=False))
        self._out.write("\n")
        self.count += 1

    def write_lines(self, text: str, lines: int) -> None:
        """Already-encoded JSON lines (each ending in a newline), for bulk generators."""
        self._out.write(text)
        self.count += lines

    def close(self) -> None:
        """Finish the file and move it into place; on any failure (a full disk at the
        last flush, say) the temporary file is removed and the error raised."""
        try:
            try:
                self._out.close()
            finally:
                self._raw.close()
            self._file.commit()
        except BaseException:
            self._file.discard()
            raise

    def abort(self) -> None:
        """Drop the file (the error that led here is the one to report, not a close's)."""
        for stream in (self._out, self._raw):
            try:
                stream.close()
            except BaseException:  # noqa: BLE001 - the write already failed (or was interrupted): remove the file
                pass
        self._file.discard()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_trace(path: str | Path, meta: Meta, records: Iterable[Record | dict[str, Any]]) -> int:
    """Write ``meta`` then ``records`` (records or their JSON dicts); returns the line count."""
    with TraceWriter(path, meta) as writer:
        for record in records:
            if isinstance(record, dict):
                writer.write_json(record)
            else:
                writer.write(record)
        return writer.count
