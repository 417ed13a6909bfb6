"""`klingflow effects`, and validate, plan and run judging effects by the service's catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klingflow.catalogue import Catalogue, load_catalogue
from klingflow.sim import SimConfig
from klingflow.sim.catalogue import CATALOGUE, SimEffect
from tests.runhelpers import external_sim, run_cli

NO_TOKEN = ("klingflow: no API token: set USEAPI_TOKEN to your useapi.net token to spend real "
            "credits, or add --sim to run on the embedded simulator\n")
URL = "https://x.test/a.png"
HERO = Path(__file__).resolve().parent.parent / "pipelines" / "images" / "hero.png"


def write(folder: Path, name: str, steps: str, *, accounts: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"version: 1\nname: {name}\n{accounts}steps:\n{steps}", encoding="utf-8")
    return path


def effect(step_id: str, fields: str, image: str = URL) -> str:
    return f"  - {{id: {step_id}, kind: effect, image: '{image}', {fields}}}\n"


def fetched(home: Path, backend: str = "sim", account: str | None = None) -> Catalogue:
    found = load_catalogue(home, backend, account)
    assert found is not None
    return found


# ---- klingflow effects ---------------------------------------------------------------------


def test_effects_on_the_simulator_prints_and_keeps_the_catalogue(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLINGFLOW_HOME")
    code, out, err = run_cli(["effects", "--sim"], capsys)
    assert (code, err) == (0, "")
    # the service's only account; with no pipeline, kept in the current folder
    kept = isolated / ".klingflow" / "effects" / "sim" / "sim@example.com.json"
    catalogue = fetched(isolated / ".klingflow", account="sim@example.com")
    assert fetched(isolated / ".klingflow").effects == catalogue.effects  # steps naming none
    lines = out.splitlines()
    assert lines[:3] == [
        f"effects of the simulator for sim@example.com, fetched {catalogue.fetched_time}: "
        f"{len(CATALOGUE)} listed, 17 available",
        "  name            modes     prompt  available",
        "  rocket          std, pro  yes     yes"]
    assert "  spinoff         pro       no      yes" in lines
    assert "  hug             std, pro  no      no (effectSupported: false)" in lines
    assert "  balloon_parade  -         no      no (no modes: retired)" in lines
    assert lines[-1] == "kept in .klingflow/effects/sim/sim@example.com.json"
    assert kept.is_file() and len(lines) == len(CATALOGUE) + 3


def test_effects_of_a_pipeline_for_each_of_its_accounts_as_json(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    accounts = "accounts:\n  a: {email: a@example.com}\n  b: {email: b@example.com}\n"
    path = write(isolated / "p", "two", effect("x", "effect: rockt"), accounts=accounts)
    code, out, err = run_cli(["effects", str(path), "--sim", "--json"], capsys)
    assert (code, err) == (0, "")  # an effect still wrong does not stop it
    shown = json.loads(out)
    home = isolated / "home"
    assert [(c["account"], c["kept"]) for c in shown] == [
        ("a@example.com", str(home / "effects/sim/a@example.com.json")),
        ("b@example.com", str(home / "effects/sim/b@example.com.json"))]
    first = shown[0]
    assert first["backend"] == "sim" and first["fetched_at"] == fetched(
        home, account="a@example.com").fetched_at
    assert first["effects"][0] == {"name": "rocket", "caption": "Rocket Launch",
                                   "modes": ["std", "pro"], "prompt": True, "supported": True,
                                   "available": True}


def test_effects_from_the_service_run_would_use_per_account(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    own = (SimEffect("glitter", "Glitter", ("std",), True),)
    config = SimConfig(token="user:1-fake-token", accounts=[("a@example.com", 1),
                                                            ("b@example.com", 1)],
                       account_effects={"b@example.com": own})
    accounts = "accounts:\n  a: {email: a@example.com}\n  b: {email: b@example.com}\n"
    path = write(isolated / "p", "two", effect("x", "effect: rocket"), accounts=accounts)
    with external_sim(monkeypatch, config) as sim:
        code, out, err = run_cli(["effects", str(path)], capsys)
    assert (code, err) == (0, "")
    backend = f"api:{sim.base_url}"
    home = isolated / "home"
    assert len(fetched(home, backend, "a@example.com").effects) == len(CATALOGUE)
    assert [e.name for e in fetched(home, backend, "b@example.com").effects] == ["glitter"]
    assert f"effects of {sim.base_url} for b@example.com, fetched " in out
    assert "user:1-fake-token" not in out + "".join(p.read_text() for p in home.rglob("*.json"))


def test_effects_without_a_token_is_the_same_exit_2_as_run(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["effects"], capsys) == (2, "", NO_TOKEN)
    assert not (isolated / "home").exists()


# ---- validate and plan: the catalogue kept last -----------------------------------------------


def test_unchecked_effects_are_noted_once_and_do_not_fail(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(isolated / "p", "fx", effect("a", "effect: bloombloom")
                 + effect("b", "effect: jelly_press, prompt: wobble")
                 + effect("c", "effect: hug"))
    code, out, err = run_cli(["validate", str(path), "--sim"], capsys)
    assert (code, out) == (0, f"{path}: ok (3 steps)\n")
    assert err == (f"{path}: note: effect names, modes and prompts are unchecked: no catalogue "
                   f"of the simulator is kept for the default account; fetch it with: "
                   f"klingflow effects {path} --sim\n")
    code, out, err = run_cli(["validate", str(path)], capsys)
    assert code == 0 and err == (
        f"{path}: note: effect names, modes and prompts are unchecked: no catalogue of "
        f"useapi.net is kept for the default account; fetch it with: klingflow effects {path}\n")


def test_the_command_the_note_gives_is_quoted_for_a_shell(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It is there to be pasted: a folder with a space in its name is quoted."""
    path = write(isolated / "my films", "fx", effect("a", "effect: hug"))
    code, _, err = run_cli(["validate", str(path), "--sim"], capsys)
    assert code == 0
    assert err.endswith(f"fetch it with: klingflow effects '{path}' --sim\n")


def test_a_real_effect_the_simulator_does_not_list_is_refused_once_its_catalogue_is_kept(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(isolated / "p", "fx", effect("a", "effect: jelly_press"))
    assert run_cli(["validate", str(path), "--sim"], capsys)[0] == 0
    assert run_cli(["effects", str(path), "--sim"], capsys)[0] == 0
    source = fetched(isolated / "home").source
    assert run_cli(["validate", str(path), "--sim"], capsys) == (2, "", (
        f"{path}:4:66: steps[0] (id: a).effect: unknown effect 'jelly_press': not in {source}; "
        "did you mean 'jelly_jiggle'?\n1 problem found\n"))
    # the catalogue of another backend judges nothing here
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 0 and "no catalogue of useapi.net is kept" in err


SEED_STEPS = (  # the image2video-effects seed page's example bodies, as steps
    effect("body", "effect: rocket, prompt: A detailed description for the effect, mode: std")
    + effect("example", "effect: rocket"))


def test_the_seed_pages_example_bodies_validate(isolated: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write(isolated / "p", "seed", SEED_STEPS)
    assert run_cli(["effects", str(path), "--sim"], capsys)[0] == 0
    assert run_cli(["validate", str(path), "--sim"], capsys) == (
        0, f"{path}: ok (2 steps)\n", "")


def test_plan_shows_and_prices_the_only_mode_of_an_effect(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prices = 'prices:\n  - {model: "effect:spinoff", mode: pro, duration: 5, credits: 30}\n'
    path = write(isolated / "p", "spin", effect("s", "effect: spinoff"), accounts=prices)
    code, out, err = run_cli(["plan", str(path), "--sim", "--json"], capsys)
    assert code == 0 and "unchecked" in err
    [step] = json.loads(out)["steps"]
    assert (step["mode"], step["body"]["mode"], step["credits"]) == ("std", "std", None)
    run_cli(["effects", str(path), "--sim"], capsys)
    code, out, err = run_cli(["plan", str(path), "--sim", "--json"], capsys)
    assert (code, err) == (0, "")
    [step] = json.loads(out)["steps"]
    assert (step["mode"], step["body"]["mode"], step["credits"]) == ("pro", "pro", 30)
