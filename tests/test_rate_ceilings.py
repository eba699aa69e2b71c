"""The providers' send-rate ceilings (docs/providers.md): a spec asking more than its channel allows is refused with
one line, and a WhatsApp number at Meta's standard throughput level sends at 80/s whatever its spec asks, read from
the sandbox (GET /{phone-number-id}?fields=throughput) as its lane starts."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.channels.base import HttpSession, SenderRateUnknown
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.sandbox.whatsapp import create_app
from pipeline.spec import SpecError, load_spec, parse_spec
from pipeline.store import Store
from tests.helpers.channels import dispatch, serving
from tests.helpers.whatsapp import TOKEN, config, queue

ROOT = Path(__file__).resolve().parents[1]
SPEC: dict[str, Any] = {
    "name": "t", "audience": "x.csv", "sender": "111",
    "template": {"name": "hello", "language": "en_US", "category": "marketing", "text": "Hi", "body": ["x"]},
}


def _spec(channel: str, rate: float, **more: Any) -> dict[str, Any]:
    return {**SPEC, "channel": channel, "rate_limit": {"max_per_second": rate}, **more}


@pytest.mark.parametrize(("channel", "ceiling", "what"), [
    ("messenger", 300, "Send API calls/s per Page"),
    ("instagram", 300, "Send API calls/s per Instagram professional account"),
    ("chatapp", 250, "SendChatappMessage calls/s per Alibaba Cloud account"),
])
def test_a_rate_over_the_channels_ceiling_is_refused_naming_field_value_channel_and_ceiling(
        channel: str, ceiling: int, what: str) -> None:
    assert parse_spec(_spec(channel, ceiling)).rate_limit.max_per_second == ceiling  # the ceiling itself is allowed
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(channel, ceiling + 1), "spec.yaml")
    message = str(info.value)
    assert message.startswith(f"spec.yaml: invalid campaign spec: rate_limit.max_per_second: {ceiling + 1} is over "
                              f"{channel}'s {ceiling} {what} (docs/providers.md §")
    assert "\n" not in message and "Value error" not in message and "(top level)" not in message


@pytest.mark.parametrize("channel", ["whatsapp", "viber", "sms", "email"])
def test_channels_whose_provider_names_no_lower_rate_keep_the_general_bound(channel: str) -> None:
    assert parse_spec(_spec(channel, 1000)).rate_limit.max_per_second == 1000
    with pytest.raises(SpecError, match=r"rate_limit\.max_per_second: Input should be less than or equal to 1000"):
        parse_spec(_spec(channel, 1001))


def test_chat_apps_ceiling_is_the_accounts_so_its_senders_share_it() -> None:
    # The rate is each sender's (one lane each), the 250 calls/s the Alibaba Cloud account's.
    with pytest.raises(SpecError, match=r"rate_limit\.max_per_second: 100 for each of 3 senders is 300/s, over "
                                        r"chatapp's 250 SendChatappMessage calls/s per Alibaba Cloud account"):
        parse_spec(_spec("chatapp", 100, senders=["222", "333"]))
    assert parse_spec(_spec("chatapp", 125, senders=["222"])).all_senders == ["111", "222"]
    # A mass send carries up to 1,000 recipients per call: the per-call limit does not bound its messages.
    mass = parse_spec(_spec("chatapp", 900, provider={"options": {"channel_type": "whatsapp", "mass_send": True}}))
    assert mass.rate_limit.max_per_second == 900


def test_a_fallback_legs_rate_over_its_channels_ceiling_is_refused() -> None:
    fallback = {"channel": "messenger", "sender": "page-1", "rate_limit": {"max_per_second": 400}}
    with pytest.raises(SpecError) as info:
        parse_spec(_spec("whatsapp", 400, fallback=fallback))
    assert str(info.value).endswith("fallback.rate_limit.max_per_second: 400 is over messenger's 300 Send API calls/s "
                                    "per Page (docs/providers.md §5.1; the rate applies to each sender)")
    ok = parse_spec(_spec("whatsapp", 400, fallback={**fallback, "rate_limit": {"max_per_second": 300}}))
    assert ok.fallback_leg().rate_limit.max_per_second == 300


def test_the_sample_campaigns_are_within_their_ceilings() -> None:
    for path in sorted((ROOT / "campaigns").glob("*.yaml")):
        assert load_spec(path).name, path


# --- a WhatsApp number's throughput level, at run time ---------------------------------------------------------

def _whatsapp(url: str, sender: str = "111") -> WhatsAppChannel:
    return WhatsAppChannel(base_url=url, api_version="v23.0", phone_number_id=sender, access_token=TOKEN)


async def _read(channel: WhatsAppChannel, transport: httpx.AsyncBaseTransport) -> Any:
    async with HttpSession(5.0, transport) as session:
        return await channel.sender_rate(session)


@pytest.mark.parametrize(("throughput", "allowed"), [(80, 80.0), (20, 80.0), (81, None), (1000, None)])
def test_the_channel_reads_the_numbers_level_from_the_sandbox(throughput: float, allowed: float | None) -> None:
    # The sandbox is a STANDARD number at or below Meta's 80 messages/s, HIGH above: HIGH leaves the spec's rate.
    transport = httpx.ASGITransport(app=create_app(config(throughput_per_s=throughput)))
    rate = asyncio.run(_read(_whatsapp("http://sandbox.test"), transport))
    assert (rate.per_second if rate else None) == allowed
    if rate is not None:
        assert "throughput level STANDARD" in rate.why


def test_a_level_that_cannot_be_read_is_a_named_error_not_a_guess() -> None:
    app = create_app(config(throughput_per_s=80))
    wrong_token = WhatsAppChannel(base_url="http://sandbox.test", api_version="v23.0", phone_number_id="111",
                                  access_token="not-the-token")
    with pytest.raises(SenderRateUnknown, match=r"GET /111\?fields=throughput: HTTP 401 \(190\)"):
        asyncio.run(_read(wrong_token, httpx.ASGITransport(app=app)))

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(SenderRateUnknown, match=r"GET /111\?fields=throughput: ConnectError"):
        asyncio.run(_read(_whatsapp("http://sandbox.test"), httpx.MockTransport(refused)))
    odd = httpx.MockTransport(lambda request: httpx.Response(200, json={"throughput": {"level": "TURBO"}}))
    with pytest.raises(SenderRateUnknown, match="HTTP 200 level 'TURBO'"):
        asyncio.run(_read(_whatsapp("http://sandbox.test"), odd))


def _lane_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pipeline.dispatch.lanes" and r.levelno == logging.WARNING]


def test_a_standard_number_sends_at_80_per_second_whatever_its_spec_asks(
        sqlite_db: Store, caplog: pytest.LogCaptureFixture) -> None:
    # Sandbox at 80/s: a STANDARD number, which answers 130429 to anything faster. The spec asks 400/s.
    with caplog.at_level(logging.WARNING, logger="pipeline.dispatch.lanes"), \
            serving(create_app, config(throughput_per_s=80)) as (url, sandbox):
        queue(sqlite_db, 160)
        result = dispatch(sqlite_db, _whatsapp(url), rate=400, concurrency=16)
    assert result.sent == 160 and result.failed == 0
    # Sent at 80/s: never over the number's throughput, and no 1-s window above the limiter's 1.02 x 80.
    assert sandbox.throttled == 0 and result.throttled == 0
    assert result.busiest_second["111"] <= 81
    assert _lane_warnings(caplog) == ["dispatch: sender 111 is at throughput level STANDARD: 80 messages/s "
                                        "(docs/providers.md §1.7); it sends at 80/s, not the spec's 400/s"]


def test_a_level_that_cannot_be_read_keeps_the_specs_rate_and_says_so(
        sqlite_db: Store, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.dispatch.lanes"), \
            serving(create_app, config(throughput_per_s=80)) as (url, sandbox):
        channel = _whatsapp(url)  # a STANDARD number, whose level this run cannot read
        channel.throughput_url = f"{url}/v23.0/111/nowhere?fields=throughput"  # answered 404
        queue(sqlite_db, 40)
        result = dispatch(sqlite_db, channel, rate=400)
    assert result.sent == 40 and result.failed == 0 and sandbox.accepted == 40  # the run went on
    assert _lane_warnings(caplog) == ["dispatch: sender 111: its rate at the provider is unknown (GET /111?fields="
                                        "throughput: HTTP 404 level None); it sends at the spec's 400/s"]
