"""Workloads: requests, trace readers and synthetic arrival processes."""

from paretoserve.workload.request import Request
from paretoserve.workload.synthetic import (
    Arrivals,
    Lengths,
    build_workload,
    constant,
    gamma,
    iter_workload,
    mean_rate,
    parse_lengths,
    poisson,
    ramp,
    rescale,
)
from paretoserve.workload.traces import BUNDLED, FORMATS, TraceWarning, load_trace, save_trace

__all__ = [
    "BUNDLED", "FORMATS", "Arrivals", "Lengths", "Request", "TraceWarning", "build_workload", "constant",
    "gamma", "iter_workload", "load_trace", "mean_rate", "parse_lengths", "poisson", "ramp", "rescale",
    "save_trace",
]
