"""Imports every command module so that each registers itself on the Typer app (one line each)."""

from paretoserve.cli import catalog_cmd, estimate_cmd, report_cmd  # noqa: F401
from paretoserve.cli import bench_cmd  # noqa: F401
from paretoserve.cli import simulate_cmd  # noqa: F401
