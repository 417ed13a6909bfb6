"""The effects catalogue as the service lists it (GET /videos/effects), kept with its date.

klingflow holds no list of effects: which exist, which take a prompt and which modes
each allows is the service's to say, and it differs between accounts and over time.
A catalogue is fetched through `KlingClient.effects` and kept under the cache root,
one file per backend and account (the newest fetch replaces the one before):

    CACHE_ROOT/effects/BACKEND/ACCOUNT.json    (ACCOUNT: the email, or _default)

Validation reads the kept catalogue of the step's backend and account; a run
fetches the live one first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from klingflow.errors import KlingflowError, UsageError
from klingflow.files import read_text_file, write_atomically

if TYPE_CHECKING:  # validation needs the records, not the HTTP client
    from klingflow.client import KlingClient

CATALOGUE_DIR = "effects"
DEFAULT_ACCOUNT_FILE = "_default"
FORMAT = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]+")


class CatalogueError(KlingflowError):
    """The service answered GET /videos/effects with something that is not a catalogue."""


@dataclass(frozen=True, slots=True)
class EffectEntry:
    """One effect as the catalogue lists it."""

    name: str
    caption: str
    modes: tuple[str, ...]  # supportedModelMode
    prompt: bool  # promptSupported: the service honours a prompt
    supported: bool  # effectSupported

    @property
    def available(self) -> bool:
        """Whether a submit may use it: supported, with at least one mode."""
        return self.supported and bool(self.modes)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "caption": self.caption, "modes": list(self.modes),
                "prompt": self.prompt, "supported": self.supported,
                "available": self.available}


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The effects of one backend and account, as fetched at `fetched_at` (UTC, ISO 8601)."""

    backend: str  # as cache keys name it: sim, useapi or api:BASE_URL
    account: str | None  # the account's email; None: the default account (no email sent)
    fetched_at: str
    effects: tuple[EffectEntry, ...]
    _by_name: dict[str, EffectEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {e.name: e for e in self.effects})

    def get(self, name: str) -> EffectEntry | None:
        return self._by_name.get(name)

    @property
    def available(self) -> list[str]:
        return [e.name for e in self.effects if e.available]

    @property
    def source(self) -> str:
        """How messages name it: `the simulator's catalogue for a@b.c (fetched ...)`."""
        who = f"for {self.account}" if self.account else "of the default account"
        return f"{service_name(self.backend)}'s catalogue {who} (fetched {self.fetched_time})"

    @property
    def fetched_time(self) -> str:
        """`2026-01-02 10:00 UTC`."""
        return self.fetched_at[:16].replace("T", " ") + " UTC"

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "backend": self.backend, "account": self.account,
                "fetched_at": self.fetched_at, "effects": [e.to_json() for e in self.effects]}


def service_name(backend: str) -> str:
    """`sim` -> the simulator, `useapi` -> useapi.net, `api:URL` -> URL."""
    return {"sim": "the simulator", "useapi": "useapi.net"}.get(
        backend, backend.removeprefix("api:"))


class Catalogues(Protocol):
    """Where validation finds the catalogue of an account (None: the default account)."""

    def get(self, account: str | None) -> Catalogue | None: ...


# ---- from the service's answer -----------------------------------------------------------


def parse_catalogue(data: Any, *, backend: str, account: str | None,
                    fetched_at: str) -> Catalogue:
    """The catalogue in a GET /videos/effects answer; entries without a name are skipped.

    A missing `effectSupported` or `promptSupported` counts as false, a missing
    `supportedModelMode` as no modes: only what the service states is used.
    """
    if not isinstance(data, list):
        raise CatalogueError(f"GET videos/effects on {service_name(backend)} answered "
                             f"{type(data).__name__}, not a list of effects")
    entries = (_entry(item) for item in data if isinstance(item, dict))
    return Catalogue(backend, account, fetched_at, tuple(e for e in entries if e))


def _entry(item: dict[str, Any]) -> EffectEntry | None:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    modes = item.get("supportedModelMode")
    caption = item.get("caption")
    return EffectEntry(
        name=name, caption=caption if isinstance(caption, str) else "",
        modes=tuple(m for m in modes if isinstance(m, str)) if isinstance(modes, list) else (),
        prompt=item.get("promptSupported") is True, supported=item.get("effectSupported") is True)


async def fetch_catalogue(client: KlingClient, *, backend: str, account: str | None,
                          now: dt.datetime | None = None) -> Catalogue:
    """GET /videos/effects for `account` (None: no email, the default account)."""
    data = await client.effects(email=account)
    fetched = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return parse_catalogue(data, backend=backend, account=account,
                           fetched_at=fetched.isoformat(timespec="seconds").replace("+00:00", "Z"))


# ---- kept under the cache root -------------------------------------------------------------


def catalogue_path(root: Path, backend: str, account: str | None) -> Path:
    """Where the catalogue of `backend` and `account` is kept under the cache root `root`."""
    name = _file_name(account or DEFAULT_ACCOUNT_FILE)
    return root / CATALOGUE_DIR / _file_name(backend) / f"{name}.json"


def _file_name(text: str) -> str:
    """`text` as a file name: kept as is when safe, else made safe plus a short hash."""
    safe = _UNSAFE.sub("_", text).strip(".")[:80]
    if safe == text:
        return text
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def keep_catalogue(root: Path, catalogue: Catalogue) -> Path:
    """Keep `catalogue` as the newest of its backend and account; its path."""
    path = catalogue_path(root, catalogue.backend, catalogue.account)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(catalogue.to_json(), indent=1) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot keep the effects catalogue under {root}: "
                         f"{exc.strerror or exc}; check KLINGFLOW_HOME") from exc
    return path


def load_catalogue(root: Path, backend: str, account: str | None) -> Catalogue | None:
    """The kept catalogue of `backend` and `account`; None if none is kept (or it is unreadable)."""
    try:
        data = json.loads(read_text_file(catalogue_path(root, backend, account)))
        effects = tuple(EffectEntry(e["name"], e.get("caption", ""), tuple(e["modes"]),
                                    bool(e["prompt"]), bool(e["supported"]))
                        for e in data["effects"])
        return Catalogue(backend, account, str(data["fetched_at"]), effects)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class KeptCatalogues:
    """The kept catalogues of one backend, each read once; remembers the accounts it lacked."""

    def __init__(self, root: Path, backend: str) -> None:
        self.root, self.backend = root, backend
        self.missing: set[str | None] = set()
        self._read: dict[str | None, Catalogue | None] = {}

    def get(self, account: str | None) -> Catalogue | None:
        if account not in self._read:
            self._read[account] = load_catalogue(self.root, self.backend, account)
        found = self._read[account]
        if found is None:
            self.missing.add(account)
        return found

    def unchecked_note(self, fetch_command: str) -> str | None:
        """What validation could not judge for lack of a kept catalogue, and how to
        fetch it; None when every catalogue asked for was kept."""
        if not self.missing:
            return None
        who = ", ".join(sorted(a or "the default account" for a in self.missing))
        return (f"effect names, modes and prompts are unchecked: no catalogue of "
                f"{service_name(self.backend)} is kept for {who}; fetch it with: "
                f"{fetch_command}")


def common_catalogue(catalogues: list[Catalogue]) -> Catalogue:
    """What every one of several accounts' catalogues allows, as the default account's
    (account None): a step that names no account may run on any of them."""
    first = catalogues[0]
    names = [e.name for e in first.effects if all(c.get(e.name) for c in catalogues)]
    effects = tuple(_common([c.get(name) for c in catalogues]) for name in names)
    return Catalogue(first.backend, None, min(c.fetched_at for c in catalogues), effects)


def _common(entries: list[EffectEntry | None]) -> EffectEntry:
    found = [e for e in entries if e is not None]
    modes = tuple(m for m in found[0].modes if all(m in e.modes for e in found))
    return EffectEntry(found[0].name, found[0].caption, modes,
                       all(e.prompt for e in found), all(e.supported for e in found))


class FetchedCatalogues:
    """Catalogues just fetched, by account."""

    def __init__(self, catalogues: Iterable[Catalogue]) -> None:
        self._by_account = {c.account: c for c in catalogues}

    def get(self, account: str | None) -> Catalogue | None:
        return self._by_account.get(account)
