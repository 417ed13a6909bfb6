"""constraints.txt pins every package klingflow and its test extra install."""

from __future__ import annotations

import re
from importlib import metadata

from packaging.requirements import Requirement

from tests.conftest import ROOT


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version.strip()
    return pins


def _needed(name: str, extras: frozenset[str], seen: set[str]) -> None:
    """Every distribution `name` (with `extras`) requires here, transitively, into `seen`."""
    seen.add(_canonical(name))
    for text in metadata.requires(name) or ():
        requirement = Requirement(text)
        environment = [{"extra": extra} for extra in extras or {""}]
        if requirement.marker and not any(requirement.marker.evaluate(e) for e in environment):
            continue
        if _canonical(requirement.name) not in seen:
            _needed(requirement.name, frozenset(requirement.extras), seen)


def test_every_installed_dependency_is_pinned_at_its_installed_version() -> None:
    needed: set[str] = set()
    _needed("klingflow", frozenset({"test"}), needed)
    needed.discard("klingflow")
    pins = _pins()
    assert sorted(needed - set(pins)) == [], "run: bash .ci/update-pins"
    drifted = {name: (pins[name], metadata.version(name)) for name in needed
               if pins[name] != metadata.version(name)}
    assert drifted == {}, "installed without PIP_CONSTRAINT=constraints.txt?"


def test_the_build_backend_is_pinned_too() -> None:
    assert {"setuptools", "wheel"} <= set(_pins())
