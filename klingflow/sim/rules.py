"""The service's rules for the two generation endpoints: a raw body -> an `Order`.

Like the real service, a field the chosen model (or endpoint) does not support is
accepted and ignored; the order lists it in `ignored`. Values out of range, unknown
models and effects are refused with 400 (texts in klingflow.sim.replies). Effects
are judged against the catalogue of the account the body names (klingflow.sim.catalogue).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from klingflow import kinds, models
from klingflow.models import MAX_PROMPT, MODELS, ModelRules, PriceKey
from klingflow.sim import replies
from klingflow.sim.catalogue import SimEffect, find, usable_names

FRAMES = kinds.FRAMES.endpoint_name
EFFECTS_ENDPOINT = kinds.EFFECT.endpoint_name

COMMON_FIELDS = frozenset({"email", "image", "prompt", "mode", "maxJobs", "replyUrl",
                           "replyRef"})
FRAMES_FIELDS = COMMON_FIELDS | {"image_tail", "negative_prompt", "cfg_scale", "duration",
                                 "model_name", "enable_audio"}
EFFECTS_FIELDS = COMMON_FIELDS | {"effect"}
EFFECT_MODES = ("std", "pro")
MAX_JOBS_RANGE = (1, 50)

SIM_CREDITS_PER_SECOND = 4
"""Credits the sim charges when models.PRICES has no price (effects, most of v3):
4 per second, i.e. 20 for a 5 s clip."""


@dataclass(frozen=True, slots=True)
class Order:
    """A generation request the service accepted, as the service will run it."""

    endpoint: str
    email: str | None
    image: str | None
    image_tail: str | None
    prompt: str
    duration: int
    mode: str
    max_jobs: int | None
    reply_url: str | None
    reply_ref: str | None
    ignored: tuple[str, ...]
    arguments: tuple[tuple[str, str], ...]
    price_key: PriceKey
    model: str | None = None
    effect: str | None = None
    motion: str | None = None

    @property
    def credits(self) -> int:
        for key in (self.price_key, _without_audio(self.price_key)):
            price = models.price_of(key)
            if price is not None:
                return price
        return SIM_CREDITS_PER_SECOND * self.duration


def _without_audio(key: PriceKey) -> PriceKey:
    return PriceKey(key.model, key.mode, key.duration)


# ---- field readers: tolerant of JSON types and multipart strings ---------------------


def _text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    return str(value)


def _check_length(body: Mapping[str, Any], name: str) -> str | None:
    value = _text(body, name)
    if value is not None and len(value) > MAX_PROMPT:
        raise replies.too_long(name, len(value), MAX_PROMPT)
    return value


def _max_jobs(body: Mapping[str, Any]) -> int | None:
    value = body.get("maxJobs")
    if value is None or value == "":
        return None
    low, high = MAX_JOBS_RANGE
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if not low <= number <= high:
        raise replies.bad_request(f"maxJobs must be a number from {low} to {high}, got {value}")
    return number


def _flag(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text not in ("true", "false"):
        raise replies.value_not_allowed(name, value, "true,false")
    return text == "true"


def _extra_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> list[str]:
    return sorted(k for k in body if k not in allowed)


def _version(model: str) -> str:
    """kling-v2-1-master -> 2.1-master (the task's `kling_version` argument)."""
    major, _, rest = model.removeprefix("kling-v").partition("-")
    return f"{major}.{rest}" if rest else major


# ---- image2video-frames ----------------------------------------------------------------


def _model(body: Mapping[str, Any]) -> ModelRules:
    name = _text(body, "model_name") or models.DEFAULT_MODEL
    if name not in MODELS:
        raise replies.value_not_allowed("model_name", name, ",".join(MODELS))
    return MODELS[name]


def _duration(body: Mapping[str, Any], allowed: tuple[int, ...], model: str) -> int:
    value = body.get("duration")
    if value is None or value == "":
        return models.DEFAULT_DURATION if models.DEFAULT_DURATION in allowed else allowed[0]
    text = str(value)
    if not text.isdigit() or int(text) not in allowed:
        shown = f"{allowed[0]}..{allowed[-1]}" if len(allowed) > 2 else ",".join(map(str, allowed))
        raise replies.value_not_allowed("duration", value, shown, model=model)
    return int(text)


def _frames_mode(body: Mapping[str, Any], rules: ModelRules, ignored: list[str]) -> str | None:
    mode = _text(body, "mode")
    if mode is None:
        return None
    if mode not in models.MODES:
        raise replies.value_not_allowed("mode", mode, ",".join(models.MODES))
    if rules.pro_only:
        ignored.append("mode")
        return None
    if mode not in rules.modes:
        raise replies.value_not_allowed("mode", mode, ",".join(rules.modes), model=rules.name)
    return mode


def _cfg_scale(body: Mapping[str, Any], rules: ModelRules, ignored: list[str]) -> float | None:
    value = body.get("cfg_scale")
    if value is None or value == "":
        return None
    try:
        number = float(str(value))
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise replies.bad_request(f"cfg_scale must be from 0 to 1, got {value}")
    if not rules.cfg_scale:
        ignored.append("cfg_scale")
        return None
    return number


def _audio(body: Mapping[str, Any], rules: ModelRules, mode: str, ignored: list[str]) -> bool:
    asked = _flag(body, "enable_audio")
    if rules.audio == models.AUDIO_ALWAYS:
        if asked is not None:
            ignored.append("enable_audio")
        return True
    if rules.audio == models.AUDIO_DEFAULT_ON:
        return True if asked is None else asked
    if rules.audio == models.AUDIO_NEEDS_PRO and asked and mode != "pro":
        ignored.append("enable_audio")
        return False
    return bool(asked)


def _supported(value: str | None, name: str, supported: bool | None,
               ignored: list[str]) -> str | None:
    """A field the model may not support: None (and recorded) if it does not."""
    if value is not None and supported is False:
        ignored.append(name)
        return None
    return value


def frames_order(body: Mapping[str, Any]) -> Order:
    prompt = _check_length(body, "prompt")
    negative = _check_length(body, "negative_prompt")
    max_jobs = _max_jobs(body)
    image, tail = _text(body, "image"), _text(body, "image_tail")
    if image is None and tail is None:
        raise replies.image_required()
    rules = _model(body)
    if rules.needs_image and image is None:
        raise replies.bad_request(f"image is required for model {rules.name}")
    duration = _duration(body, rules.durations, rules.name)
    ignored = _extra_fields(body, FRAMES_FIELDS)
    asked_mode = _frames_mode(body, rules, ignored)
    cfg = _cfg_scale(body, rules, ignored)
    negative = _supported(negative, "negative_prompt", rules.negative_prompt, ignored)
    tail = _supported(tail, "image_tail", rules.image_tail, ignored)
    mode = rules.effective_mode(asked_mode, has_tail=tail is not None)
    audio = _audio(body, rules, mode, ignored)
    arguments = _frames_arguments(prompt, negative, cfg, duration, rules, mode, tail, audio)
    return Order(endpoint=FRAMES, email=_text(body, "email"), image=image, image_tail=tail,
                 prompt=prompt or "", duration=duration, mode=mode, max_jobs=max_jobs,
                 reply_url=_text(body, "replyUrl"), reply_ref=_text(body, "replyRef"),
                 ignored=tuple(sorted(set(ignored))), arguments=arguments,
                 price_key=PriceKey(rules.name, mode, duration, audio), model=rules.name)


def _frames_arguments(prompt: str | None, negative: str | None, cfg: float | None,
                      duration: int, rules: ModelRules, mode: str, tail: str | None,
                      audio: bool) -> tuple[tuple[str, str], ...]:
    args: list[tuple[str, str]] = [("prompt", prompt or "")]
    if negative is not None:
        args.append(("negative_prompt", negative))
    if cfg is not None:
        args.append(("cfg", str(cfg)))
    args += [("duration", str(duration)), ("kling_version", _version(rules.name)),
             ("model_mode", mode)]
    if tail is not None:
        args.append(("tail_image_enabled", "true"))
    if audio:
        args.append(("enable_audio", "true"))
    return tuple(args)


# ---- image2video-effects ---------------------------------------------------------------

Catalogue = tuple[SimEffect, ...]


def _effect(body: Mapping[str, Any], catalogue: Catalogue) -> SimEffect:
    name = _text(body, "effect")
    if name is None:
        raise replies.bad_request("effect is required")
    effect = find(catalogue, name)
    if effect is None:
        raise replies.effect_not_found(name, usable_names(catalogue))
    if not effect.effect_supported:
        raise replies.bad_request(f"Effect {name} is not supported yet "
                                  "(effectSupported: false, it needs image preprocessing)")
    if not effect.modes:
        raise replies.bad_request(f"Effect {name} is no longer available "
                                  "(it lists no supported modes)")
    return effect


def _effect_mode(body: Mapping[str, Any], effect: SimEffect) -> str:
    mode = _text(body, "mode") or models.DEFAULT_MODE
    if mode not in EFFECT_MODES:
        raise replies.value_not_allowed("mode", mode, ",".join(EFFECT_MODES))
    if mode not in effect.modes:
        raise replies.bad_request(f"Effect {effect.name} does not support mode {mode}. "
                                  f"Supported modes: {','.join(effect.modes)}")
    return mode


def effects_order(body: Mapping[str, Any], catalogue: Catalogue) -> Order:
    effect = _effect(body, catalogue)
    image = _text(body, "image")
    if image is None:
        raise replies.bad_request("image is required")
    prompt = _check_length(body, "prompt")
    max_jobs = _max_jobs(body)
    mode = _effect_mode(body, effect)
    ignored = _extra_fields(body, EFFECTS_FIELDS)
    if prompt is not None and not effect.prompt_supported:
        ignored.append("prompt")
        prompt = None
    used_prompt = prompt or effect.default_prompt
    arguments = (("special_effect", effect.name), ("prompt", used_prompt),
                 ("kling_version", effect.kling_version), ("model_mode", mode),
                 ("seStepName", "seSubmit"), ("biz", "klingai"))
    return Order(endpoint=EFFECTS_ENDPOINT, email=_text(body, "email"), image=image,
                 image_tail=None, prompt=used_prompt, duration=effect.duration, mode=mode,
                 max_jobs=max_jobs, reply_url=_text(body, "replyUrl"),
                 reply_ref=_text(body, "replyRef"), ignored=tuple(sorted(set(ignored))),
                 arguments=arguments, price_key=PriceKey(f"effect:{effect.name}", mode,
                                                         effect.duration),
                 effect=effect.name, motion=effect.motion)


def build_order(endpoint: str, body: Mapping[str, Any],
                effects_for: Callable[[str | None], Catalogue]) -> Order:
    """The order a generation POST asks for; effects judged by the named account's catalogue."""
    if endpoint == FRAMES:
        return frames_order(body)
    return effects_order(body, effects_for(_text(body, "email")))
