"""A loopback stand-in for Meta's WhatsApp Cloud API send endpoint (`POST /{version}/{id}/messages`):
same bodies, errors and signed status webhooks, with a seeded, predictable outcome per recipient,
and optional injected faults (pipeline/sandbox/faults.py). `/_sandbox/stats`, `/_sandbox/accepted_ids`
and `/_sandbox/drain` let tests and benchmarks count what the sandbox itself saw."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.records import Category
from pipeline.sandbox.faults import THROUGHPUT_ERROR, Fault, FaultInjector
from pipeline.sandbox.kit import poster_stats
from pipeline.sandbox.outcomes import Outcome, Pricing, outcome_for, plan_statuses, wa_id
from pipeline.sandbox.schema import validate_message
from pipeline.sandbox.webhooks import PosterSettings, WebhookPoster
from pipeline.sandbox.whatsapp_media import MediaStore
from pipeline.sandbox.whatsapp_templates import SandboxNumber, SandboxTemplate, TemplateSet

_VERSION = re.compile(r"v\d+\.\d+")
STANDARD_THROUGHPUT_PER_S = 80.0  # Meta's default throughput per number (docs/providers.md §1.7)


class SandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    access_token: str = Field(min_length=1)
    app_secret: str = Field(min_length=1, description="signs status webhooks")
    webhook_url: str | None = Field(default=None, description="where status webhooks are POSTed")
    throughput_per_s: float = Field(default=1000.0, gt=0, description="per phone-number-id")
    # None: any template name is accepted and billed as marketing; a dict: unknown names -> 132001.
    templates: dict[str, Category] | None = None
    # The template and number set the management endpoints serve (pipeline/sandbox/whatsapp_templates.py); when
    # given, a send must name one of these templates in its language, and one that is not APPROVED is refused as
    # Meta refuses it (132001 / 132015 / 132016).
    template_set: list[SandboxTemplate] | None = None
    phone_numbers: list[SandboxNumber] = Field(default_factory=lambda: [SandboxNumber(id="106540352242922")])
    pause_after: int | None = Field(default=None, ge=1, description="a template pauses after this many sends")
    # False: sends of a template that is not APPROVED are still accepted (benchmarks/templates.py measures the
    # webhook path alone, and counts what is accepted after the change).
    enforce_template_status: bool = True
    fail_rate: float = Field(default=0.04, ge=0, le=1)
    read_rate: float = Field(default=0.6, ge=0, le=1)
    out_of_order_rate: float = Field(default=0.1, ge=0, le=1)
    webhook_delay_s: tuple[float, float] = (0.05, 0.3)  # spread between consecutive statuses
    webhook_batch: int = Field(default=50, ge=1, le=1000)
    webhook_retry_base_s: float = Field(default=0.2, gt=0)
    webhook_retry_max_s: float = Field(default=10.0, gt=0)
    webhook_concurrency: int = Field(default=8, ge=1)
    seed: int = 0
    waba_id: str = "102290129340398"
    display_phone_number: str = "15550783881"
    # Injected faults (pipeline/sandbox/faults.py), all off by default. The three rates are
    # fractions of well-formed send requests, drawn from (seed, request number).
    fault_5xx_rate: float = Field(default=0.0, ge=0, le=1, description="503/code 2 or 500/code 131000, not sent")
    timeout_drop_rate: float = Field(default=0.0, ge=0, le=1, description="held past the client timeout, not sent")
    timeout_after_accept_rate: float = Field(
        default=0.0, ge=0, le=1, description="accepted, but the answer is held past the client timeout")
    timeout_delay_s: float = Field(default=15.0, gt=0, description="how long a timeout fault holds its answer")
    burst_429_at_s: float | None = Field(
        default=None, ge=0, description="start of a 429/130429 window, seconds after the first send")
    burst_429_for_s: float = Field(default=0.0, ge=0, description="length of that window")
    # A real provider answers in 150-400 ms: then the requests in flight per sender, not the client's loop, decide
    # the rate. Each accepted send is answered after latency_s plus a uniform draw in [0, latency_jitter_s).
    latency_s: float = Field(default=0.0, ge=0, le=60, description="fixed part of the answer's delay")
    latency_jitter_s: float = Field(default=0.0, ge=0, le=60, description="random part of the answer's delay")

    @model_validator(mode="after")
    def _fault_rates_fit(self) -> SandboxConfig:
        total = self.fault_5xx_rate + self.timeout_drop_rate + self.timeout_after_accept_rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault_5xx_rate + timeout_drop_rate + timeout_after_accept_rate is {total:g} > 1")
        return self

    def fault_injector(self) -> FaultInjector:
        return FaultInjector(
            seed=self.seed, fault_5xx_rate=self.fault_5xx_rate, timeout_drop_rate=self.timeout_drop_rate,
            timeout_after_accept_rate=self.timeout_after_accept_rate, burst_429_at_s=self.burst_429_at_s,
            burst_429_for_s=self.burst_429_for_s,
        )

    def outcome(self, to: str) -> Outcome:
        """The fate the sandbox gives every message to `to` under this config."""
        return outcome_for(
            self.seed, to, fail_rate=self.fail_rate, read_rate=self.read_rate,
            out_of_order_rate=self.out_of_order_rate,
        )


def meta_error(code: int, message: str, details: str | None = None, subcode: int | None = None) -> dict:
    """Meta's error body (docs/providers.md §1.4)."""
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = secrets.token_urlsafe(17)
    return {"error": error}


class _Throttle:
    """Token bucket per phone-number-id: `rate` per second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}  # id -> (tokens, last refill)

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


def _fault_error(fault: Fault) -> dict:
    subcode = 2494055 if fault.code == THROUGHPUT_ERROR[1] else None
    return meta_error(fault.code, fault.message, fault.details, subcode=subcode)


class _Rejected(Exception):
    def __init__(self, status: int, body: dict) -> None:
        self.status, self.body = status, body


class Sandbox:
    """State and handlers behind one app: counters, accepted messages and the webhook poster."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._auth = f"Bearer {config.access_token}".encode()
        self._throttle = _Throttle(config.throughput_per_s)
        self._rng = random.Random(config.seed)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(5).upper()
        self.faults = config.fault_injector()
        self.accepted = 0
        self.throttled = 0  # by the throughput limit (a burst_429 fault is counted in `faults`)
        self.held = 0  # requests a timeout fault is holding right now
        self.rejected: Counter[int] = Counter()
        # (wamid, to, biz_opaque_callback_data, final outcome, error code) per accepted message
        self.messages: list[tuple[str, str, str | None, str, int | None]] = []
        self._callbacks: dict[str, None] = {}  # distinct callback data, in first-acceptance order
        self.duplicate_callback_data = 0
        # When each phone-number-id's sends were accepted (monotonic seconds): rates per sender, per 1-s window.
        self.accepted_at: dict[str, list[float]] = {}
        self._latency = random.Random(config.seed + 1)
        self.poster = self._make_poster(config)
        self.template_set = TemplateSet(
            config.template_set or [], config.phone_numbers, waba_id=config.waba_id, app_secret=config.app_secret,
            webhook_url=config.webhook_url, pause_after=config.pause_after)

    @staticmethod
    def _make_poster(config: SandboxConfig) -> WebhookPoster | None:
        if not config.webhook_url:
            return None
        return WebhookPoster(PosterSettings(
            url=config.webhook_url, app_secret=config.app_secret, waba_id=config.waba_id,
            display_phone_number=config.display_phone_number, batch=config.webhook_batch,
            retry_base_s=config.webhook_retry_base_s, retry_max_s=config.webhook_retry_max_s,
            concurrency=config.webhook_concurrency,
        ))

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.poster.running() if self.poster else contextlib.nullcontext():
            yield

    # ------------------------------------------------------------------ POST /{version}/{id}/messages

    async def send(self, request: Request) -> Response:
        fault: Fault | None = None
        try:
            body = await self._checked_body(request)
            phone_number_id = request.path_params["phone_number_id"]
            pricing = self._pricing(body)
            _check_text_parameters(body)
            if self.faults.enabled:
                fault = self.faults.draw()
                if fault is not None and fault.kind != "timeout_after_accept":
                    self.faults.injected(fault)
                    if fault.kind == "timeout_drop":
                        self.rejected[fault.code] += 1
                        await self._hold(request)
                        return JSONResponse(_fault_error(fault), status_code=fault.status)
                    raise _Rejected(fault.status, _fault_error(fault))
            if not self._throttle.allow(phone_number_id):
                self.throttled += 1
                raise _Rejected(429, meta_error(
                    130429, "(#130429) Rate limit hit", "Cloud API message throughput has been reached.",
                    subcode=2494055,
                ))
        except _Rejected as rejected:
            self.rejected[rejected.body["error"]["code"]] += 1
            return JSONResponse(rejected.body, status_code=rejected.status)
        answer = self._accept(body, phone_number_id, pricing)
        self.accepted_at.setdefault(phone_number_id, []).append(time.monotonic())
        if self.config.latency_s or self.config.latency_jitter_s:
            await asyncio.sleep(self.config.latency_s + self._latency.uniform(0, self.config.latency_jitter_s))
        if fault is not None:  # timeout_after_accept: accepted above, answered late
            self.faults.injected(fault)
            await self._hold(request)
        return Response(answer, media_type="application/json")

    async def _hold(self, request: Request) -> None:
        """Holds a request for `timeout_delay_s`, or until its client hangs up (a client that timed
        out has closed its connection, so nothing keeps the server busy after that)."""

        async def hung_up() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        self.held += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hung_up(), self.config.timeout_delay_s)
        finally:
            self.held -= 1

    async def _checked_body(self, request: Request) -> dict[str, Any]:
        """Auth, path and body checks in Meta's order: 401/190, then 400/2500, then 400/100."""
        token = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(token, self._auth):
            raise _Rejected(401, meta_error(190, "Invalid OAuth access token - Cannot parse access token"))
        version = request.path_params["version"]
        if not _VERSION.fullmatch(version):
            raise _Rejected(400, meta_error(2500, f"Unknown path components: /{version}"))
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Rejected(400, _invalid_parameter(f"Request body is not valid JSON: {exc}")) from None
        problems = validate_message(body)
        if problems:
            raise _Rejected(400, _invalid_parameter("; ".join(problems[:10])))
        return body

    def _pricing(self, body: dict[str, Any]) -> Pricing:
        if body["type"] != "template":
            # Free-form messages only go out inside a customer service window, which is free.
            return Pricing("service", "free_customer_service", billable=False)
        template = body["template"]
        if self.config.template_set is not None:
            verdict = self.template_set.check_send(template["name"], template["language"]["code"])
            if isinstance(verdict, tuple) and not self.config.enforce_template_status:
                verdict = "marketing"
            if isinstance(verdict, tuple):
                code, message, details, status = verdict
                raise _Rejected(int(status), meta_error(code, message, details))
            return Pricing(verdict, "regular", billable=True)  # type: ignore[arg-type]
        templates = self.config.templates
        if templates is None:
            return Pricing("marketing", "regular", billable=True)
        if template["name"] not in templates:
            code = template["language"]["code"]
            raise _Rejected(404, meta_error(
                132001, "(#132001) Template name does not exist in the translation",
                f"template name ({template['name']}) does not exist in {code}",
            ))
        return Pricing(templates[template["name"]], "regular", billable=True)

    def _accept(self, body: dict[str, Any], phone_number_id: str, pricing: Pricing) -> bytes:
        to, callback_data = body["to"], body.get("biz_opaque_callback_data")
        wamid = f"wamid.HBgL{self._id_prefix}{next(self._ids):012d}"
        outcome = self.config.outcome(to)
        recipient = wa_id(to)
        self.accepted += 1
        if callback_data is not None:
            if callback_data in self._callbacks:
                self.duplicate_callback_data += 1
            else:
                self._callbacks[callback_data] = None
        self.messages.append((wamid, to, callback_data, outcome.final, outcome.error_code))
        if self.config.template_set is not None and body["type"] == "template":
            self.template_set.accepted(body["template"]["name"], body["template"]["language"]["code"])
        if self.poster:
            planned = plan_statuses(
                outcome, wamid=wamid, recipient_id=recipient, callback_data=callback_data, pricing=pricing,
                accepted_at=time.time(), delay_s=self.config.webhook_delay_s, rng=self._rng,
            )
            # One start for the plan: an out-of-order message's last status is due before the one scheduled
            # ahead of it, and a thread switch between the two calls must not turn them back (seen on CI).
            start = time.monotonic()
            for item in planned:
                self.poster.schedule(item.post_after_s, phone_number_id, item.status, start)
        # Meta's answer (docs/providers.md §1.3), formatted directly: a third of the cost of json.dumps.
        # message_status is reported for template sends only.
        status = ',"message_status":"accepted"' if body["type"] == "template" else ""
        return (
            f'{{"messaging_product":"whatsapp","contacts":[{{"input":{json.dumps(to, ensure_ascii=False)},'
            f'"wa_id":"{recipient}"}}],"messages":[{{"id":"{wamid}"{status}}}]}}'
        ).encode()

    # ------------------------------------------------------------------ GET /{version}/{phone-number-id}

    async def number(self, request: Request) -> JSONResponse:
        """The number's id and the fields asked for (Graph's default ones when none are). Any phone-number-id is
        the sandbox's own, as for sends. Its `throughput` level (docs/providers.md §1.7) follows the configured
        throughput: HIGH above Meta's standard 80 messages/s, STANDARD at or below it."""
        if not _VERSION.fullmatch(request.path_params["version"]):
            return JSONResponse(meta_error(2500, f"Unknown path components: /{request.path_params['version']}"), 400)
        number_id = request.path_params["phone_number_id"]
        known = next((n for n in self.config.phone_numbers if n.id == number_id), None)
        level = "HIGH" if self.config.throughput_per_s > STANDARD_THROUGHPUT_PER_S else "STANDARD"
        fields: dict[str, Any] = {
            "display_phone_number": known.display_phone_number if known else self.config.display_phone_number,
            "verified_name": known.verified_name if known else "Acme",
            "quality_rating": known.quality_rating if known else "GREEN",
            "throughput": {"level": level},
        }
        asked = [f.strip() for f in request.query_params.get("fields", "").split(",") if f.strip()]
        unknown = [f for f in asked if f not in fields and f != "id"]
        if unknown:
            return JSONResponse(_invalid_parameter(f"Tried accessing nonexisting field ({unknown[0]})"), 400)
        chosen = asked or ["display_phone_number", "verified_name", "quality_rating"]
        return JSONResponse({**{f: fields[f] for f in chosen if f != "id"}, "id": number_id})

    def authorised(self, handler: Any) -> Any:
        """`handler` behind Meta's Bearer check (401 / 190 otherwise)."""
        async def checked(request: Request) -> Response:
            token = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(token, self._auth):
                return JSONResponse(meta_error(190, "Invalid OAuth access token - Cannot parse access token"), 401)
            return await handler(request)
        return checked

    # ------------------------------------------------------------------ /_sandbox

    def snapshot(self, with_messages: bool = True) -> dict[str, Any]:
        """Counters: `accepted` counts every acceptance (a re-send of the same callback data too, which
        also counts in `duplicate_callback_data`); `rejected` counts every other answer by error code,
        injected faults included (a timeout_drop as code 2, its late answer); `faults` by kind."""
        poster = self.poster
        stats: dict[str, Any] = {
            "accepted": self.accepted,
            "rejected": {str(code): n for code, n in sorted(self.rejected.items())},
            "throttled": self.throttled,
            "faults": dict(self.faults.counts),
            "held": self.held,
            "duplicate_callback_data": self.duplicate_callback_data,
            "unique_callback_data": len(self._callbacks),
            **poster_stats(poster),
        }
        if with_messages:
            stats["messages"] = [
                {"wamid": wamid, "to": to, "biz_opaque_callback_data": data, "outcome": final, "error_code": code}
                for wamid, to, data, final, code in self.messages
            ]
        return stats

    def accepted_callback_data(self) -> list[str]:
        """Distinct `biz_opaque_callback_data` of accepted messages, in first-acceptance order."""
        return list(self._callbacks)

    async def stats(self, request: Request) -> JSONResponse:
        with_messages = request.query_params.get("messages", "1").lower() not in ("0", "false", "no")
        stats = self.snapshot(with_messages)
        if request.query_params.get("times", "0").lower() in ("1", "true", "yes"):
            stats["accepted_at"] = {sender: [round(t, 6) for t in times] for sender, times in self.accepted_at.items()}
        return JSONResponse(stats)

    async def accepted_ids(self, _request: Request) -> JSONResponse:
        return JSONResponse(self.accepted_callback_data())

    async def drain(self, request: Request) -> JSONResponse:
        """Waits (up to `?timeout=` seconds, default 30) until every webhook is acknowledged."""
        try:
            timeout = float(request.query_params.get("timeout", "30"))
        except ValueError:
            return JSONResponse(meta_error(100, "(#100) Invalid parameter", "timeout must be a number"), 400)
        drained = await self.poster.drain(timeout) if self.poster else True
        return JSONResponse({"drained": drained, **self.snapshot(with_messages=False)})


def _invalid_parameter(details: str) -> dict:
    return meta_error(100, "(#100) Invalid parameter", details)


# Meta's rule for a template's text parameters, stated here as Meta states it (the sandbox stands for Meta, so it
# does not borrow the pipeline's own check, pipeline/render/parameters.py, which it is there to catch out).
_PARAMETER_BREAK = re.compile(r"[\n\t]| {5}")


def _check_text_parameters(body: dict[str, Any]) -> None:
    """132018 for a template whose text parameter (header, body, carousel card body) holds a newline, a tab or
    more than four consecutive spaces."""
    if body.get("type") != "template":
        return
    components = list(body["template"].get("components") or [])
    for component in list(components):
        components += [c for card in component.get("cards") or [] for c in card.get("components") or []]
    for component in components:
        if component.get("type") not in ("header", "body"):
            continue
        for parameter in component.get("parameters") or []:
            if parameter.get("type") == "text" and _PARAMETER_BREAK.search(str(parameter.get("text", ""))):
                raise _Rejected(400, meta_error(
                    132018, "(#132018) There was an issue with the parameters in your template.",
                    "Param text cannot have new-line/tab characters or more than 4 consecutive spaces"))


def create_app(config: SandboxConfig) -> Starlette:
    """The sandbox as an ASGI app; `app.state.sandbox` gives tests direct access to its state."""
    sandbox = Sandbox(config)
    media = MediaStore()
    routes = [
        Route("/{version}/{phone_number_id}/messages", sandbox.send, methods=["POST"]),
        Route("/{version}/{phone_number_id}/media", sandbox.authorised(media.upload), methods=["POST"]),
        Route("/_sandbox/stats", sandbox.stats, methods=["GET"]),
        Route("/_sandbox/accepted_ids", sandbox.accepted_ids, methods=["GET"]),
        Route("/_sandbox/drain", sandbox.drain, methods=["POST"]),
    ]
    routes += sandbox.template_set.routes(sandbox.authorised)
    # Last: `/_sandbox/...` reads above have the same shape.
    routes.append(Route("/{version}/{phone_number_id}", sandbox.authorised(sandbox.number), methods=["GET"]))
    app = Starlette(routes=routes, lifespan=sandbox.lifespan)
    app.state.sandbox = sandbox
    app.state.media = media
    return app
