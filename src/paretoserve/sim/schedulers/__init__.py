"""Batching policies, one module each, chosen by name (`POLICIES`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from paretoserve.errors import UserError
from paretoserve.sim.schedulers.base import Scheduler
from paretoserve.sim.schedulers.lengthaware import LengthAwareScheduler
from paretoserve.sim.schedulers.orca import OrcaScheduler
from paretoserve.sim.schedulers.priority import PriorityScheduler
from paretoserve.sim.schedulers.sarathi import SarathiScheduler
from paretoserve.sim.schedulers.sglang import SglangScheduler
from paretoserve.sim.schedulers.slo import SloScheduler
from paretoserve.sim.schedulers.trtllm import TrtllmScheduler
from paretoserve.sim.schedulers.vllm import VllmScheduler

if TYPE_CHECKING:
    from paretoserve.sim.config import EngineConfig

POLICIES: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (VllmScheduler, OrcaScheduler, SarathiScheduler, PriorityScheduler, SloScheduler,
                LengthAwareScheduler, SglangScheduler, TrtllmScheduler)
}


def policy_class(name: str) -> type[Scheduler]:
    """The policy called `name`; UserError listing the known ones otherwise."""
    cls = POLICIES.get(name)
    if cls is None:
        raise UserError(f"unknown policy '{name}'; known policies: {', '.join(POLICIES)}")
    return cls


def make_scheduler(config: EngineConfig) -> Scheduler:
    """The policy named by `config.policy`, set up for `config`."""
    return policy_class(config.policy)(config)


__all__ = ["POLICIES", "Scheduler", "make_scheduler", "policy_class"]
