"""Cache keys and verdicts: which steps a run would take from the cache, and why not.

A step's key is the hash of its canonical request (endpoint, body, backend) with
every input replaced by its content hash: a local file by the SHA-256 of its
bytes, a step's output by the SHA-256 its earlier run produced. An identical
frame uploaded again therefore still hits, and a simulated clip never serves a
real run. The key of a step is only known once the outputs it uses are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from klingflow.cache import Cache, CacheEntry
from klingflow.files import canonical_hash, file_hash
from klingflow.plan import endpoint_of, request_body
from klingflow.spec.pipeline import Pipeline, Ref, Step, Template

OutputHash = Callable[[Ref], str]

CACHED = "cached"
WILL_RUN = "will run"


def request_key(step: Step, pipeline: Pipeline, backend: str,
                output_hash: OutputHash) -> tuple[str, dict[str, Any]]:
    """(key, canonical request) of a step; `output_hash` gives upstream outputs' hashes."""

    def content(ref: Ref) -> str:
        if ref.scope == "steps":
            return f"sha256:{output_hash(ref)}"
        source = pipeline.inputs[ref.name]
        return f"sha256:{file_hash(source.path)}" if source.path else str(source.url)

    body = request_body(step, pipeline, content, email=None)
    request = {"endpoint": endpoint_of(step), "body": body, "backend": backend}
    return canonical_hash(request), request


@dataclass(frozen=True, slots=True)
class Verdict:
    step_id: str
    verdict: str  # CACHED or WILL_RUN
    reason: str  # "" when cached; else new (never run, or its upstream is), changed: FIELD,
    # upstream changed: ID (a step whose output the request carries will run), forced...
    key: str | None  # None while an upstream step has no result yet
    entry: CacheEntry | None


def verdicts(pipeline: Pipeline, order: list[Step], cache: Cache, backend: str, *,
             locked_keys: Mapping[str, str], forced: frozenset[str] = frozenset()
             ) -> dict[str, Verdict]:
    """What a run would do with each step, in `order` (a topological order)."""
    found: dict[str, Verdict] = {}
    for step in order:
        found[step.id] = _verdict(step, pipeline, cache, backend, found,
                                  locked_keys.get(step.id), step.id in forced)
    return found


def _verdict(step: Step, pipeline: Pipeline, cache: Cache, backend: str,
             found: Mapping[str, Verdict], locked_key: str | None, forced: bool) -> Verdict:
    upstream = [n for n in _referenced(step) if found[n].verdict != CACHED]
    if upstream:
        new = locked_key is None or found[upstream[0]].reason == "new"
        reason = "new" if new else f"upstream changed: {upstream[0]}"
        return Verdict(step.id, WILL_RUN, reason, None, None)

    def output_hash(ref: Ref) -> str:
        entry = found[ref.name].entry
        assert entry is not None
        return entry.outputs[ref.attr or "video"]

    key, request = request_key(step, pipeline, backend, output_hash)
    entry = cache.lookup(key)
    if forced:
        return Verdict(step.id, WILL_RUN, "forced", key, None)
    if entry is not None:
        return Verdict(step.id, CACHED, "", key, entry)
    return Verdict(step.id, WILL_RUN, _why_not_cached(request, locked_key, cache), key, None)


def _referenced(step: Step) -> list[str]:
    """The steps whose outputs the request carries, in `needs` order. A step named only
    in `needs:` orders the run; it does not change the request, nor its key."""
    refs = {r.name for value in step.params.values() if isinstance(value, Template)
            for r in value.refs if r.scope == "steps"}
    return [n for n in step.needs if n in refs]


def _why_not_cached(request: Mapping[str, Any], locked_key: str | None, cache: Cache) -> str:
    if locked_key is None:
        return "new"
    before = cache.lookup(locked_key)
    if before is None:
        return "changed"
    changed = changed_fields(before.request, request)
    return f"changed: {', '.join(changed)}" if changed else "not in the cache"


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The request fields that differ, e.g. ['prompt'] or ['image (upstream changed)']."""
    old, new = before.get("body", {}), after.get("body", {})
    fields = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            upstream = str(new.get(name, "")).startswith("sha256:") and \
                str(old.get(name, "")).startswith("sha256:")
            fields.append(f"{name} (upstream changed)" if upstream else name)
    if before.get("endpoint") != after.get("endpoint"):
        fields.insert(0, "kind")
    return fields
