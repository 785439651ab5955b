"""Imports every command module so that each registers itself on the Typer app."""

from paretoserve.cli import (  # noqa: F401
    bench_cmd,
    calibrate_cmd,
    catalog_cmd,
    estimate_cmd,
    partition_cmd,
    plan_cmd,
    profile_cmd,
    report_cmd,
    simulate_cmd,
    validate_cmd,
)
