"""How values, paths and suggestions are written in messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from klingflow.spec.issues import DocPath

_MAX_SHOWN = 60


def show(value: Any) -> str:
    """A value as a user wrote it in YAML: `'yes'`, `true`, `null`, `7`, `a list`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > _MAX_SHOWN:
        return repr(value[: _MAX_SHOWN - 3] + "...")
    return repr(value)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`; did you mean 'prompt'?` when a close option exists, else ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def one_of(options: Iterable[Any]) -> str:
    """`5, 10` or, for a long run of integers, `3..15`."""
    items = list(options)
    if len(items) > 3 and all(isinstance(i, int) for i in items) and \
            items == list(range(items[0], items[-1] + 1)):
        return f"{items[0]}..{items[-1]}"
    return ", ".join(str(i) for i in items)


def path_text(path: DocPath, data: Any) -> str:
    """`steps[2] (id: b-roll).duration`; `<document>` for the whole file."""
    text, node = "", data
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                text += f" (id: {node['id']})"
        else:
            text += f".{part}" if text and part else part if part else "['']"
            node = node.get(part) if isinstance(node, dict) else None
    return text or "<document>"
