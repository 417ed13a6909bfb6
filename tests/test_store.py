"""The journal, the content-addressed cache and its cross-process claim."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

from klingflow.cache import Cache, CacheEntry
from klingflow.files import canonical_hash, sha256_file
from klingflow.journal import Journal


def test_journal_lines_are_on_disk_and_replay_the_last_state(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.write({"event": "uploaded", "sha256": "ab", "url": "http://sim/a.png"})
    journal.write({"event": "submitting", "step": "s", "key": "k1", "reply_ref": "r1",
                   "account": "main", "email": "a@x", "at_ms": 1})
    journal.write({"event": "submitted", "step": "s", "task_id": 7, "account": "main",
                   "email": "a@x", "reply_ref": "r1"})
    journal.write({"event": "submitting", "step": "t", "key": "k2", "reply_ref": "r2",
                   "account": None, "email": None, "at_ms": 2})
    # no close(): what a killed process leaves
    state = Journal.replay(path)
    assert state.uploads == {"ab": "http://sim/a.png"}
    assert state.submissions["s"].task_id == 7
    assert state.submissions["t"].task_id is None
    assert state.submissions["t"].reply_ref == "r2"
    assert state.attempts == {"s": 1, "t": 1}
    assert all("time" in json.loads(line) for line in path.read_text().splitlines())


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('{"event": "uploaded", "sha256": "ab", "url": "u"}\n{"event": "subm')
    assert Journal.replay(path).uploads == {"ab": "u"}


def test_failed_steps_are_not_in_flight_after_replay(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.write({"event": "submitting", "step": "s", "key": "k", "reply_ref": "r",
                   "account": None, "email": None, "at_ms": 1})
    journal.write({"event": "failed", "step": "s", "category": "moderation", "message": "no"})
    state = Journal.replay(tmp_path / "j.jsonl")
    assert "s" not in state.submissions
    assert state.finished["s"]["category"] == "moderation"


def _entry(key: str, sha: str) -> CacheEntry:
    return CacheEntry(key=key, task_id=1, account="main", credits=20, outputs={"video": sha},
                      request={"endpoint": "e", "body": {}, "backend": "sim"})


def test_cache_keeps_files_by_content_and_entries_by_key(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"video bytes")
    sha = sha256_file(clip)
    cache.store(_entry("k", sha), {"video": clip})
    entry = cache.lookup("k")
    assert entry is not None and entry.outputs == {"video": sha}
    restored = tmp_path / "restored.mp4"
    cache.restore(sha, restored)
    assert restored.read_bytes() == b"video bytes"
    assert cache.lookup("other") is None


def test_an_entry_whose_file_is_gone_is_a_miss(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    sha = sha256_file(clip)
    cache.store(_entry("k", sha), {"video": clip})
    cache.object_path(sha).unlink()
    assert cache.lookup("k") is None


def test_canonical_hash_ignores_key_order() -> None:
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})


def _hold_claim(root: str, key: str, seconds: float, ready: object) -> None:
    claim = Cache(Path(root)).try_claim(key)
    assert claim is not None
    ready.set()  # type: ignore[attr-defined]
    time.sleep(seconds)
    claim.release()


def _claimed_elsewhere(tmp_path: Path, seconds: float) -> multiprocessing.Process:
    ready = multiprocessing.Event()
    other = multiprocessing.Process(target=_hold_claim, args=(str(tmp_path), "k", seconds, ready))
    other.start()
    assert ready.wait(10)
    return other


def test_a_claim_held_by_another_process_is_refused_until_released(tmp_path: Path) -> None:
    other = _claimed_elsewhere(tmp_path, 0.5)
    assert Cache(tmp_path).try_claim("k") is None
    assert Cache(tmp_path).try_claim("another key") is not None
    other.join()
    claim = Cache(tmp_path).try_claim("k")
    assert claim is not None
    claim.release()


def test_a_claim_held_by_a_killed_process_is_released(tmp_path: Path) -> None:
    other = _claimed_elsewhere(tmp_path, 60)
    other.kill()
    other.join()
    assert Cache(tmp_path).try_claim("k") is not None


def test_an_unresolved_failure_stays_in_flight_for_the_next_resume(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.write({"event": "submitting", "step": "s", "key": "k", "reply_ref": "r",
                   "account": None, "email": None, "at_ms": 1})
    journal.write({"event": "failed", "step": "s", "category": "recovery",
                   "message": "could not tell", "unresolved": True})
    state = Journal.replay(tmp_path / "j.jsonl")
    assert state.submissions["s"].reply_ref == "r"
    assert "s" not in state.finished


def test_threads_storing_the_same_file_at_once_do_not_collide(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = Cache(tmp_path / "cache")
    frame = tmp_path / "frame.png"
    frame.write_bytes(b"the same frame" * 1000)
    sha = sha256_file(frame)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cache.store(_entry(f"k{i}", sha), {"video": frame}), range(64)))
    assert all(cache.lookup(f"k{i}") is not None for i in range(64))
    assert not [p for p in cache.object_path(sha).parent.iterdir() if p.name.endswith(".tmp")]
