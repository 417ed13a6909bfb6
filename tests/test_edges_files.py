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


# ---- klingflow's own files replaced by a named pipe or a device (hostile test, round 2)
# Each hung the command that read it (a pipe waits for a writer), or read /dev/zero until
# memory ran out and ended as "unexpected error (a bug): MemoryError".


@pytest.mark.timeout(20)
def test_a_run_report_that_is_a_named_pipe_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from klingflow.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "report.json")
    assert main(["report", str(run_dir)]) == 2
    assert capsys.readouterr().err == (f"klingflow: {run_dir / 'report.json'}: cannot be read: "
                                       "it is a named pipe, not a regular file\n")


def test_a_journal_that_is_a_device_is_a_journal_error(tmp_path: Path) -> None:
    from klingflow.errors import JournalError
    from klingflow.journal import read_events

    journal = tmp_path / "journal.jsonl"
    journal.symlink_to("/dev/zero")
    with pytest.raises(JournalError) as raised:
        list(read_events(journal))
    assert str(raised.value) == (f"{journal}: cannot read it: it is a device, not a regular "
                                 "file")


@pytest.mark.timeout(20)
def test_a_kept_catalogue_that_is_a_named_pipe_counts_as_none_kept(tmp_path: Path) -> None:
    from klingflow.catalogue import catalogue_path, load_catalogue

    kept = catalogue_path(tmp_path, "sim", None)
    kept.parent.mkdir(parents=True)
    os.mkfifo(kept)
    assert load_catalogue(tmp_path, "sim", None) is None
