"""paretoserve: latency / throughput / cost / energy trade-offs of LLM serving deployments.

The library API (DESIGN §2): `estimate` (roofline step times), `simulate` (the serving simulator,
streaming per-request records) and `simulate_run` (a run folder), `plan` (deployment-plan search).
They are imported on first use, so that importing a submodule (the command line does, for every
command) does not load the planner's and the reports' dependencies.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from paretoserve.lazy import lazy_exports

if TYPE_CHECKING:
    from paretoserve.perf.estimate import estimate
    from paretoserve.planning import plan
    from paretoserve.sim.api import simulate, simulate_run

__all__ = ["estimate", "plan", "simulate", "simulate_run"]
__getattr__ = lazy_exports(__name__, {"estimate": "paretoserve.perf.estimate", "simulate": "paretoserve.sim.api",
                                      "simulate_run": "paretoserve.sim.api"})


class _Package(types.ModuleType):
    """`paretoserve.plan` names both the `plan` function and the `plan/` subpackage: the attribute
    is the function whichever is imported first (importing the subpackage binds it here)."""

    @property
    def plan(self) -> object:
        from paretoserve.planning import plan

        return plan

    @plan.setter
    def plan(self, _subpackage: object) -> None:
        """Ignore the import system binding the subpackage (it stays in `sys.modules`)."""


sys.modules[__name__].__class__ = _Package
