"""The WhatsApp Cloud API sandbox over real HTTP on loopback: answers, throttling and signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from pipeline.sandbox.__main__ import main as sandbox_main
from pipeline.sandbox.outcomes import FAILURES, outcome_for
from pipeline.servers import serve_in_thread
from tests.helpers.channels import Receiver
from tests.helpers.whatsapp import (
    PNID,
    SECRET,
    SEND,
    config,
    drain,
    posted_statuses,
    running,
    running_with_state,
    template_body,
)


def text_body() -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": "15551234567", "type": "text",
            "text": {"preview_url": False, "body": "Hello"}}


# ---------------------------------------------------------------- synchronous answers

def test_accepted_template_answers_like_meta() -> None:
    with running(config()) as client:
        first = client.post(SEND, json=template_body(to="+15551234567"))
        second = client.post(SEND, json=template_body(to="15551234568"))
        stats = client.get("/_sandbox/stats").json()
    assert first.status_code == 200
    body = first.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+15551234567", "wa_id": "15551234567"}]
    [message] = body["messages"]
    assert message["id"].startswith("wamid.") and message["message_status"] == "accepted"
    assert second.json()["messages"][0]["id"] != message["id"]
    assert stats["accepted"] == 2 and stats["rejected"] == {}
    assert [m["wamid"] for m in stats["messages"]] == [message["id"], second.json()["messages"][0]["id"]]


def test_text_message_is_accepted_without_message_status() -> None:
    with running(config()) as client:
        response = client.post(SEND, json=text_body())
    assert response.status_code == 200
    assert response.json()["messages"][0].keys() == {"id"}


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer wrong"}, {"Authorization": ""}, {}])
def test_bad_or_missing_token_is_401_code_190(headers: dict[str, str]) -> None:
    with running(config()) as client:
        client.headers.pop("Authorization")
        response = client.post(SEND, json=template_body(), headers=headers)
        stats = client.get("/_sandbox/stats").json()
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == 190 and error["type"] == "OAuthException" and error["fbtrace_id"]
    assert stats["rejected"] == {"190": 1} and stats["accepted"] == 0


def test_schema_violation_is_400_code_100_naming_the_field() -> None:
    body = template_body()
    del body["to"]
    bad_component = template_body()
    bad_component["template"]["components"][2].pop("sub_type")
    with running(config()) as client:
        missing_to = client.post(SEND, json=body)
        component = client.post(SEND, json=bad_component)
        not_json = client.post(SEND, content=b'{"to": ', headers={"Content-Type": "application/json"})
        stats = client.get("/_sandbox/stats").json()
    for response in (missing_to, component, not_json):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == 100
        assert response.json()["error"]["error_data"]["messaging_product"] == "whatsapp"
    assert "'to' is a required property" in missing_to.json()["error"]["error_data"]["details"]
    assert "$.template.components[2]: 'sub_type'" in component.json()["error"]["error_data"]["details"]
    assert "not valid JSON" in not_json.json()["error"]["error_data"]["details"]
    assert stats["rejected"] == {"100": 3} and stats["accepted"] == 0


def test_unknown_template_is_132001_and_known_one_is_billed_in_its_category() -> None:
    receiver = Receiver()
    cfg = config(templates={"order_update": "utility"}, fail_rate=0.0)
    with running(cfg, receiver) as client:
        unknown = client.post(SEND, json=template_body(template={
            "name": "nope", "language": {"code": "en_US"}}))
        known = client.post(SEND, json=template_body())
        drain(client)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == 132001
    assert known.status_code == 200
    [pricing] = [s["pricing"] for s in posted_statuses(receiver.posts) if "pricing" in s]
    assert pricing == {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "utility"}


@pytest.mark.parametrize(("component", "text"), [(1, "A-1001\nsecond line"), (1, "A\t1001"), (0, "Jane     Doe")])
def test_a_text_parameter_with_a_newline_tab_or_five_spaces_is_132018(component: int, text: str) -> None:
    # Meta refuses a template text parameter holding a newline, a tab or more than four spaces in a row.
    body = template_body()
    body["template"]["components"][component]["parameters"][0]["text"] = text
    four_spaces = template_body()
    four_spaces["template"]["components"][1]["parameters"][0]["text"] = "A    1001"
    with running(config()) as client:
        refused = client.post(SEND, json=body)
        accepted = client.post(SEND, json=four_spaces)
        stats = client.get("/_sandbox/stats").json()
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 132018
    assert "new-line/tab" in refused.json()["error"]["error_data"]["details"]
    assert accepted.status_code == 200 and stats["rejected"] == {"132018": 1} and stats["accepted"] == 1


def test_throughput_limit_answers_429_code_130429_per_phone_number() -> None:
    with running(config(throughput_per_s=5)) as client:
        started = time.monotonic()
        answers = [client.post(SEND, json=template_body()) for _ in range(30)]
        elapsed = time.monotonic() - started
        other_number = client.post("/v23.0/999/messages", json=template_body())
        stats = client.get("/_sandbox/stats", params={"messages": "0"}).json()
    throttled = [r for r in answers if r.status_code == 429]
    accepted = len(answers) - len(throttled)
    # A burst of one second's worth (5), then 5 more per second that the loop took.
    assert 5 <= accepted <= 5 + 5 * elapsed + 1, (accepted, elapsed)
    assert throttled, f"30 requests in {elapsed:.2f}s were never throttled"
    assert throttled[0].json()["error"] == {
        "message": "(#130429) Rate limit hit",
        "type": "OAuthException",
        "code": 130429,
        "error_data": {"messaging_product": "whatsapp", "details": "Cloud API message throughput has been reached."},
        "error_subcode": 2494055,
        "fbtrace_id": throttled[0].json()["error"]["fbtrace_id"],
    }
    assert other_number.status_code == 200  # the limit is per phone-number-id
    assert stats["throttled"] == len(throttled) == stats["rejected"]["130429"]
    assert stats["accepted"] == accepted + 1
    assert "messages" not in stats


def test_duplicate_callback_data_is_counted_by_the_sandbox() -> None:
    with running(config()) as client:
        for data in ("c:1", "c:2", "c:1", "c:1"):
            assert client.post(SEND, json=template_body(biz_opaque_callback_data=data)).status_code == 200
        stats = client.get("/_sandbox/stats").json()
    assert stats["duplicate_callback_data"] == 2
    assert [m["biz_opaque_callback_data"] for m in stats["messages"]] == ["c:1", "c:2", "c:1", "c:1"]


# ---------------------------------------------------------------- status webhooks

def test_signed_webhooks_give_every_message_its_predicted_terminal_status() -> None:
    receiver = Receiver()
    # One POST at a time, so arrival order is posting order and out-of-order posting is visible.
    cfg = config(fail_rate=0.3, read_rate=0.5, out_of_order_rate=0.5, webhook_concurrency=1, webhook_batch=7)
    numbers = [f"4477009{i:05d}" for i in range(40)]
    with running(cfg, receiver) as client:
        sent = {}
        for i, number in enumerate(numbers):
            response = client.post(SEND, json=template_body(to=number, biz_opaque_callback_data=f"cb:{i}"))
            sent[response.json()["messages"][0]["id"]] = (number, f"cb:{i}")
        stats = drain(client)

    for post in receiver.attempts:
        body, signature = post.body, post.headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, expected)
        payload = json.loads(body)
        assert payload["object"] == "whatsapp_business_account"
        [change] = payload["entry"][0]["changes"]
        assert change["field"] == "messages" and change["value"]["metadata"]["phone_number_id"] == PNID
        assert 1 <= len(change["value"]["statuses"]) <= 7

    by_message: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for status in posted_statuses(receiver.posts):
        by_message[status["id"]].append(status)
    assert by_message.keys() == sent.keys()
    finals = Counter()
    for wamid, statuses in by_message.items():
        number, callback = sent[wamid]
        outcome = cfg.outcome(number)
        names = [s["status"] for s in statuses]
        logical = {"read": ["sent", "delivered", "read"], "delivered": ["sent", "delivered"],
                   "failed": ["sent", "failed"]}[outcome.final]
        if outcome.out_of_order:
            logical[-1], logical[-2] = logical[-2], logical[-1]
        assert names == logical, (number, outcome)
        finals[outcome.final] += 1
        for status in statuses:
            assert status["recipient_id"] == number and status["biz_opaque_callback_data"] == callback
            assert status["timestamp"].isdigit()
        priced = [s["status"] for s in statuses if "pricing" in s]
        if outcome.final == "failed":
            assert priced == []
            [error] = next(s for s in statuses if s["status"] == "failed")["errors"]
            assert error["code"] == outcome.error_code in FAILURES and error["error_data"]["details"]
        else:
            assert priced in (["sent"], ["delivered"])
    assert all(finals[k] for k in ("read", "delivered", "failed")), finals
    total = sum(len(v) for v in by_message.values())
    assert stats["webhooks_acknowledged"] == total and stats["webhooks_pending"] == 0
    assert sum(stats["statuses_acknowledged"].values()) == total
    assert stats["statuses_acknowledged"]["failed"] == finals["failed"]


def test_an_out_of_order_plan_keeps_its_order_however_slowly_it_is_scheduled() -> None:
    """Each status of a message is due at an offset from one start: a pause between scheduling the statuses (a
    thread switch on a loaded machine) must not turn an out-of-order pair back into logical order."""
    receiver = Receiver()
    cfg = config(fail_rate=0.0, read_rate=0.0, out_of_order_rate=1.0, webhook_concurrency=1)  # sent, delivered
    with running_with_state(cfg, receiver) as (client, sandbox):
        schedule = sandbox.poster.schedule

        def slowly(*args: Any, **kwargs: Any) -> None:
            time.sleep(0.03)  # longer than the widest gap between two statuses (webhook_delay_s: 0-20 ms)
            schedule(*args, **kwargs)

        sandbox.poster.schedule = slowly
        for i in range(5):
            client.post(SEND, json=template_body(to=f"4477009{i:05d}"))
        drain(client)
    names = defaultdict(list)
    for status in posted_statuses(receiver.posts):
        names[status["id"]].append(status["status"])
    assert len(names) == 5 and all(n == ["delivered", "sent"] for n in names.values()), dict(names)


def test_webhook_is_retried_after_a_500_and_counted_once_acknowledged() -> None:
    receiver = Receiver(answers=[500])
    with running(config(fail_rate=0.0, read_rate=0.0), receiver) as client:
        client.post(SEND, json=template_body(to="15550001111"))
        stats = drain(client)
    first_attempt = posted_statuses(receiver.attempts[:1])
    acknowledged = posted_statuses(receiver.posts)
    assert stats["webhook_post_failures"] == 1
    assert len(receiver.attempts) == len(receiver.posts) + 1
    assert all(status in acknowledged for status in first_attempt)  # the refused batch came again
    assert sorted(s["status"] for s in acknowledged) == ["delivered", "sent"]
    assert stats["statuses_acknowledged"] == {"sent": 1, "delivered": 1}


def test_unreachable_receiver_keeps_statuses_pending_instead_of_dropping_them() -> None:
    with serve_in_thread(Receiver().app) as url:
        dead_url = f"{url}/webhooks/whatsapp"  # the receiver is gone once this block ends
    with running(config(webhook_url=dead_url, fail_rate=0.0, read_rate=0.0)) as client:
        client.post(SEND, json=template_body())
        result = client.post("/_sandbox/drain", params={"timeout": 0.5}).json()
    assert result["drained"] is False
    assert result["webhooks_pending"] == 2 and result["webhooks_acknowledged"] == 0
    assert result["webhook_post_failures"] >= 1


# ---------------------------------------------------------------- determinism

def test_outcome_depends_only_on_seed_and_recipient() -> None:
    rates = dict(fail_rate=0.04, read_rate=0.6, out_of_order_rate=0.1)
    numbers = [f"1555{i:07d}" for i in range(4000)]
    first = [outcome_for(1, n, **rates) for n in numbers]
    assert first == [outcome_for(1, n, **rates) for n in numbers]
    assert outcome_for(1, "+1 555 000-0001", **rates) == outcome_for(1, "15550000001", **rates)
    assert first != [outcome_for(2, n, **rates) for n in numbers]
    finals = Counter(o.final for o in first)
    assert 100 <= finals["failed"] <= 230  # 4% of 4000 = 160
    assert 0.55 <= finals["read"] / (finals["read"] + finals["delivered"]) <= 0.65
    codes = Counter(o.error_code for o in first if o.final == "failed")
    assert set(codes) <= {131026, 131049, 131050} and codes.most_common(1)[0][0] == 131026


def test_two_sandboxes_with_the_same_seed_report_the_same_outcomes() -> None:
    numbers = [f"4917{i:08d}" for i in range(16)]
    reports = []
    for _ in range(2):
        with running(config(fail_rate=0.3)) as client:
            for number in numbers:
                client.post(SEND, json=template_body(to=number))
            messages = client.get("/_sandbox/stats").json()["messages"]
            reports.append([(m["to"], m["outcome"], m["error_code"]) for m in messages])
    assert reports[0] == reports[1]
    assert {outcome for _, outcome, _ in reports[0]} == {"read", "delivered", "failed"}


def test_command_line_refuses_to_start_without_secrets(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv("WHATSAPP_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "s")
    assert sandbox_main(["--port", "0"]) == 2
    assert "WHATSAPP_ACCESS_TOKEN" in capsys.readouterr().err


# ---------------------------------------------------------------- latency and per-sender times

def test_latency_delays_each_answer_by_the_fixed_part_plus_jitter_and_times_are_kept_per_sender() -> None:
    with running(config(latency_s=0.1, latency_jitter_s=0.1)) as client:
        took = []
        for i in range(8):
            started = time.monotonic()
            assert client.post(SEND, json=template_body(to=f"1555123{i:04d}")).status_code == 200
            took.append(time.monotonic() - started)
        client.post("/v23.0/2222/messages", json=template_body(to="15559990000"))
        times = client.get("/_sandbox/stats", params={"messages": "0", "times": "1"}).json()["accepted_at"]
        plain = client.get("/_sandbox/stats", params={"messages": "0"}).json()
    assert min(took) >= 0.1 and max(took) < 0.2 + 0.15  # fixed part always, jitter below its bound (+ slack)
    assert len({round(t, 3) for t in took}) > 1  # the jitter varies
    assert {k: len(v) for k, v in times.items()} == {PNID: 8, "2222": 1}
    assert times[PNID] == sorted(times[PNID]) and "accepted_at" not in plain


def test_no_latency_by_default() -> None:
    assert (config().latency_s, config().latency_jitter_s) == (0, 0)
