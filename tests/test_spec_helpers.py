"""Helpers for the pipeline-file tests: write a document, collect its problem lines."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from klingflow.errors import PipelineError
from klingflow.spec import Pipeline, load_pipeline

HEAD = """\
version: 1
name: t
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problem lines of a broken document, with the file shown as `p.yaml`."""
    path = write(tmp_path, text)
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path)
    return [str(p).replace(str(path), "p.yaml") for p in caught.value.problems]


def loaded(tmp_path: Path, text: str) -> Pipeline:
    return load_pipeline(write(tmp_path, text))


def png(path: Path, width: int, height: int) -> Path:
    """A minimal valid grey PNG of the given size."""
    row = b"\x00" + b"\x80" * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw)
                     + chunk(b"IEND", b""))
    return path
