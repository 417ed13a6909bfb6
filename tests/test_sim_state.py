"""A simulator with a state directory: the same service across restarts and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from klingflow.errors import UsageError
from klingflow.sim import Faults, SimConfig, create_app
from klingflow.sim.persist import DB_NAME
from tests.test_sim_api import START
from tests.test_sim_support import AUTH, FakeClock, Sim, png, sim

pytestmark = pytest.mark.anyio

TWO = [("a@example.com", 2), ("b@example.com", 1)]
A, B = "a@example.com", "b@example.com"


def wall_clock() -> FakeClock:
    """A clock the test moves by hand, starting at the wall clock's now."""
    return FakeClock(time.time())


@asynccontextmanager
async def durable(state_dir: Path, clock: FakeClock, **options: Any) -> AsyncIterator[Sim]:
    options.setdefault("accounts", TWO)
    options.setdefault("task_seconds", 10)
    async with sim(state_dir=state_dir, clock=clock, **options) as s:
        yield s


async def task_id(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    found: int = response.json()["task"]["id"]
    return found


def other_port(url: str) -> str:
    """The same upload, as seen through another host and port."""
    return url.replace("http://testserver", "http://127.0.0.1:1")


# ---- restarting on the same state directory -----------------------------------------------------


async def test_a_restarted_service_has_its_tasks_uploads_ledger_and_balances(
        tmp_path: Path) -> None:
    clock = wall_clock()
    async with durable(tmp_path, clock) as s:
        asset = await s.upload(email=A)
        first = await task_id(await s.frames(email=A, image=asset, replyRef="r1",
                                             replyUrl="http://127.0.0.1:9/hook"))
        clock.advance(1)
        second = await task_id(await s.frames(email=A, image=START, prompt="two", replyRef="r2"))
        ledger = await s.ledger()
        balance = (await s.client.get(f"/accounts/{A}")).json()["balance"]
        history = (await s.client.get("/tasks", params={"email": A})).json()["history"]
    clock.advance(5)  # time went on while no process served
    async with durable(tmp_path, clock) as s:
        reply = (await s.poll(first, A)).json()
        assert (reply["status_name"], reply["task"]["id"]) == ("processing", first)
        again = (await s.client.get("/tasks", params={"email": A})).json()["history"]
        assert [h["task"]["id"] for h in again] == [h["task"]["id"] for h in history] == [
            second, first]
        assert [h["task"]["createTime"] for h in again] == [
            h["task"]["createTime"] for h in history]
        scheduler = {e["id"]: e for e in (await s.client.get("/scheduler")).json()}
        assert set(scheduler) == {first, second}
        assert (scheduler[first]["replyRef"], scheduler[first]["elapsed"]) == ("r1", "00:06")
        assert [_fixed(e) for e in await s.ledger()] == [_fixed(e) for e in ledger]
        assert (await s.client.get(f"/accounts/{A}")).json()["balance"]["total"] == \
            balance["total"]
        # both of a's slots are still taken by the tasks from before the restart
        assert (await s.frames(email=A, image=other_port(asset))).status_code == 429
        assert (await s.frames(email=B, image=other_port(asset))).status_code == 200
        done = await s.finish(first, A)
        assert done["status_name"] == "succeed"


def _fixed(entry: dict[str, Any]) -> dict[str, Any]:
    """A ledger entry without what time and polling change."""
    return {k: v for k, v in entry.items() if k not in ("status", "polls")}


async def test_an_upload_from_before_a_restart_is_accepted_through_any_host(
        tmp_path: Path) -> None:
    clock = wall_clock()
    data = png((480, 320), (200, 40, 40))
    async with durable(tmp_path, clock) as s:
        asset = await s.upload(data, email=B)
    async with durable(tmp_path, clock) as s:
        for url in (asset, other_port(asset), asset.replace("http:", "https:")):
            served = await s.client.get(url)
            assert served.status_code == 200 and served.content == data
        tid = await task_id(await s.effect(email=B, effect="rocket", image=other_port(asset)))
        assert (await s.poll(tid, B)).status_code == 200
        assert (await s.frames(email=B, image=other_port(asset).replace(
            "/_sim/assets/", "/_sim/assets/x"))).status_code == 404


async def test_result_urls_use_the_asking_origin_after_a_restart(tmp_path: Path) -> None:
    clock = wall_clock()
    async with durable(tmp_path, clock, task_seconds=2) as s:
        tid = await task_id(await s.frames(email=A, image=START))
    clock.advance(3)
    async with durable(tmp_path, clock, task_seconds=2, media_dir=tmp_path / "media") as s:
        reply = (await s.client.get(f"http://sim2:8080/v1/kling/tasks/{tid}",
                                    params={"email": A})).json()
        url = reply["works"][0]["resource"]["resource"]
        assert url.startswith(f"http://sim2:8080/_sim/media/{tid}/")
        clip = await s.client.get(url)  # rendered lazily by the new process
        assert clip.status_code == 200 and clip.content[4:8] == b"ftyp"


async def test_ids_do_not_collide_and_fault_counters_carry_on(tmp_path: Path) -> None:
    faults = Faults({"500": 0.5})
    clock = wall_clock()

    async def polls(s: Sim, tid: int, count: int) -> list[int]:
        return [(await s.poll(tid, A)).status_code for _ in range(count)]

    async def first_task(s: Sim) -> int:
        for n in range(20):  # the same bodies, so the same outcomes, in both runs
            await s.frames(email=A, image=START, prompt=f"p{n}")
            if ledger := await s.ledger():
                found: int = ledger[0]["task_id"]
                return found
        raise AssertionError("no task was created")

    async with durable(tmp_path / "one", clock, faults=faults, seed=4) as s:
        tid = await first_task(s)
        straight = await polls(s, tid, 12)
    async with durable(tmp_path / "two", clock, faults=faults, seed=4) as s:
        assert await first_task(s) == tid
        split = await polls(s, tid, 6)
    async with durable(tmp_path / "two", clock, faults=faults, seed=4) as s:
        split += await polls(s, tid, 6)
    assert split == straight and set(straight) == {200, 500}

    clock = wall_clock()
    async with durable(tmp_path / "ids", clock) as s:
        before = await task_id(await s.frames(email=B, image=START, prompt="same"))
    clock.advance(20)
    async with durable(tmp_path / "ids", clock) as s:
        after = await task_id(await s.frames(email=B, image=START, prompt="same"))
        assert after != before
        assert {e["task_id"] for e in await s.ledger()} == {before, after}


async def test_an_unusable_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(UsageError, match=f"simulator state {tmp_path}: cannot use it"):
        create_app(SimConfig(state_dir=tmp_path))


def test_a_persisted_service_runs_on_the_wall_clock(tmp_path: Path) -> None:
    assert SimConfig(state_dir=tmp_path).clock is time.time
    assert SimConfig().clock is time.monotonic


# ---- two services on one state directory at once ------------------------------------------------


async def test_two_services_on_one_state_directory_are_one_service(tmp_path: Path) -> None:
    clock = wall_clock()
    async with durable(tmp_path, clock) as one, durable(tmp_path, clock) as two:
        asset = await one.upload(email=A)
        first = await task_id(await one.frames(email=A, image=asset, replyRef="one"))
        assert (await two.poll(first, A)).json()["task"]["id"] == first
        second = await task_id(await two.frames(email=A, image=asset, replyRef="two"))
        for s in (one, two):  # a's two slots are taken, one through each service
            refused = await s.frames(email=A, image=START, prompt="third")
            assert refused.status_code == 429, refused.text
            assert {e["replyRef"] for e in (await s.client.get("/scheduler")).json()} == {
                "one", "two"}
            assert [e["task_id"] for e in await s.ledger()] == [first, second]
        totals = {(await s.client.get(f"/accounts/{A}")).json()["balance"]["total"]
                  for s in (one, two)}
        assert totals == {(100_000 - 40) * 100}
        clock.advance(20)
        assert (await one.poll(second, A)).json()["status_name"] == "succeed"
        assert (await two.frames(email=A, image=START, prompt="now")).status_code == 200


def test_two_threads_racing_for_slots_never_exceed_max_jobs(tmp_path: Path) -> None:
    """Two uvicorn servers on one state directory, POSTs racing from threads."""
    from klingflow.sim import running_simulator

    def config() -> SimConfig:
        return SimConfig(state_dir=tmp_path, accounts=[(A, 3)], task_seconds=60,
                         accept_urls={START})

    codes: list[int] = []

    def hammer(base: str, offset: int) -> None:
        with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
            for n in range(6):
                codes.append(client.post("/videos/image2video-frames", json={
                    "email": A, "image": START, "prompt": f"{offset}-{n}"}).status_code)

    with running_simulator(config()) as one, running_simulator(config()) as two:
        threads = [threading.Thread(target=hammer, args=(base, i))
                   for i, base in enumerate((one, two))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ledger = httpx.get(one.removesuffix("/v1/kling") + "/_sim/ledger").json()
    assert sorted(codes) == [200] * 3 + [429] * 9
    assert len(ledger) == 3


# ---- a process killed with SIGKILL ----------------------------------------------------------------


@contextmanager
def serve(state_dir: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    command = [sys.executable, "-m", "klingflow", "sim", "serve", "--port", str(port),
               "--token", "test-token", "--state", str(state_dir), "--account", f"{A}:50",
               "--task-seconds", "30", *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert str(state_dir) in process.stdout.readline()
        base = f"http://127.0.0.1:{port}/v1/kling"
        _wait_up(base)
        yield process, base
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_up(base: str) -> None:
    for _ in range(200):
        try:
            httpx.get(base + "/accounts", headers=AUTH)
            return
        except httpx.ConnectError:
            time.sleep(0.05)
    raise AssertionError(f"{base} never answered")


def test_sigkill_right_after_a_post_loses_nothing(tmp_path: Path) -> None:
    with serve(tmp_path) as (process, base):
        upload = httpx.post(base + "/assets/", params={"email": A}, content=png(),
                            headers={"Content-Type": "image/png", **AUTH})
        asset = upload.json()["url"]
        reply = httpx.post(base + "/videos/image2video-frames", headers=AUTH,
                           json={"email": A, "image": asset, "replyRef": "killed"})
        os.kill(process.pid, signal.SIGKILL)
        assert reply.status_code == 200
        tid = reply.json()["task"]["id"]
    with serve(tmp_path) as (_, base):
        polled = httpx.get(f"{base}/tasks/{tid}", params={"email": A}, headers=AUTH)
        assert polled.status_code == 200 and polled.json()["task"]["id"] == tid
        ledger = httpx.get(base.removesuffix("/v1/kling") + "/_sim/ledger").json()
        assert [(e["task_id"], e["replyRef"]) for e in ledger] == [(tid, "killed")]
        again = httpx.post(base + "/videos/image2video-frames", headers=AUTH,
                           json={"email": A, "image": asset, "prompt": "after"})
        assert again.status_code == 200 and again.json()["task"]["id"] != tid


def test_sigkill_at_any_moment_leaves_a_consistent_service(tmp_path: Path) -> None:
    """POSTs and polls race a SIGKILL: every answered POST's task is there, every
    ledger entry can be polled, and the credits spent are the ledger's."""
    answered: list[int] = []
    with serve(tmp_path) as (process, base):
        stop = threading.Event()

        def submit() -> None:
            with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    try:
                        reply = client.post("/videos/image2video-frames", json={
                            "email": A, "image": _asset(client), "prompt": f"p{n}",
                            "maxJobs": 50})
                        if reply.status_code == 200:
                            answered.append(reply.json()["task"]["id"])
                            client.get(f"/tasks/{answered[-1]}", params={"email": A})
                    except httpx.TransportError:
                        return

        thread = threading.Thread(target=submit)
        thread.start()
        time.sleep(0.4)
        os.kill(process.pid, signal.SIGKILL)
        stop.set()
        thread.join()
    assert answered
    print(f"{len(answered)} POSTs answered before the SIGKILL")
    with serve(tmp_path) as (_, base):
        root = base.removesuffix("/v1/kling")
        ledger = httpx.get(root + "/_sim/ledger").json()
        ids = [e["task_id"] for e in ledger]
        assert set(answered) <= set(ids) and len(ids) == len(set(ids))
        with httpx.Client(base_url=base, headers=AUTH) as client:
            for tid in ids:
                assert client.get(f"/tasks/{tid}", params={"email": A}).status_code == 200
        spent = httpx.get(root + "/_sim/stats").json()["accounts"][A]["credits_spent"]
        assert spent == sum(e["credits"] for e in ledger)


_ASSETS: dict[int, str] = {}


def _asset(client: httpx.Client) -> str:
    """One upload per client, so the race covers uploads too."""
    if id(client) not in _ASSETS:
        reply = client.post("/assets/", params={"email": A}, content=png(),
                            headers={"Content-Type": "image/png"})
        _ASSETS[id(client)] = reply.json()["url"]
    return _ASSETS[id(client)]


async def test_callbacks_still_due_are_sent_after_a_restart(tmp_path: Path) -> None:
    from tests.test_sim_faults import receiver, wait_for

    received: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=receiver(received))
    clock = wall_clock()
    async with durable(tmp_path, clock) as s:
        tid = await task_id(await s.frames(email=A, image=START, replyRef="cb",
                                           replyUrl="http://hooks.test/hook"))
    clock.advance(5)  # its 'processing' callback fell due while nothing served
    async with durable(tmp_path, clock, callback_transport=transport) as s:
        clock.advance(10)
        await wait_for(lambda: len(received) == 1)
        await anyio.sleep(0.15)
        assert [(r["task"]["id"], r["status_name"], r["replyRef"]) for r in received] == [
            (tid, "succeed", "cb")]
        assert received[0]["works"][0]["resource"]["resource"].startswith(
            "http://testserver/_sim/media/")
