"""The step-kind registry: one row per kind of step, read by every layer.

The schema's `kind` values, the planner's endpoint and body fields, the client's
endpoints, the price key and what recovery matches a lost POST on all come from
here. A new kind is a new row (and its rules), never a silent `else` branch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from klingflow.models import DEFAULT_MODEL


@dataclass(frozen=True, slots=True)
class StepKind:
    """What one `kind:` of step is to the service."""

    name: str  # as written in a pipeline: kind: frames
    endpoint: str  # the generation endpoint, relative to the API's base URL
    fields: tuple[str, ...]  # API fields its body may carry (besides email), in the docs' order
    schema: str  # its definition in the pipeline schema's $defs
    price_model: Callable[[Mapping[str, object]], str]  # the `model` of its price key
    matches: tuple[tuple[str, str], ...]  # body field -> the task argument that echoes it
    echoes: tuple[tuple[str, str], ...] = ()  # the same, compared when the task has it

    @property
    def endpoint_name(self) -> str:
        """The endpoint's last part, e.g. image2video-frames."""
        return self.endpoint.rsplit("/", 1)[-1]


def _frames_model(params: Mapping[str, object]) -> str:
    return str(params.get("model_name") or DEFAULT_MODEL)


def _effect_model(params: Mapping[str, object]) -> str:
    return f"effect:{params['effect']}"


FRAMES = StepKind(
    name="frames", endpoint="videos/image2video-frames",
    fields=("image", "image_tail", "prompt", "negative_prompt", "cfg_scale", "duration",
            "model_name", "mode", "enable_audio"),
    schema="framesStep", price_model=_frames_model, matches=(("prompt", "prompt"),),
    echoes=(("duration", "duration"), ("negative_prompt", "negative_prompt"),
            ("mode", "model_mode"), ("model_name", "kling_version")))

EFFECT = StepKind(
    name="effect", endpoint="videos/image2video-effects",
    fields=("effect", "image", "prompt", "mode"),
    schema="effectStep", price_model=_effect_model,
    matches=(("prompt", "prompt"), ("effect", "special_effect")),
    echoes=(("mode", "model_mode"),))

KINDS: dict[str, StepKind] = {kind.name: kind for kind in (FRAMES, EFFECT)}


class UnknownKind(KeyError):
    """A kind no row describes: a bug past the loader, which refuses such a file."""


def kind_of(name: str) -> StepKind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"no step kind {name!r}; known: {', '.join(KINDS)}") from None
