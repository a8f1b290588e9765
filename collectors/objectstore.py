"""Where a gathered ledger dataset lives: a local directory or an object-store URL, as a pyarrow file system.

``gpuledger gather`` writes the dataset there and ``gpuledger report --ledger`` reads it,
so both open the location the same way: a plain path is the local file system;
``s3://BUCKET/PREFIX`` is S3 (or any S3-compatible store: MinIO, Ceph, moto in the tests)
through ``pyarrow.fs.S3FileSystem``, with the endpoint from ``--s3-endpoint`` or
``$AWS_ENDPOINT_URL`` and credentials from the usual AWS environment and files; any other
URL pyarrow knows (``gs://``, ``hdfs://``) through ``pyarrow.fs.FileSystem.from_uri``.

Paths inside a location are plain strings joined with ``/`` (pyarrow's convention on every
file system); :meth:`Location.url` turns one back into what the user would type, for
error messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Location:
    """A file system and the dataset's root in it."""

    given: str  # as the user wrote it
    fs: Any  # a pyarrow.fs.FileSystem
    root: str
    local: bool

    def path(self, *parts: str) -> str:
        """``root/part/part``: a path in :attr:`fs`."""
        return "/".join((self.root,) + parts)

    def url(self, path: str) -> str:
        """A path of :attr:`fs` as the user would name it (``s3://bucket/key`` for S3)."""
        if self.local:
            return path
        scheme = urlsplit(self.given).scheme
        return f"{scheme}://{path}"


def is_url(text: str) -> bool:
    """Whether ``text`` names an object store (``scheme://...``) rather than a local path."""
    return "://" in str(text)


def open_location(given: str, s3_endpoint: str | None = None) -> Location:
    """The file system and root of a dataset location; ValueError saying what is wrong.

    Opening does not touch the store (no request is made), so a location that exists
    only after the first write (a new prefix) is fine.
    """
    import pyarrow.fs as pafs

    given = str(given)
    if not is_url(given):
        path = Path(given)
        if path.exists() and not path.is_dir():
            raise ValueError("expected a directory for the dataset, found a file")
        return Location(given, pafs.LocalFileSystem(), str(path.resolve()), True)
    parts = urlsplit(given)
    if given.startswith("s3://") and not parts.netloc:
        raise ValueError("expected s3://BUCKET/PREFIX")
    try:
        if given.startswith("s3://"):
            options: dict[str, Any] = {}
            endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
            if endpoint:
                options.update(endpoint_override=endpoint, scheme=urlsplit(endpoint).scheme or "https")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                options["region"] = region
            return Location(given, pafs.S3FileSystem(**options), (parts.netloc + parts.path).rstrip("/"), False)
        fs, root = pafs.FileSystem.from_uri(given)
        return Location(given, fs, root.rstrip("/"), False)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise ValueError(f"cannot use it as the dataset: {str(err).splitlines()[0][:200]}") from None
