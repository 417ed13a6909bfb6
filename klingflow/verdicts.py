"""Cache keys and verdicts: which steps a run would serve at no cost, and why not.

A step's key is the hash of its canonical request (endpoint, body, backend) with
every input replaced by its content: a local file by the SHA-256 of its bytes, a
step's clip by the SHA-256 of the clip, and a step's first or last frame by the
frame's name and its clip's SHA-256. A frame is made from its clip here; the PNG's
bytes may differ between machines (another PyAV, another zlib), its clip's never
do, so a teammate's keys are the lock's. An identical frame uploaded again still
hits, and a simulated clip never serves a real run. The key of a step is only known
once the outputs it uses are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from klingflow.cache import Cache, CacheEntry
from klingflow.cache.inflight import InFlight, UnreadableRecordError
from klingflow.files import canonical_hash, file_hash
from klingflow.lockfile import LockEntry
from klingflow.plan import CACHED, RE_ATTACH, RESTORE, endpoint_of, request_body
from klingflow.spec.pipeline import Pipeline, Ref, Step, Template

ClipHash = Callable[[str], str]  # step id -> the SHA-256 of its clip

# CACHED: the local cache holds it. RESTORE: the remote cache holds it, or the lock names
# its (still held) task. RE_ATTACH: an earlier run's POST made its task, paid and not yet
# collected. The plan shows them (plan.py names them).
WILL_RUN = "will run"
FREE = (CACHED, RESTORE)  # the step's clip is known without paying


def request_key(step: Step, pipeline: Pipeline, backend: str,
                clip_hash: ClipHash) -> tuple[str, dict[str, Any]]:
    """(key, canonical request) of a step; `clip_hash` gives upstream steps' clip hashes."""

    def content(ref: Ref) -> str:
        if ref.scope == "steps":
            clip = f"sha256:{clip_hash(ref.name)}"
            return clip if ref.attr in (None, "video") else f"{ref.attr}:{clip}"
        source = pipeline.inputs[ref.name]
        return f"sha256:{file_hash(source.path)}" if source.path else str(source.url)

    body = request_body(step, pipeline, content, email=None)
    request = {"endpoint": endpoint_of(step), "body": body, "backend": backend}
    return canonical_hash(request), request


@dataclass(frozen=True, slots=True)
class Verdict:
    step_id: str
    verdict: str  # CACHED, RESTORE, RE_ATTACH or WILL_RUN
    reason: str  # why: lock, task N; new (never run, or its upstream is); changed: FIELD;
    # upstream changed: ID (a step whose output the request carries will run); forced...
    key: str | None  # None while an upstream step has no result yet
    entry: CacheEntry | None = None  # CACHED: the cache's
    locked: LockEntry | None = None  # RESTORE: the lock's

    @property
    def clip(self) -> str | None:
        """The SHA-256 of the clip the step would have at no cost."""
        outputs = self.entry.outputs if self.entry else self.locked.outputs if self.locked \
            else {}
        return outputs.get("video")


@dataclass(frozen=True, slots=True)
class Judge:
    """What verdicts are made of: the pipeline, the cache, the lock's section for the
    backend, and the locked tasks a run found gone or changed (task id -> why)."""

    pipeline: Pipeline
    cache: Cache
    backend: str
    locked: Mapping[str, LockEntry]
    unusable: Mapping[int, str]
    forced: frozenset[str] = frozenset()
    remote: Callable[[str], CacheEntry | None] | None = None  # the remote's record of a key
    inflight: Callable[[str], InFlight | None] | None = None  # a POST sent for a key before


def verdicts(judge: Judge, order: list[Step]) -> dict[str, Verdict]:
    """What a run would do with each step, in `order` (a topological order)."""
    found: dict[str, Verdict] = {}
    for step in order:
        found[step.id] = _verdict(judge, step, found)
    return found


def _verdict(judge: Judge, step: Step, found: Mapping[str, Verdict]) -> Verdict:
    locked = judge.locked.get(step.id)
    upstream = [n for n in _referenced(step) if found[n].verdict not in FREE]
    if upstream:
        first = found[upstream[0]]
        new = locked is None or first.reason == "new"
        reason = f"upstream in flight: {upstream[0]}" if first.verdict == RE_ATTACH else \
            "new" if new else f"upstream changed: {upstream[0]}"
        return Verdict(step.id, WILL_RUN, reason, None)

    def clip_hash(step_id: str) -> str:
        clip = found[step_id].clip
        assert clip is not None
        return clip

    key, request = request_key(step, judge.pipeline, judge.backend, clip_hash)
    if step.id in judge.forced:  # not the cache nor the lock; a paid task still counts
        return _in_flight(judge, step.id, key) or Verdict(step.id, WILL_RUN, "forced", key)
    entry = judge.cache.lookup(key)
    if entry is not None:
        return Verdict(step.id, CACHED, "", key, entry=entry)
    remote = judge.remote(key) if judge.remote is not None else None
    if remote is not None:
        return Verdict(step.id, RESTORE, "remote", key, entry=remote)
    if locked is not None and locked.key == key and locked.task_id is not None:
        why = judge.unusable.get(locked.task_id)
        if why is None:
            return Verdict(step.id, RESTORE, f"lock, task {locked.task_id}", key, locked=locked)
        return Verdict(step.id, WILL_RUN, why, key)
    return _in_flight(judge, step.id, key) or \
        Verdict(step.id, WILL_RUN, _why_not_free(request, locked, judge.cache), key)


def _in_flight(judge: Judge, step_id: str, key: str) -> Verdict | None:
    """What a run does with a POST of this request that an earlier run sent (its
    in-flight record): re-attach to its paid task, or look for it first."""
    try:
        sent = judge.inflight(key) if judge.inflight is not None else None
    except UnreadableRecordError as exc:
        return Verdict(step_id, WILL_RUN, f"{exc}: a run stops at it rather than pay again",
                       key)
    if sent is not None and sent.task_id is not None and sent.task_id not in judge.unusable:
        return Verdict(step_id, RE_ATTACH, f"task {sent.task_id}, paid before", key)
    if sent is not None and sent.task_id is None:
        return Verdict(step_id, WILL_RUN, "sent before, its answer lost: the task it may have "
                                          "made is looked for first", key)
    return None


def _referenced(step: Step) -> list[str]:
    """The steps whose outputs the request carries, in `needs` order. A step named only
    in `needs:` orders the run; it does not change the request, nor its key."""
    refs = {r.name for value in step.params.values() if isinstance(value, Template)
            for r in value.refs if r.scope == "steps"}
    return [n for n in step.needs if n in refs]


def _why_not_free(request: Mapping[str, Any], locked: LockEntry | None, cache: Cache) -> str:
    if locked is None:
        return "new"
    before = cache.lookup(locked.key)
    if before is None:
        return "changed" if locked.task_id is not None else "not in the cache"
    changed = changed_fields(before.request, request)
    return f"changed: {', '.join(changed)}" if changed else "not in the cache"


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The request fields that differ, e.g. ['prompt'] or ['image (upstream changed)']."""
    old, new = before.get("body", {}), after.get("body", {})
    fields = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            upstream = "sha256:" in str(new.get(name, "")) and \
                "sha256:" in str(old.get(name, ""))
            fields.append(f"{name} (upstream changed)" if upstream else name)
    if before.get("endpoint") != after.get("endpoint"):
        fields.insert(0, "kind")
    return fields
