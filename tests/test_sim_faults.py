"""Seeded faults: each kind does what it says, and a seed always gives the same run."""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from klingflow.sim import Faults
from tests.test_sim_api import MODERATION, START
from tests.test_sim_support import Sim, sim

pytestmark = pytest.mark.anyio

SERVER_ERROR = {"error": "Internal Server Error", "message": "Service busy"}
MIXED = Faults.parse("429=0.1,500=0.1,moderation=0.1,reset=0.1,slow=0.05,expire=0.3")
ACCOUNTS = [("a@example.com", 50), ("b@example.com", 50)]


def body(n: int) -> dict[str, Any]:
    return {"image": START, "prompt": f"shot {n}", "replyRef": f"ref-{n}",
            "email": ACCOUNTS[n % 2][0]}


async def submit(s: Sim, n: int) -> tuple[int, Any]:
    try:
        response = await s.frames(**body(n))
    except httpx.ReadError:
        return n, "reset"
    return n, (response.status_code, response.json().get("error"))


async def poll_outcome(s: Sim, entry: dict[str, Any]) -> tuple[Any, ...]:
    results: list[Any] = []
    for _ in range(3):
        try:
            response = await s.poll(entry["task_id"], entry["account"])
        except httpx.ReadError:
            results.append("reset")
            continue
        results.append((response.status_code, response.json().get("status_name")))
    return entry["replyRef"], tuple(results)


async def run_scenario(order: list[int], *, seed: int, concurrent: bool) -> dict[str, Any]:
    async with sim(faults=MIXED, seed=seed, accounts=ACCOUNTS, slow_seconds=0.01) as s:
        outcomes: dict[int, Any] = {}

        async def one(n: int) -> None:
            outcomes[n] = (await submit(s, n))[1]

        if concurrent:
            async with anyio.create_task_group() as group:
                for n in order:
                    group.start_soon(one, n)
        else:
            for n in order:
                await one(n)
        s.clock.advance(10)
        ledger = await s.ledger()
        polls = dict([await poll_outcome(s, e) for e in sorted(ledger, key=lambda e: e["replyRef"])])
        tasks = sorted((e["replyRef"], e["task_id"], e["account"], e["fault"], e["status"],
                        e["credits"]) for e in ledger)
        return {"outcomes": dict(sorted(outcomes.items())), "tasks": tasks, "polls": polls}


async def test_the_same_seed_gives_the_same_run_whatever_the_interleaving() -> None:
    order = list(range(40))
    shuffled = order[:]
    random.Random(3).shuffle(shuffled)
    first = await run_scenario(order, seed=11, concurrent=False)
    again = await run_scenario(order, seed=11, concurrent=False)
    interleaved = await run_scenario(shuffled, seed=11, concurrent=True)
    assert first == again == interleaved
    kinds = {o if isinstance(o, str) else o[0] for o in first["outcomes"].values()}
    assert kinds >= {200, 429, 500, "reset"}  # the mix really was mixed
    assert await run_scenario(order, seed=12, concurrent=False) != first


async def test_500_on_a_post_sometimes_after_the_task_was_created() -> None:
    async with sim(faults=Faults({"500": 1.0}), accounts=[("a@example.com", 50)]) as s:
        for n in range(20):
            response = await s.frames(image=START, prompt=f"shot {n}", replyRef=f"ref-{n}")
            assert (response.status_code, response.json()) == (500, SERVER_ERROR)
        ledger = await s.ledger()
        assert 0 < len(ledger) < 20
        assert {e["fault"] for e in ledger} == {"500-after"}
        # the client recovers them by replyRef from the scheduler, or from the history
        s.service.config.faults.rates.clear()
        scheduler = (await s.client.get("/scheduler")).json()
        assert sorted(e["replyRef"] for e in scheduler) == sorted(e["replyRef"] for e in ledger)
        history = (await s.client.get("/tasks", params={"createdAfter": 0})).json()["history"]
        assert {h["task"]["id"] for h in history} == {e["task_id"] for e in ledger}


async def test_500_on_polls_then_recovery() -> None:
    async with sim(faults=Faults({"500": 0.5})) as s:
        codes = []
        created = 0
        for n in range(10):
            response = await s.frames(image=START, prompt=f"p{n}")
            created += response.status_code == 200
        task_id = (await s.ledger())[0]["task_id"]
        for _ in range(12):
            response = await s.poll(task_id)
            codes.append(response.status_code)
            if response.status_code == 500:
                assert response.json() == SERVER_ERROR
        assert set(codes) == {200, 500}


async def test_reset_in_process_is_a_read_error_and_may_follow_creation() -> None:
    async with sim(faults=Faults({"reset": 1.0}), accounts=[("a@example.com", 50)]) as s:
        for n in range(16):
            with pytest.raises(httpx.ReadError, match="Connection reset by peer"):
                await s.frames(image=START, prompt=f"shot {n}")
        ledger = await s.ledger()
        assert 0 < len(ledger) < 16 and {e["fault"] for e in ledger} == {"reset-after"}
        with pytest.raises(httpx.ReadError):
            await s.poll(ledger[0]["task_id"])


async def test_moderation_at_submit_and_during_generation() -> None:
    async with sim(faults=Faults({"moderation": 0.5}), accounts=[("a@example.com", 50)]) as s:
        refused = 0
        for n in range(24):
            response = await s.frames(image=START, prompt=f"shot {n}")
            if response.status_code == 500:
                assert response.json() == MODERATION
                refused += 1
        assert 0 < refused < 24
        s.clock.advance(10)
        ledger = await s.ledger()
        failed = [e for e in ledger if e["status"] == "failed"]
        assert 0 < len(failed) < len(ledger)
        reply = (await s.poll(failed[0]["task_id"])).json()
        assert (reply["status_name"], reply["status_final"]) == ("failed", True)
        assert reply["task"]["status_final"] is True
        assert "community guidelines" in reply["message"] and reply["error"] == reply["message"]
        assert all(w["resource"] is None for w in reply["works"])


async def test_a_failed_task_fails_part_way_and_frees_its_slot() -> None:
    async with sim(faults=Faults({"moderation": 0.5}), accounts=[("a@example.com", 50)]) as s:
        for n in range(24):
            await s.frames(image=START, prompt=f"shot {n}")
        doomed = [t for t in s.service.state.tasks.values() if t.doomed]
        assert doomed
        s.clock.advance(s.service.config.task_duration * 0.7)
        assert (await s.poll(doomed[0].id)).json()["status_name"] == "failed"


async def test_expired_result_urls_answer_403_until_the_task_is_fetched_again() -> None:
    async with sim(faults=Faults({"expire": 0.5})) as s:
        task_id = (await s.frames(image=START)).json()["task"]["id"]
        s.clock.advance(10)
        seen: list[tuple[str, int]] = []
        for _ in range(8):
            url = (await s.poll(task_id)).json()["works"][0]["resource"]["resource"]
            seen.append((url, (await s.client.get(url)).status_code))
        assert {code for _, code in seen} == {200, 403}
        assert len({url for url, _ in seen}) == len(seen)  # each poll signs afresh
        expired = next(url for url, code in seen if code == 403)
        response = await s.client.get(expired)
        assert (response.status_code, response.json()) == (
            403, {"error": "Forbidden", "message": "Signature expired"})


async def test_extra_429s() -> None:
    async with sim(faults=Faults({"429": 1.0})) as s:
        response = await s.frames(image=START)
        assert response.status_code == 429 and response.json()["code"] == 429
        assert await s.ledger() == []


async def test_slow_responses_are_delayed_by_slow_seconds_over_speed() -> None:
    async with sim(faults=Faults({"slow": 1.0}), slow_seconds=0.5, speed=2.0) as s:
        started = time.perf_counter()
        assert (await s.client.get("/accounts")).status_code == 200
        assert 0.25 <= time.perf_counter() - started < 2


def test_fault_specs_are_checked() -> None:
    assert Faults.parse("429=0.1, 500=0.05,moderation=0,reset=1").rate("500") == 0.05
    for bad in ("teapot=0.1", "500", "500=2"):
        with pytest.raises(ValueError, match="fault"):
            Faults.parse(bad)


# ---- replyUrl callbacks -------------------------------------------------------------------------


def receiver(received: list[dict[str, Any]]) -> Starlette:
    async def hook(request: Request) -> Response:
        received.append(await request.json())
        return Response("ok")

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


async def wait_for(condition: Any, timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


async def test_reply_url_gets_each_status_change_with_reply_ref() -> None:
    received: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=receiver(received))
    async with sim(callback_transport=transport) as s:
        task_id = (await s.frames(image=START, replyUrl="http://hooks.test/hook",
                                  replyRef="mine")).json()["task"]["id"]
        s.clock.advance(s.service.config.task_duration * 0.5)
        await wait_for(lambda: len(received) == 1)
        s.clock.advance(s.service.config.task_duration)
        await wait_for(lambda: len(received) == 2)
        assert [(r["status_name"], r["replyRef"], r["task"]["id"]) for r in received] == [
            ("processing", "mine", task_id), ("succeed", "mine", task_id)]
        url = received[1]["works"][0]["resource"]["resource"]
        assert url.startswith(f"http://testserver/_sim/media/{task_id}/")


async def test_an_unreachable_reply_url_changes_nothing() -> None:
    async with sim() as s:
        task_id = (await s.frames(image=START, replyUrl="https://your-callback-url.com/webhook",
                                  replyRef="r")).json()["task"]["id"]
        await s.finish(task_id)
        await anyio.sleep(0.15)  # the ticker tries, the network guard refuses, nothing breaks
        assert (await s.poll(task_id)).json()["status_name"] == "succeed"
        assert s.service.notifier.sent == []
