"""The dry run: a checked Pipeline -> a Plan of ordered requests with their exact cost.

`build_plan` orders the steps (topologically by `Step.needs`, ties in file order),
builds the exact JSON body each step would POST (`request_body`, which the executor
reuses at run time with real URLs) and prices every step from the built-in table
(`klingflow.models.PRICES`) and the pipeline's own `prices:`. A price that neither
knows stays unknown (`None`): it is named, never guessed and never counted as 0.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from klingflow.errors import PipelineError, Problem
from klingflow.kinds import EFFECT, kind_of
from klingflow.models import (
    AUDIO_ALWAYS,
    AUDIO_DEFAULT_ON,
    AUDIO_NEEDS_PRO,
    DEFAULT_DURATION,
    DEFAULT_MODE,
    DEFAULT_MODEL,
    MODELS,
    ModelRules,
    PriceKey,
    price_of,
)
from klingflow.spec.pipeline import Pipeline, Ref, Step, Template, Value

PLAN_FORMAT = 1
CACHED = "cached"
RESTORE = "restore"
RE_ATTACH = "re-attach"
NO_COST = (CACHED, RESTORE, RE_ATTACH)
REPLY_REF_PLACEHOLDER = "<unique per submit>"

PriceSource = Literal["table", "pipeline", "unknown"]
Resolve = Callable[[Ref], str]


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One request of the plan: what it runs, where, after what, and for how much.

    `model` is a model name, or `effect:NAME` for an effect. `credits` is None when
    no price is known; `price_note` then says which price is missing.
    """

    id: str
    kind: str
    endpoint: str
    model: str
    mode: str
    duration: int
    audio: bool
    account: str | None
    email: str | None
    waits_for: tuple[str, ...]
    body: Mapping[str, object]
    credits: int | None
    price_source: PriceSource
    step: Step = field(compare=False, repr=False)  # what the executor runs
    price_note: str | None = None
    cache: str | None = None  # cached, restore or will run; None when the cache was not asked
    reason: str | None = None  # why it will run: new, changed: prompt, upstream changed...


@dataclass(frozen=True, slots=True)
class AccountTotal:
    """The known cost of one account's steps; `account` None = picked at run time."""

    account: str | None
    email: str | None
    steps: int
    credits: int
    unknown: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """The dry run of a pipeline: steps in execution order and the totals."""

    name: str
    path: str
    description: str
    pipeline: Pipeline = field(compare=False, repr=False)  # what the plan was made of
    max_jobs: int | None
    budget: int | None
    steps: tuple[PlannedStep, ...]
    outputs: Mapping[str, tuple[str, ...]]
    accounts: tuple[AccountTotal, ...]
    credits: int  # the known cost of the steps that will run
    unknown: tuple[str, ...]  # ids of the steps that will run and whose price is unknown
    cached: tuple[str, ...] = ()  # ids of the steps the cache already holds (no cost)
    restored: tuple[str, ...] = ()  # ids of the steps the lock restores (no cost)
    reattached: tuple[str, ...] = ()  # ids of the steps whose paid task is re-attached to

    @property
    def complete(self) -> bool:
        """True when every step's price is known, so `credits` is the whole cost."""
        return not self.unknown

    def to_json(self) -> dict[str, object]:
        """The plan as JSON data, valid against `schemas/plan.schema.json`."""
        return {
            "format": PLAN_FORMAT,
            "pipeline": {"name": self.name, "path": self.path, "description": self.description},
            "limits": {"max_jobs": self.max_jobs, "budget": self.budget},
            "steps": [_step_json(s) for s in self.steps],
            "outputs": {name: {"concat": list(ids)} for name, ids in self.outputs.items()},
            "totals": _totals_json(self),
        }


# ---- the request body, shared with the executor ----------------------------------


def endpoint_of(step: Step) -> str:
    """The endpoint path a step POSTs to, e.g. `videos/image2video-frames`."""
    return kind_of(step.kind).endpoint


def request_body(step: Step, pipeline: Pipeline, resolve: Resolve, *,
                 email: str | None) -> dict[str, object]:
    """The exact JSON body of a step's POST, with run-time values from `resolve`.

    `duration` is sent as a string; frames always name their model; `mode` is sent
    where the model or effect accepts it (pro-only models: omitted; end frame: pro).
    `replyRef` is not included: the executor adds a fresh one at each submit.
    """
    body: dict[str, object] = {} if email is None else {"email": email}
    decided = _decided_fields(step)
    for name in kind_of(step.kind).fields:
        value = decided[name] if name in decided else step.params.get(name)
        if value is not None:
            body[name] = value.render(resolve) if isinstance(value, Template) else value
    return body


def _decided_fields(step: Step) -> dict[str, Value | None]:
    """Fields whose sent value the rules decide, not the user's text; None = not sent."""
    if step.kind == EFFECT.name:
        return {"mode": _effect_mode(step)}
    model = str(step.params.get("model_name") or DEFAULT_MODEL)
    rules = MODELS.get(model)
    duration = int(step.params.get("duration", DEFAULT_DURATION))  # type: ignore[arg-type]
    decided: dict[str, Value | None] = {"model_name": model, "duration": str(duration)}
    if rules is None:
        decided["mode"] = str(step.params.get("mode") or DEFAULT_MODE)
    else:
        decided["mode"] = None if rules.pro_only else _frames_mode(rules, step)
        if rules.audio == AUDIO_ALWAYS:
            decided["enable_audio"] = None
    return decided


# ---- what a step runs ---------------------------------------------------------------


def _frames_mode(rules: ModelRules, step: Step) -> str:
    mode = step.params.get("mode")
    return rules.effective_mode(str(mode) if mode else None,
                                has_tail="image_tail" in step.params)


def _effect_mode(step: Step) -> str:
    """The mode an effect is sent with: the step's (or the one its catalogue entry lists,
    which the loader fills in), else the service's default; always sent, so the request,
    and its cache key, is the same whatever the service's default becomes."""
    return str(step.params.get("mode") or DEFAULT_MODE)


def _effect_name(step: Step) -> str:
    return str(step.params["effect"])


def _frames_audio(rules: ModelRules | None, step: Step, mode: str) -> bool:
    asked = step.params.get("enable_audio")
    if rules is None:
        return bool(asked)
    if rules.audio == AUDIO_ALWAYS:
        return True
    if rules.audio == AUDIO_DEFAULT_ON:
        return asked is not False
    if rules.audio == AUDIO_NEEDS_PRO:
        return bool(asked) and mode == "pro"
    return bool(asked)


def _price_key(step: Step) -> PriceKey:
    """What the step's price depends on: model (or `effect:NAME`), mode, duration, audio."""
    model = kind_of(step.kind).price_model(step.params)
    if step.kind == EFFECT.name:  # an effect clip is 5 s; the catalogue says no other length
        return PriceKey(model, _effect_mode(step), DEFAULT_DURATION)
    rules = MODELS.get(model)
    if rules is None:
        mode = str(step.params.get("mode") or DEFAULT_MODE)
    else:
        mode = _frames_mode(rules, step)
    duration = int(step.params.get("duration", DEFAULT_DURATION))  # type: ignore[arg-type]
    return PriceKey(model, mode, duration, _frames_audio(rules, step, mode))


# ---- prices -------------------------------------------------------------------------


def _pipeline_prices(pipeline: Pipeline) -> dict[PriceKey, int]:
    return {PriceKey(p.model, p.mode, p.duration, p.audio): p.credits for p in pipeline.prices}


def _price(key: PriceKey, extra: dict[PriceKey, int]) -> tuple[int | None, PriceSource]:
    credits = price_of(key, extra)
    if credits is None:
        return None, "unknown"
    return credits, "pipeline" if key in extra else "table"


def _missing_price_note(key: PriceKey) -> str:
    audio = " with audio" if key.audio else ""
    return (f"no published price for {key.model} {key.mode} {key.duration} s{audio}; "
            "add it under prices:")


# ---- order --------------------------------------------------------------------------


def execution_order(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """Steps in an order that respects `needs`; among ready steps, file order first."""
    index = {s.id: i for i, s in enumerate(steps)}
    waiting = [len(set(s.needs)) for s in steps]
    dependents: list[list[int]] = [[] for _ in steps]
    for i, step in enumerate(steps):
        for need in set(step.needs):
            dependents[index[need]].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[Step] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(steps[i])
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(steps):
        stuck = sorted(s.id for s, n in zip(steps, waiting, strict=True) if n)
        raise ValueError(f"steps wait for each other in a cycle: {', '.join(stuck)}")
    return tuple(order)


# ---- the plan -----------------------------------------------------------------------


def plan_resolver(pipeline: Pipeline) -> Resolve:
    """How the plan shows run-time values: URL inputs as themselves, others as placeholders."""

    def resolve(ref: Ref) -> str:
        source = pipeline.inputs.get(ref.name) if ref.scope == "inputs" else None
        if source is not None and source.url is not None:
            return source.url
        return ref.placeholder

    return resolve


def plan_step(step: Step, pipeline: Pipeline, *, resolve: Resolve,
              prices: dict[PriceKey, int]) -> PlannedStep:
    """One step of the plan: its request body, its effective settings and its price."""
    account = pipeline.accounts.get(step.account) if step.account else None
    email = account.email if account else None
    key = _price_key(step)
    credits, source = _price(key, prices)
    body = request_body(step, pipeline, resolve, email=email)
    body["replyRef"] = REPLY_REF_PLACEHOLDER
    return PlannedStep(
        id=step.id, kind=step.kind, endpoint=endpoint_of(step), model=key.model,
        mode=key.mode, duration=key.duration, audio=key.audio, account=step.account,
        email=email, waits_for=step.needs, body=body, credits=credits,
        price_source=source, step=step,
        price_note=_missing_price_note(key) if credits is None else None)


def build_plan(pipeline: Pipeline) -> Plan:
    """Plan a checked pipeline; raise PipelineError if its known cost exceeds the budget."""
    resolve = plan_resolver(pipeline)
    prices = _pipeline_prices(pipeline)
    steps = tuple(plan_step(s, pipeline, resolve=resolve, prices=prices)
                  for s in execution_order(pipeline.steps))
    known = sum(s.credits for s in steps if s.credits is not None)
    problems = budget_problems(pipeline, known)
    if problems:
        raise PipelineError(problems)
    return Plan(
        name=pipeline.name, path=str(pipeline.path), description=pipeline.description,
        pipeline=pipeline,
        max_jobs=pipeline.max_jobs, budget=pipeline.budget, steps=steps,
        outputs={o.name: o.concat for o in pipeline.outputs.values()},
        accounts=_account_totals(pipeline, steps), credits=known,
        unknown=tuple(s.id for s in steps if s.credits is None))


def with_verdicts(plan: Plan, pipeline: Pipeline,
                  verdicts: Mapping[str, tuple[str, str]]) -> Plan:
    """The plan with each step's verdict `(cached | restore | will run, reason)`; the
    totals then count only the steps that will run."""
    steps = tuple(replace(s, cache=verdicts[s.id][0], reason=verdicts[s.id][1] or None)
                  for s in plan.steps)
    running = tuple(s for s in steps if s.cache not in NO_COST)
    return replace(plan, steps=steps, accounts=_account_totals(pipeline, running),
                   credits=sum(s.credits for s in running if s.credits is not None),
                   unknown=tuple(s.id for s in running if s.credits is None),
                   cached=tuple(s.id for s in steps if s.cache == CACHED),
                   restored=tuple(s.id for s in steps if s.cache == RESTORE),
                   reattached=tuple(s.id for s in steps if s.cache == RE_ATTACH))


def known_cost(pipeline: Pipeline) -> int:
    """The credits of every step whose price is known (the table, then `prices:`)."""
    prices = _pipeline_prices(pipeline)
    return sum(_price(_price_key(s), prices)[0] or 0 for s in pipeline.steps)


def budget_problems(pipeline: Pipeline, known: int | None = None) -> list[Problem]:
    """The located problem of a budget the known cost already exceeds (empty if none).

    The loader may call it last, so `klingflow validate` reports it with the rest.
    """
    if pipeline.budget is None:
        return []  # nothing to price
    known = known_cost(pipeline) if known is None else known
    if known <= pipeline.budget:
        return []
    where = pipeline.budget_position
    file, line, col = (where.file, where.line, where.col) if where else (str(pipeline.path), 1, 1)
    return [Problem(
        file, line, col, "limits.budget",
        f"the known cost of {known} credits exceeds the budget of {pipeline.budget}; "
        "raise limits.budget or remove steps")]


def _account_totals(pipeline: Pipeline, steps: tuple[PlannedStep, ...]) -> tuple[AccountTotal, ...]:
    used = {s.account for s in steps}
    aliases: list[str | None] = [a for a in pipeline.accounts if a in used]
    if None in used:
        aliases.append(None)
    return tuple(_account_total(alias, pipeline, steps) for alias in aliases)


def _account_total(alias: str | None, pipeline: Pipeline,
                   steps: tuple[PlannedStep, ...]) -> AccountTotal:
    mine = [s for s in steps if s.account == alias]
    account = pipeline.accounts.get(alias) if alias else None
    return AccountTotal(
        account=alias, email=account.email if account else None, steps=len(mine),
        credits=sum(s.credits for s in mine if s.credits is not None),
        unknown=tuple(s.id for s in mine if s.credits is None))


# ---- JSON ---------------------------------------------------------------------------


def _step_json(step: PlannedStep) -> dict[str, object]:
    return {
        "id": step.id, "kind": step.kind, "endpoint": step.endpoint, "model": step.model,
        "mode": step.mode, "duration": step.duration, "audio": step.audio,
        "account": step.account, "email": step.email, "waits_for": list(step.waits_for),
        "body": dict(step.body), "credits": step.credits,
        "price_source": step.price_source, "price_note": step.price_note,
        "cache": {"verdict": step.cache, "reason": step.reason} if step.cache else None,
    }


def _totals_json(plan: Plan) -> dict[str, object]:
    return {
        "credits": plan.credits,
        "unknown": list(plan.unknown),
        "complete": plan.complete,
        "cached": list(plan.cached),
        "restored": list(plan.restored),
        "reattached": list(plan.reattached),
        "accounts": [
            {"account": a.account, "email": a.email, "steps": a.steps,
             "credits": a.credits, "unknown": list(a.unknown)}
            for a in plan.accounts
        ],
    }
