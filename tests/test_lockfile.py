"""The lock file: stable, diff-friendly, round-trips."""

from __future__ import annotations

from pathlib import Path

from klingflow.lockfile import LockEntry, lock_path, read_lock


def test_lock_path_sits_beside_the_pipeline() -> None:
    assert lock_path(Path("pipelines/x.yaml")) == Path("pipelines/x.lock.yaml")


def test_a_missing_or_broken_lock_reads_as_empty(tmp_path: Path) -> None:
    assert read_lock(tmp_path / "none.lock.yaml").steps == {}
    broken = tmp_path / "b.lock.yaml"
    broken.write_text("steps: [1, 2")
    assert read_lock(broken).steps == {}


def test_entry_yaml_orders_outputs() -> None:
    entry = LockEntry(key="k", task_id=1, account=None, model="kling-v2-1", mode="std",
                      duration=5, credits=20, outputs={"video": "b", "first_frame": "a"})
    assert list(entry.to_yaml()["outputs"]) == ["first_frame", "video"]
