"""The simulator's endpoints, in-process: documented shapes and exact error texts."""

from __future__ import annotations

import statistics
from typing import Any

import httpx
import pytest

from klingflow.models import PriceKey, price_of
from klingflow.sim.catalogue import CATALOGUE, SimEffect
from klingflow.sim.rules import SIM_CREDITS_PER_SECOND
from tests.test_sim_support import SEED_EMAIL, png, sim

pytestmark = pytest.mark.anyio

START = "https://example.com/start-image.jpg"
END = "https://example.com/end-image.jpg"
IMAGE = "https://example.com/image.jpg"
NOT_FOUND = {"error": "Sorry, the requested resource was not found (VALID.ResourceNotFound)",
             "message": "Not Found"}
MODERATION = {"error": "The content you uploaded appears to violate the community guidelines. "
                       "(CM_EXT.POther)", "message": "Service busy (CM_EXT.POther)"}
ENVELOPE_KEYS = {"task", "works", "status", "status_name", "status_final", "message",
                 "limitation", "userPoints", "userTickets", "editProject"}
TASK_KEYS = {"id", "userId", "type", "scene", "status", "status_name", "status_final",
             "taskInfo", "favored", "deleted", "viewed", "createTime", "updateTime"}

# The seed pages' example bodies, as written.
SEED_FRAMES_BODY = {
    "email": SEED_EMAIL, "image": START,
    "prompt": "A futuristic city with flying cars and tall buildings",
    "negative_prompt": "people, low quality, distorted", "duration": "10",
    "model_name": "kling-v2-5", "mode": "pro",
    "replyUrl": "https://your-callback-url.com/webhook", "replyRef": "your-reference-id"}
SEED_FRAMES_EXAMPLE = {
    "email": SEED_EMAIL, "image": START, "image_tail": END,
    "prompt": "A futuristic city with flying cars and tall buildings",
    "negative_prompt": "people, low quality, distorted"}
SEED_EFFECTS_BODY = {
    "email": SEED_EMAIL, "effect": "rocket", "image": IMAGE,
    "prompt": "A detailed description for the effect", "mode": "std",
    "replyUrl": "https://your-callback-url.com/webhook", "replyRef": "your-reference-id"}
SEED_EFFECTS_EXAMPLE = {"email": SEED_EMAIL, "effect": "rocket", "image": IMAGE}


def arguments(reply: dict[str, Any]) -> dict[str, str]:
    return {a["name"]: a["value"] for a in reply["task"]["taskInfo"]["arguments"]}


def trio(obj: dict[str, Any]) -> tuple[int, str, bool]:
    return obj["status"], obj["status_name"], obj["status_final"]


# ---- auth ------------------------------------------------------------------------------------

ROUTES = [("POST", "/videos/image2video-frames"), ("POST", "/videos/image2video-effects"),
          ("GET", "/tasks/123"), ("GET", "/tasks"), ("POST", "/assets/"),
          ("GET", "/videos/effects"), ("GET", "/accounts"), ("GET", "/accounts/sim@example.com"),
          ("GET", "/scheduler"), ("GET", "/scheduler/available")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong", "test-token"])
async def test_every_route_wants_the_token(method: str, path: str, header: str | None) -> None:
    async with sim() as s:
        headers = {"Authorization": header} if header else {}
        s.client.headers.pop("Authorization")
        response = await s.client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "Unauthorized", "code": 401}


# ---- the seed pages' bodies --------------------------------------------------------------------


async def test_seed_frames_body_is_accepted_and_unsupported_fields_ignored() -> None:
    async with sim(accounts=[(SEED_EMAIL, 3)]) as s:
        response = await s.frames(**SEED_FRAMES_BODY)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert set(reply) == ENVELOPE_KEYS
        assert set(reply["task"]) >= TASK_KEYS
        assert trio(reply) == trio(reply["task"]) == (5, "submitted", False)
        assert reply["works"] == [] and reply["message"] == ""
        assert reply["task"]["type"] == "m2v_img2video_hq"
        assert reply["limitation"] == {"type": "m2v_img2video_hq", "remaining": 10000,
                                       "limit": 10000}
        assert arguments(reply) == {
            "prompt": SEED_FRAMES_BODY["prompt"], "duration": "10", "kling_version": "2.5",
            "model_mode": "pro"}
        [entry] = await s.ledger()
        assert entry["ignored"] == ["mode", "negative_prompt"]
        assert entry["replyRef"] == "your-reference-id"
        assert entry["credits"] == price_of(PriceKey("kling-v2-5", "pro", 10)) == 50


async def test_seed_frames_example_end_frame_forces_pro() -> None:
    async with sim(accounts=[(SEED_EMAIL, 3)]) as s:
        reply = (await s.frames(**SEED_FRAMES_EXAMPLE)).json()
        inputs = reply["task"]["taskInfo"]["inputs"]
        assert [(i["name"], i["url"], i["inputType"]) for i in inputs] == [
            ("input", START, "URL"), ("tail_image", END, "URL")]
        args = arguments(reply)
        assert args["model_mode"] == "pro" and args["tail_image_enabled"] == "true"
        assert args["kling_version"] == "2.1" and args["duration"] == "5"
        assert args["negative_prompt"] == "people, low quality, distorted"
        [entry] = await s.ledger()
        assert entry["ignored"] == [] and entry["mode"] == "pro"
        assert entry["credits"] == price_of(PriceKey("kling-v2-1", "pro", 5)) == 35


@pytest.mark.parametrize("body", [SEED_EFFECTS_BODY, SEED_EFFECTS_EXAMPLE])
async def test_seed_effects_bodies_are_accepted(body: dict[str, Any]) -> None:
    async with sim(accounts=[(SEED_EMAIL, 3)]) as s:
        reply = (await s.effect(**body)).json()
        assert set(reply) == ENVELOPE_KEYS
        assert reply["task"]["type"] == "m2v_img2video_se_hq"
        assert reply["limitation"] is None
        assert reply["userPoints"]["total"] == (100_000 - 20) * 100
        args = arguments(reply)
        assert args["special_effect"] == "rocket" and args["model_mode"] == "std"
        assert args["seStepName"] == "seSubmit" and args["biz"] == "klingai"
        assert args["prompt"] == body.get("prompt", "Rocket Launch effect")  # rocket takes one
        [entry] = await s.ledger()
        assert entry["ignored"] == []
        assert entry["credits"] == 5 * SIM_CREDITS_PER_SECOND


# ---- polling -----------------------------------------------------------------------------------


async def test_a_task_moves_from_submitted_to_succeed() -> None:
    async with sim(task_seconds=10) as s:
        task_id = (await s.frames(image=START, prompt="p", duration="10")).json()["task"]["id"]
        first = (await s.poll(task_id)).json()
        assert trio(first) == trio(first["task"]) == (5, "submitted", False)
        assert first["works"] == [] and first["etaTime"] == 10_000
        assert first["queuingEtaTime"] == 2_000
        s.clock.advance(5)
        middle = (await s.poll(task_id)).json()
        assert middle["status_name"] == "processing" and middle["status_final"] is False
        assert trio(middle["works"][0])[1] == "processing"
        assert middle["works"][0]["resource"] is None and middle["etaTime"] == 5_000
        done = await s.finish(task_id)
        assert trio(done) == trio(done["task"]) == trio(done["works"][0]) == (99, "succeed", True)
        assert done["message"] == "success" and done["etaTime"] == 0
        work = done["works"][0]
        assert work["contentType"] == "video" and work["taskId"] == task_id
        assert isinstance(work["workId"], int)
        assert work["resource"]["duration"] == 10_000
        assert (work["resource"]["width"], work["resource"]["height"]) == (400, 304)
        assert work["resource"]["resource"].startswith(f"http://testserver/_sim/media/{task_id}/")
        cover = await s.client.get(work["cover"]["resource"])
        assert cover.status_code == 200 and cover.headers["content-type"] == "image/jpeg"


async def test_poll_of_an_unknown_task_or_another_accounts_task_is_404() -> None:
    async with sim(accounts=[("a@example.com", 2), ("b@example.com", 2)]) as s:
        task_id = (await s.frames(email="a@example.com", image=START)).json()["task"]["id"]
        assert (await s.poll(task_id, "a@example.com")).status_code == 200
        for other in ((task_id, "b@example.com"), (12345, "a@example.com")):
            response = await s.poll(*other)
            assert response.status_code == 404 and response.json() == NOT_FOUND


async def test_poll_without_email_with_several_accounts_is_refused() -> None:
    async with sim(accounts=[("a@example.com", 2), ("b@example.com", 2)]) as s:
        task_id = (await s.frames(email="a@example.com", image=START)).json()["task"]["id"]
        response = await s.poll(task_id)
        assert response.status_code == 400
        assert response.json() == {
            "error": "email is required when more than one account is configured"}


# ---- 400s ------------------------------------------------------------------------------------

BAD_FRAMES = [
    ({"prompt": "x"}, "image or image_tail is required"),
    ({"image_tail": END}, "image is required for model kling-v2-1"),
    ({"image_tail": END, "model_name": "kling-v3-0"}, "image is required for model kling-v3-0"),
    ({"image": START, "model_name": "kling-v9"},
     "Unsupported model_name kling-v9. Supported values: kling-v1-5,kling-v1-6,kling-v2-1,"
     "kling-v2-1-master,kling-v2-5,kling-v2-6,kling-v3-0,kling-v3-0-turbo"),
    ({"image": START, "duration": "7"},
     "Unsupported duration 7 for kling-v2-1. Supported values: 5,10"),
    ({"image": START, "duration": "16", "model_name": "kling-v3-0"},
     "Unsupported duration 16 for kling-v3-0. Supported values: 3..15"),
    ({"image": START, "mode": "fast"}, "Unsupported mode fast. Supported values: std,pro,4k"),
    ({"image": START, "mode": "4k"},
     "Unsupported mode 4k for kling-v2-1. Supported values: std,pro"),
    ({"image": START, "cfg_scale": 2}, "cfg_scale must be from 0 to 1, got 2"),
    ({"image": START, "prompt": "x" * 2501},
     "prompt is too long: 2501 characters, maximum 2500"),
    ({"image": START, "negative_prompt": "x" * 2501},
     "negative_prompt is too long: 2501 characters, maximum 2500"),
    ({"image": START, "maxJobs": 0}, "maxJobs must be a number from 1 to 50, got 0"),
    ({"image": START, "maxJobs": 51}, "maxJobs must be a number from 1 to 50, got 51"),
    ({"image": START, "enable_audio": "maybe"},
     "Unsupported enable_audio maybe. Supported values: true,false"),
    ({"image": START, "email": "nobody@example.com"},
     "Account nobody@example.com is not configured, add it with POST /accounts"),
]

SUPPORTED = ("rocket,spinoff,cartoon,cyberpunk,expansion,fuzzyfuzzy,squish,bloombloom,"
             "heart_gesture,dizzydizzy,jelly_jiggle,pixelpixel,instant_film,inner_voice,"
             "anime_figure,bullet_time,vogue_walk")
BAD_EFFECTS = [
    ({"image": IMAGE}, "effect is required"),
    ({"effect": "rocket"}, "image is required"),
    ({"effect": "nope", "image": IMAGE}, f"Effect nope not found. Supported effects: {SUPPORTED}"),
    ({"effect": "hug", "image": IMAGE},
     "Effect hug is not supported yet (effectSupported: false, it needs image preprocessing)"),
    ({"effect": "balloon_parade", "image": IMAGE},
     "Effect balloon_parade is no longer available (it lists no supported modes)"),
    ({"effect": "spinoff", "image": IMAGE, "mode": "std"},
     "Effect spinoff does not support mode std. Supported modes: pro"),
    ({"effect": "spinoff", "image": IMAGE},
     "Effect spinoff does not support mode std. Supported modes: pro"),
    ({"effect": "heart_gesture", "image": IMAGE, "mode": "pro"},
     "Effect heart_gesture does not support mode pro. Supported modes: std"),
    ({"effect": "rocket", "image": IMAGE, "mode": "fast"},
     "Unsupported mode fast. Supported values: std,pro"),
    ({"effect": "cartoon", "image": IMAGE, "prompt": "y" * 2501},
     "prompt is too long: 2501 characters, maximum 2500"),
    ({"effect": "rocket", "image": IMAGE, "maxJobs": "x"},
     "maxJobs must be a number from 1 to 50, got x"),
]


@pytest.mark.parametrize(("body", "error"), BAD_FRAMES)
async def test_frames_400s(body: dict[str, Any], error: str) -> None:
    async with sim() as s:
        response = await s.frames(**body)
        assert (response.status_code, response.json()) == (400, {"error": error})
        assert await s.ledger() == []


@pytest.mark.parametrize(("body", "error"), BAD_EFFECTS)
async def test_effects_400s(body: dict[str, Any], error: str) -> None:
    async with sim() as s:
        response = await s.effect(**body)
        assert (response.status_code, response.json()) == (400, {"error": error})


async def test_a_body_that_is_not_json_is_refused() -> None:
    async with sim() as s:
        response = await s.client.post("/videos/image2video-frames", content=b"[1,2",
                                        headers={"Content-Type": "application/json"})
        assert response.json() == {"error": "The request body is not a JSON object"}


async def test_multipart_form_bodies_are_accepted() -> None:
    async with sim() as s:
        response = await s.client.post("/videos/image2video-frames",
                                        data={"image": START, "duration": "10", "maxJobs": "2"},
                                        files={"unused": ("a.txt", b"x")})
        assert response.status_code == 200, response.text
        assert arguments(response.json())["duration"] == "10"


@pytest.mark.parametrize("url", ["https://example.com/unknown.jpg",
                                 "http://testserver/_sim/assets/never-uploaded.png"])
async def test_an_image_kling_cannot_find_is_404(url: str) -> None:
    async with sim() as s:
        for response in (await s.frames(image=url), await s.frames(image=START, image_tail=url),
                         await s.effect(effect="rocket", image=url)):
            assert (response.status_code, response.json()) == (404, NOT_FOUND)


async def test_a_prompt_with_forbidden_is_always_refused_by_moderation() -> None:
    async with sim() as s:
        for response in (await s.frames(image=START, prompt="something forbidden here"),
                         await s.effect(effect="cartoon", image=IMAGE, prompt="Forbidden")):
            assert (response.status_code, response.json()) == (500, MODERATION)
        assert await s.ledger() == []


# ---- fields the model ignores ------------------------------------------------------------------

IGNORED = [
    ({"model_name": "kling-v2-5", "negative_prompt": "n", "cfg_scale": 0.3},
     ["cfg_scale", "negative_prompt"], "pro"),
    ({"model_name": "kling-v2-1-master", "mode": "std", "image_tail": END},
     ["image_tail", "mode"], "pro"),
    ({"model_name": "kling-v2-1", "cfg_scale": 0.3, "mode": "std"}, ["cfg_scale"], "std"),
    ({"model_name": "kling-v1-6", "cfg_scale": 0.3, "negative_prompt": "n"}, [], "std"),
    ({"model_name": "kling-v3-0-turbo", "enable_audio": False}, ["enable_audio"], "std"),
    ({"model_name": "kling-v2-6", "enable_audio": True}, ["enable_audio"], "std"),
    ({"model_name": "kling-v1-6", "foo": 1}, ["foo"], "std"),
]


@pytest.mark.parametrize(("extra", "ignored", "mode"), IGNORED)
async def test_unsupported_fields_are_accepted_and_ignored(
        extra: dict[str, Any], ignored: list[str], mode: str) -> None:
    async with sim() as s:
        response = await s.frames(image=START, **extra)
        assert response.status_code == 200, response.text
        [entry] = await s.ledger()
        assert entry["ignored"] == ignored and entry["mode"] == mode
        args = arguments(response.json())
        for name in set(ignored) - {"enable_audio"}:  # turbo: audio is always on
            assert {"cfg_scale": "cfg"}.get(name, name) not in args
        assert ("tail_image_enabled" in args) == ("image_tail" in extra
                                                  and "image_tail" not in ignored)


async def test_one_x_models_run_from_an_end_frame_alone() -> None:
    async with sim() as s:
        response = await s.frames(image_tail=END, model_name="kling-v1-6")
        inputs = response.json()["task"]["taskInfo"]["inputs"]
        assert [i["name"] for i in inputs] == ["tail_image"]
        assert arguments(response.json())["model_mode"] == "pro"


async def test_effect_modes_and_prompts() -> None:
    async with sim() as s:
        spin = await s.effect(effect="spinoff", image=IMAGE, mode="pro")
        assert arguments(spin.json())["model_mode"] == "pro"
        cartoon = await s.effect(effect="cartoon", image=IMAGE, prompt="a cat")
        assert arguments(cartoon.json())["prompt"] == "a cat"
        assert [e["ignored"] for e in await s.ledger()] == [[], []]


# ---- capacity and accounts ---------------------------------------------------------------------


async def test_429_at_max_jobs_until_a_task_ends() -> None:
    async with sim(accounts=[("a@example.com", 2)]) as s:
        for _ in range(2):
            assert (await s.frames(image=START, email="a@example.com")).status_code == 200
        refused = await s.frames(image=START, email="a@example.com", prompt="third")
        assert refused.status_code == 429
        assert refused.json() == {"error": "Maximum number of concurrent jobs reached for "
                                           "account a@example.com (maxJobs 2), try again later",
                                  "code": 429}
        s.clock.advance(s.service.config.task_duration)
        assert (await s.frames(image=START, email="a@example.com")).status_code == 200
        stats = await s.stats()
        assert stats["accounts"]["a@example.com"] == {"max_jobs": 2, "running": 1,
                                                      "peak_running": 2, "credits_spent": 60}


async def test_task_spread_gives_each_task_its_own_duration_around_task_seconds() -> None:
    """`sim serve --task-spread`: durations spread like real ones (bench_scale measures
    with them). Each task keeps its own, fixed by the seed, and ends when it says."""
    async def durations(**options: Any) -> dict[int, float]:
        async with sim(accounts=[("a@example.com", 50)], task_seconds=10, **options) as s:
            for n in range(40):
                assert (await s.frames(image=START, prompt=f"shot {n}")).status_code == 200
            return {e["task_id"]: e["runs_ms"] / 1000 for e in await s.ledger()}

    spread = await durations(task_spread=0.45)
    assert len(set(spread.values())) == 40
    assert 7 < statistics.median(spread.values()) < 14
    assert max(spread.values()) / min(spread.values()) > 3
    assert await durations(task_spread=0.45) == spread  # the same seed: the same durations
    assert set((await durations()).values()) == {10.0}  # no spread: all alike


async def test_a_spread_task_ends_when_its_own_duration_is_up() -> None:
    async with sim(task_seconds=10, task_spread=0.45, accounts=[("a@example.com", 5)]) as s:
        for n in range(5):
            assert (await s.frames(image=START, prompt=f"shot {n}")).status_code == 200
        ends = sorted((e["runs_ms"] / 1000, e["task_id"]) for e in await s.ledger())
        (first, shortest), (_, next_one) = ends[0], ends[1]
        s.clock.advance(first + 0.01)
        assert (await s.poll(shortest)).json()["status_final"] is True
        assert (await s.poll(next_one)).json()["status_final"] is False


async def test_request_max_jobs_overrides_the_accounts_limit() -> None:
    async with sim(accounts=[("a@example.com", 2)]) as s:
        assert (await s.frames(image=START, maxJobs=1)).status_code == 200
        assert (await s.frames(image=START, maxJobs=1)).status_code == 429
        assert (await s.frames(image=START, maxJobs=3)).status_code == 200
        assert (await s.frames(image=START, maxJobs="3")).status_code == 200
        assert (await s.frames(image=START, maxJobs=3)).status_code == 429
        assert (await s.stats())["accounts"]["a@example.com"]["peak_running"] == 3


async def test_email_may_be_left_out_only_with_one_account() -> None:
    async with sim(accounts=[("a@example.com", 2)]) as s:
        for n in range(2):
            assert (await s.frames(image=START, prompt=f"shot {n}")).status_code == 200
        refused = await s.frames(image=START, prompt="one too many")
        assert refused.status_code == 429
        assert [e["account"] for e in await s.ledger()] == ["a@example.com"] * 2
    async with sim(accounts=[("a@example.com", 1), ("b@example.com", 2)]) as s:
        refused = await s.frames(image=START, prompt="which account?")
        assert refused.status_code == 400
        assert refused.json() == {
            "error": "email is required when more than one account is configured"}
        assert await s.ledger() == []


async def test_accounts_and_balance() -> None:
    async with sim(accounts=[("a@example.com", 3), ("b@example.com", 5)]) as s:
        listing = (await s.client.get("/accounts")).json()
        assert set(listing) == {"a@example.com", "b@example.com"}
        assert listing["b@example.com"]["email"] == "b@example.com"
        assert listing["b@example.com"]["maxJobs"] == 5
        before = (await s.client.get("/accounts/a@example.com")).json()["balance"]
        await s.frames(image=START, email="a@example.com", mode="pro", duration="10")
        after = (await s.client.get("/accounts/a@example.com")).json()["balance"]
        assert before["total"] - after["total"] == 70 * 100
        assert after["points"][0]["balance"] == after["total"]
        missing = await s.client.get("/accounts/zed@example.com")
        assert missing.status_code == 404


# ---- assets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
async def test_upload_an_image(kind: str) -> None:
    async with sim() as s:
        data = png(kind=kind)
        content_type = f"image/{kind.lower()}"
        response = await s.client.post("/assets/", content=data,
                                        params={"email": "sim@example.com"},
                                        headers={"Content-Type": content_type})
        reply = response.json()
        assert set(reply) == {"status", "url", "fileName", "message"}
        assert reply["status"] == 3 and reply["message"] == ""
        assert reply["url"].endswith(reply["fileName"])
        served = await s.client.get(reply["url"])
        assert served.content == data and served.headers["content-type"] == content_type
        assert (await s.frames(image=reply["url"])).status_code == 200


UPLOAD_ERRORS = [
    ("text/plain", png(), "Content-Type text/plain is not supported. Valid values: image/png,"
     "image/jpeg,video/mp4,video/quicktime,audio/wav,audio/wave,audio/mpeg,audio/mp4,"
     "audio/flac,audio/aac,audio/ogg"),
    ("image/png", png((299, 400)), "Image is too small: 299x400 px, minimum 300 px on each side"),
    ("image/jpeg", b"not an image", "The file is not a readable PNG or JPEG image"),
    ("image/png", b"\0" * (10 * 1024 * 1024 + 1),
     "File is too large: 10485761 bytes, maximum 10 MB for image/png"),
]


@pytest.mark.parametrize(("content_type", "data", "error"), UPLOAD_ERRORS,
                         ids=["type", "small", "garbage", "large"])
async def test_upload_errors(content_type: str, data: bytes, error: str) -> None:
    async with sim() as s:
        response = await s.client.post("/assets/", content=data,
                                        headers={"Content-Type": content_type})
        assert (response.status_code, response.json()) == (400, {"error": error})


async def test_upload_needs_email_with_several_accounts() -> None:
    async with sim(accounts=[("a@example.com", 1), ("b@example.com", 1)]) as s:
        response = await s.client.post("/assets/", content=png(),
                                        headers={"Content-Type": "image/png"})
        assert response.status_code == 400
        assert (await s.upload(email="b@example.com")).startswith("http://testserver/_sim/")


# ---- effects catalogue, history, scheduler -------------------------------------------------------


async def test_effects_catalogue() -> None:
    async with sim() as s:
        catalogue = (await s.client.get("/videos/effects")).json()
        by_name = {e["name"]: e for e in catalogue}
        assert len(catalogue) >= 20
        assert {"rocket", "spinoff", "cartoon", "cyberpunk", "expansion", "fuzzyfuzzy", "squish",
                "hug", "kiss", "heart_gesture", "bloombloom"} <= set(by_name)
        for entry in catalogue:
            assert {"name", "caption", "supportedModelMode", "effectSupported", "promptSupported",
                    "compositedSchema", "coverUrl", "webVideoUrl"} <= set(entry)
            assert set(entry["compositedSchema"]["process"]) == {"taskType", "taskVersion",
                                                                  "defaultPrompt"}
        assert by_name["spinoff"]["supportedModelMode"] == ["pro"]
        assert by_name["hug"]["effectSupported"] is False
        assert by_name["balloon_parade"]["supportedModelMode"] == []
        assert by_name["fuzzyfuzzy"]["promptSupported"] is False
        assert by_name["rocket"]["promptSupported"] is True
        assert by_name["rocket"]["hot"] is True and "hot" not in by_name["squish"]
        cover = await s.client.get(by_name["rocket"]["coverUrl"])
        assert cover.headers["content-type"] == "image/jpeg"
        sample = await s.client.get(by_name["rocket"]["webVideoUrl"])
        assert sample.headers["content-type"] == "video/mp4" and sample.content[4:8] == b"ftyp"


OWN = (SimEffect("rocket", "Rocket Launch", ("pro",), False),
       SimEffect("glitter", "Glitter", ("std",), True))


async def test_an_account_may_have_a_catalogue_of_its_own() -> None:
    accounts = [("a@example.com", 1), ("b@example.com", 1)]
    async with sim(accounts=accounts, account_effects={"b@example.com": OWN}) as s:
        mine = (await s.client.get("/videos/effects", params={"email": "b@example.com"})).json()
        assert [(e["name"], e["supportedModelMode"]) for e in mine] == [
            ("rocket", ["pro"]), ("glitter", ["std"])]
        theirs = (await s.client.get("/videos/effects", params={"email": "a@example.com"})).json()
        assert len(theirs) == len(CATALOGUE)
        refused = await s.effect(effect="fuzzyfuzzy", image=IMAGE, email="b@example.com")
        assert refused.json() == {
            "error": "Effect fuzzyfuzzy not found. Supported effects: rocket,glitter"}
        assert (await s.effect(effect="glitter", image=IMAGE, email="b@example.com")
                ).status_code == 200
        assert (await s.effect(effect="fuzzyfuzzy", image=IMAGE, email="a@example.com")
                ).status_code == 200


async def test_the_catalogue_of_an_account_that_is_not_configured_is_refused() -> None:
    async with sim() as s:
        response = await s.client.get("/videos/effects", params={"email": "x@example.com"})
        assert (response.status_code, response.json()) == (400, {
            "error": "Account x@example.com is not configured, add it with POST /accounts"})


async def test_history_newest_first_with_time_filters() -> None:
    async with sim() as s:
        ids = []
        for n in range(3):
            reply = await s.frames(image=START, prompt=f"shot {n}", replyRef=f"ref-{n}")
            ids.append(reply.json()["task"]["id"])
            s.clock.advance(1)
        history = (await s.client.get("/tasks", params={"pageSize": 10})).json()["history"]
        assert [h["task"]["id"] for h in history] == ids[::-1]
        newest = history[0]
        assert "replyRef" not in str(newest)
        assert {a["name"]: a["value"] for a in newest["task"]["taskInfo"]["arguments"]}[
            "prompt"] == "shot 2"
        assert newest["task"]["taskInfo"]["inputs"][0]["url"] == START
        second = history[1]["task"]["createTime"]
        after = (await s.client.get("/tasks", params={"createdAfter": second})).json()
        assert [h["task"]["id"] for h in after["history"]] == [ids[2]]
        before = (await s.client.get("/tasks/", params={"createdBefore": second})).json()
        assert [h["task"]["id"] for h in before["history"]] == [ids[0]]
        one = (await s.client.get("/tasks", params={"pageSize": 1})).json()["history"]
        assert len(one) == 1
        both = await s.client.get("/tasks", params={"createdAfter": 1, "createdBefore": 2})
        assert both.json() == {"error": "createdAfter and createdBefore cannot be used together"}


async def test_scheduler_lists_unfinished_tasks_with_reply_ref() -> None:
    async with sim(accounts=[("a@example.com", 3), ("b@example.com", 2)], task_seconds=200) as s:
        first = (await s.frames(image=START, email="a@example.com", replyRef="r1",
                                replyUrl="http://127.0.0.1:9/hook")).json()["task"]["id"]
        s.clock.advance(65)
        second = (await s.frames(image=START, email="b@example.com",
                                 replyRef="r2")).json()["task"]["id"]
        scheduler = {e["id"]: e for e in (await s.client.get("/scheduler")).json()}
        assert set(scheduler) == {first, second}
        entry = scheduler[first]
        assert set(entry) == {"id", "email", "started", "elapsed", "replyUrl", "replyRef"}
        assert (entry["email"], entry["replyRef"], entry["replyUrl"], entry["elapsed"]) == (
            "a@example.com", "r1", "http://127.0.0.1:9/hook", "01:05")
        assert entry["started"].endswith("Z")
        assert scheduler[second]["replyRef"] == "r2"
        available = (await s.client.get("/scheduler/available")).json()
        assert {e["id"] for e in available["executing"]} == {first, second}
        slots = {a["email"]: a for a in available["available"]}
        assert slots["b@example.com"] == {"email": "b@example.com", "maxJobs": 2, "executing": 1,
                                          "available": 1}
        await s.finish(second, "b@example.com")
        assert (await s.client.get("/scheduler")).json() == []


async def test_ledger_and_request_counts() -> None:
    async with sim() as s:
        task_id = (await s.effect(effect="rocket", image=IMAGE, replyRef="x")).json()["task"]["id"]
        await s.poll(task_id)
        await s.poll(task_id)
        [entry] = await s.ledger()
        assert {k: entry[k] for k in ("task_id", "endpoint", "account", "replyRef", "credits",
                                      "status", "ignored", "polls")} == {
            "task_id": task_id, "endpoint": "image2video-effects", "account": "sim@example.com",
            "replyRef": "x", "credits": 20, "status": "submitted", "ignored": [], "polls": 2}
        assert len(entry["body_hash"]) == 16 and entry["created"] > 1_600_000_000_000
        requests = (await s.stats())["requests"]
        assert requests["GET /tasks/{task_id}"] == 2
        assert requests["POST /videos/image2video-effects"] == 1


async def test_unknown_route_is_404() -> None:
    async with sim() as s:
        response = await s.client.get("/nothing-here")
        assert response.status_code == 404
        assert isinstance(response, httpx.Response)
