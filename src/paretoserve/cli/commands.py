"""Imports every command module so that each registers itself on the Typer app."""

from paretoserve.cli import (  # noqa: F401
    bench_cmd,
    catalog_cmd,
    estimate_cmd,
    plan_cmd,
    report_cmd,
    simulate_cmd,
)
