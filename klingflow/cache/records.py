"""Result records as the remote cache keeps them (`ac/KEY`): JSON that names files by
SHA-256, checked field by field on the way in, because any writer can put one there.

A record holds the request (inputs as content hashes, no e-mail), the service's task
id, the account alias and the credits: never a token or any other credential.
"""

from __future__ import annotations

import json
import re
from typing import Any

from klingflow.cache.local import CacheEntry
from klingflow.files import canonical_hash

RECORD_FORMAT = "klingflow-result/1"
SHA256 = re.compile(r"[0-9a-f]{64}")
_ATTRIBUTE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class RecordError(ValueError):
    """A record that is not a well-formed klingflow result for its key."""


def encode_record(entry: CacheEntry) -> bytes:
    document = {"format": RECORD_FORMAT, "key": entry.key, "task_id": entry.task_id,
                "account": entry.account, "credits": entry.credits,
                "outputs": dict(entry.outputs), "request": dict(entry.request)}
    return json.dumps(document, indent=1, sort_keys=True).encode("utf-8")


def decode_record(data: bytes, key: str) -> CacheEntry:
    """The entry `data` describes; RecordError says what is wrong with it."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"is not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != RECORD_FORMAT:
        raise RecordError(f"is not a {RECORD_FORMAT} record")
    request = _typed(document, "request", dict)
    if document.get("key") != key or canonical_hash(request) != key:
        raise RecordError("does not describe the request of its key")
    return CacheEntry(key=key, task_id=_optional(document, "task_id", int),
                      account=_optional(document, "account", str),
                      credits=_optional(document, "credits", int),
                      outputs=_outputs(document.get("outputs")), request=request)


def _outputs(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise RecordError("names no output files")
    for attr, sha in value.items():
        if not (isinstance(attr, str) and _ATTRIBUTE.fullmatch(attr)):
            raise RecordError(f"names an output {attr!r} that is not an attribute name")
        if not (isinstance(sha, str) and SHA256.fullmatch(sha)):
            raise RecordError(f"output {attr} is not a SHA-256")
    return dict(value)


def _typed(document: dict[str, Any], name: str, kind: type) -> Any:
    value = document.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RecordError(f"has no valid {name}")
    return value


def _optional(document: dict[str, Any], name: str, kind: type) -> Any:
    return None if document.get(name) is None else _typed(document, name, kind)
