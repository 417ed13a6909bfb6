"""The token and URL credentials at the edges (issue 9, items 6 and 7).

A token is stripped of surrounding whitespace and refused, before any request, when
a control or non-ASCII character is inside it; no repr, message or traceback shows
it. KLINGFLOW_API_BASE may not hold a user name, password, query or fragment, and no
URL in a message carries one.
"""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path

import httpx
import pytest

from klingflow.client import KlingClient
from klingflow.errors import ApiError, ForbiddenError, RequestNotSentError, TransportError
from klingflow.settings import ApiToken, Settings
from klingflow.sim import SimConfig, running_simulator
from tests.runhelpers import (
    external_sim,
    frames_step,
    only_run_dir,
    read_report,
    run_cli,
    write_pipeline,
)

SECRET = "user:77-fake-EDGES-secret-token"
HINT = "set USEAPI_TOKEN to the useapi.net API token alone"
BASE_HINT = ("set KLINGFLOW_API_BASE to the API's address alone, such as "
             "https://api.useapi.net/v1/kling")


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


# ---- URL credentials -------------------------------------------------------------------


@pytest.mark.parametrize(("template", "problem"), [
    ("http://klinguser:s3cret-pw@{host}", "holds a user name or password (user:password@); "
     "the API takes only the bearer token from USEAPI_TOKEN:"),
    ("http://s3cret-pw@{host}", "holds a user name or password (user:password@); "
     "the API takes only the bearer token from USEAPI_TOKEN:"),
    ("http://{host}?key=s3cret-pw", "holds a query or a fragment (?... or #...), which may "
     "carry a key;"),
    ("http://{host}#s3cret-pw", "holds a query or a fragment (?... or #...), which may "
     "carry a key;"),
])
def test_an_api_base_with_credentials_is_refused_without_repeating_them(
        isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        template: str, problem: str) -> None:
    path = _one_step(isolated / "p", "url-credentials")
    with external_sim(monkeypatch, SimConfig(token=SECRET, task_seconds=0.2)) as sim:
        base = template.format(host=sim.base_url.removeprefix("http://"))
        monkeypatch.setenv("KLINGFLOW_API_BASE", base)
        code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs"),
                                  "--poll-interval", "0.05"], capsys)
        ledger = sim.ledger()
    assert (code, out, ledger) == (2, "", [])
    assert err == f"klingflow: KLINGFLOW_API_BASE: the address {problem} {BASE_HINT}\n"
    assert "s3cret" not in err and "klinguser" not in err
    assert not (isolated / "runs").exists()
    assert not (path.parent / "url-credentials.lock.yaml").exists()


@pytest.mark.parametrize(("base", "problem"), [
    ("127.0.0.1:9/v1/kling", "must start with http:// or https:// and name a host;"),
    ("ftp://127.0.0.1/v1/kling", "must start with http:// or https:// and name a host;"),
    ("https:///v1/kling", "must start with http:// or https:// and name a host;"),
    ("http://127.0.0.1:99999/v1/kling", "is not a valid URL (its host or port);"),
    ("http://[::1/v1/kling", "is not a valid URL (its host or port);"),
    ("http://127.0.0.1:9/v1/kl ing", "holds a space, a control character or a character "
     "that is not ASCII;"),
])
def test_an_api_base_that_is_no_http_address_is_refused(
        isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        base: str, problem: str) -> None:
    monkeypatch.setenv("USEAPI_TOKEN", SECRET)
    monkeypatch.setenv("KLINGFLOW_API_BASE", base)
    path = _one_step(isolated / "p", "bad-base")
    code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs")], capsys)
    assert (code, out) == (2, "")
    assert err == f"klingflow: KLINGFLOW_API_BASE: the address {problem} {BASE_HINT}\n"


def _answering(status: int | None) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        if status is None:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(status, json={"error": "Request has expired"})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


SIGNED = "https://cdnuser:s3cret-pw@cdn.example.com/v/12.mp4?X-Amz-Signature=s3cret-sig#t=1"


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "kind", "text"), [
    (403, ForbiddenError, "HTTP 403: Request has expired"),
    (None, TransportError, "no response: ConnectError: [Errno 111] Connection refused"),
])
async def test_a_signed_media_url_is_shown_without_its_credentials(
        tmp_path: Path, status: int | None, kind: type[Exception], text: str) -> None:
    async with _answering(status) as http:
        client = KlingClient(http, token=SECRET)
        with pytest.raises(kind) as caught:
            await client.download(SIGNED, tmp_path / "clip.mp4")
    assert str(caught.value) == f"GET https://cdn.example.com/v/12.mp4: {text}"
    assert caught.value.url == "https://cdn.example.com/v/12.mp4"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 402, 404, 429, 500])
async def test_a_service_that_echoes_the_token_in_its_error_is_masked(status: int) -> None:
    """The service's error text is printed and kept in reports and journals: a service
    (or a proxy before it) that quotes the Authorization header must not leak it."""
    def answer(request: httpx.Request) -> httpx.Response:
        quoted = request.headers["Authorization"]
        return httpx.Response(status, json={"error": f"rejected for key {quoted}",
                                            "message": f"token {quoted.split()[-1]}"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = KlingClient(http, token=SECRET, sleep=lambda s: _no_wait())
        for call in (lambda: client.submit("videos/image2video-frames", {"prompt": "p"}),
                     lambda: client.accounts(once=True)):
            with pytest.raises(ApiError) as raised:
                await call()
            shown = str(raised.value)
            assert SECRET not in shown and "user:77" not in shown, shown
            assert "rejected for key Bearer ***" in shown


async def _no_wait() -> None:
    return None


@pytest.mark.parametrize("where", ["inputs", "step"])
def test_an_image_url_with_credentials_is_refused_without_showing_them(
        isolated: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    url = "https://bob:hunter2@cdn.example.com/sky.jpg"
    image = "${inputs.sky}" if where == "inputs" else url
    inputs = f'inputs: {{sky: "{url}"}}\n' if where == "inputs" else ""
    path = isolated / "creds.yaml"
    path.write_text(f"version: 1\nname: creds\n{inputs}steps:\n"
                    f'  - {{id: s, kind: frames, image: "{image}", prompt: p}}\n')
    code, out, err = run_cli(["validate", str(path)], capsys)
    assert code == 2 and "hunter2" not in out + err and "bob" not in out + err
    assert ("'https://***@cdn.example.com/sky.jpg' holds credentials (user:password@), which "
            "would be sent to the service and kept in klingflow's files; give a URL without "
            "them (a presigned URL works)\n1 problem found\n") in err
