"""Prerequisites of some tests (Chromium, the llama.cpp server, Ray, ../shared/data).

On a developer's machine a missing prerequisite skips the test with the command that installs it.
Under CI=true (how `.ci/run` runs on a fresh machine, where `make test` installs all of them) it fails
the test instead, so a missing install step can never hide behind a skip.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    """Skip (locally) or fail (under CI=true) because `what` is not available."""
    if IN_CI:
        pytest.fail(f"{what} (required under CI=true: make test installs it)")
    pytest.skip(what)
