"""`klingflow run` judges effects by the live catalogue first, and spends nothing if one is bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from klingflow.catalogue import Catalogue, EffectEntry, keep_catalogue
from klingflow.sim import SimConfig
from tests.runhelpers import external_sim, only_run_dir, read_report, run_cli
from tests.test_effects_cli import HERO, URL, effect, fetched, write


def test_run_on_the_simulator_stops_on_a_bad_effect_before_any_work(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(isolated / "p", "bad", effect("a", "effect: hug") + effect(
        "b", "effect: fuzzyfuzzy, prompt: fluffier") + effect("c", "effect: cartoon"))
    code, out, err = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs")], capsys)
    source = fetched(isolated / "home").source  # fetched by the run itself
    assert (code, out) == (2, "")
    assert err == (
        f"{path}:4:66: steps[0] (id: a).effect: effect 'hug' is not available: {source} marks "
        "it effectSupported: false; choose another effect\n"
        f"{path}:5:86: steps[1] (id: b).prompt: effect 'fuzzyfuzzy' does not take a prompt "
        "(promptSupported is false) and the service would ignore it; remove prompt\n"
        "2 problems found\n")
    assert not (isolated / "runs").exists()


def test_run_judges_by_the_live_catalogue_not_the_kept_one_and_spends_nothing(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = isolated / "p"
    path = write(folder, "stale", effect("a", "effect: glitter", "${inputs.hero}")
                 + effect("b", "effect: glitter", "${inputs.hero}"),
                 accounts="inputs: {hero: hero.png}\n")
    (folder / "hero.png").write_bytes(HERO.read_bytes())
    config = SimConfig(token="user:1-fake-token")
    with external_sim(monkeypatch, config) as sim:
        backend = f"api:{sim.base_url}"
        home = isolated / "home"
        stale = (EffectEntry("glitter", "Glitter", ("std",), True, True),)
        keep_catalogue(home, Catalogue(backend, None, "2025-01-01T00:00:00Z", stale))
        assert run_cli(["validate", str(path)], capsys)[0] == 0  # the kept one lists it
        code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs")], capsys)
        stats = sim.stats()
    live = fetched(home, backend)
    assert live.fetched_at != "2025-01-01T00:00:00Z"  # the run kept the live one
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{path}:5:60: steps[0] (id: a).effect: unknown effect 'glitter': not in "
        f"{live.source}; `klingflow effects` lists the available ones",
        f"{path}:6:60: steps[1] (id: b).effect: unknown effect 'glitter': not in "
        f"{live.source}; `klingflow effects` lists the available ones",
        "2 problems found"]
    # the service's accounts, then their catalogue; no upload, no POST
    assert stats["requests"] == {"GET /accounts": 1, "GET /videos/effects": 1}
    assert not (isolated / "runs").exists()


def test_a_run_with_a_one_mode_effect_sends_that_mode(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(isolated / "p", "spin", effect("s", "effect: spinoff", "${inputs.pic}"),
                 accounts=f"inputs: {{pic: '{URL}'}}\n")
    code, _, err = run_cli(["run", str(path), "--sim", "--sim-speed", "10", "--out",
                            str(isolated / "runs")], capsys)
    assert code == 0, err
    [step] = read_report(only_run_dir(isolated / "runs", "spin"))["steps"]
    entry = json.loads((isolated / "home" / "entries" / f"{step['key']}.json").read_text())
    assert step["status"] == "succeeded" and entry["request"]["body"]["mode"] == "pro"
    lock = yaml.safe_load((path.parent / "spin.lock.yaml").read_text())
    assert lock["backends"]["sim"]["s"]["mode"] == "pro"
