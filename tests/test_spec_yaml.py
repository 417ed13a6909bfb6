"""YAML reading: positions, strict scalars, duplicates, limits, bad bytes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from klingflow.spec.yamlload import parse_yaml
from tests.test_spec_helpers import HEAD, problems

STEP = "steps:\n  - {id: a, kind: effect, effect: rocket, image: 'https://x.test/a.png'}\n"


def test_positions_are_those_of_values_and_keys() -> None:
    doc, issues = parse_yaml("a:\n  b: [1, 'x']\n")
    assert issues == []
    assert doc is not None
    assert doc.values[("a", "b", 1)] == (2, 10)
    assert doc.keys[("a", "b")] == (2, 3)


def test_yaml_1_1_surprises_stay_text() -> None:
    doc, _ = parse_yaml("a: yes\nb: off\nc: 2024-01-01\nd: 0777\ne: 1:30\nf: true\ng: ~\n"
                        "h: 10\ni: 0.5\nj: .inf\nk: !!str 5\n")
    assert doc is not None
    assert doc.data == {"a": "yes", "b": "off", "c": "2024-01-01", "d": "0777", "e": "1:30",
                        "f": True, "g": None, "h": 10, "i": 0.5, "j": ".inf", "k": "5"}


def test_yes_for_a_boolean_is_a_type_error_with_a_hint(tmp_path: Path) -> None:
    text = HEAD + ("steps:\n  - id: a\n    kind: frames\n    image: https://x.test/a.png\n"
                   "    enable_audio: yes\n")
    assert problems(tmp_path, text) == [
        "p.yaml:7:19: steps[0] (id: a).enable_audio: 'yes' is not of type 'boolean'; "
        "write true or false"]


def test_duplicate_key_is_reported_at_the_second(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD + "name: u\n" + STEP) == [
        "p.yaml:3:1: name: duplicate key 'name' (first at line 2); remove one of them"]


def test_syntax_error_is_located(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD + "steps: [a\n") == [
        "p.yaml:4:1: <document>: YAML syntax error: did not find expected ',' or ']' "
        "(while parsing a flow sequence at line 3)"]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 7)]
    found = problems(tmp_path, "\n".join(lines) + "\n")
    assert len(found) == 1
    assert found[0].endswith("aliases expand to more than 100,000 values (an alias bomb?); "
                             "write the values out instead")


DEEP_MESSAGE = ["p.yaml:1:65: " + "[0]" * 64 + ": nested deeper than 64 levels; "
                "a pipeline is only a few levels deep"]


def test_deep_nesting_is_refused_without_crashing(tmp_path: Path) -> None:
    assert problems(tmp_path, "[" * 100_000 + "]" * 100_000) == DEEP_MESSAGE
    assert problems(tmp_path, "{a: " * 5_000 + "}" * 5_000)[0].startswith(
        "p.yaml:1:257: a" + ".a" * 63 + ": nested deeper than 64 levels")


@contextlib.contextmanager
def libyaml_nesting_limit(limit: int) -> Iterator[None]:
    """libyaml's own nesting limit set lower than klingflow's (PyYAML >= 6.0.4 with
    libyaml >= 0.2.6 expose it); skips where this PyYAML has no such control."""
    cyaml = getattr(yaml, "_yaml", None)
    get = getattr(cyaml, "_get_max_nest_level", None)
    if get is None or get() == -1:
        pytest.skip("this PyYAML's libyaml has no nesting limit to set")
    default = get()
    cyaml._set_max_nest_level(limit)  # type: ignore[union-attr]
    try:
        yield
    finally:
        cyaml._set_max_nest_level(default)  # type: ignore[union-attr]


def test_the_parsers_own_nesting_limit_never_decides(tmp_path: Path) -> None:
    """Whatever limit libyaml has, klingflow's own check answers: a file within 64
    levels is read, a deeper one gets klingflow's located message."""
    with libyaml_nesting_limit(10):
        doc, issues = parse_yaml("a: " + "[" * 30 + "1" + "]" * 30 + "\n")
        assert issues == []
        assert doc is not None
        assert problems(tmp_path, "[" * 100_000 + "]" * 100_000) == DEEP_MESSAGE


def test_big_file_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "#" * (5 * 1024 * 1024 + 1)) == [
        "p.yaml:1:1: <document>: the file is 5,242,881 bytes; a pipeline file is at most "
        "5 MB (5,242,880 bytes)"]


def test_binary_and_non_utf8_input(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\nname: \xff\xfe\n")
    from klingflow.errors import PipelineError
    from klingflow.spec import load_pipeline
    try:
        load_pipeline(path)
    except PipelineError as exc:
        assert [str(p).replace(str(path), "p.yaml") for p in exc.problems] == [
            "p.yaml:2:7: <document>: not UTF-8 text (byte 0xff); save the file as UTF-8 YAML"]
    assert problems(tmp_path, "a: \x00\x01") == [
        "p.yaml:1:4: <document>: control character U+0000 is not allowed (is this a binary "
        "file?); a pipeline file is YAML text"]


def test_missing_file(tmp_path: Path) -> None:
    from klingflow.errors import PipelineError
    from klingflow.spec import load_pipeline
    try:
        load_pipeline(tmp_path / "nope.yaml")
    except PipelineError as exc:
        assert [p.message for p in exc.problems] == [
            "cannot read the file: No such file or directory"]


def test_second_document_and_empty_file(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD + STEP + "---\na: 1\n") == [
        "p.yaml:5:1: <document>: a second YAML document starts here; a pipeline file holds "
        "exactly one (remove the '---' or split the file)"]
    assert problems(tmp_path, "# nothing\n") == [
        "p.yaml:1:1: <document>: the file holds no YAML document; a pipeline needs "
        "version: 1, name and steps"]


def test_tags_and_unknown_aliases(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD + "description: !foo x\nx: *nope\n" + STEP) == [
        "p.yaml:3:14: description: unsupported tag '!foo'; write a plain value without a tag",
        "p.yaml:4:1: x: unknown key 'x'; expected one of: version, name, description, "
        "accounts, defaults, inputs, vars, limits, prices, steps, outputs",
        "p.yaml:4:4: x: unknown alias '*nope'; define '&nope' before using it"]
