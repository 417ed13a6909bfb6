"""write_atomically leaves the old file or the new one, and never a temporary file, even
when interrupted in the middle (Ctrl-C during the final lock write, issue 9 polish)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from klingflow import files


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "pipe.lock.yaml"
    target.write_text("old: whole\n", encoding="utf-8")

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomically(target, "new: half")
    assert target.read_text(encoding="utf-8") == "old: whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.lock.yaml"]


def test_replacing_removes_its_temporary_when_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "clip.png"
    with pytest.raises(OSError), files.replacing(target) as tmp:
        tmp.write_bytes(b"half a picture")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_replacing_puts_the_file_in_place(tmp_path: Path) -> None:
    target = tmp_path / "clip.png"
    with files.replacing(target) as tmp:
        tmp.write_bytes(b"a picture")
    assert [p.name for p in tmp_path.iterdir()] == ["clip.png"]
    assert target.read_bytes() == b"a picture"


def test_read_file_reads_one_byte_past_its_limit_and_no_more(tmp_path: Path) -> None:
    """So a caller sees a file over its limit (one that grew after its size was looked at,
    or a /proc file that says 0 bytes) without reading it whole."""
    path = tmp_path / "big.yaml"
    path.write_bytes(b"x" * 100)
    assert files.read_file(path, 10) == b"x" * 11
    assert files.read_file(path, 100) == b"x" * 100
