"""The token and URL credentials at the edges (issue 9, items 6 and 7).

A token is stripped of surrounding whitespace and refused, before any request, when
a control or non-ASCII character is inside it; no repr, message or traceback shows
it.
"""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path

import httpx
import pytest

from klingflow.client import KlingClient
from klingflow.errors import RequestNotSentError
from klingflow.settings import ApiToken, Settings
from klingflow.sim import SimConfig, running_simulator
from tests.runhelpers import (
    external_sim,
    frames_step,
    isolated,
    only_run_dir,
    read_report,
    run_cli,
    write_pipeline,
)

__all__ = ["isolated"]

SECRET = "user:77-fake-EDGES-secret-token"
HINT = "set USEAPI_TOKEN to the useapi.net API token alone"


def _one_step(folder: Path, name: str) -> Path:
    return write_pipeline(folder, name, [frames_step("one", "a quiet lake", timeout=20)])


# ---- the token -----------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["\n", "\r\n", " \t"])
def test_a_token_with_a_line_end_is_stripped_and_works(
        isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        ending: str) -> None:
    """A secret made from a file, or a CRLF .env line, ends in a line break."""
    path = _one_step(isolated / "p", "line-end")
    with external_sim(monkeypatch, SimConfig(token=SECRET, task_seconds=0.2),
                      token=SECRET + ending) as sim:
        code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs"),
                                  "--poll-interval", "0.05"], capsys)
        ledger = sim.ledger()
    assert code == 0, err
    assert len(ledger) == 1
    assert read_report(only_run_dir(isolated / "runs", "line-end"))["status"] == "succeeded"
    assert SECRET not in out + err


@pytest.mark.parametrize(("token", "problem"), [
    (f"{SECRET[:10]}\n{SECRET[10:]}", "a control character (such as a line break or a tab)"
                                      " inside it"),
    (f"{SECRET[:10]}\t{SECRET[10:]}", "a control character (such as a line break or a tab)"
                                      " inside it"),
    (f"{SECRET[:10]}\x1b{SECRET[10:]}", "a control character (such as a line break or a tab)"
                                        " inside it"),
    (f"{SECRET[:10]}\u00e9{SECRET[10:]}", "a character that is not ASCII"),
])
def test_a_token_that_no_header_can_carry_is_refused_before_any_request(
        isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        token: str, problem: str) -> None:
    path = _one_step(isolated / "p", "bad-token")
    with external_sim(monkeypatch, SimConfig(token=SECRET), token=token) as sim:
        code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs")], capsys)
        stats = sim.stats()
    assert (code, out) == (2, "")
    assert err == f"klingflow: USEAPI_TOKEN: the token holds {problem}; {HINT}\n"
    assert sum(stats["requests"].values()) == 0  # nothing was sent
    assert not (isolated / "runs").exists()
    assert not (isolated / "home").exists()
    assert SECRET[10:] not in err


def test_a_token_of_only_whitespace_is_no_token(isolated: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USEAPI_TOKEN", " \r\n")
    path = _one_step(isolated / "p", "blank-token")
    code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs")], capsys)
    assert (code, out) == (2, "")
    assert err == ("klingflow: no API token: set USEAPI_TOKEN to your useapi.net token to "
                   "spend real credits, or add --sim to run on the embedded simulator\n")


def test_the_token_shows_in_no_repr_str_or_format() -> None:
    settings = Settings.from_environment({"USEAPI_TOKEN": SECRET + "\n"})
    token = settings.token
    assert isinstance(token, ApiToken)
    assert token.reveal() == SECRET
    shown = [repr(token), str(token), f"{token}", f"{token!r}", repr(settings), str(settings),
             str(dataclasses.asdict(settings))]
    assert all(SECRET not in text for text in shown)
    assert str(token) == repr(token) == "ApiToken(<hidden>)"


@pytest.mark.anyio
@pytest.mark.parametrize("token", [f"{SECRET}\n", f"{SECRET[:10]}\r{SECRET[10:]}",
                                   f"{SECRET[:10]}\u00e9{SECRET[10:]}"])
async def test_a_header_that_cannot_be_sent_is_said_without_its_value(token: str) -> None:
    """h11 quotes a refused header's value ("Illegal header value b'Bearer ...'") and
    httpx the character it cannot encode: the client's error says neither, has no cause
    that does, and is not retried (it could never be sent)."""
    with running_simulator(SimConfig(token=SECRET)) as base_url:
        async with httpx.AsyncClient() as http:
            client = KlingClient(http, token=token, base_url=base_url)
            with pytest.raises(RequestNotSentError) as caught:
                await client.accounts()
    error = caught.value
    assert str(error) == (f"GET {base_url}/accounts: no response: a request header holds a "
                          "character that HTTP does not allow (the header is not shown); "
                          "check USEAPI_TOKEN")
    assert not error.retryable
    assert error.category == "request_not_sent"
    drawn = "".join(traceback.format_exception(error))
    assert SECRET[10:] not in drawn and SECRET[10:] not in repr(error)
    assert error.__cause__ is None and error.__suppress_context__
