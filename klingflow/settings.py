"""One frozen settings object, built once from the command line and the environment.

Nothing below `cli.py` reads `argparse` or `os.environ`: the token, the API's base
URL, the cache's home and the run's options all arrive here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from klingflow.cache import CACHE_DIR_NAME
from klingflow.cache.location import RemoteSettings, remote_settings
from klingflow.policy import PollPolicy

DEFAULT_API_BASE = "https://api.useapi.net/v1/kling"
SIM_DIR_NAME = ".klingflow-sim"
SIM_BACKOFF = 0.2
REAL_BACKOFF = 15.0
REAL_POLL_FLOOR = 5.0
SIM_POLL_FLOOR = 0.05  # simulated tasks take seconds


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

    token: str | None = field(default=None, repr=False)  # USEAPI_TOKEN; never printed
    base_url: str = DEFAULT_API_BASE  # KLINGFLOW_API_BASE
    home: Path | None = None  # KLINGFLOW_HOME: the cache root for every pipeline
    sim_home: Path | None = None  # KLINGFLOW_SIM_HOME: the simulated service's state
    sim: SimOptions | None = None  # run on the embedded simulator
    remote: RemoteSettings | None = None  # KLINGFLOW_REMOTE or --remote: a shared cache
    run: RunFlags = field(default_factory=RunFlags)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *,
                         sim: SimOptions | None = None, run: RunFlags | None = None,
                         remote: str | None = None, remote_read_only: bool = False) -> Settings:
        """Settings from the environment; `remote` and `remote_read_only` are the command
        line's (--remote wins over KLINGFLOW_REMOTE)."""
        env = os.environ if environ is None else environ
        home, sim_home = env.get("KLINGFLOW_HOME"), env.get("KLINGFLOW_SIM_HOME")
        return cls(token=env.get("USEAPI_TOKEN") or None,
                   base_url=env.get("KLINGFLOW_API_BASE") or DEFAULT_API_BASE,
                   home=Path(home) if home else None,
                   sim_home=Path(sim_home) if sim_home else None, sim=sim, run=run or RunFlags(),
                   remote=remote_settings(env, url=remote, read_only=remote_read_only))

    @property
    def backend(self) -> str:
        """What cache keys call the backend: results of one never serve another."""
        if self.sim is not None:
            return "sim"
        return backend_name(self.base_url)

    @property
    def backoff(self) -> float:
        """The base of the waits after a 429 or a lost POST."""
        return SIM_BACKOFF if self.sim is not None else REAL_BACKOFF

    @property
    def poll(self) -> PollPolicy:
        """Polls near each task's expected end, never closer than `--poll-interval`."""
        if self.run.poll_interval:
            return PollPolicy.scaled(self.run.poll_interval)
        return PollPolicy.scaled(SIM_POLL_FLOOR if self.sim is not None else REAL_POLL_FLOOR)

    def cache_root(self, pipeline_path: Path) -> Path:
        """KLINGFLOW_HOME, else `.klingflow/` beside the pipeline."""
        return self.home if self.home else pipeline_path.resolve().parent / CACHE_DIR_NAME

    def sim_state_dir(self, folder: Path) -> Path:
        """Where the simulated service keeps its accounts, uploads and tasks: apart from
        the cache, so deleting the cache does not delete the service's tasks.
        KLINGFLOW_SIM_HOME, else `.klingflow-sim/` in the pipelines' folder."""
        return self.sim_home if self.sim_home else folder / SIM_DIR_NAME


def backend_name(base_url: str) -> str:
    """`useapi` for the real service, else `api:BASE_URL`."""
    base = base_url.rstrip("/")
    return "useapi" if base == DEFAULT_API_BASE else f"api:{base}"
