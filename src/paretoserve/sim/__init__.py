"""Discrete-event simulation of LLM serving (DESIGN §2, §4): `simulate(requests, ...)`.

The names below are imported on first use (`paretoserve.lazy`), so that importing one submodule,
e.g. `sim.schedulers` for its policy names, does not load the whole simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paretoserve.lazy import lazy_exports

if TYPE_CHECKING:
    from paretoserve.sim.api import simulate
    from paretoserve.sim.config import DisaggConfig, EngineConfig
    from paretoserve.sim.engine import ReplicaStats, SimStats, Simulation
    from paretoserve.sim.iteration import IterationRow

_MODULES = {"simulate": "api", "DisaggConfig": "config", "EngineConfig": "config", "ReplicaStats": "engine",
            "SimStats": "engine", "Simulation": "engine", "IterationRow": "iteration"}
__all__ = ["DisaggConfig", "EngineConfig", "IterationRow", "ReplicaStats", "SimStats", "Simulation",
           "simulate"]
__getattr__ = lazy_exports(__name__, {name: f"{__name__}.{module}" for name, module in _MODULES.items()})
