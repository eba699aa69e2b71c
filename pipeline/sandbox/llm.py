"""An OpenAI-compatible chat-completions endpoint on loopback (POST /v1/chat/completions), for the tests, the
benchmark and the demo of model-written personalisation (pipeline/render/personalise.py): nothing reaches an
outside model.

It checks the bearer key and the request's shape (model, messages with a user message), waits `latency_s`, and
answers in OpenAI's format (choices[0].message.content, usage). What it answers: the first requests follow
`script` (an HTTP status to answer with, "hang" to answer nothing for `hang_s`, or a text), then the text of the
first `answers` entry whose key the prompt contains, else a short greeting picked by the prompt's hash (the same
prompt, the same answer). GET /_sandbox/stats counts requests by outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

GREETINGS = (
    "We saved a little something for you", "Your next visit has a treat waiting", "Good to have you with us",
    "Something new arrived that suits you", "A thank-you from all of us", "We picked this one with you in mind",
    "Your favourites are back in store", "A small surprise is waiting for you",
)
MAX_BODY_BYTES = 256 * 1024


@dataclass
class LlmSandboxConfig:
    api_key: str = "sandbox-llm-key"
    latency_s: float = 0.0
    script: list[int | str] = field(default_factory=list)  # the first requests' answers, in order
    answers: dict[str, str] = field(default_factory=dict)  # prompt substring -> answer text
    hang_s: float = 5.0


class LlmSandbox:
    def __init__(self, config: LlmSandboxConfig) -> None:
        self.config = config
        self.script = list(config.script)
        self.stats: Counter[str] = Counter()
        self.in_flight = 0
        self.lock = threading.Lock()

    def _next_scripted(self) -> int | str | None:
        with self.lock:
            self.stats["requests"] += 1
            return self.script.pop(0) if self.script else None

    def _answer(self, prompt: str) -> str:
        for needle, text in self.config.answers.items():
            if needle in prompt:
                return text
        pick = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
        return GREETINGS[pick % len(GREETINGS)]

    async def completions(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.config.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, "Request too large.", "invalid_request_error", None)
        try:
            body = json.loads(raw)
            prompt = next(m["content"] for m in body["messages"] if m.get("role") == "user")
            model = body["model"]
            if not isinstance(prompt, str) or not isinstance(model, str):
                raise TypeError
        except (ValueError, KeyError, StopIteration, TypeError):
            return _error(400, "'messages' must hold a user message and 'model' must be set.",
                          "invalid_request_error", None)
        scripted = self._next_scripted()
        with self.lock:
            self.in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.in_flight)
        try:
            if self.config.latency_s:
                await asyncio.sleep(self.config.latency_s)
            if scripted == "hang":
                await asyncio.sleep(self.config.hang_s)  # longer than the client waits: a timeout
                scripted = None
        finally:
            with self.lock:
                self.in_flight -= 1
        if isinstance(scripted, int):
            with self.lock:
                self.stats[str(scripted)] += 1
            headers = {"retry-after": "0"} if scripted == 429 else None
            return _error(scripted, "Rate limit reached." if scripted == 429 else "The server had an error.",
                          "rate_limit_error" if scripted == 429 else "server_error", None, headers)
        content = scripted if isinstance(scripted, str) else self._answer(prompt)
        with self.lock:
            self.stats["200"] += 1
        return JSONResponse({
            "id": "chatcmpl-sandbox", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": len(prompt) // 4 + 1, "completion_tokens": len(content) // 4 + 1,
                      "total_tokens": len(prompt) // 4 + len(content) // 4 + 2},
        })

    async def stats_route(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(dict(self.stats))


def _error(status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=headers)


def create_llm_app(config: LlmSandboxConfig | None = None) -> Starlette:
    sandbox = LlmSandbox(config or LlmSandboxConfig())
    app = Starlette(routes=[
        Route("/v1/chat/completions", sandbox.completions, methods=["POST"]),
        Route("/_sandbox/stats", sandbox.stats_route, methods=["GET"]),
    ])
    app.state.sandbox = sandbox
    return app
