"""One frozen settings object, built once from the command line and the environment.

Nothing below `cli.py` reads `argparse` or `os.environ`: the token, the API's base
URL, the cache's home and the run's options all arrive here.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from klingflow.cache import CACHE_DIR_NAME
from klingflow.cache.location import RemoteSettings, remote_settings
from klingflow.errors import UsageError
from klingflow.files import real_path
from klingflow.policy import PollPolicy

DEFAULT_API_BASE = "https://api.useapi.net/v1/kling"
SIM_DIR_NAME = ".klingflow-sim"
TOKEN_VARIABLE = "USEAPI_TOKEN"
API_BASE_VARIABLE = "KLINGFLOW_API_BASE"
HOME_VARIABLE = "KLINGFLOW_HOME"
SIM_HOME_VARIABLE = "KLINGFLOW_SIM_HOME"
CLAIM_TTL_VARIABLE = "KLINGFLOW_CLAIM_TTL"
REAL_POLL_FLOOR = 5.0
SIM_POLL_FLOOR = 0.05  # simulated tasks take seconds


class ApiToken:
    """The useapi.net API token. Nothing shows it: not repr, str, format or a message;
    only `reveal()` gives it, for the Authorization header."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiToken(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiToken) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_token(raw: str, *, source: str = TOKEN_VARIABLE) -> ApiToken | None:
    """The token in `raw` without surrounding whitespace (a file's or a CRLF line's end);
    None when nothing is left. A control or non-ASCII character inside it is refused
    (UsageError naming `source`, never the value): no HTTP header can carry it."""
    token = raw.strip()
    if not token:
        return None
    if any(unicodedata.category(ch) == "Cc" for ch in token):
        raise UsageError(f"{source}: the token holds a control character (such as a line "
                         f"break or a tab) inside it; set {source} to the useapi.net API "
                         "token alone")
    if not token.isascii():
        raise UsageError(f"{source}: the token holds a character that is not ASCII; set "
                         f"{source} to the useapi.net API token alone")
    return ApiToken(token)


def check_api_base(raw: str, *, source: str = API_BASE_VARIABLE) -> str:
    """The API's base URL from `raw`, once it is an http(s) address that holds no
    credential. A message about it never repeats the value: it may hold a password."""
    url = raw.strip()
    expected = f"set {source} to the API's address alone, such as {DEFAULT_API_BASE}"
    if "@" in url:
        raise UsageError(f"{source}: the address holds a user name or password (user:"
                         f"password@); the API takes only the bearer token from "
                         f"{TOKEN_VARIABLE}: {expected}")
    if "?" in url or "#" in url:
        raise UsageError(f"{source}: the address holds a query or a fragment (?... or "
                         f"#...), which may carry a key; {expected}")
    if not url.isascii() or any(ch.isspace() or unicodedata.category(ch) == "Cc"
                                for ch in url):
        raise UsageError(f"{source}: the address holds a space, a control character or a "
                         f"character that is not ASCII; {expected}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0..65535
    except ValueError:
        raise UsageError(f"{source}: the address is not a valid URL (its host or port); "
                         f"{expected}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source}: the address must start with http:// or https:// "
                         f"and name a host; {expected}")
    return url


def check_home(raw: str, *, source: str = HOME_VARIABLE) -> Path:
    """The directory `source` names; it may not exist yet, but must not be a file. A
    value that starts or ends with a space is refused: taken as written, a stray space
    in a shell script makes a folder named ' ' wherever klingflow runs."""
    if raw != raw.strip():
        raise UsageError(f"{source} is {raw!r}: it starts or ends with a space; set it to "
                         "the directory's path, or unset it")
    home = Path(raw)
    if home.exists() and not home.is_dir():
        raise UsageError(f"{source}: {home} is a file, not a directory; point {source} at "
                         "a directory (it is created when missing)")
    return home


@dataclass(frozen=True, slots=True)
class SimOptions:
    """The embedded simulator's options (`--sim`)."""

    seed: int = 0
    faults: str = ""  # KIND=RATE,...
    speed: float = 1.0


@dataclass(frozen=True, slots=True)
class RunFlags:
    """How one `klingflow run` goes; every field has the CLI's default."""

    out: Path = Path("runs")
    max_jobs: int | None = None
    poll_interval: float | None = None  # the shortest wait between polls; None: the default
    fail_fast: bool = False
    budget: int | None = None
    force: tuple[str, ...] = ()
    force_all: bool = False
    resume: str | None = None  # "latest", a run directory, or None
    connect_timeout: float = 60.0  # seconds to keep trying to reach the service at the start


@dataclass(frozen=True, slots=True)
class Settings:
    """Where klingflow talks to and keeps things, and how a run goes."""

    token: ApiToken | None = None  # USEAPI_TOKEN; never printed
    base_url: str = DEFAULT_API_BASE  # KLINGFLOW_API_BASE
    home: Path | None = None  # KLINGFLOW_HOME: the cache root for every pipeline
    sim_home: Path | None = None  # KLINGFLOW_SIM_HOME: the simulated service's state
    sim: SimOptions | None = None  # run on the embedded simulator
    remote: RemoteSettings | None = None  # KLINGFLOW_REMOTE or --remote: a shared cache
    claim_ttl: float = 60.0  # KLINGFLOW_CLAIM_TTL: a remote claim not renewed this long is stale
    run: RunFlags = field(default_factory=RunFlags)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *,
                         sim: SimOptions | None = None, run: RunFlags | None = None,
                         remote: str | None = None, remote_read_only: bool = False) -> Settings:
        """Settings from the environment; `remote` and `remote_read_only` are the command
        line's (--remote wins over KLINGFLOW_REMOTE). Raises UsageError (exit 2) for a
        token, base URL, home or remote that cannot work."""
        env = os.environ if environ is None else environ
        home, sim_home = env.get(HOME_VARIABLE), env.get(SIM_HOME_VARIABLE)
        base = env.get(API_BASE_VARIABLE, "").strip()
        return cls(token=parse_token(env.get(TOKEN_VARIABLE, "")),
                   base_url=check_api_base(base) if base else DEFAULT_API_BASE,
                   home=check_home(home) if home else None,
                   sim_home=check_home(sim_home, source=SIM_HOME_VARIABLE) if sim_home else None,
                   sim=sim, run=run or RunFlags(),
                   remote=remote_settings(env, url=remote, read_only=remote_read_only),
                   claim_ttl=_seconds(env.get(CLAIM_TTL_VARIABLE), CLAIM_TTL_VARIABLE, 60.0))

    @property
    def backend(self) -> str:
        """What cache keys call the backend: results of one never serve another."""
        if self.sim is not None:
            return "sim"
        return backend_name(self.base_url)

    @property
    def backoff(self) -> float:
        """The base of the waits after a 429 or a lost POST: twice the shortest wait
        between polls (10 s by default, as useapi.net's own examples wait after a 429)."""
        return 2 * self._poll_floor

    @property
    def _poll_floor(self) -> float:
        if self.run.poll_interval:
            return self.run.poll_interval
        return SIM_POLL_FLOOR if self.sim is not None else REAL_POLL_FLOOR

    @property
    def poll(self) -> PollPolicy:
        """Polls near each task's expected end, never closer than `--poll-interval`."""
        return PollPolicy.scaled(self._poll_floor)

    def cache_root(self, pipeline_path: Path) -> Path:
        """KLINGFLOW_HOME, else `.klingflow/` beside the pipeline."""
        return self.home if self.home else real_path(pipeline_path).parent / CACHE_DIR_NAME

    def sim_state_dir(self, folder: Path) -> Path:
        """Where the simulated service keeps its accounts, uploads and tasks: apart from
        the cache, so deleting the cache does not delete the service's tasks.
        KLINGFLOW_SIM_HOME, else `.klingflow-sim/` in the pipelines' folder."""
        return self.sim_home if self.sim_home else folder / SIM_DIR_NAME


def backend_name(base_url: str) -> str:
    """`useapi` for the real service, else `api:BASE_URL`."""
    base = base_url.rstrip("/")
    return "useapi" if base == DEFAULT_API_BASE else f"api:{base}"


def _seconds(raw: str | None, source: str, default: float) -> float:
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{source}={raw.strip()!r}: expected a number of seconds above 0")
    return value
