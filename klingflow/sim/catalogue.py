"""The simulated service's effects catalogue: its truth about effects, owned here alone.

klingflow's validator never reads this table: it learns effects the way it learns
them from the real service, through `GET /videos/effects`. So a test that runs a
pipeline on the simulator notices when the two disagree.

Like Kling's own list it holds effects that take a prompt and ones that use a
built-in prompt, pro-only ones, one that runs in std only, and retired entries: listed
with no modes, or with `effectSupported: false` (they need image preprocessing the
API does not offer). An account may have its own catalogue (`SimConfig.account_effects`).
"""

from __future__ import annotations

from dataclasses import dataclass

BOTH = ("std", "pro")
PRO = ("pro",)
STD = ("std",)
RETIRED = ()


@dataclass(frozen=True, slots=True)
class SimEffect:
    """One entry of the catalogue, and how the simulator renders it."""

    name: str
    caption: str
    modes: tuple[str, ...]
    prompt_supported: bool
    effect_supported: bool = True
    motion: str = "zoom"  # one of klingflow.media.MOTIONS
    duration: int = 5
    kling_version: str = "1.6"
    hot: bool = False

    @property
    def usable(self) -> bool:
        """Whether a submit may use it: supported, with at least one mode."""
        return self.effect_supported and bool(self.modes)

    @property
    def default_prompt(self) -> str:
        return f"{self.caption} effect"


CATALOGUE: tuple[SimEffect, ...] = (
    SimEffect("rocket", "Rocket Launch", BOTH, True, motion="rise", hot=True),
    SimEffect("spinoff", "Spin Off", PRO, False, motion="spin"),
    SimEffect("cartoon", "Cartoon Me", BOTH, True, motion="pulse", hot=True),
    SimEffect("cyberpunk", "Cyberpunk", BOTH, True, motion="shake"),
    SimEffect("expansion", "Expansion", BOTH, True, motion="zoom"),
    SimEffect("fuzzyfuzzy", "Fuzzy Fuzzy", BOTH, False, motion="pulse", hot=True),
    SimEffect("squish", "Squish It", BOTH, False, motion="squash"),
    SimEffect("bloombloom", "Bloom Bloom", BOTH, False, motion="zoom"),
    SimEffect("heart_gesture", "Heart Gesture", STD, False, motion="pulse"),
    SimEffect("dizzydizzy", "Dizzy Dizzy", BOTH, False, motion="spin"),
    SimEffect("jelly_jiggle", "Jelly Jiggle", BOTH, False, motion="squash"),
    SimEffect("pixelpixel", "Pixel Pixel", BOTH, False, motion="shake"),
    SimEffect("instant_film", "Instant Film", BOTH, False, motion="zoom"),
    SimEffect("inner_voice", "Inner Voice", BOTH, True, motion="shake"),
    SimEffect("anime_figure", "Anime Figure", BOTH, True, motion="pulse"),
    SimEffect("bullet_time", "Bullet Time", PRO, True, motion="spin", kling_version="2.1"),
    SimEffect("vogue_walk", "Vogue Walk", PRO, False, motion="rise", kling_version="2.1"),
    SimEffect("hug", "Warm Hug", BOTH, False, effect_supported=False),
    SimEffect("kiss", "Kiss", BOTH, False, effect_supported=False),
    SimEffect("paper_cut", "Paper Cut", STD, True, effect_supported=False),
    SimEffect("balloon_parade", "Balloon Parade", RETIRED, False),
    SimEffect("magic_broom", "Magic Broom", RETIRED, True),
    SimEffect("yearbook", "Yearbook", RETIRED, False),
)
"""The default catalogue, in the order the service lists it."""


def find(catalogue: tuple[SimEffect, ...], name: str) -> SimEffect | None:
    return next((e for e in catalogue if e.name == name), None)


def usable_names(catalogue: tuple[SimEffect, ...]) -> list[str]:
    """The names a submit may use, as the service's 'Supported effects' list names them."""
    return [e.name for e in catalogue if e.usable]
