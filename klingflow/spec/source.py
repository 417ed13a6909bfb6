"""Reading a pipeline file's text: size limit, UTF-8, no binary content."""

from __future__ import annotations

import re
from pathlib import Path

from klingflow.files import read_file
from klingflow.spec.issues import Issue

MAX_BYTES = 5 * 1024 * 1024
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def read_source(path: Path) -> tuple[str | None, Issue | None]:
    """The file's text, or why it cannot be a pipeline file."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return None, _too_big(f"{size:,} bytes")
        raw = read_file(path, MAX_BYTES)
    except OSError as exc:
        return None, _whole(f"cannot read the file: {exc.strerror or exc}")
    if len(raw) > MAX_BYTES:  # it grew since, or it is not what its size says (/proc)
        return None, _too_big(f"over {MAX_BYTES:,} bytes")
    return _decode(raw)


def _too_big(size: str) -> Issue:
    return _whole(f"the file is {size}; a pipeline file is at most 5 MB ({MAX_BYTES:,} "
                  "bytes)")


def _whole(message: str) -> Issue:
    return Issue((), 1, 1, message)


def _decode(raw: bytes) -> tuple[str | None, Issue | None]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _line_col(raw[: exc.start].decode("utf-8", "replace"))
        return None, Issue((), line, col, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                                          "save the file as UTF-8 YAML")
    bad = _CONTROL.search(text)
    if bad:
        line, col = _line_col(text[: bad.start()])
        return None, Issue((), line, col, f"control character U+{ord(bad.group()):04X} is not "
                                          "allowed (is this a binary file?); a pipeline file "
                                          "is YAML text")
    return text, None


def _line_col(before: str) -> tuple[int, int]:
    """1-based line and column just after `before`."""
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
