"""Request bodies of the generation POSTs: JSON, or a form (multipart or urlencoded).

Forms are parsed with the standard library, so the simulator needs no
python-multipart; file parts are skipped (the endpoints take URLs, not files).
"""

from __future__ import annotations

import json
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

INVALID = "__invalid__"
"""Key of the fields of a body that is not a JSON object (the handler refuses it)."""


def read_fields(content_type: str, raw: bytes) -> dict[str, Any]:
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return _multipart(content_type, raw)
    if kind == "application/x-www-form-urlencoded":
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    return _json_object(raw)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {INVALID: "json"}
    return body if isinstance(body, dict) else {INVALID: "json"}


def _multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        return {INVALID: "form"}
    return dict(filter(None, (_field(part) for part in message.iter_parts())))


def _field(part: Message) -> tuple[str, str] | None:
    name = part.get_param("name", header="content-disposition")
    if not isinstance(name, str) or part.get_filename() is not None:
        return None
    payload = part.get_payload(decode=True)
    text = payload.decode(part.get_content_charset() or "utf-8", "replace") \
        if isinstance(payload, bytes) else ""
    return name, text
