"""What validation catches before anything is spent: matrix sizes before expanding,
ids and names that cannot be file names, input images and URLs (issue 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.cli import main

URL = "https://x.test/a.png"


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    return code, out.out, [line.replace(str(path), "p.yaml") for line in out.err.splitlines()]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _values(n: int) -> str:
    return "[" + ", ".join(str(i) for i in range(n)) + "]"


# ---- matrix sizes, counted before anything is expanded ----------------------------------------


def test_a_matrix_bomb_is_refused_at_once_with_the_rest_of_its_step(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = ", ".join(f"{k}: {_values(20)}" for k in "abcdef")
    path = write(tmp_path, f"""\
version: 1
name: bomb
steps:
  - id: big
    kind: frames
    matrix: {{{keys}}}
    image: {URL}
    prompt: ${{matrix.a}} ${{matrix.b}}
    duration: 7
  - {{id: next, kind: frames, image: "${{steps.big@63999999.last_frame}}"}}
""")
    assert validate(path, capsys) == (2, "", [
        "p.yaml:6:13: steps[0] (id: big).matrix: the matrix expands to 64,000,000 steps; "
        "at most 10,000",
        "p.yaml:9:15: steps[0] (id: big).duration: 7 is not one of 5, 10 for kling-v2-1",
        "2 problems found"])


def test_matrices_are_limited_together_too(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    steps = "".join(f"  - {{id: m{n}, kind: frames, image: {URL}, prompt: '${{matrix.p}}', "
                    f"matrix: {{p: {_values(40)}, q: {_values(100)}}}}}\n" for n in range(3))
    path = write(tmp_path, f"version: 1\nname: many\nsteps:\n{steps}")
    code, out, err = validate(path, capsys)
    assert (code, out) == (2, "")
    assert err == [
        "p.yaml:6:" + str(steps.splitlines()[2].index("{p:") + 1) + ": steps[2] (id: m2).matrix: "
        "the matrices expand to 12,000 steps in all with this one (4,000); at most 10,000 in a "
        "pipeline",
        "1 problem found"]


def test_a_reference_to_an_expansion_is_checked_by_its_number(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"""\
version: 1
name: refs
steps:
  - {{id: m, kind: frames, image: {URL}, prompt: "${{matrix.p}}", matrix: {{p: {_values(100)}}}}}
  - {{id: a, kind: frames, image: "${{steps.m@99.last_frame}}"}}
  - {{id: b, kind: frames, image: "${{steps.m@100.last_frame}}"}}
  - {{id: c, kind: frames, image: "${{steps.m@07.last_frame}}"}}
""")
    code, _, err = validate(path, capsys)
    assert code == 2
    assert err == [
        "p.yaml:6:34: steps[2] (id: b).image: ${steps.m@100.last_frame}: 'm' has 100 "
        "expansions: m@0 .. m@99",
        "p.yaml:7:34: steps[3] (id: c).image: ${steps.m@07.last_frame}: 'm' has 100 "
        "expansions: m@0 .. m@99",
        "2 problems found"]

