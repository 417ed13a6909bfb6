"""Kling's model capability and price tables, as data with their sources.

A new Kling model or a new price is a change to these tables, not to code.
The validator (klingflow.spec), the planner (klingflow.plan) and the simulator
(klingflow.sim) all read these tables. Effects are not here: which exist, which
take a prompt and which modes each allows is the service's catalogue
(klingflow.catalogue), fetched, never a table of ours.
"""

from __future__ import annotations

from dataclasses import dataclass

RULES_SOURCE = (
    "useapi.net image2video-frames, revision 2025-10-01 (the seed page); "
    "kling-v2-6, kling-v3-0 and kling-v3-0-turbo from the 2026-06-17 revision"
)
RULES_DATE = "2025-10-01"
PRICES_SOURCE = "Kling web prices, credits per clip, as published in 2026"

DEFAULT_MODEL = "kling-v2-1"
DEFAULT_MODE = "std"
DEFAULT_DURATION = 5
MAX_PROMPT = 2500
MODES = ("std", "pro", "4k")

# Audio behaviour of a model, from the table's "audio" column.
AUDIO_OPTIONAL = "optional"  # enable_audio true/false, default false
AUDIO_NEEDS_PRO = "needs-pro"  # native audio, only in pro mode
AUDIO_DEFAULT_ON = "default-on"  # enable_audio accepted, default true
AUDIO_ALWAYS = "always"  # always on; the field is not accepted


@dataclass(frozen=True, slots=True)
class ModelRules:
    """What one `model_name` of image2video-frames accepts.

    `modes` is empty when the model does not accept `mode` (pro only).
    `None` for a capability means the docs say nothing: let it through, say so.
    """

    name: str
    durations: tuple[int, ...]
    modes: tuple[str, ...]
    image_tail: bool
    negative_prompt: bool | None
    cfg_scale: bool
    audio: str
    needs_image: bool
    since: str

    @property
    def pro_only(self) -> bool:
        return not self.modes

    def effective_mode(self, mode: str | None, *, has_tail: bool) -> str:
        """The mode the service runs: pro-only models and end frames force pro."""
        if self.pro_only or has_tail:
            return "pro"
        return mode or DEFAULT_MODE


def _model(name: str, durations: tuple[int, ...], modes: tuple[str, ...], tail: bool,
           negative: bool | None, cfg: bool, audio: str, since: str = RULES_DATE) -> ModelRules:
    return ModelRules(name=name, durations=durations, modes=modes, image_tail=tail,
                      negative_prompt=negative, cfg_scale=cfg, audio=audio,
                      needs_image=not name.startswith("kling-v1"), since=since)


_FIVE_TEN = (5, 10)
_THREE_TO_FIFTEEN = tuple(range(3, 16))

MODELS: dict[str, ModelRules] = {m.name: m for m in (
    _model("kling-v1-5", _FIVE_TEN, ("std", "pro"), True, True, True, AUDIO_OPTIONAL),
    _model("kling-v1-6", _FIVE_TEN, ("std", "pro"), True, True, True, AUDIO_OPTIONAL),
    _model("kling-v2-1", _FIVE_TEN, ("std", "pro"), True, True, False, AUDIO_OPTIONAL),
    _model("kling-v2-1-master", _FIVE_TEN, (), False, True, False, AUDIO_OPTIONAL),
    _model("kling-v2-5", _FIVE_TEN, (), False, False, False, AUDIO_OPTIONAL),
    _model("kling-v2-6", _FIVE_TEN, ("std", "pro"), True, True, False, AUDIO_NEEDS_PRO,
           "2026-06-17"),
    _model("kling-v3-0", _THREE_TO_FIFTEEN, ("std", "pro", "4k"), True, None, False,
           AUDIO_DEFAULT_ON, "2026-06-17"),
    _model("kling-v3-0-turbo", _THREE_TO_FIFTEEN, ("std", "pro"), False, None, False,
           AUDIO_ALWAYS, "2026-06-17"),
)}


@dataclass(frozen=True, slots=True)
class PriceKey:
    """What a clip's price depends on. `model` is a model name or `effect:NAME`."""

    model: str
    mode: str
    duration: int
    audio: bool = False


def _per_clip(model: str, mode: str, five: int, ten: int, audio: bool = False) -> dict[PriceKey, int]:
    return {PriceKey(model, mode, 5, audio): five, PriceKey(model, mode, 10, audio): ten}


PRICES: dict[PriceKey, int] = {
    **_per_clip("kling-v2-6", "std", 15, 30),
    **_per_clip("kling-v2-6", "pro", 25, 50),
    **_per_clip("kling-v2-6", "pro", 35, 70, audio=True),
    **_per_clip("kling-v2-5", "pro", 25, 50),
    **_per_clip("kling-v2-1", "std", 20, 40),
    **_per_clip("kling-v2-1", "pro", 35, 70),
    **_per_clip("kling-v2-1-master", "pro", 100, 200),
    **_per_clip("kling-v1-6", "std", 20, 40),
    **_per_clip("kling-v1-6", "pro", 35, 70),
    # v1.5: the docs say to assume v1.6 prices.
    **_per_clip("kling-v1-5", "std", 20, 40),
    **_per_clip("kling-v1-5", "pro", 35, 70),
    # v3.0 pro with audio (on by default): about 12 credits per second.
    **{PriceKey("kling-v3-0", "pro", d, True): 12 * d for d in _THREE_TO_FIFTEEN},
}
"""Known prices. Anything not here is unknown: say so, never guess."""


def price_of(key: PriceKey, extra: dict[PriceKey, int] | None = None) -> int | None:
    """Credits for one clip, the pipeline's own `extra` prices first; None if unknown."""
    if extra and key in extra:
        return extra[key]
    return PRICES.get(key)
