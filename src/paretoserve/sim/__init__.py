"""Discrete-event simulation of LLM serving (DESIGN §2, §4): `simulate(requests, ...)`."""

from paretoserve.sim.api import simulate
from paretoserve.sim.config import DisaggConfig, EngineConfig
from paretoserve.sim.engine import ReplicaStats, SimStats, Simulation
from paretoserve.sim.iteration import IterationRow

__all__ = ["DisaggConfig", "EngineConfig", "IterationRow", "ReplicaStats", "SimStats", "Simulation",
           "simulate"]
