"""The Alibaba SMS tests' scaffolding: the dysmsapi sandbox on loopback reporting to a recording receiver, the
channel built from a small spec, and a campaign of mixed mainland / UK numbers queued for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.channels import alibaba_sms_webhooks as ali
from pipeline.channels.alibaba_sms import AlibabaSmsChannel, from_spec
from pipeline.channels.base import SendOutcome
from pipeline.sandbox.alibaba_sms import AlibabaSmsSandboxConfig, create_alibaba_sms_app
from pipeline.spec import parse_spec
from pipeline.store import Store
from tests.helpers.channels import Receiver, queue, serving

KEY_ID, KEY_SECRET, REPORT_TOKEN = "LTAI-test", "alibaba-test-secret", "report-token"


@contextmanager
def stack(answers: list[int] | None = None, **overrides: Any) -> Iterator[tuple[str, Receiver, Any]]:
    """The sandbox, reporting to a receiver that answers from `answers` (default 200 + Alibaba's ACK)."""
    receiver = Receiver(answers, ack=ali.ACK_BODY)
    config = AlibabaSmsSandboxConfig(**{
        "access_key_id": KEY_ID, "access_key_secret": KEY_SECRET, "report_token": REPORT_TOKEN,
        "fail_rate": 0.0, "report_delay_s": (0.0, 0.02), "report_retry_base_s": 0.05, "sign_names": ["Acme", "阿里云"],
        **overrides})
    with serving(create_alibaba_sms_app, config, receiver if "webhook_url" not in overrides else None,
                 "/webhooks/alibaba_sms") as (sandbox_url, sandbox):
        yield sandbox_url, receiver, sandbox


def alibaba_channel(monkeypatch: Any, base_url: str, secret: str = KEY_SECRET,
                    **options: Any) -> tuple[AlibabaSmsChannel, Any]:
    """The channel (and its spec: sign name Acme, 阿里云 for CN, template SMS_15255001 with one variable `name`)."""
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)
    spec = parse_spec({
        "name": "ali-t", "audience": "x.csv", "channel": "sms", "sender": "Acme",
        "template": {"name": "SMS_15255001", "language": "en", "category": "marketing", "text": "Hi {{ n }}",
                     "body": ["{{ n }}"]},
        "provider": {"options": {"sender_ids": {"CN": "阿里云"}, "param_names": ["name"], **options}},
    })
    return from_spec(spec, base_url), spec


def sms_phones(n: int) -> list[str]:
    """UK numbers, every third one a mainland China number."""
    return [f"+4477009{i:05d}" if i % 3 else f"+86139{i:08d}" for i in range(n)]


def queue_sms(db: Store, channel: AlibabaSmsChannel, spec: Any, numbers: list[str],
              values: list[str] | None = None) -> None:
    """Queues one message per number, its variable `n<i>` (or `values[i]`)."""
    values = values if values is not None else [f"n{i}" for i in range(len(numbers))]
    queue(db, spec, channel, numbers, regions=["CN" if p.startswith("+86") else "GB" for p in numbers],
          params=[json.dumps({"body": [v]}) for v in values])


def outbox_payloads(db: Store) -> list[str]:
    return [r[0] for r in db.rows("SELECT payload_json FROM outbox ORDER BY seq")]


async def send_batch(channel: AlibabaSmsChannel, batch: list[str]) -> list[SendOutcome]:
    """One `send` of the channel, as a dispatcher worker makes it."""
    async with channel.open_session(10.0) as session:
        return await channel.send(session, batch)
