"""Kling's rules for one step's parameters: the model tables in `klingflow.models`, and
for effects the service's own catalogue as last fetched (`klingflow.catalogue`).

Pure functions: parameters in, `(field, message)` out; `field` None is the step
as a whole. A field the model would silently ignore is an error (the user would
pay for a clip without it), except `mode: pro` on a pro-only model. Without a
catalogue no effect name, mode or prompt is judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from klingflow.catalogue import Catalogue, EffectEntry
from klingflow.models import (
    AUDIO_ALWAYS,
    AUDIO_NEEDS_PRO,
    DEFAULT_MODE,
    DEFAULT_MODEL,
    MAX_PROMPT,
    MODELS,
    ModelRules,
)
from klingflow.spec.pipeline import Template, Value
from klingflow.spec.wording import did_you_mean, one_of, show

Finding = tuple[str | None, str]


def required_findings(kind: str, params: Mapping[str, Value]) -> Iterator[Finding]:
    """The fields a step of `kind` cannot do without, whatever its model or effect."""
    if kind == "frames" and "image" not in params and "image_tail" not in params:
        yield None, "a frames step needs image or image_tail (a start or an end frame)"
    if kind == "effect" and "effect" not in params:
        yield None, "an effect step needs effect (a name from the effects catalogue)"
    if kind == "effect" and "image" not in params:
        yield None, "an effect step needs image"


def frames_findings(params: Mapping[str, Value]) -> Iterator[Finding]:
    rules = MODELS[str(params.get("model_name", DEFAULT_MODEL))]
    yield from _frames(rules, params)
    yield from _ignored(rules, params)
    yield from _audio(rules, params)
    yield from _prompt_lengths(params)


def _frames(rules: ModelRules, params: Mapping[str, Value]) -> Iterator[Finding]:
    if rules.needs_image and "image" not in params and "image_tail" in params:
        yield None, (f"{rules.name} needs a start frame; add image (only kling-v1-5 and "
                     "kling-v1-6 can start from image_tail alone)")
    duration = params.get("duration")
    if duration is not None and duration not in rules.durations:
        yield "duration", f"{show(duration)} is not one of {one_of(rules.durations)} for {rules.name}"
    mode = params.get("mode")
    if mode is not None and rules.pro_only and mode != "pro":
        yield "mode", f"{rules.name} runs in pro mode only and ignores mode: {mode}; remove mode"
    elif mode is not None and not rules.pro_only and mode not in rules.modes:
        yield "mode", f"{show(mode)} is not one of {one_of(rules.modes)} for {rules.name}"


def _ignored(rules: ModelRules, params: Mapping[str, Value]) -> Iterator[Finding]:
    unsupported = {"image_tail": rules.image_tail, "negative_prompt": rules.negative_prompt,
                   "cfg_scale": rules.cfg_scale}
    for field, supported in unsupported.items():
        if field in params and supported is False:
            yield field, (f"{rules.name} does not support {field} and would ignore it; remove "
                          f"it or use a model that does: {', '.join(_supporting(field))}")


def _supporting(field: str) -> list[str]:
    return [name for name, rules in MODELS.items() if getattr(rules, field) is not False]


def _audio(rules: ModelRules, params: Mapping[str, Value]) -> Iterator[Finding]:
    if "enable_audio" not in params:
        return
    if rules.audio == AUDIO_ALWAYS:
        yield "enable_audio", (f"{rules.name} always generates audio and does not accept "
                               "enable_audio; remove it")
    mode = rules.effective_mode(_text(params.get("mode")), has_tail="image_tail" in params)
    if rules.audio == AUDIO_NEEDS_PRO and params["enable_audio"] is True and mode != "pro":
        yield "enable_audio", (f"native audio on {rules.name} needs mode: pro (this step runs "
                               f"{mode}); set mode: pro or remove enable_audio")


def _text(value: Value | None) -> str | None:
    return value if isinstance(value, str) else None


def _prompt_lengths(params: Mapping[str, Value]) -> Iterator[Finding]:
    for field in ("prompt", "negative_prompt"):
        value = params.get(field)
        length = _length(value) if value is not None else 0
        if length > MAX_PROMPT:
            yield field, (f"{field} is {length} characters long (after ${{vars.*}} "
                          f"substitution); at most {MAX_PROMPT}")


def _length(value: Value) -> int:
    if isinstance(value, Template):
        return sum(len(p) for p in value.parts if isinstance(p, str))
    return len(str(value))


def effect_findings(params: Mapping[str, Value],
                    catalogues: Sequence[Catalogue]) -> Iterator[Finding]:
    """An effect step's rules; its name, mode and prompt against each catalogue that
    applies (one message per field, from the first catalogue that finds one)."""
    name = params.get("effect")
    if isinstance(name, str):
        yield from _first_per_field(finding for catalogue in catalogues
                                    for finding in _catalogue_findings(name, catalogue, params))
    yield from _prompt_lengths(params)


def _first_per_field(findings: Iterable[Finding]) -> Iterator[Finding]:
    seen: set[str | None] = set()
    for field, message in findings:
        if field not in seen:
            seen.add(field)
            yield field, message


def _catalogue_findings(name: str, catalogue: Catalogue,
                        params: Mapping[str, Value]) -> Iterator[Finding]:
    entry = catalogue.get(name)
    if entry is None:
        sim = " --sim" if catalogue.backend == "sim" else ""
        hint = did_you_mean(name, catalogue.available) or \
            f"; `klingflow effects{sim}` lists the available ones"
        yield "effect", f"unknown effect '{name}': not in {catalogue.source}{hint}"
    elif not entry.available:
        why = "marks it effectSupported: false" if not entry.supported else \
            "lists it with no modes (retired)"
        yield "effect", (f"effect '{name}' is not available: {catalogue.source} {why}; "
                         "choose another effect")
    else:
        yield from _mode_and_prompt(entry, params)


def _mode_and_prompt(entry: EffectEntry, params: Mapping[str, Value]) -> Iterator[Finding]:
    mode, modes = params.get("mode"), entry.modes
    if mode is None and len(modes) > 1 and DEFAULT_MODE not in modes:
        yield "effect", (f"effect '{entry.name}' runs in {one_of(modes)} mode only; "
                         f"add mode: {modes[0]}")
    elif mode is not None and mode not in modes:
        yield "mode", f"{show(mode)} is not one of {one_of(modes)} for effect '{entry.name}'"
    if "prompt" in params and not entry.prompt:
        yield "prompt", (f"effect '{entry.name}' does not take a prompt (promptSupported is "
                         "false) and the service would ignore it; remove prompt")


def decided_effect_mode(params: Mapping[str, Value],
                        catalogues: Sequence[Catalogue]) -> str | None:
    """The mode of an effect step that sets none, when every catalogue that applies
    lists exactly one mode for it, the same one; else None (the service's default)."""
    name = params.get("effect")
    if "mode" in params or not isinstance(name, str) or not catalogues:
        return None
    entries = [catalogue.get(name) for catalogue in catalogues]
    modes = {e.modes for e in entries if e is not None}
    if None in entries or len(modes) != 1:
        return None
    only = modes.pop()
    return only[0] if len(only) == 1 else None
