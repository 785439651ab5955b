"""The event loop the load generator runs on, and the JSON codec of its hot path.

uvloop (libuv) where it is installed: it runs aiohttp's request/response cycle roughly a third
faster than the standard selector loop on one core, and the client's own time per request is
added to every timestamp it records. orjson decodes the streamed chunks several times faster than
the standard `json` module. Both fall back to the standard library where they are not installed
(the results are the same; only the client's overhead differs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
    uvloop = None

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency
    orjson = None

T = TypeVar("T")

#: Decode one JSON document from bytes (orjson where installed).
loads: Callable[[bytes], Any] = orjson.loads if orjson is not None else json.loads


def dumps(obj: object) -> bytes:
    """Encode `obj` as compact JSON bytes (orjson where installed)."""
    if orjson is not None:
        return orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def loop_name() -> str:
    """Name of the event loop `run` uses, for run configs."""
    return "uvloop" if uvloop is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh event loop (uvloop where installed), like `asyncio.run`."""
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
