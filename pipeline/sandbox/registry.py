"""Which sandbox stands in for which channel, started on loopback for the demo and end-to-end tests.

`start_sandbox` returns the base URL to point the channel at, and the provider options the spec
needs so that receipts, status callbacks and unsubscribe links reach the local receiver.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from pipeline.servers import serve_in_thread
from pipeline.spec import CampaignSpec

# Demo-only credentials for the loopback sandboxes (real runs read real ones from the environment).
DEMO_ENV = {
    "WHATSAPP_ACCESS_TOKEN": "demo-access-token",
    "WHATSAPP_APP_SECRET": "demo-app-secret",
    "WHATSAPP_VERIFY_TOKEN": "demo-verify-token",
    "MESSENGER_PAGE_ACCESS_TOKEN": "demo-page-token",
    "MESSENGER_APP_SECRET": "demo-messenger-secret",
    "MESSENGER_VERIFY_TOKEN": "demo-messenger-verify",
    "INSTAGRAM_ACCESS_TOKEN": "demo-instagram-token",
    "INSTAGRAM_APP_SECRET": "demo-instagram-secret",
    "INSTAGRAM_VERIFY_TOKEN": "demo-instagram-verify",
    "VIBER_AUTH_TOKEN": "demo-viber-token",
    "TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
    "TWILIO_AUTH_TOKEN": "demo-twilio-token",
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "demo-access-key-id",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "demo-access-key-secret",
    "ALIBABA_SMS_REPORT_TOKEN": "demo-sms-report-token",
    "CHATAPP_CALLBACK_TOKEN": "demo-chatapp-token",
    "EMAIL_UNSUBSCRIBE_SECRET": "demo-unsubscribe-secret",
    "EMAIL_WEBHOOK_SECRET": "demo-email-webhook-secret",
}

Started = tuple[str, dict[str, Any]]  # base URL, provider options to merge into the spec


def _env(name: str) -> str:
    return os.environ[name]


def _whatsapp(spec: CampaignSpec, receiver: str, stack: contextlib.ExitStack) -> Started:
    from pipeline.sandbox.whatsapp import SandboxConfig, create_app

    config = SandboxConfig(
        access_token=_env("WHATSAPP_ACCESS_TOKEN"), app_secret=_env("WHATSAPP_APP_SECRET"),
        webhook_url=f"{receiver}/webhooks/whatsapp", templates={spec.template.name: spec.template.category}, seed=7,
    )
    return stack.enter_context(serve_in_thread(create_app(config))), {}


def _meta(platform: str) -> Callable[[CampaignSpec, str, contextlib.ExitStack], Started]:
    def start(spec: CampaignSpec, receiver: str, stack: contextlib.ExitStack) -> Started:
        from pipeline.sandbox.messenger import MessengerSandboxConfig, create_messenger_app

        prefix = "MESSENGER" if platform == "messenger" else "INSTAGRAM"
        token = _env("MESSENGER_PAGE_ACCESS_TOKEN" if platform == "messenger" else "INSTAGRAM_ACCESS_TOKEN")
        config = MessengerSandboxConfig(
            platform=platform, access_token=token, app_secret=_env(f"{prefix}_APP_SECRET"),
            webhook_url=f"{receiver}/webhooks/{platform}", seed=7,
        )
        return stack.enter_context(serve_in_thread(create_messenger_app(config))), {}
    return start


def _viber(spec: CampaignSpec, receiver: str, stack: contextlib.ExitStack) -> Started:
    from pipeline.sandbox.viber import ViberSandboxConfig, create_viber_app

    config = ViberSandboxConfig(auth_token=_env("VIBER_AUTH_TOKEN"), webhook_url=f"{receiver}/webhooks/viber", seed=7)
    return stack.enter_context(serve_in_thread(create_viber_app(config))), {}


def _chatapp(spec: CampaignSpec, receiver: str, stack: contextlib.ExitStack) -> Started:
    from pipeline.sandbox.chatapp import ChatAppSandboxConfig, create_chatapp_app

    config = ChatAppSandboxConfig(
        access_key_id=_env("ALIBABA_CLOUD_ACCESS_KEY_ID"), access_key_secret=_env("ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
        callback_token=_env("CHATAPP_CALLBACK_TOKEN"), webhook_url=f"{receiver}/webhooks/chatapp",
        throughput_per_s=1000, seed=7,
    )
    return stack.enter_context(serve_in_thread(create_chatapp_app(config))), {}


def _sms(spec: CampaignSpec, receiver: str, stack: contextlib.ExitStack) -> Started:
    if spec.provider.options.get("provider", "twilio") == "alibaba_sms":
        from pipeline.sandbox.alibaba_sms import AlibabaSmsSandboxConfig, create_alibaba_sms_app

        config = AlibabaSmsSandboxConfig(
            access_key_id=_env("ALIBABA_CLOUD_ACCESS_KEY_ID"),
            access_key_secret=_env("ALIBABA_CLOUD_ACCESS_KEY_SECRET"), report_token=_env("ALIBABA_SMS_REPORT_TOKEN"),
            webhook_url=f"{receiver}/webhooks/alibaba_sms", throughput_per_s=500, seed=7,
        )
        return stack.enter_context(serve_in_thread(create_alibaba_sms_app(config))), {}
    from pipeline.sandbox.twilio import TwilioSandboxConfig, create_twilio_app

    config = TwilioSandboxConfig(
        account_sid=_env("TWILIO_ACCOUNT_SID"), auth_token=_env("TWILIO_AUTH_TOKEN"), throughput_per_s=500,
        inbound_url=f"{receiver}/webhooks/twilio", seed=7,
    )
    url = stack.enter_context(serve_in_thread(create_twilio_app(config)))
    return url, {"status_callback": f"{receiver}/webhooks/twilio"}


def _email(spec: CampaignSpec, receiver: str, stack: contextlib.ExitStack) -> Started:
    from pipeline.sandbox.smtp import SmtpSandbox, SmtpSandboxConfig

    sandbox = stack.enter_context(SmtpSandbox(SmtpSandboxConfig(
        webhook_secret=_env("EMAIL_WEBHOOK_SECRET"), webhook_url=f"{receiver}/webhooks/email", seed=7,
    )))
    return sandbox.url, {"unsubscribe_url": f"{receiver}/unsubscribe"}


SANDBOXES: dict[str, Callable[[CampaignSpec, str, contextlib.ExitStack], Started]] = {
    "whatsapp": _whatsapp,
    "messenger": _meta("messenger"),
    "instagram": _meta("instagram"),
    "viber": _viber,
    "chatapp": _chatapp,
    "sms": _sms,
    "email": _email,
}


def start_sandbox(spec: CampaignSpec, receiver_url: str, stack: contextlib.ExitStack) -> Started:
    """Starts the channel's sandbox (stopped with `stack`); returns its URL and options for the spec."""
    return SANDBOXES[spec.channel](spec, receiver_url, stack)
