"""Prompts of a given token length, exact where the server offers tokenization.

A prompt is a sequence of common English words, each one token after a space in the usual BPE and
SentencePiece vocabularies, drawn at random per request (so prefix caching finds nothing to share by
accident). Requests that carry prefix hashes (Mooncake `hash_ids`) get, for each hash, the same
block of `prefix_block_tokens` words, so requests that share prefix blocks in the trace share them
in the prompts too.

When the server has a tokenizer endpoint (probed in this order: vLLM / SGLang `POST /tokenize
{"prompt"}`, llama.cpp `POST /tokenize {"content"}`, llama-cpp-python `POST /extras/tokenize
{"input"}`, then `POST <base_url>/tokenize`), each prompt is tokenized and words are added or removed
until its count is the requested one (exact in practice; the count reached is recorded either way).
Without one, a prompt of N tokens is N words, an approximation, and the run config says so
(`prompt_tokens_exact: false`). Counts include what the tokenizer adds itself (e.g. BOS), as the
server will when it processes the prompt; for the chat endpoint they cover the message text, not
the chat template around it (the server's `usage.prompt_tokens` is recorded when it reports one).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from paretoserve.workload.request import Request

WORDS: tuple[str, ...] = tuple(
    "the of and to in is was for on that with as by at from it his her they we you one two time day "
    "year world house water city school work life people hand part place case week company system "
    "program question government number night point home room mother area money story fact month "
    "lot right study book eye job word business issue side kind head service friend father power hour "
    "game line end member law car name team minute idea body back parent face others level office "
    "door health person art war history party result change morning reason research girl guy moment "
    "air teacher force education food light".split())

#: Attempts at reaching the exact count for one prompt before settling for the closest.
MAX_ADJUSTMENTS = 8

_PROBE_TEXT = "the house of the city"


@dataclass(frozen=True, slots=True)
class Tokenizer:
    """A server's tokenizer endpoint.

    Attributes:
        url: full URL to POST to.
        style: `vllm` (body `{"model", "prompt"}`), `llama.cpp` (`{"content", "add_special"}`) or
            `llama-cpp-python` (`{"input"}`).
        model: model name sent in the `vllm` style.
    """

    url: str
    style: str
    model: str

    def body(self, text: str) -> dict[str, object]:
        """Request body for tokenizing `text`."""
        if self.style == "llama.cpp":
            return {"content": text, "add_special": True}
        if self.style == "llama-cpp-python":
            return {"input": text}
        return {"model": self.model, "prompt": text}

    async def count(self, session: aiohttp.ClientSession, text: str, timeout_s: float = 30.0) -> int:
        """Tokens in `text` according to the server.

        Raises:
            aiohttp.ClientError: on an HTTP error status or a network failure.
            ValueError: on an answer that is not a tokenize response.
        """
        async with session.post(self.url, json=self.body(text),
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            response.raise_for_status()
            return _token_count(await response.json(content_type=None))


def _token_count(data: object) -> int:
    """Token count from a tokenize response (`count` or a `tokens` list)."""
    if isinstance(data, dict):
        if isinstance(data.get("count"), int):
            return int(data["count"])
        tokens = data.get("tokens")
        if isinstance(tokens, list):
            return len(tokens)
    raise ValueError(f"not a tokenize response: {str(data)[:100]}")


def server_root(base_url: str) -> str:
    """The server's root URL: the OpenAI base URL without its trailing `/v1`."""
    root = base_url.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


async def probe_tokenizer(session: aiohttp.ClientSession, base_url: str, model: str,
                          timeout_s: float = 10.0) -> Tokenizer | None:
    """The first tokenizer endpoint the server answers sensibly, or None."""
    root = server_root(base_url)
    candidates = [Tokenizer(f"{root}/tokenize", "vllm", model),
                  Tokenizer(f"{root}/tokenize", "llama.cpp", model),
                  Tokenizer(f"{root}/extras/tokenize", "llama-cpp-python", model),
                  Tokenizer(f"{base_url.rstrip('/')}/tokenize", "vllm", model)]
    for candidate in candidates:
        try:
            if await candidate.count(session, _PROBE_TEXT, timeout_s) > 0:
                return candidate
        except (aiohttp.ClientError, TimeoutError, ValueError):
            continue
    return None


def _words(rng: random.Random, n: int) -> list[str]:
    """`n` random words."""
    return rng.choices(WORDS, k=max(n, 0))


def prompt_words(request: Request, n_words: int, seed: int) -> list[str]:
    """The words of `request`'s prompt: one shared block per prefix hash, then per-request words."""
    words: list[str] = []
    for block_hash in request.prefix_hashes:
        if len(words) >= n_words:
            break
        words += _words(random.Random(f"block:{block_hash}"), request.prefix_block_tokens)
    words = words[:n_words]
    tail = random.Random(f"{seed}:{request.request_id}")
    return words + _words(tail, n_words - len(words))


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt to send.

    Attributes:
        text: the prompt text.
        tokens: its length in tokens (the server's count when `exact`, else the word count).
        exact: whether `tokens` was counted by the server's tokenizer.
    """

    text: str
    tokens: int
    exact: bool


async def _exact_prompt(session: aiohttp.ClientSession, tokenizer: Tokenizer, request: Request, target: int,
                        seed: int) -> Prompt:
    """Add or remove words until the server counts `target` tokens (or the closest reached)."""
    pool = prompt_words(request, target + 64, seed)
    n_words = target
    best: tuple[int, int, int] | None = None  # (|count - target|, words, count)
    for _ in range(MAX_ADJUSTMENTS):
        n_words = min(max(n_words, 1), len(pool))
        count = await tokenizer.count(session, " ".join(pool[:n_words]))
        if best is None or abs(count - target) < best[0]:
            best = (abs(count - target), n_words, count)
        if count == target or (count > target and n_words == 1):
            break
        if count < target and n_words == len(pool):
            pool += _words(random.Random(f"{seed}:{request.request_id}:more"), target - count + 64)
        n_words += target - count
    assert best is not None
    return Prompt(" ".join(pool[:best[1]]), best[2], True)


async def build_prompts(requests: Sequence[Request], *, seed: int,
                        session: aiohttp.ClientSession | None = None,
                        tokenizer: Tokenizer | None = None, parallel: int = 16) -> list[Prompt]:
    """One prompt per request, of `request.prompt_tokens` tokens.

    Exact with a `tokenizer` (and the `session` to reach it; `parallel` requests at a time), else
    one word per token.
    """
    if tokenizer is None or session is None:
        return [Prompt(" ".join(prompt_words(r, r.prompt_tokens, seed)), r.prompt_tokens, False)
                for r in requests]
    limit = asyncio.Semaphore(parallel)

    async def one(request: Request) -> Prompt:
        async with limit:
            return await _exact_prompt(session, tokenizer, request, request.prompt_tokens, seed)

    return list(await asyncio.gather(*(one(r) for r in requests)))
