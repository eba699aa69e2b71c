"""Each provider's test set-up, for the tests of its channel and of its receipts: the campaign spec, the
credentials (as environment variables), the sandbox's config, the channel and a queued campaign."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest

from pipeline.channels.chatapp import ChatAppChannel
from pipeline.channels.chatapp import from_spec as chatapp_from_spec
from pipeline.channels.email import EmailChannel
from pipeline.channels.messenger import MessengerChannel, instagram_from_spec
from pipeline.channels.messenger import from_spec as messenger_from_spec
from pipeline.channels.viber import ViberChannel
from pipeline.channels.viber import from_spec as viber_from_spec
from pipeline.dispatch.policy import DispatchResult
from pipeline.sandbox.chatapp import ChatAppSandboxConfig, create_chatapp_app
from pipeline.sandbox.messenger import MessengerSandboxConfig, create_messenger_app
from pipeline.sandbox.smtp import SmtpSandbox, SmtpSandboxConfig
from pipeline.sandbox.viber import ViberSandboxConfig, create_viber_app
from pipeline.servers import serve_in_thread
from pipeline.spec import CampaignSpec, parse_spec
from pipeline.store import Store
from tests.helpers.channels import Receiver, dispatch, drain, queue, serving


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@dataclass(frozen=True)
class Sandboxed:
    """A provider whose sandbox is an ASGI app with a callback ledger (Messenger, Viber, ChatApp): what the
    tests every such channel shares need to know of it."""

    env: dict[str, str]
    config: Callable[..., Any]
    create_app: Callable[[Any], Any]
    webhook_path: str
    channel: Callable[[str], Any]
    queue: Callable[[Store, Any, int], list[str]]
    refused: dict[str, Any] = field(default_factory=dict)  # config that refuses our credentials
    stop_code: str = ""  # how the channel's stop reason starts when it is refused

    def running(self, config: Any, receiver: Receiver | None = None) -> AbstractContextManager[tuple[str, Any]]:
        """(URL, sandbox) of the sandbox with `config`, posting its callbacks to `receiver` if given."""
        return serving(self.create_app, config, receiver, self.webhook_path)

    def send_all(self, db: Store, n: int, *, config: Any = None, receiver: Receiver | None = None,
                 channel_args: tuple[Any, ...] = ()) -> Sent:
        """Queues `n` messages, dispatches them to the sandbox and waits until it has had every callback
        acknowledged."""
        with self.running(config or self.config(), receiver) as (url, sandbox):
            channel = self.channel(url, *channel_args)
            recipients = self.queue(db, channel, n)
            result = dispatch(db, channel)
            drain(url)
        return Sent(result, sandbox, recipients)


class Sent(NamedTuple):
    result: DispatchResult
    sandbox: Any  # `app.state.sandbox`: its ledger holds what it accepted
    recipients: list[str]


# --- Messenger and Instagram (Meta's Send API) ---------------------------------------------------------------

MESSENGER_PAGE, MESSENGER_TOKEN, MESSENGER_SECRET = "104857600001", "page-token", "app-secret"
MESSENGER_ENV = {"MESSENGER_PAGE_ACCESS_TOKEN": MESSENGER_TOKEN, "INSTAGRAM_ACCESS_TOKEN": MESSENGER_TOKEN}
MESSENGER_SPEC: dict[str, Any] = {
    "name": "t", "audience": "x.csv", "channel": "messenger", "sender": MESSENGER_PAGE,
    "template": {"name": "spring_sale", "language": "en", "category": "marketing", "text": "Hi {{ n }}"},
    "variables": {"n": "first_name"},
}


def messenger_config(**overrides: Any) -> MessengerSandboxConfig:
    values: dict[str, Any] = dict(access_token=MESSENGER_TOKEN, app_secret=MESSENGER_SECRET, fail_rate=0.0,
                                  read_rate=0.5, webhook_delay_s=(0.0, 0.02), webhook_retry_base_s=0.05, seed=5)
    return MessengerSandboxConfig(**{**values, **overrides})


def messenger_channel(url: str, platform: str = "messenger", **spec_overrides: Any) -> MessengerChannel:
    spec = parse_spec({**MESSENGER_SPEC, "channel": platform, **spec_overrides})
    return (messenger_from_spec if platform == "messenger" else instagram_from_spec)(spec, url)


def messenger_queue(db: Store, channel: MessengerChannel, n: int,
                    **spec_overrides: Any) -> list[str]:
    """`n` messages to PSIDs 7100000000... (in the recipient column)."""
    spec = parse_spec({**MESSENGER_SPEC, "channel": channel.name, **spec_overrides})
    return queue(db, spec, channel, [f"71000{i:05d}" for i in range(n)], number_type=None,
                 texts=[f"Hi n{i}, 20% off this week" for i in range(n)])


MESSENGER = Sandboxed(MESSENGER_ENV, messenger_config, create_messenger_app, "/webhooks/messenger",
                      messenger_channel, messenger_queue, refused={"access_token": "other"}, stop_code="190")


# --- Viber ----------------------------------------------------------------------------------------------------

VIBER_TOKEN = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"
VIBER_ENV = {"VIBER_AUTH_TOKEN": VIBER_TOKEN}
VIBER_SPEC: dict[str, Any] = {
    "name": "t", "audience": "x.csv", "channel": "viber", "sender": "Shop",
    "template": {"name": "spring_sale", "language": "en", "category": "marketing", "text": "Hi {{ n }}"},
    "variables": {"n": "first_name"},
    "provider": {"options": {"sender_name": "Example Shop"}},
}


def viber_config(**overrides: Any) -> ViberSandboxConfig:
    values: dict[str, Any] = dict(auth_token=VIBER_TOKEN, fail_rate=0.2, read_rate=0.5, webhook_delay_s=(0.0, 0.02),
                                  webhook_retry_base_s=0.05, seed=11)
    return ViberSandboxConfig(**{**values, **overrides})


def viber_channel(url: str, **spec_overrides: Any) -> ViberChannel:
    return viber_from_spec(parse_spec({**VIBER_SPEC, **spec_overrides}), url)


def viber_queue(db: Store, channel: ViberChannel, n: int) -> list[str]:
    """`n` messages to Viber user ids (in the recipient column)."""
    return queue(db, parse_spec(VIBER_SPEC), channel, [f"01234567890A{i:03d}=" for i in range(n)], region="UA")


VIBER = Sandboxed(VIBER_ENV, viber_config, create_viber_app, "/webhooks/viber", viber_channel, viber_queue,
                  refused={"auth_token": "another-bot"}, stop_code="2:")


# --- Alibaba ChatApp ------------------------------------------------------------------------------------------

CHATAPP_KEY_ID, CHATAPP_KEY_SECRET, CHATAPP_TOKEN = "LTAI5tSandboxKey", "sandbox-secret", "callback-token"
CHATAPP_ENV = {"ALIBABA_CLOUD_ACCESS_KEY_ID": CHATAPP_KEY_ID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": CHATAPP_KEY_SECRET}
CHATAPP_SPEC: dict[str, Any] = {
    "name": "t", "audience": "x.csv", "channel": "chatapp", "sender": "8613100000001",
    "template": {"name": "promo_v1", "language": "en", "category": "marketing", "text": "Hi {{ n }}",
                 "body": ["{{ n }}"]},
    "variables": {"n": "first_name"},
    "provider": {"options": {"channel_type": "whatsapp", "cust_space_id": "cams-8c8test"}},
}


def chatapp_config(**overrides: Any) -> ChatAppSandboxConfig:
    values: dict[str, Any] = dict(access_key_id=CHATAPP_KEY_ID, access_key_secret=CHATAPP_KEY_SECRET,
                                  callback_token=CHATAPP_TOKEN, fail_rate=0.0, read_rate=0.5,
                                  webhook_delay_s=(0.0, 0.02), webhook_retry_base_s=0.05, seed=3)
    return ChatAppSandboxConfig(**{**values, **overrides})


def chatapp_channel(url: str, **spec_overrides: Any) -> ChatAppChannel:
    return chatapp_from_spec(parse_spec({**CHATAPP_SPEC, **spec_overrides}), url)


def chatapp_single_and_mass(db: Store, url: str, spec: dict[str, Any], recipients: list[str],
                            params: list[str]) -> None:
    """The same messages sent twice through the dispatcher to the Chat App sandbox at `url`: one SendChatappMessage
    each, then one SendChatappMassMessage for all; every one sent both ways."""
    for mass in (False, True):
        channel = chatapp_channel(url, **spec)
        channel.max_batch = 1000 if mass else 1
        db.execute("DELETE FROM outbox")
        queue(db, parse_spec({**CHATAPP_SPEC, **spec}), channel, recipients, params=params)
        assert dispatch(db, channel).sent == len(recipients)


def chatapp_queue(db: Store, channel: ChatAppChannel, n: int) -> list[str]:
    """`n` template messages to +6591000000... (Singapore mobiles)."""
    return queue(db, parse_spec(CHATAPP_SPEC), channel, [f"+6591{i:06d}" for i in range(n)], region="SG",
                 params=[json.dumps({"body": [f"n{i}"]}) for i in range(n)])


CHATAPP = Sandboxed(CHATAPP_ENV, chatapp_config, create_chatapp_app, "/webhooks/chatapp", chatapp_channel,
                    chatapp_queue, refused={"access_key_secret": "not-our-secret"}, stop_code="SignatureDoesNotMatch")


# --- E-mail (SMTP) --------------------------------------------------------------------------------------------

EMAIL_WEBHOOK_SECRET, EMAIL_UNSUB_SECRET = "email-webhook-secret", "unsubscribe-secret"
EMAIL_UNSUB_URL = "https://mail.example.test/unsubscribe"


@contextmanager
def email_stack(**overrides: Any) -> Iterator[tuple[SmtpSandbox, Receiver]]:
    """The SMTP sandbox (a real SMTP server on loopback) posting its delivery reports to a recording receiver."""
    receiver = Receiver()
    with serve_in_thread(receiver.app) as receiver_url:
        config = SmtpSandboxConfig(**{
            "webhook_secret": EMAIL_WEBHOOK_SECRET, "webhook_url": receiver_url + "/webhooks/email",
            "reject_rate": 0.0, "bounce_rate": 0.0, "report_delay_s": (0.0, 0.02), **overrides})
        with SmtpSandbox(config) as sandbox:
            yield sandbox, receiver


def email_spec(**options: Any) -> CampaignSpec:
    return parse_spec({
        "name": "mail-t", "audience": "x.csv", "channel": "email", "sender": "news@acme.test",
        "template": {"name": "newsletter", "language": "en", "category": "marketing", "text": "Hello {{ n }}"},
        "provider": {"options": {"from_address": "Acme News <news@acme.test>", "subject": "October news",
                                 "unsubscribe_url": EMAIL_UNSUB_URL, "unsubscribe_mailto": "unsubscribe@acme.test",
                                 **options}},
    })


def email_addresses(n: int) -> list[str]:
    return [f"reader{i}@example.com" for i in range(n)]


def email_queue(db: Store, channel: EmailChannel, spec: CampaignSpec,
                addresses: list[str]) -> None:
    # The recipient key column is phone_e164 for now: for e-mail it holds the address.
    queue(db, spec, channel, addresses, region="GB", number_type="email",
          texts=[f"Hello reader {i} <b>&\n\nSee you — Acme" for i in range(len(addresses))])
