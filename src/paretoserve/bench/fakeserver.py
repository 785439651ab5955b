"""A minimal OpenAI-compatible streaming server for testing the load generator, with fault injection.

It speaks just enough HTTP/1.1 (keep-alive, chunked responses) on raw asyncio streams to be much
faster than any real engine, so it measures the client's own overhead; it never runs a model.

- `POST /v1/completions` and `POST /v1/chat/completions` stream `max_tokens` tokens as SSE events
  (one token per event, `finish_reason` "length", a `usage` event when `stream_options.include_usage`
  is set, then `data: [DONE]`). Every event carries `"t"`: the server's `time.monotonic()` when it
  was written, in seconds, and the last event's `timings` holds `first_token_t` / `last_token_t`
  (the same clock, when the first and last token were written), so a client on the same machine
  can measure the delay it adds (`time.monotonic()` is system-wide on Linux).
- `POST /tokenize` (vLLM format): one token per whitespace-separated word, plus nothing else.
- `GET /v1/models` lists one model, `fake`.
- With `tokens_per_event` = k > 1, each event carries k tokens (text " tok" k times); with
  `stream_options.continuous_usage_stats` every event carries the cumulative `usage` (as vLLM does).
- With `api_key` set, requests without `Authorization: Bearer <api_key>` get HTTP 401.

A prompt (or last chat message) containing `FAULT=<kind>` asks for a fault:
`http_<status>` (that status with a JSON error body), `stall` (one token, then silence),
`cut` (a few tokens, then the connection is closed mid-body), `bad_sse` (an event that is not JSON),
`slow` (tokens every `slow_interval_s`), `json` (a complete non-streamed JSON reply, as from a
server that ignores `stream: true`). With `fail_every` = k > 0, every k-th completion request
(the k-th, 2k-th, ... received) gets HTTP 500 whatever its prompt, for a known share of failures.

Run standalone: `python -m paretoserve.bench.fakeserver --port 8123 [--token-interval 0.01]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass

_FAULT = re.compile(r"FAULT=([a-z_0-9]+)")


@dataclass(frozen=True, slots=True)
class FakeServerConfig:
    """Behaviour of the fake server.

    Attributes:
        token_interval_s: pause between streamed tokens in seconds (0 streams instantly).
        slow_interval_s: pause between tokens for the `slow` fault, seconds.
        cut_after_tokens: tokens sent before the `cut` fault closes the connection.
        tokens_per_event: tokens carried by each streamed event.
        api_key: required bearer token, None for none.
        fail_every: every this-many-th completion request gets HTTP 500 (0: none).
    """

    token_interval_s: float = 0.0
    slow_interval_s: float = 0.2
    cut_after_tokens: int = 2
    tokens_per_event: int = 1
    api_key: str | None = None
    fail_every: int = 0


def _chunk(data: bytes) -> bytes:
    """Frame `data` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: str) -> bytes:
    """One SSE event framed as one HTTP chunk."""
    return _chunk(b"data: " + payload.encode() + b"\n\n")


class _Handler:
    """Serves one connection: parses requests and streams responses."""

    def __init__(self, config: FakeServerConfig) -> None:
        self.config = config
        self.seen_headers: list[dict[str, str]] = []
        self.streams = 0
        self.max_streams = 0
        self.completions = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests on one keep-alive connection until the peer closes it."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen_headers.append(headers)
                keep = await self._route(method, path, body, headers, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _route(self, method: str, path: str, body: bytes, headers: dict[str, str],
                     writer: asyncio.StreamWriter) -> bool:
        """Dispatch one request; returns False when the connection must be closed."""
        if self.config.api_key and headers.get("authorization") != f"Bearer {self.config.api_key}":
            self._json(writer, 401, {"error": {"message": "invalid api key"}})
            return True
        if method == "GET" and path.rstrip("/").endswith("/models"):
            self._json(writer, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
            return True
        if method == "POST" and path == "/tokenize":
            text = json.loads(body).get("prompt", "")
            tokens = list(range(len(text.split())))
            self._json(writer, 200, {"count": len(tokens), "tokens": tokens, "max_model_len": 1 << 20})
            return True
        if method == "POST" and path.endswith(("/completions", "/chat/completions")):
            self.completions += 1
            if self.config.fail_every and self.completions % self.config.fail_every == 0:
                self._json(writer, 500, {"error": {"message": "injected failure (fail_every)"}})
                return True
            self.streams += 1
            self.max_streams = max(self.max_streams, self.streams)
            try:
                return await self._stream(path.endswith("/chat/completions"), json.loads(body), writer)
            finally:
                self.streams -= 1
        self._json(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        return True

    @staticmethod
    def _json(writer: asyncio.StreamWriter, status: int, obj: object) -> None:
        """Write a complete JSON response."""
        data = json.dumps(obj).encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        writer.write(head.encode() + data)

    async def _stream(self, chat: bool, req: dict, writer: asyncio.StreamWriter) -> bool:
        """Stream one completion, or inject the fault its prompt asks for."""
        if chat:
            prompt = str(req["messages"][-1]["content"])
        else:
            prompt = req["prompt"] if isinstance(req["prompt"], str) else " ".join(map(str, req["prompt"]))
        match = _FAULT.search(prompt)
        fault = match.group(1) if match else ""
        if fault.startswith("http_"):
            self._json(writer, int(fault[5:]), {"error": {"message": f"injected {fault}"}})
            return True
        n = int(req.get("max_tokens") or 16)
        if fault == "json":
            reply = " tok" * n
            choice = {"message": {"role": "assistant", "content": reply}} if chat else {"text": reply}
            usage_all = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
            self._json(writer, 200, {"choices": [{"index": 0, **choice, "finish_reason": "length"}],
                                     "usage": usage_all})
            return True
        options = req.get("stream_options") or {}
        usage = bool(options.get("include_usage"))
        continuous = bool(options.get("continuous_usage_stats"))
        prompt_tokens = len(prompt.split())
        per_event = self.config.tokens_per_event
        interval = self.config.slow_interval_s if fault == "slow" else self.config.token_interval_s
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        text = " tok" * per_event
        if chat:
            head = '{"id":"c","object":"chat.completion.chunk","model":"fake","choices":[{"index":0,"delta":'
            content = f'{head}{{"content":"{text}"}},"finish_reason":null}}]'
            final = head + '{},"finish_reason":"length"}]'
        else:
            head = '{"id":"c","object":"text_completion","model":"fake","choices":[{"index":0,'
            content = f'{head}"text":"{text}","finish_reason":null}}]'
            final = head + '"text":"","finish_reason":"length"}]'
        events = -(-n // per_event)
        first_t = now = 0.0
        for i in range(events):
            cumulative = ""
            if continuous:
                done = min((i + 1) * per_event, n)
                cumulative = (f',"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{done},'
                              f'"total_tokens":{prompt_tokens + done}}}')
            if fault == "bad_sse" and i == 1:
                writer.write(_event("{this is not json"))
            else:
                now = time.monotonic()
                first_t = first_t or now
                writer.write(_event(f'{content},"t":{now!r}{cumulative}}}'))
            if fault == "cut" and i + 1 >= self.config.cut_after_tokens:
                await writer.drain()
                writer.transport.abort()
                return False
            if fault == "stall":
                await writer.drain()
                await asyncio.sleep(3600)
            if interval > 0:
                await writer.drain()
                await asyncio.sleep(interval)
        timings = f'{{"first_token_t":{first_t!r},"last_token_t":{now!r}}}'
        writer.write(_event(f'{final},"t":{time.monotonic()!r},"timings":{timings}}}'))
        if usage:
            writer.write(_event(json.dumps({"choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}})))
        writer.write(_event("[DONE]") + b"0\r\n\r\n")
        await writer.drain()
        return True


class FakeServer:
    """The fake server on its own event loop in a background thread (for tests).

    Use as a context manager; `url` is the OpenAI base URL, e.g. `http://127.0.0.1:PORT/v1`.
    """

    def __init__(self, config: FakeServerConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.config = config or FakeServerConfig()
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fake-openai-server")
        self._server: asyncio.base_events.Server | None = None
        self._handler = _Handler(self.config)

    @property
    def seen_headers(self) -> list[dict[str, str]]:
        """Headers of every request received (names lower-cased), in arrival order."""
        return self._handler.seen_headers

    @property
    def max_streams(self) -> int:
        """The most completion streams that were open at once."""
        return self._handler.max_streams

    @property
    def url(self) -> str:
        """OpenAI-compatible base URL."""
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handler.serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


async def serve_forever(config: FakeServerConfig, host: str, port: int) -> None:
    """Run the server in the current event loop until cancelled; prints `READY <port>` once bound."""
    server = await asyncio.start_server(_Handler(config).serve, host, port, backlog=4096)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Command-line entry point (uses uvloop when it is installed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-interval", type=float, default=0.0, help="seconds between tokens")
    args = parser.parse_args()
    config = FakeServerConfig(token_interval_s=args.token_interval)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(serve_forever(config, args.host, args.port))
    else:
        uvloop.run(serve_forever(config, args.host, args.port))


if __name__ == "__main__":
    main()
