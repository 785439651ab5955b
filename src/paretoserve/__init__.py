"""paretoserve: latency / throughput / cost / energy trade-offs of LLM serving deployments.

The library API (DESIGN §2): `estimate` (roofline step times), `simulate` (the serving simulator,
streaming per-request records) and `simulate_run` (a run folder), `plan` (deployment-plan search).
"""

from paretoserve.perf.estimate import estimate
from paretoserve.planning import plan
from paretoserve.sim.api import simulate, simulate_run

__all__ = ["estimate", "plan", "simulate", "simulate_run"]
