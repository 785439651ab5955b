"""Command-line interface: a thin layer that parses flags, calls the library and prints."""

from paretoserve.cli.app import app, main

__all__ = ["app", "main"]
