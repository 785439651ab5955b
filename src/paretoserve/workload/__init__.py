"""Workloads: requests, trace readers and synthetic arrival processes."""

from paretoserve.workload.request import Request

__all__ = ["Request"]
