"""The checked pipeline: frozen records that everything past the loader uses.

Nothing past `klingflow.spec.load_pipeline` touches a raw dict. `${vars.*}` and
`${matrix.*}` are resolved at load time; what is only known at run time
(`${inputs.*}` and `${steps.*}`) stays as a `Template` of text and `Ref` parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

STEP_ATTRIBUTES = ("video", "first_frame", "last_frame")


@dataclass(frozen=True, slots=True)
class Position:
    file: str
    line: int  # 1-based
    col: int  # 1-based


class Positions(Mapping[str, Position]):
    """Where each of a step's params was written, made into `Position`s only when one is
    read: a 10,000-step file has some 60,000 of them, and a run reads none (a program
    pointing at a line may). Each is kept as one int (`pack`), not a (line, col) tuple:
    the cyclic garbage collector must visit every tuple at least once, and a dict of
    ints not at all."""

    __slots__ = ("_file", "_places")

    def __init__(self, file: str, places: Mapping[str, int]) -> None:
        self._file = file
        self._places = places

    @staticmethod
    def pack(line: int, col: int) -> int:
        return line << 32 | col

    def __getitem__(self, name: str) -> Position:
        line, col = divmod(self._places[name], 1 << 32)
        return Position(self._file, line, col)

    def __iter__(self) -> Iterator[str]:
        return iter(self._places)

    def __len__(self) -> int:
        return len(self._places)

    def __repr__(self) -> str:
        return f"Positions({dict(self)!r})"


@dataclass(frozen=True, slots=True)
class Ref:
    """A run-time reference: `${inputs.NAME}` or `${steps.ID.ATTR}`."""

    scope: Literal["inputs", "steps"]
    name: str  # input name, or an expanded step id such as `looks@1`
    attr: str | None = None  # for steps: one of STEP_ATTRIBUTES

    @property
    def text(self) -> str:
        return f"${{{self.scope}.{self.name}{'.' + self.attr if self.attr else ''}}}"

    @property
    def placeholder(self) -> str:
        """How a plan shows a value that is only known at run time."""
        if self.scope == "inputs":
            return f"<url of inputs.{self.name}>"
        return f"<{self.attr} of {self.name}>"


@dataclass(frozen=True, slots=True)
class Template:
    """A string with run-time references, e.g. `("a ", Ref(...), " b")`."""

    parts: tuple[str | Ref, ...]

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    def render(self, resolve: Callable[[Ref], str]) -> str:
        return "".join(p if isinstance(p, str) else resolve(p) for p in self.parts)

    @property
    def placeholder(self) -> str:
        return self.render(lambda ref: ref.placeholder)


Value = str | int | float | bool | Template


@dataclass(frozen=True, slots=True)
class Account:
    alias: str
    email: str
    max_jobs: int = 1


@dataclass(frozen=True, slots=True)
class Input:
    """An image input: an http(s) URL, or a checked local file (absolute path) with the
    Content-Type its content calls for (image/png or image/jpeg, whatever its name)."""

    name: str
    url: str | None = None
    path: Path | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One unit of work; a matrix step is already expanded into `ID@0`, `ID@1`, ...

    `params` holds the API fields exactly as the user set them after defaults,
    vars and matrix values were merged in (`duration` as an int); fields the user
    did not set are absent. `needs` lists every step id this step waits for:
    its explicit `needs` plus every `${steps.*}` reference, in file order.
    """

    id: str
    kind: Literal["frames", "effect"]
    params: Mapping[str, Value]
    account: str | None
    needs: tuple[str, ...]
    retries: int
    timeout: float
    position: Position
    base_id: str  # the id as written; equals `id` outside a matrix
    positions: Mapping[str, Position]  # where each param's value was written


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """A pipeline's own price: `model` is a model name or `effect:NAME`."""

    model: str
    mode: str
    duration: int
    credits: int
    audio: bool = False


@dataclass(frozen=True, slots=True)
class Output:
    name: str
    concat: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    path: Path
    name: str
    description: str
    accounts: Mapping[str, Account]
    inputs: Mapping[str, Input]
    vars: Mapping[str, str | int | float]
    max_jobs: int | None
    budget: int | None
    budget_position: Position | None  # where limits.budget was written
    prices: tuple[PriceEntry, ...]
    steps: tuple[Step, ...]  # expanded, in file order
    outputs: Mapping[str, Output]

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)
