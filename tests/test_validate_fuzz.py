"""Malformed documents of every kind end in located problems and exit 2, never a traceback."""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klingflow.cli import main

VALID: dict[str, Any] = {
    "version": 1,
    "name": "fuzz",
    "accounts": {"main": {"email": "a@b.c", "max_jobs": 2}},
    "defaults": {"account": "main", "model_name": "kling-v2-1", "mode": "std", "duration": 5},
    "inputs": {"hero": "https://x.test/hero.png"},
    "vars": {"look": "golden"},
    "limits": {"max_jobs": 2, "budget": 100},
    "prices": [{"model": "effect:rocket", "mode": "std", "duration": 5, "credits": 10}],
    "steps": [
        {"id": "a", "kind": "effect", "effect": "rocket", "image": "${inputs.hero}"},
        {"id": "b", "kind": "frames", "image": "${steps.a.last_frame}",
         "prompt": "city, ${vars.look}", "duration": 10},
        {"id": "m", "kind": "effect", "matrix": {"e": ["cartoon", "cyberpunk"]},
         "effect": "${matrix.e}", "image": "${inputs.hero}", "needs": ["b"]},
    ],
    "outputs": {"film": {"concat": ["a", "b", "m"]}},
}

_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
    st.text(max_size=20), st.sampled_from(["${", "${steps.a}", "${vars.x}", "${matrix.e}",
                                          "${inputs.hero}", "${steps.m.video}", "yes", "a@1",
                                          "kling-v2-5", "pro", "4k", "spinoff", "hug", "b", "m@9"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                         max_size=3))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found += _paths(value, (*prefix, n))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> str:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "junk_key", "delete", "nest"]))
        if not path:
            doc = draw(_JUNK) if action == "replace" else doc
            continue
        last = path[-1]
        if action == "replace":
            parent[last] = draw(_JUNK)
        elif action == "junk_key" and isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=8))] = draw(_JUNK)
        elif action == "delete":
            del parent[last]
        elif action == "nest":
            parent[last] = [[[[parent[last]]]]]
        if not isinstance(doc, dict):
            break
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


_YAMLISH = st.text(alphabet=st.sampled_from([*list("abc:-[]{}&*!|>'\"#%@`,?~ \n\t0123456789.$"), "\x00", "\ufeff", "é", "\u2028"]), max_size=200)
_BINARY = st.binary(max_size=300)


def _check(tmp: Path, content: str | bytes, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp / "f.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    notes = [line for line in out.err.splitlines() if line.startswith(f"{path}: note: ")]
    assert len(notes) <= 1  # effects unchecked: said once, and not a problem
    if code == 0:
        assert out.out.startswith(f"{path}: ok (")
        return
    assert code == 2, out.err
    lines = [line for line in out.err.splitlines() if line not in notes]
    assert re.fullmatch(r"\d+ problems? found", lines[-1]), out.err
    located = re.compile(re.escape(str(path)) + r":\d+:\d+: ")
    assert all(located.match(line) for line in lines[:-1]), out.err


_SETTINGS = settings(max_examples=1200, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


@_SETTINGS
@given(mutated())
def test_mutated_pipelines(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check(Path(tmp), text, capsys)


@_SETTINGS
@given(st.one_of(_YAMLISH, _BINARY))
def test_random_text_and_bytes(capsys: pytest.CaptureFixture[str], content: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check(Path(tmp), content, capsys)


def test_the_base_document_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(VALID, sort_keys=False))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
