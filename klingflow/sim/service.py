"""The simulated service's operations, one method per endpoint, free of HTTP.

Each returns the JSON to answer with or raises `SimError`; generation POSTs return
an `Outcome`, since a fault may strike after the task was created. Each runs in one
transaction of the store (klingflow.sim.persist), and never awaits inside it.

Result URLs are built from the origin the request came through, never the one a
task was created through: a persisted task outlives the port it was submitted on.
Upload URLs are recognised by their path alone (`/_sim/assets/NAME`), whatever
their host and port, so an upload from before a restart stays valid.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from klingflow.sim import replies, shapes
from klingflow.sim.callbacks import Notifier
from klingflow.sim.catalogue import SimEffect, find
from klingflow.sim.config import SimConfig
from klingflow.sim.faults import Visit
from klingflow.sim.images import decode, pattern_image
from klingflow.sim.persist import open_store
from klingflow.sim.render import Renderer
from klingflow.sim.rules import Order, build_order
from klingflow.sim.state import FINAL, SUCCEED, Asset, SimState, Task, body_hash

FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
"""A prompt with this word is always refused by moderation at submit (for tests)."""

MB = 1024 * 1024
ASSET_LIMITS = {"image": 10 * MB, "video": 100 * MB, "audio": 20 * MB}
MIN_IMAGE_PX = 300
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "video/mp4": "mp4",
              "video/quicktime": "mov", "audio/wav": "wav", "audio/wave": "wav",
              "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/flac": "flac",
              "audio/aac": "aac", "audio/ogg": "ogg"}
HISTORY_PAGE = 20
CONTENT_TYPES = ("video", "image", "audio")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a generation POST ends: a JSON reply, or a connection reset."""

    status: int
    body: dict[str, Any]
    reset: bool = False
    task: Task | None = None


class SimService:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.state = SimState(config)
        self.store = open_store(self.state)
        self.renderer = Renderer(config.media_dir, self.picture, config.clip_size,
                                 cheap=config.cheap_render)
        self.notifier = Notifier(self.state, self.callback_body, config.callback_transport)
        self.origin: str | None = None  # the latest request's, for callbacks
        self._schedule_loaded()

    def _schedule_loaded(self) -> None:
        """Callbacks still due for the tasks a persisted service had before."""
        now = self.state.now()
        for task in self.state.tasks.values():
            if self.state.status_of(task, now) not in FINAL:
                self.notifier.schedule(task, after=now)

    def close(self) -> None:
        self.store.close()
        self.renderer.close()

    def visit(self, identity: str) -> Visit:
        """Count one more request of this identity (faults are decided on the count)."""
        with self.store.write():
            return self.state.plan.visit(identity)

    # ---- generation ------------------------------------------------------------------

    def generate(self, endpoint: str, body: dict[str, Any], visit: Visit,
                 origin: str) -> Outcome:
        with self.store.write(durable=True):
            return self._generate(endpoint, body, visit, origin)

    def _generate(self, endpoint: str, body: dict[str, Any], visit: Visit,
                  origin: str) -> Outcome:
        order = build_order(endpoint, body, self.config.effects_for)
        self._check_images(order)
        if FORBIDDEN.search(order.prompt) or FORBIDDEN.search(str(body.get("prompt", ""))):
            raise replies.SimError(500, dict(replies.MODERATION))
        plan = self.state.plan
        if plan.hits("429", visit):
            raise self._busy(order)
        account = self.state.account_for(order)
        if plan.hits("moderation", visit):
            raise replies.SimError(500, dict(replies.MODERATION))
        fault = self._post_fault(visit)
        if fault in ("500-before", "reset-before"):
            return self._fault_outcome(fault, None)
        task = self.state.create_task(order, account, body_hash(body), visit, origin)
        task.fault = fault
        self.notifier.schedule(task)
        if fault is not None:
            return self._fault_outcome(fault, task)
        return Outcome(200, shapes.submit_reply(self.state, task), task=task)

    def _busy(self, order: Order) -> replies.SimError:
        account = self.state.accounts.get(order.email or "")
        if account is None:
            return replies.busy_everywhere()
        return replies.busy(order.max_jobs or account.max_jobs, account.email)

    def _post_fault(self, visit: Visit) -> str | None:
        plan = self.state.plan
        for kind in ("500", "reset"):
            if plan.hits(kind, visit):
                return f"{kind}-{'after' if plan.after_creation(kind, visit) else 'before'}"
        return None

    def _fault_outcome(self, fault: str, task: Task | None) -> Outcome:
        if fault.startswith("500"):
            return Outcome(500, dict(replies.SERVER_ERROR), task=task)
        body = shapes.submit_reply(self.state, task) if task else dict(replies.SERVER_ERROR)
        return Outcome(200, body, reset=True, task=task)

    def _check_images(self, order: Order) -> None:
        for url in (order.image, order.image_tail):
            if url is not None and not self._known_image(url):
                raise replies.SimError(404, dict(replies.NOT_FOUND))

    def _known_image(self, url: str) -> bool:
        return self.state.asset_for_url(url) is not None or self.config.accepts_url(url)

    def picture(self, url: str) -> Image.Image:
        """The picture behind an input URL: the uploaded bytes, or a URL pattern."""
        asset = self.state.asset_for_url(url)
        return decode(asset.content()) if asset else pattern_image(url)

    # ---- polling and listing -----------------------------------------------------------

    def poll(self, task_id: int, email: str | None, *, expire: bool,
             origin: str) -> dict[str, Any]:
        with self.store.write():
            task = self.state.task_for(task_id, self.state.account_named(email))
            self.state.count_poll(task)
            status = self.state.status_of(task)
            sig = self.state.sign(task, expired=expire) if status == SUCCEED else None
            return shapes.poll_reply(self.state, task, status, sig, origin)

    def callback_body(self, task: Task) -> dict[str, Any]:
        with self.store.write():
            status = self.state.status_of(task)
            sig = self.state.sign(task, expired=False) if status == SUCCEED else None
            return {**shapes.poll_reply(self.state, task, status, sig,
                                        self.origin or task.origin),
                    "replyRef": task.order.reply_ref}

    def history(self, query: dict[str, str], origin: str) -> dict[str, Any]:
        with self.store.write():
            return self._history(query, origin)

    def _history(self, query: dict[str, str], origin: str) -> dict[str, Any]:
        account = self.state.account_named(query.get("email") or None)
        after, before = _ms(query, "createdAfter"), _ms(query, "createdBefore")
        if after is not None and before is not None:
            raise replies.bad_request("createdAfter and createdBefore cannot be used together")
        content = query.get("contentType") or "video"
        if content not in CONTENT_TYPES:
            raise replies.value_not_allowed("contentType", content, ",".join(CONTENT_TYPES))
        size = _page_size(query)
        tasks = self.state.history(account, page_size=size, after=after, before=before) \
            if content == "video" else []
        return {"history": [self._history_entry(t, origin) for t in tasks]}

    def _history_entry(self, task: Task, origin: str) -> dict[str, Any]:
        done = self.state.status_of(task) == SUCCEED
        return shapes.history_entry(self.state, task,
                                    self.state.sign(task, expired=False) if done else None,
                                    origin)

    # ---- uploads ---------------------------------------------------------------------

    def upload(self, email: str | None, content_type: str, data: bytes,
               origin: str) -> dict[str, Any]:
        account = self.state.account_named(email)
        if content_type not in EXTENSIONS:
            raise replies.unsupported_asset_type(content_type or "(none)")
        family = content_type.split("/")[0]
        if len(data) > ASSET_LIMITS[family]:
            raise replies.bad_request(f"File is too large: {len(data)} bytes, maximum "
                                      f"{ASSET_LIMITS[family] // MB} MB for {content_type}")
        width, height = _image_size(data) if family == "image" else (0, 0)
        name = f"{hashlib.sha256(data).hexdigest()[:24]}.{EXTENSIONS[content_type]}"
        self._keep_asset(Asset(name, content_type, data, account.email, width, height))
        url = f"{origin}/_sim/assets/{name}"
        reply: dict[str, Any] = {"status": 1 if family == "video" else 3, "url": url,
                                 "fileName": name, "message": ""}
        if family == "video":
            reply["resourceUrl"] = url
        return reply

    def _keep_asset(self, asset: Asset) -> None:
        """The file first (outside the transaction: it may be large), then the row."""
        path: Path | None = self.store.save_asset(asset.file_name, asset.data)
        if path is not None:
            asset = Asset(asset.file_name, asset.content_type, b"", asset.account,
                          asset.width, asset.height, path=path)
        with self.store.write(durable=True):
            self.state.add_asset(asset)

    def asset(self, name: str) -> Asset | None:
        with self.store.read():
            return self.state.assets.get(name)

    # ---- accounts, effects, scheduler, inspection ------------------------------------------

    def effects(self, email: str | None, origin: str) -> list[dict[str, Any]]:
        """GET /videos/effects: the catalogue of the account `email` names (which must exist)."""
        if email is not None:
            with self.store.read():
                self.state.account_named(email)
        return shapes.effects_catalogue(self.config.effects_for(email), origin)

    def effect(self, name: str) -> SimEffect | None:
        """An effect any account's catalogue lists (for its sample clip and cover)."""
        for catalogue in (self.config.effects, *self.config.account_effects.values()):
            found = find(catalogue, name)
            if found is not None:
                return found
        return None

    def accounts(self) -> dict[str, Any]:
        with self.store.read():
            return {a.email: shapes.account_entry(self.state, a, balance=False)
                    for a in self.state.accounts.values()}

    def account(self, email: str) -> dict[str, Any]:
        with self.store.read():
            if email not in self.state.accounts:
                raise replies.SimError(404, {"error": f"Account {email} not found",
                                             "code": 404})
            return shapes.account_entry(self.state, self.state.accounts[email], balance=True)

    def scheduler(self) -> list[dict[str, Any]]:
        with self.store.read():
            return [shapes.scheduler_entry(self.state, t) for t in self.state.unfinished()]

    def available(self) -> dict[str, Any]:
        with self.store.read():
            return shapes.available(self.state)

    def finished_task(self, task_id: int) -> Task | None:
        """A task whose result can be downloaded (succeeded), or None."""
        with self.store.read():
            task = self.state.tasks.get(task_id)
            return task if task is not None and self.state.status_of(task) == SUCCEED else None

    def ledger(self) -> list[dict[str, Any]]:
        with self.store.read():
            return [self._ledger_entry(t) for t in self.state.tasks.values()]

    def _ledger_entry(self, task: Task) -> dict[str, Any]:
        order = task.order
        return {"task_id": task.id, "endpoint": order.endpoint, "account": task.account.email,
                "body_hash": task.body_hash, "replyRef": order.reply_ref,
                "credits": task.credits, "created": task.create_ms,
                "runs_ms": round(task.duration * 1000),
                "status": self.state.status_of(task), "ignored": list(order.ignored),
                "fault": task.fault, "polls": task.polls, "model": order.model,
                "effect": order.effect, "mode": order.mode, "duration": order.duration}

    def stats(self) -> dict[str, Any]:
        """Accounts and tasks are the service's; request counts this process's."""
        with self.store.read():
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        accounts = {a.email: {"max_jobs": a.max_jobs, "running": self.state.running(a),
                              "peak_running": a.peak_running, "credits_spent": a.spent}
                    for a in self.state.accounts.values()}
        return {"accounts": accounts, "requests": dict(sorted(self.state.requests.items())),
                "tasks": len(self.state.tasks)}


def _ms(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if not value:
        return None
    if not value.isdigit():
        raise replies.bad_request(f"{name} must be a timestamp in milliseconds, got {value}")
    return int(value)


def _page_size(query: dict[str, str]) -> int:
    value = query.get("pageSize") or str(HISTORY_PAGE)
    if not value.isdigit() or int(value) < 1:
        raise replies.bad_request(f"pageSize must be a positive number, got {value}")
    return int(value)


def _image_size(data: bytes) -> tuple[int, int]:
    try:
        width, height = decode(data).size
    except (OSError, ValueError) as exc:
        raise replies.bad_request("The file is not a readable PNG or JPEG image") from exc
    if min(width, height) < MIN_IMAGE_PX:
        raise replies.bad_request(f"Image is too small: {width}x{height} px, minimum "
                                  f"{MIN_IMAGE_PX} px on each side")
    return width, height
