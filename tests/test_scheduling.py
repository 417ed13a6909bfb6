"""Slots, Budget and urgency on their own, without a service."""

from __future__ import annotations

import anyio
import pytest

from klingflow.run.results import StepFailed
from klingflow.run.scheduling import Budget, Slots, urgency
from klingflow.spec.pipeline import Position, Step

pytestmark = pytest.mark.anyio


async def _granted(slots: Slots, order: list[tuple[str, str | None]], name: str,
                   preferred: str | None, urgency: float = 0.0) -> None:
    alias = await slots.acquire(preferred, any_account=False, urgency=urgency)
    order.append((name, alias))


async def test_each_account_and_the_run_cap_bound_the_slots() -> None:
    slots = Slots({"a": 2, "b": 1}, total=2)
    order: list[tuple[str, str | None]] = []
    async with anyio.create_task_group() as group:
        for n in range(4):
            group.start_soon(_granted, slots, order, f"s{n}", "a")
        await anyio.sleep(0.01)
        assert order == [("s0", "a"), ("s1", "a")]
        slots.release("a")
        await anyio.sleep(0.01)
        assert order[-1] == ("s2", "a")
        slots.release("a")
        slots.release("a")
    assert order[-1] == ("s3", "a")


async def test_a_freed_slot_goes_to_the_most_urgent_step_that_can_use_it() -> None:
    slots = Slots({"a": 1, "b": 1}, total=None)
    order: list[tuple[str, str | None]] = []
    assert await slots.acquire("a", any_account=False) == "a"
    assert await slots.acquire("b", any_account=False) == "b"
    async with anyio.create_task_group() as group:
        group.start_soon(_granted, slots, order, "short", "a", 5.0)
        group.start_soon(_granted, slots, order, "long", "a", 30.0)
        group.start_soon(_granted, slots, order, "pinned-b", "b", 99.0)
        await anyio.sleep(0.01)
        slots.release("a")
        await anyio.sleep(0.01)
        assert order == [("long", "a")]  # pinned-b cannot use a slot of a
        slots.release("a")
        slots.release("b")
    assert order == [("long", "a"), ("short", "a"), ("pinned-b", "b")]


async def test_a_step_without_an_account_takes_the_least_loaded_one() -> None:
    slots = Slots({"a": 4, "b": 2}, total=None)
    got = [await slots.acquire(None, any_account=True) for _ in range(3)]
    assert got == ["a", "b", "a"]


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    slots = Slots({"a": 1}, total=None)
    await slots.acquire("a", any_account=False)
    with anyio.move_on_after(0.01):
        await slots.acquire("a", any_account=False)
    slots.release("a")
    with anyio.fail_after(1):
        assert await slots.acquire("a", any_account=False) == "a"


async def test_tasks_found_on_resume_count_even_past_the_limit() -> None:
    slots = Slots({"a": 1}, total=None)
    slots.take("a")
    slots.take("a")
    slots.release("a")
    with anyio.move_on_after(0.01) as waited:
        await slots.acquire("a", any_account=False)
    assert waited.cancelled_caught
    slots.release("a")
    with anyio.fail_after(1):
        await slots.acquire("a", any_account=False)


def test_the_budget_refuses_a_submit_that_would_cross_it() -> None:
    budget = Budget(100, spent=40)
    budget.reserve("a", 35)
    with pytest.raises(StepFailed, match=r"^submitting b \(30 credits\) would cross the budget: "
                                         r"75 of 100 credits already reserved; nothing was sent$"):
        budget.reserve("b", 30)
    budget.refund(35)
    budget.reserve("b", 30)
    assert budget.reserved == 70


def test_under_a_budget_an_unknown_price_is_refused_and_without_one_anything_goes() -> None:
    with pytest.raises(StepFailed, match="the price of c is unknown, so it cannot be reserved"):
        Budget(100).reserve("c", None)
    free = Budget(None)
    free.reserve("c", None)
    free.reserve("d", 10**9)


def _step(step_id: str, duration: int, needs: tuple[str, ...] = ()) -> Step:
    return Step(id=step_id, kind="frames", params={"duration": duration}, account=None,
                needs=needs, retries=3, timeout=60.0, position=Position("p.yaml", 1, 1),
                base_id=step_id, positions={})


def test_urgency_is_the_longest_chain_of_clip_seconds_to_the_end() -> None:
    steps = [_step("a", 5), _step("b", 10, ("a",)), _step("c", 5, ("a",)),
             _step("d", 5, ("b", "c")), _step("lone", 5)]
    assert urgency(steps) == {"a": 20.0, "b": 15.0, "c": 10.0, "d": 5.0, "lone": 5.0}
