"""An OpenAI-compatible chat-completions client (OpenAI, Qwen through DashScope's compatible mode, a local
server, the sandbox's pipeline/sandbox/llm.py) over httpx: bounded concurrency and rate, retries with backoff.

`complete_all` answers many prompts: at most `concurrency` requests in flight (over clients of at most 4
connections each), requests started no faster than
`max_per_second` (paced at even intervals), and a request answered 429, 5xx, or not at all within `timeout_s`
tried again after an exponential, jittered backoff (a Retry-After of at most 30 s is honoured), up to
`max_attempts`; then its answer is None and the caller falls back. Any other status (400, 401, ...) is not
retried. Wire format: POST {base_url}/chat/completions {model, messages, max_tokens, temperature}, answer
choices[0].message.content and usage.prompt_tokens / completion_tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_ANSWER_BYTES = 64 * 1024  # a larger body is not read: the value it carries could not be used anyway
MAX_RETRY_AFTER_S = 30.0
POOL_CONNECTIONS = 4  # per httpx client; more clients past it (complete_all says why)


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key: str
    concurrency: int = 8
    max_per_second: float = 20.0
    timeout_s: float = 30.0
    max_attempts: int = 4
    max_tokens: int = 120
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0


@dataclass(frozen=True)
class Answer:
    text: str | None  # None: no usable answer after every attempt
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    error: str | None = None


class _Pacer:
    """Request starts spaced 1/rate apart (a GCRA with no burst): the limit holds over any window."""

    def __init__(self, per_second: float) -> None:
        self.interval, self.next_at = 1.0 / per_second, time.monotonic()
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            at = max(self.next_at, now)
            self.next_at = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


def _parse(response: httpx.Response) -> Answer:
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    usage = body.get("usage") or {}
    return Answer(text=content if isinstance(content, str) else None,
                  prompt_tokens=int(usage.get("prompt_tokens") or 0),
                  completion_tokens=int(usage.get("completion_tokens") or 0))


async def _one(client: httpx.AsyncClient, endpoint: Endpoint, pacer: _Pacer, prompt: str) -> Answer:
    error = None
    for attempt in range(1, endpoint.max_attempts + 1):
        await pacer.wait()
        delay = None
        try:
            response = await client.post("/chat/completions", json={
                "model": endpoint.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": endpoint.max_tokens, "temperature": 0.7,
            })
            if response.status_code == 200 and len(response.content) <= MAX_ANSWER_BYTES:
                try:
                    answer = _parse(response)
                except (ValueError, KeyError, IndexError, TypeError):
                    return Answer(None, attempts=attempt, error="malformed answer")
                return Answer(answer.text, answer.prompt_tokens, answer.completion_tokens, attempt)
            if response.status_code == 200:
                return Answer(None, attempts=attempt, error="answer over 64 KB")
            error = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUSES:
                return Answer(None, attempts=attempt, error=error)
            retry_after = response.headers.get("retry-after", "")
            if retry_after.replace(".", "", 1).isdigit():
                delay = min(float(retry_after), MAX_RETRY_AFTER_S)
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.TransportError as exc:
            error = type(exc).__name__
        if attempt < endpoint.max_attempts:
            backoff = min(endpoint.backoff_max_s, endpoint.backoff_base_s * 2 ** (attempt - 1))
            await asyncio.sleep(delay if delay is not None else backoff * (0.5 + random.random() / 2))
    return Answer(None, attempts=endpoint.max_attempts, error=error)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context (certifi's roots) for every client: httpx loads the roots again for each client it makes
    without one, tens of milliseconds each, and each batch makes several."""
    return httpx.create_ssl_context()


async def complete_all(endpoint: Endpoint, prompts: Sequence[str]) -> list[Answer]:
    """One answer per prompt, in order.

    `concurrency` workers take the prompts in turn, so at most that many requests are in flight. The workers
    share clients of at most POOL_CONNECTIONS connections each, one connection per worker: httpcore 1.0.9's
    pool re-scans all its connections, quadratically, on every request and response (encode/httpcore#1035),
    which made one pool of 64 connections cost the client ~9 ms of CPU a request (16: ~2 ms; pools of 4: under
    1 ms) and concurrency 64 slower than 16 on two shared cores (README, Performance).
    """
    answers: list[Answer | None] = [None] * len(prompts)
    pacer = _Pacer(endpoint.max_per_second)
    workers = max(1, min(endpoint.concurrency, len(prompts)))
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    turn = iter(range(len(prompts)))  # shared by the workers; one event loop, so next() needs no lock

    async def work(client: httpx.AsyncClient) -> None:
        for i in turn:
            answers[i] = await _one(client, endpoint, pacer, prompts[i])

    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for first in range(0, workers, POOL_CONNECTIONS):
            size = min(POOL_CONNECTIONS, workers - first)
            client = await stack.enter_async_context(httpx.AsyncClient(
                base_url=endpoint.base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(endpoint.timeout_s),
                verify=_tls(),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size)))
            tasks += [work(client) for _ in range(size)]
        await asyncio.gather(*tasks)
    return [a if a is not None else Answer(None, error="not asked") for a in answers]
