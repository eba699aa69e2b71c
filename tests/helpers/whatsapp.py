"""WhatsApp for tests: the Cloud API sandbox (pipeline/sandbox/whatsapp.py) on loopback with a client and a
recording receiver, the sandbox in process as the dispatcher's transport (`CloudApi`: every answer is the sandbox's
own unless a test injects one), a queued WhatsApp campaign, and the webhook envelope."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import Sandbox, SandboxConfig, create_app, meta_error
from pipeline.servers import serve_in_thread
from pipeline.spec import parse_spec
from pipeline.store import Store
from tests.helpers.channels import Post, Receiver, serving

TOKEN, SECRET, PNID = "test-token", "test-app-secret", "106540352242922"
SEND = f"/v23.0/{PNID}/messages"


def template_body(**overrides: Any) -> dict[str, Any]:
    """A template send as in docs/providers.md §1.2 (what the pipeline's WhatsApp channel sends)."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "15551234567", "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US", "policy": "deterministic"},
            "components": [
                {"type": "header", "parameters": [{"type": "text", "text": "Jane"}]},
                {"type": "body", "parameters": [{"type": "text", "text": "A-1001"}]},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "A1"}]},
                {"type": "button", "sub_type": "quick_reply", "index": "1",
                 "parameters": [{"type": "payload", "payload": "STOP_PROMOS"}]},
            ],
        },
        "biz_opaque_callback_data": "campaign42:recipient9001",
    }
    body.update(overrides)
    return body


def config(**overrides: Any) -> SandboxConfig:
    values: dict[str, Any] = dict(
        access_token=TOKEN, app_secret=SECRET, webhook_delay_s=(0.0, 0.02), webhook_retry_base_s=0.05, seed=7,
    )
    values.update(overrides)
    return SandboxConfig(**values)


@contextmanager
def running(cfg: SandboxConfig, receiver: Receiver | None = None) -> Iterator[httpx.Client]:
    """Sandbox (posting its status webhooks to `receiver`, if given) on loopback; yields a client authorised
    with the right token."""
    with running_with_state(cfg, receiver) as (client, _):
        yield client


@contextmanager
def running_with_state(cfg: SandboxConfig, receiver: Receiver | None = None) -> Iterator[tuple[httpx.Client, Any]]:
    """`running`, with the sandbox's state (`app.state.sandbox`) beside the client."""
    with serving(create_app, cfg, receiver, "/webhooks/whatsapp") as (url, sandbox), httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False) as client:
        yield client, sandbox


@contextmanager
def campaign_services(spool: Path, seed: int, delay_s: tuple[float, float] = (0.01, 0.05)) -> Iterator[tuple[str, str]]:
    """The real webhook receiver spooling into `spool` and the sandbox posting its status webhooks to it, the demo
    template approved: (receiver URL, sandbox URL), for flow runs end to end."""
    spool.mkdir(parents=True, exist_ok=True)
    with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver:
        cfg = SandboxConfig(access_token=TOKEN, app_secret=SECRET, webhook_url=f"{receiver}/webhooks/whatsapp",
                            templates={"welcome_offer": "marketing"}, seed=seed, webhook_delay_s=delay_s)
        with serve_in_thread(create_app(cfg)) as sandbox:
            yield receiver, sandbox


def drain(client: httpx.Client, timeout: float = 10) -> dict[str, Any]:
    result = client.post("/_sandbox/drain", params={"timeout": timeout}, timeout=timeout + 5).json()
    assert result["drained"], result
    return result


def posted_statuses(posts: list[Post]) -> list[dict[str, Any]]:
    """The statuses of the webhooks in `posts`, in arrival order."""
    return [status for post in posts for entry in json.loads(post.body)["entry"] for change in entry["changes"]
            for status in change["value"]["statuses"]]


def envelope(statuses: list | None = None, messages: list | None = None, *, field: object = "messages",
             extra_changes: list | None = None) -> dict:
    """A webhook body in Meta's `whatsapp_business_account` envelope (docs/providers.md §1.5)."""
    value: dict = {"messaging_product": "whatsapp",
                   "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}}
    if statuses is not None:
        value["statuses"] = statuses
    if messages is not None:
        value["messages"] = messages
    change = {"value": value, "field": field}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [change, *(extra_changes or [])]}]}


# --- the sandbox in process, as the dispatcher's transport ---------------------------------------------------

Before = Callable[[httpx.Request, dict[str, Any]], httpx.Response | None]
After = Callable[[httpx.Request, dict[str, Any], httpx.Response], None]


class CloudApi(httpx.AsyncBaseTransport):
    """The WhatsApp sandbox app itself as the dispatcher's transport (httpx.ASGITransport, no network): what it
    accepts it counts (`sandbox.accepted`, `duplicate_callback_data`, `accepted_callback_data()`), and what it
    answers is what the sandbox answers over HTTP. `before(request, body)` may answer in its place (an injected
    error, see `error`) or raise (a timeout that never reached it); `after(request, body, response)` runs once it
    has answered and may raise (an answer lost after it accepted the message)."""

    def __init__(self, before: Before | None = None, after: After | None = None, **settings: Any) -> None:
        cfg = SandboxConfig(**{"access_token": "tok", "app_secret": SECRET, "throughput_per_s": 1e6, **settings})
        self.app = create_app(cfg)
        self.sandbox: Sandbox = self.app.state.sandbox
        self.before, self.after = before, after
        self.calls: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic time, path, body) of every request
        self._asgi = httpx.ASGITransport(app=self.app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # a lane reading its number's throughput level: answered, not counted as a call
            return await self._asgi.handle_async_request(request)
        body = json.loads(request.content)
        self.calls.append((time.monotonic(), request.url.path, body))
        answer = self.before(request, body) if self.before else None
        if answer is not None:
            return answer
        response = await self._asgi.handle_async_request(request)
        if self.after:
            await response.aread()
            self.after(request, body, response)
        return response

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, _, body in self.calls]


def error(code: int, status: int = 400, subcode: int | None = None) -> httpx.Response:
    """An error answer in the sandbox's (Meta's) shape: `meta_error` of pipeline/sandbox/whatsapp.py."""
    return httpx.Response(status, json=meta_error(code, f"(#{code}) injected", "injected by the test", subcode))


# --- a queued WhatsApp campaign -------------------------------------------------------------------------------

SPEC = {
    "name": "t", "audience": "x.csv", "channel": "whatsapp", "sender": "111", "senders": ["222"],
    "template": {"name": "hello", "language": "en_US", "category": "marketing", "text": "Hi", "body": ["x"]},
}


def channel(sender: str = "111") -> WhatsAppChannel:
    return WhatsAppChannel(base_url="http://sandbox.test", api_version="v23.0", phone_number_id=sender,
                           access_token="tok")


def queue(db: Store, n: int, *, senders: list[str] | None = None, cost: float | None = None,
          tz: str | None = None) -> list[str]:
    """`n` queued template messages of campaign `t` to +447700900000...; optionally each with an estimated
    cost or a recipient time zone. Returns the numbers."""
    spec = parse_spec(SPEC)
    register_campaign(db, spec, "t")
    phones = [f"+4477009{i:05d}" for i in range(n)]
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": phones, "region": ["GB"] * n, "number_type": ["mobile"] * n,
        "text": ["Hi"] * n, "params_json": [json.dumps({"body": [f"n{i}"]}) for i in range(n)],
    })
    enqueue_messages(db, spec, "t", channel(), frame, senders=senders)
    if cost is not None:
        db.execute("UPDATE outbox SET est_cost_usd = :cost", cost=Decimal(str(cost)))
    if tz is not None:
        db.execute("UPDATE outbox SET timezone = :tz", tz=tz)
    return phones
