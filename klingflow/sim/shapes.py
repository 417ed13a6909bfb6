"""The JSON the simulated service answers with, shaped as useapi.net documents it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from klingflow.sim.catalogue import SimEffect
from klingflow.sim.replies import FAILED_MESSAGE
from klingflow.sim.rules import FRAMES
from klingflow.sim.state import FINAL, STATUS_CODES, SUCCEED, Account, SimState, Task

TASK_TYPES = {FRAMES: "m2v_img2video_hq", "image2video-effects": "m2v_img2video_se_hq"}
SCENE = "NORMAL_CREATION"
POINTS_DAYS = 730


def trio(status: str) -> dict[str, Any]:
    return {"status": STATUS_CODES[status], "status_name": status,
            "status_final": status in FINAL}


def _input(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "inputType": "URL", "token": None, "blobStorage": None, "url": url,
            "cover": None, "fromWorkId": None, "fromUploadId": None}


def task_info(task: Task) -> dict[str, Any]:
    order = task.order
    inputs = [_input("input", order.image)] if order.image else []
    if order.image_tail:
        inputs.append(_input("tail_image", order.image_tail))
    return {"type": TASK_TYPES[order.endpoint], "inputs": inputs,
            "arguments": [{"name": n, "value": v} for n, v in order.arguments],
            "extraArgs": {}, "callbackPayloads": [], "scene": SCENE}


def task_record(state: SimState, task: Task, status: str) -> dict[str, Any]:
    update = task.create_ms if status not in FINAL else state.epoch_ms(state.end_time(task))
    return {"id": task.id, "userId": task.user_id, "type": TASK_TYPES[task.order.endpoint],
            "scene": SCENE, **trio(status), "taskInfo": task_info(task), "favored": False,
            "deleted": False, "viewed": False, "createTime": task.create_ms,
            "updateTime": update, "viewTime": 0}


def points(state: SimState, account: Account) -> dict[str, Any]:
    start = state.epoch_ms(state.now()) - 86_400_000
    point = {"orderId": f"sim-{account.user_id}", "type": "recharge",
             "amount": state.config.credits * 100, "balance": account.credits * 100,
             "startTime": start, "endTime": start + POINTS_DAYS * 86_400_000}
    return {"points": [point], "total": account.credits * 100}


def submit_reply(state: SimState, task: Task) -> dict[str, Any]:
    """The answer to a generation POST (seed pages 000 and 002)."""
    kind = TASK_TYPES[task.order.endpoint]
    limitation = ({"type": kind, "remaining": 10000, "limit": 10000}
                  if task.order.endpoint == FRAMES else None)
    return {"task": task_record(state, task, "submitted"), "works": [], **trio("submitted"),
            "message": "", "limitation": limitation, "userPoints": points(state, task.account),
            "userTickets": {"ticket": []}, "editProject": None}


def _resource(url: str | None, size: tuple[int, int], *,
              duration_ms: int) -> dict[str, Any] | None:
    if url is None:
        return None
    width, height = size
    return {"resource": url, "width": width, "height": height, "duration": duration_ms,
            "resourceKey": ""}


def work(task: Task, status: str, video_url: str | None, size: tuple[int, int],
         origin: str) -> dict[str, Any]:
    cover = f"{origin}/_sim/media/{task.id}/{task.work_id}.jpg" if video_url else None
    return {"workId": task.work_id, "workItemId": 0, "taskId": task.id, "userId": task.user_id,
            "type": TASK_TYPES[task.order.endpoint], **trio(status), "contentType": "video",
            "resource": _resource(video_url, size, duration_ms=task.order.duration * 1000),
            "cover": _resource(cover, size, duration_ms=0), "starNum": 0, "cloneCount": 0,
            "reportNum": 0, "createTime": task.create_ms, "taskInfo": task_info(task)}


def video_url(task: Task, sig: str, origin: str) -> str:
    """Where the clip is downloaded: through `origin`, the asking request's."""
    return f"{origin}/_sim/media/{task.id}/{task.work_id}.mp4?sig={sig}"


def _eta(state: SimState, task: Task, status: str) -> tuple[int, int]:
    now = state.now()
    if status in FINAL:
        return 0, 0
    end = max(0.0, state.end_time(task) - now) if not task.doomed else \
        max(0.0, task.created + task.duration - now)
    queue = max(0.0, state.processing_time(task) - now)
    return int(end * 1000), int(queue * 1000)


def _message(task: Task, status: str) -> dict[str, Any]:
    if status == SUCCEED:
        return {"message": "success"}
    if status == "failed":
        return {"message": FAILED_MESSAGE, "error": FAILED_MESSAGE}
    return {"message": ""}


def poll_reply(state: SimState, task: Task, status: str, sig: str | None,
               origin: str) -> dict[str, Any]:
    """The answer to GET /tasks/{id} (and the body of a replyUrl callback)."""
    eta, queue = _eta(state, task, status)
    url = video_url(task, sig, origin) if status == SUCCEED and sig else None
    works = [] if status == "submitted" else [
        work(task, status, url, state.config.clip_size, origin)]
    return {**trio(status), "etaTime": eta, "etaTimeOverSla": False, "queuingEtaTime": queue,
            "originEtaTime": eta, "originQueuingEtaTime": queue, **_message(task, status),
            "task": task_record(state, task, status), "works": works}


def history_entry(state: SimState, task: Task, sig: str | None,
                  origin: str) -> dict[str, Any]:
    status = state.status_of(task)
    url = video_url(task, sig, origin) if status == SUCCEED and sig else None
    works = [] if status == "submitted" else [
        work(task, status, url, state.config.clip_size, origin)]
    return {"task": task_record(state, task, status), "works": works, **trio(status)}


def effect_entry(effect: SimEffect, origin: str) -> dict[str, Any]:
    entry = {"name": effect.name, "caption": effect.caption,
             "supportedModelMode": list(effect.modes),
             "effectSupported": effect.effect_supported,
             "promptSupported": effect.prompt_supported,
             "compositedSchema": {"process": {"taskType": TASK_TYPES["image2video-effects"],
                                              "taskVersion": effect.kling_version,
                                              "defaultPrompt": effect.default_prompt}},
             "coverUrl": f"{origin}/_sim/effects/{effect.name}.jpg",
             "webVideoUrl": f"{origin}/_sim/effects/{effect.name}.mp4",
             "duration": effect.duration}
    if effect.hot:
        entry["hot"] = True
    return entry


def effects_catalogue(catalogue: tuple[SimEffect, ...], origin: str) -> list[dict[str, Any]]:
    """GET /videos/effects: every entry, retired ones included, as the service lists them."""
    return [effect_entry(e, origin) for e in catalogue]


def account_entry(state: SimState, account: Account, *, balance: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"email": account.email, "maxJobs": account.max_jobs,
                             "userId": account.user_id,
                             "session": {"valid": True, "expires": None}}
    if balance:
        entry["balance"] = points(state, account)
    return entry


def scheduler_entry(state: SimState, task: Task) -> dict[str, Any]:
    elapsed = max(0, int(state.now() - task.created))
    started = dt.datetime.fromtimestamp(task.create_ms / 1000, dt.UTC)
    return {"id": task.id, "email": task.account.email,
            "started": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "elapsed": f"{elapsed // 60:02d}:{elapsed % 60:02d}",
            "replyUrl": task.order.reply_url, "replyRef": task.order.reply_ref}


def available(state: SimState) -> dict[str, Any]:
    executing = [scheduler_entry(state, t) for t in state.unfinished()]
    slots = []
    for account in state.accounts.values():
        running = state.running(account)
        slots.append({"email": account.email, "maxJobs": account.max_jobs,
                      "executing": running, "available": max(0, account.max_jobs - running)})
    return {"executing": executing, "available": slots}
