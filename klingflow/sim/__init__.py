"""A simulator of the useapi.net Kling API, for tests and `klingflow run --sim`.

It behaves like the service as documented, failures included: see app.py (routes),
rules.py (what is accepted), faults.py (seeded fault injection), state.py (tasks
move along the injected clock) and render.py (real MP4 results).
"""

from __future__ import annotations

from klingflow.sim.app import API, create_app
from klingflow.sim.config import Faults, SimConfig
from klingflow.sim.server import running_simulator, serve
from klingflow.sim.transport import SimulatedReset, sim_transport

__all__ = ["API", "Faults", "SimConfig", "SimulatedReset", "create_app", "running_simulator",
           "serve", "sim_transport"]
