"""Asynchronous streaming client for OpenAI-compatible `/v1/completions` and `/v1/chat/completions`.

Built on aiohttp: its C HTTP parser sustains several times the streamed request rate of httpx on
one core (httpcore's pool bookkeeping grows with the number of open connections), which matters
because the client's own delay is added to every timestamp it records.

One call of `stream_request` sends one request with `stream: true` and records, on the process's
monotonic clock (`time.monotonic()`, seconds), when it was sent and when every token-bearing
server-sent event arrived, with how many tokens it carried, plus the finish reason, the `usage`
block and any server-reported `timings` (llama.cpp). Failures never raise: they are returned in
`StreamResult.error` as `"<kind>: <message>"` with one of the stable kinds

- `timeout`      the per-request time limit ran out (connecting included),
- `connect`      the connection was refused or could not be made,
- `http_<status>` the server answered with an HTTP error status,
- `stream_cut`   the connection or stream ended before a finish reason (also a `[DONE]` without
                 one: the server aborted the generation, as llama-cpp-python does to a streaming
                 request when another arrives unless started with `--interrupt_requests False`),
- `bad_sse`      an event could not be parsed (not JSON, or not an object),
- `server_error` the server sent an error object inside the stream,
- `interrupted`  the run was stopped (Ctrl-C) while the request was in flight.

Tokens per event: when an event carries cumulative `usage.completion_tokens` (vLLM's
`continuous_usage_stats`), the difference from the previous value; otherwise 1 per event whose text
is not empty. The record's output token count is the final `usage.completion_tokens` when the server
reports it, else the streamed count; both are kept when they differ (`extra.stream_tokens`).

ITL: a first event of k tokens adds k - 1 gaps of 0; a later event of k tokens that arrived g
seconds after the previous one adds k gaps of g / k, so `len(itl_s) == streamed tokens - 1` and
`sum(itl_s) == last_token_s - first_token_s` (DESIGN §3).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from paretoserve.bench.eventloop import dumps, loads
from paretoserve.metrics.records import RequestRecord

Endpoint = Literal["completions", "chat"]

TIMEOUT = "timeout"
CONNECT = "connect"
STREAM_CUT = "stream_cut"
BAD_SSE = "bad_sse"
SERVER_ERROR = "server_error"
INTERRUPTED = "interrupted"

_MESSAGE_CHARS = 200

#: Seconds an idle connection stays in the pool: below uvicorn's 5 s keep-alive (vLLM, SGLang,
#: llama-cpp-python), so a request never goes out on a connection the server is closing (which
#: would fail it with a spurious `stream_cut`).
KEEPALIVE_S = 4.0


def http_error_kind(status: int) -> str:
    """Error kind for an HTTP error status, e.g. `http_503`."""
    return f"http_{status}"


def error_text(kind: str, message: str) -> str:
    """`kind: message` on one line, the message shortened to 200 characters."""
    one_line = " ".join(str(message).split())
    return f"{kind}: {one_line[:_MESSAGE_CHARS]}"


def error_kind(error: str) -> str:
    """The kind part of an error text written by `error_text`."""
    return error.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where and how to send requests.

    Attributes:
        base_url: the server's OpenAI base URL, e.g. `http://127.0.0.1:8000/v1`.
        model: model name sent in every request.
        endpoint: `completions` (`/completions`, prompt text or token ids) or `chat`
            (`/chat/completions`, one user message).
        api_key: sent as `Authorization: Bearer <key>` when set.
        headers: extra HTTP headers sent with every request.
        timeout_s: time limit for one request, from sending to the last event, in seconds.
        ignore_eos: ask the server to generate exactly `max_tokens` (`ignore_eos` and `min_tokens`,
            understood by vLLM, SGLang and llama.cpp; others ignore or reject them).
        include_usage: ask for a final `usage` event (`stream_options.include_usage`).
        extra_body: more fields merged into every request body (e.g. `{"temperature": 0}`).
    """

    base_url: str
    model: str
    endpoint: Endpoint = "completions"
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 600.0
    ignore_eos: bool = True
    include_usage: bool = True
    extra_body: Mapping[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Full URL of the endpoint."""
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        return self.base_url.rstrip("/") + path

    def http_headers(self) -> dict[str, str]:
        """Headers sent with every request."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self.headers)
        return headers


def build_body(config: ClientConfig, prompt: str | Sequence[int], max_tokens: int) -> dict[str, object]:
    """The JSON body of one streamed request (token-id prompts only for `completions`)."""
    body: dict[str, object] = {"model": config.model, "max_tokens": max_tokens, "stream": True}
    if config.endpoint == "chat":
        if not isinstance(prompt, str):
            raise ValueError("the chat endpoint needs a text prompt")
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
    if config.include_usage:
        body["stream_options"] = {"include_usage": True}
    if config.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    body.update(config.extra_body)
    return body


def make_session(config: ClientConfig, max_connections: int | None = None) -> aiohttp.ClientSession:
    """An HTTP session for a run: at most `max_connections` connections (None: no limit), kept
    alive between requests, no session-wide time limit (each request has its own), and no proxy
    from the environment (a proxy would distort the timings). Create it inside the event loop."""
    connector = aiohttp.TCPConnector(limit=max_connections or 0, keepalive_timeout=KEEPALIVE_S)
    return aiohttp.ClientSession(connector=connector, headers=config.http_headers(),
                                 timeout=aiohttp.ClientTimeout(total=None), trust_env=False)


class SseParser:
    """Incremental server-sent-events parser: feed bytes, get the `data` payload of each event.

    Lines end with LF or CR LF; an empty line ends an event; several `data:` lines of one event are
    joined with LF; comments (`:`) and other fields (`event`, `id`, `retry`) are ignored.
    """

    __slots__ = ("_tail", "_data")

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Parse more bytes; returns the payloads of the events they completed."""
        if (not self._tail and not self._data and chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
                and chunk.count(b"\n") == 2):
            return [chunk[6:-2]]  # the common case: exactly one complete single-line event
        data = self._tail + chunk if self._tail else chunk
        if self._data or b"\r" in data:
            return self._feed_lines(data)
        # LF-only events: split on the blank lines; single-line `data: ` events need no line loop.
        parts = data.split(b"\n\n")
        self._tail = parts.pop()
        events: list[bytes] = []
        for part in parts:
            if part.startswith(b"data: ") and b"\n" not in part:
                events.append(part[6:])
            elif part:
                self._tail, tail = b"", self._tail
                events.extend(self._feed_lines(part + b"\n\n"))
                self._tail = tail
        if self._tail and b"\n" in self._tail:  # complete lines of an unfinished event
            tail, self._tail = self._tail, b""
            events.extend(self._feed_lines(tail))
        return events

    def _feed_lines(self, data: bytes) -> list[bytes]:
        """The general line-by-line parse of `data` (after any earlier tail)."""
        lines = data.split(b"\n")
        self._tail = lines.pop()
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        return events

    def close(self) -> list[bytes]:
        """End of stream: the payload of an event not terminated by an empty line, if any."""
        events = self.feed(b"\n\n") if (self._tail or self._data) else []
        self._tail = b""
        return events


@dataclass(slots=True)
class StreamResult:
    """What one streamed request returned, times on the monotonic clock in seconds.

    Attributes:
        start_s: when the request was issued.
        chunk_times_s: arrival time of every token-bearing event.
        chunk_tokens: tokens carried by each of those events.
        finish_reason: the last finish reason the server sent.
        usage: the last `usage` object the server sent.
        timings: the last `timings` object (llama.cpp's own per-request timings, milliseconds).
        end_s: when the response ended (or failed).
        error: `kind: message` when the request failed, else None.
    """

    start_s: float
    chunk_times_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, object] | None = None
    timings: dict[str, object] | None = None
    end_s: float | None = None
    error: str | None = None

    @property
    def streamed_tokens(self) -> int:
        """Tokens counted from the stream."""
        return sum(self.chunk_tokens)


class _StreamState:
    """Per-request event handling: token counting, finish reason, usage, errors."""

    __slots__ = ("result", "chat", "done", "last_completion_tokens")

    def __init__(self, result: StreamResult, chat: bool) -> None:
        self.result = result
        self.chat = chat
        self.done = False
        self.last_completion_tokens = 0

    def handle(self, payload: bytes, now: float) -> None:
        """Apply one event payload that arrived at `now` (sets `result.error` on a bad event)."""
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            obj = loads(payload)
        except ValueError:
            obj = self._split_lines(payload, now)
            if obj is None:
                self.result.error = error_text(BAD_SSE, f"event is not JSON: {payload[:80]!r}")
                return
        if not isinstance(obj, dict):
            self.result.error = error_text(BAD_SSE, f"event is not a JSON object: {payload[:80]!r}")
            return
        self.apply(obj, now)

    def _split_lines(self, payload: bytes, now: float) -> dict[str, object] | None:
        """Lenient fallback for servers that omit the blank line between events: parse each line."""
        if b"\n" not in payload:
            return None
        try:
            objs = [loads(line) for line in payload.split(b"\n") if line and line != b"[DONE]"]
        except ValueError:
            return None
        if not all(isinstance(o, dict) for o in objs):
            return None
        for obj in objs[:-1]:
            self.apply(obj, now)
        self.done = self.done or payload.endswith(b"[DONE]")
        return objs[-1] if objs else {}

    def apply(self, obj: dict[str, object], now: float) -> None:
        """Apply one parsed event object."""
        result = self.result
        err = obj.get("error")
        if err:
            message = err.get("message", err) if isinstance(err, dict) else err
            result.error = error_text(SERVER_ERROR, str(message))
            return
        usage = obj.get("usage")
        timings = obj.get("timings")
        if isinstance(timings, dict):
            result.timings = timings
        text = ""
        choices = obj.get("choices")
        if isinstance(choices, list) and choices:
            choice = choices[0]
            if isinstance(choice, dict):
                if self.chat:
                    delta = choice.get("delta") or choice.get("message") or {}
                    if isinstance(delta, dict):
                        text = (delta.get("content") or delta.get("reasoning_content")
                                or delta.get("reasoning") or "")
                else:
                    text = choice.get("text") or ""
                reason = choice.get("finish_reason")
                if reason:
                    result.finish_reason = str(reason)
        tokens = 1
        if isinstance(usage, dict):
            result.usage = usage
            completion = usage.get("completion_tokens")
            if isinstance(completion, int):
                tokens = completion - self.last_completion_tokens
                self.last_completion_tokens = completion
        if text and tokens > 0:
            result.chunk_times_s.append(now)
            result.chunk_tokens.append(tokens)


def _http_error_message(body: bytes) -> str:
    """The most useful line of an HTTP error body."""
    try:
        obj = loads(body)
    except ValueError:
        return body.decode("utf-8", "replace") or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj.get("message", obj)))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)
    return str(obj)


async def stream_request(session: aiohttp.ClientSession, config: ClientConfig, prompt: str | Sequence[int],
                         max_tokens: int, result: StreamResult | None = None) -> StreamResult:
    """Send one streamed request and record its events; never raises for server or network faults.

    Pass `result` to keep what was recorded when the request is cancelled (Ctrl-C): it is then
    marked `interrupted` and the cancellation is re-raised.
    """
    content = dumps(build_body(config, prompt, max_tokens))
    if result is None:
        result = StreamResult(start_s=0.0)
    result.start_s = time.monotonic()
    state = _StreamState(result, config.endpoint == "chat")
    try:
        async with asyncio.timeout(config.timeout_s):
            async with session.post(config.url, data=content) as response:
                if response.status >= 400:
                    body = await response.read()
                    result.error = error_text(http_error_kind(response.status), _http_error_message(body))
                elif response.content_type == "application/json":
                    body = await response.read()
                    state.handle(body, time.monotonic())
                    state.done = result.error is None
                else:
                    await _read_events(response, state)
    except TimeoutError:
        result.error = error_text(TIMEOUT, f"no complete response within {config.timeout_s:g} s")
    except aiohttp.ClientConnectorError as exc:
        result.error = error_text(CONNECT, str(exc) or type(exc).__name__)
    except aiohttp.ClientError as exc:
        result.error = error_text(STREAM_CUT, f"{type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        result.error = error_text(INTERRUPTED, "the run was stopped while the request was in flight")
        result.end_s = time.monotonic()
        raise
    if result.end_s is None:
        result.end_s = time.monotonic()
    if result.error is None and result.finish_reason is None:
        reason = ("[DONE] without a finish reason: the server stopped the generation" if state.done
                  else "the stream ended before [DONE] or a finish reason")
        result.error = error_text(STREAM_CUT, reason)
    return result


#: After `[DONE]`, how long to wait for the end of the HTTP body so the connection can be reused (s).
_DRAIN_S = 1.0


async def _read_events(response: aiohttp.ClientResponse, state: _StreamState) -> None:
    """Read the SSE body, stamping each network read with its arrival time.

    After `[DONE]` the rest of the body is read (for at most `_DRAIN_S`) so that the keep-alive
    connection goes back to the pool instead of being closed.
    """
    parser = SseParser()
    result = state.result
    chunks = response.content.iter_any()
    async for chunk in chunks:
        now = time.monotonic()
        for payload in parser.feed(chunk):
            state.handle(payload, now)
            if result.error is not None:
                return
        if state.done:
            result.end_s = now
            try:
                async with asyncio.timeout(_DRAIN_S):
                    async for _ in chunks:
                        pass
            except (TimeoutError, aiohttp.ClientError):
                pass
            return
    for payload in parser.close():
        state.handle(payload, time.monotonic())
        if result.error is not None or state.done:
            return


def itl_from_chunks(times_s: Sequence[float], tokens: Sequence[int]) -> list[float]:
    """Inter-token gaps in seconds from event arrival times and tokens per event (module docstring)."""
    if not times_s:
        return []
    gaps = [0.0] * (tokens[0] - 1)
    for i in range(1, len(times_s)):
        k = tokens[i]
        gap = (times_s[i] - times_s[i - 1]) / k
        gaps.extend([gap] * k)
    return gaps


def to_record(request_id: str, result: StreamResult, *, t0_s: float, prompt_tokens: int, max_tokens: int,
              extra: Mapping[str, object] | None = None) -> RequestRecord:
    """Turn a stream result into the shared per-request record, times relative to the run start `t0_s`.

    `prompt_tokens` is the length that was sent; the server's `usage.prompt_tokens` replaces it
    when reported (the requested length is then kept as `extra.prompt_tokens_requested` if it
    differs). `extra` holds the finish reason, the requested output length, and what is passed in.
    """
    usage = result.usage or {}
    streamed = result.streamed_tokens
    reported_out = usage.get("completion_tokens")
    output_tokens = reported_out if isinstance(reported_out, int) and result.error is None else streamed
    reported_in = usage.get("prompt_tokens")
    record_extra: dict[str, object] = {"finish_reason": result.finish_reason, "max_tokens": max_tokens}
    if isinstance(reported_in, int) and reported_in != prompt_tokens:
        record_extra["prompt_tokens_requested"] = prompt_tokens
        prompt_tokens = reported_in
    if output_tokens != streamed:
        record_extra["stream_tokens"] = streamed
    if result.timings is not None:
        record_extra["server_timings"] = result.timings
    if extra:
        record_extra.update(extra)
    times = result.chunk_times_s
    return RequestRecord(
        request_id=request_id,
        arrival_s=result.start_s - t0_s,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        first_token_s=times[0] - t0_s if times else None,
        last_token_s=times[-1] - t0_s if times else None,
        error=result.error,
        itl_s=[round(g, 7) for g in itl_from_chunks(times, result.chunk_tokens)] if times else None,
        extra=record_extra,
    )
