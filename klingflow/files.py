"""Files: content hashes and writes that never leave a half-written file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_hash(document: Mapping[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def temporary_beside(path: Path) -> Path:
    """A name no other writer (process or thread) uses, in `path`'s folder, for a file
    that is then renamed onto `path`."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; renamed onto `path` when
    the block ends, removed when it raises (Ctrl-C too): no half file, no leftover."""
    tmp = temporary_beside(path)
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, text: str, *, durable: bool = True) -> None:
    """Write `text` so that `path` holds either the old or the new content, never a mix;
    `durable`: on disk (fsync) before it takes the old one's place."""
    with replacing(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


@lru_cache(maxsize=1024)
def _hash_of_file(path: Path, _mtime_ns: int, _size: int) -> str:
    return sha256_file(path)


def file_hash(path: Path) -> str:
    """SHA-256 of a file, remembered while the file is unchanged."""
    stat = os.stat(path)
    return _hash_of_file(path, stat.st_mtime_ns, stat.st_size)


def real_path(path: Path) -> Path:
    """`path.resolve()` that never raises: a symlink loop (RuntimeError on Python 3.11)
    is left as it is, for the open that follows to report as a located error."""
    return Path(os.path.realpath(path))


def special_kind(mode: int) -> str:
    """What a file that is neither a regular file nor a folder is, for messages."""
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


class NotAFileError(OSError):
    """A named pipe, socket or device where a file was to be read."""


def read_file(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path`; with a `limit`, at most `limit` + 1 of
    them, so that a caller sees a file that is over it (or grew past it) without reading
    it whole.

    A named pipe, a socket or a device raises NotAFileError (an OSError): reading one
    could wait for a writer forever (a pipe) or never end (/dev/zero). The file is opened
    without blocking, then checked, so a pipe never holds the open up. A folder raises
    IsADirectoryError, as open() does."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise NotAFileError(0, f"it is {special_kind(mode)}, not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as handle:
        return handle.read(-1 if limit is None else limit + 1)


def read_text_file(path: Path) -> str:
    """The UTF-8 text of the regular file at `path` (see read_file: a named pipe or a
    device raises NotAFileError, so a folder of klingflow's never hangs a command)."""
    return read_file(path).decode("utf-8")
