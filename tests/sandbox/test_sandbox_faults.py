"""Injected faults in the WhatsApp sandbox (5xx, timeouts before and after acceptance, a 429 burst),
the counters benchmarks read, the webhook poster's own HTTP client, and the sandbox as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from pipeline.sandbox.__main__ import CONFIG_ENV, _config, parse_args
from pipeline.sandbox.faults import FaultInjector
from pipeline.sandbox.process import exit_code, sandbox_env, sandbox_process, started_pids
from pipeline.sandbox.webhooks import _Http11Pool
from tests.helpers.channels import Receiver
from tests.helpers.waiting import wait_for
from tests.helpers.whatsapp import PNID, SEND, TOKEN, config, drain, posted_statuses, running, template_body

SHORT = 0.5  # client timeout for requests a timeout fault holds (the sandbox holds them for 30 s)


def stats(client: httpx.Client) -> dict[str, Any]:
    return client.get("/_sandbox/stats", params={"messages": "0"}).json()


# ---------------------------------------------------------------- 5xx before acceptance

def test_5xx_fault_answers_meta_server_errors_and_sends_nothing() -> None:
    with running(config(fault_5xx_rate=1.0)) as client:
        answers = [client.post(SEND, json=template_body(biz_opaque_callback_data=f"c:{i}")) for i in range(20)]
        result = stats(client)
        ids = client.get("/_sandbox/accepted_ids").json()
    by_status = Counter((r.status_code, r.json()["error"]["code"]) for r in answers)
    assert set(by_status) == {(503, 2), (500, 131000)}, by_status  # Meta's public status mapping
    error = answers[0].json()["error"]
    assert error["type"] == "OAuthException" and error["fbtrace_id"] and error["error_data"]["details"]
    assert result["accepted"] == 0 and result["unique_callback_data"] == 0 and ids == []
    assert result["faults"] == {"5xx": 20, "timeout_drop": 0, "timeout_after_accept": 0, "burst_429": 0}
    assert result["rejected"] == {"2": by_status[(503, 2)], "131000": by_status[(500, 131000)]}


def test_a_retry_of_the_same_message_can_succeed() -> None:
    body = template_body(to="15550009999", biz_opaque_callback_data="retry:1")
    seed = next(s for s in range(100) if FaultInjector(seed=s, fault_5xx_rate=0.5).sequence(1)[0])
    with running(config(fault_5xx_rate=0.5, seed=seed)) as client:
        codes = []
        while 200 not in codes and len(codes) < 30:
            codes.append(client.post(SEND, json=body).status_code)
        result = stats(client)
    assert codes[-1] == 200 and len(codes) > 1, codes  # that seed fails the first draw
    assert result["accepted"] == 1 and result["duplicate_callback_data"] == 0
    assert result["faults"]["5xx"] == len(codes) - 1


# ---------------------------------------------------------------- timeouts

def test_timeout_drop_holds_the_request_and_does_not_send() -> None:
    with running(config(timeout_drop_rate=1.0, timeout_delay_s=30)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(SEND, json=template_body(biz_opaque_callback_data="drop:1"), timeout=SHORT)
        # The client hung up: the sandbox stops holding at once, not after 30 s.
        wait_for(lambda: stats(client)["held"] == 0, timeout_s=10, what="the sandbox to stop holding the request")
        result = stats(client)
    assert result["accepted"] == 0 and result["unique_callback_data"] == 0
    assert result["faults"]["timeout_drop"] == 1 and result["rejected"] == {"2": 1}


def test_timeout_drop_answers_503_late_to_a_patient_client() -> None:
    with running(config(timeout_drop_rate=1.0, timeout_delay_s=0.3)) as client:
        started = time.monotonic()
        response = client.post(SEND, json=template_body(), timeout=10)
        waited = time.monotonic() - started
        result = stats(client)
    assert response.status_code == 503 and response.json()["error"]["code"] == 2
    assert waited >= 0.25
    assert result["accepted"] == 0


def test_timeout_after_accept_is_accepted_and_its_webhooks_are_posted() -> None:
    receiver = Receiver()
    cfg = config(timeout_after_accept_rate=1.0, timeout_delay_s=30, fail_rate=0.0, read_rate=0.0)
    with running(cfg, receiver) as client:
        for _ in range(2):  # the client's retry after its timeout: the same message again
            with pytest.raises(httpx.ReadTimeout):
                client.post(SEND, json=template_body(biz_opaque_callback_data="late:1"), timeout=SHORT)
        wait_for(lambda: stats(client)["held"] == 0, timeout_s=10, what="the sandbox to stop holding the request")
        result = drain(client)
        ids = client.get("/_sandbox/accepted_ids").json()
    assert result["accepted"] == 2 and result["duplicate_callback_data"] == 1 and result["unique_callback_data"] == 1
    assert result["faults"]["timeout_after_accept"] == 2 and result["rejected"] == {}
    assert ids == ["late:1"]
    posted = posted_statuses(receiver.posts)
    assert sorted(s["status"] for s in posted) == ["delivered", "delivered", "sent", "sent"]
    assert {s["biz_opaque_callback_data"] for s in posted} == {"late:1"}


def test_timeout_after_accept_answers_200_late_to_a_patient_client() -> None:
    with running(config(timeout_after_accept_rate=1.0, timeout_delay_s=0.3)) as client:
        response = client.post(SEND, json=template_body(), timeout=10)
        result = stats(client)
    assert response.status_code == 200 and response.json()["messages"][0]["id"].startswith("wamid.")
    assert result["accepted"] == 1 and result["faults"]["timeout_after_accept"] == 1


def test_a_refused_timeout_after_accept_draw_is_not_counted_as_injected() -> None:
    with running(config(timeout_after_accept_rate=1.0, timeout_delay_s=0.05, throughput_per_s=1)) as client:
        answers = [client.post(SEND, json=template_body()).status_code for _ in range(3)]
        result = stats(client)
    assert answers.count(200) == result["accepted"] == result["faults"]["timeout_after_accept"]
    assert answers.count(429) == result["throttled"] >= 1


# ---------------------------------------------------------------- 429 burst window

def test_burst_window_answers_429_then_recovers() -> None:
    with running(config(burst_429_at_s=0.2, burst_429_for_s=0.4)) as client:
        answers = [client.post(SEND, json=template_body())]

        def window_over() -> bool:  # one more request; True once a 429 came and the last answer is 200 again
            answers.append(client.post(SEND, json=template_body()))
            return 429 in [a.status_code for a in answers] and answers[-1].status_code == 200

        wait_for(window_over, timeout_s=10, what="the 429 window to open and close", every_s=0.01)
        result = stats(client)
    codes = [a.status_code for a in answers]
    assert codes[0] == 200 and codes[-1] == 200 and 429 in codes, codes
    first, last = codes.index(429), len(codes) - 1 - codes[::-1].index(429)
    assert set(codes[first : last + 1]) == {429}  # one contiguous window
    error = answers[first].json()["error"]
    assert error["code"] == 130429 and error["error_subcode"] == 2494055
    assert result["faults"]["burst_429"] == codes.count(429) == result["rejected"]["130429"]
    assert result["throttled"] == 0 and result["accepted"] == codes.count(200)


def test_burst_window_is_measured_from_the_first_request() -> None:
    now = [100.0]
    injector = FaultInjector(seed=0, burst_429_at_s=5.0, burst_429_for_s=2.0, clock=lambda: now[0])
    kinds = []
    for t in (100.0, 104.9, 105.0, 106.9, 107.0, 200.0):
        now[0] = t
        fault = injector.draw()
        kinds.append(fault.kind if fault else None)
    assert kinds == [None, None, "burst_429", "burst_429", None, None]
    assert not injector.enabled  # past the window and no rates: the hot path skips the injector


# ---------------------------------------------------------------- determinism

def test_fault_draws_depend_on_seed_and_request_number_only() -> None:
    rates = dict(fault_5xx_rate=0.1, timeout_drop_rate=0.05, timeout_after_accept_rate=0.05)
    first = FaultInjector(seed=1, **rates).sequence(4000)
    assert first == FaultInjector(seed=1, **rates).sequence(4000)
    assert first != FaultInjector(seed=2, **rates).sequence(4000)
    kinds = Counter(f.kind if f else None for f in first)
    assert 330 <= kinds["5xx"] <= 470 and 130 <= kinds["timeout_drop"] <= 270  # 10% / 5% of 4000
    assert 130 <= kinds["timeout_after_accept"] <= 270
    codes = Counter(f.code for f in first if f and f.kind == "5xx")
    assert set(codes) == {2, 131000}


def test_two_sandboxes_with_the_same_seed_inject_the_same_faults() -> None:
    def run(seed: int) -> list[int]:
        with running(config(fault_5xx_rate=0.3, seed=seed)) as client:
            # One recipient for all: the draw follows the request, not the recipient.
            return [client.post(SEND, json=template_body()).status_code for _ in range(40)]

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    expected = [f.status if f else 200 for f in FaultInjector(seed=5, fault_5xx_rate=0.3).sequence(40)]
    assert first == expected and 200 in first and set(first) - {200}


def test_fault_rates_must_not_add_up_to_more_than_one() -> None:
    with pytest.raises(ValidationError, match="> 1"):
        config(fault_5xx_rate=0.6, timeout_drop_rate=0.3, timeout_after_accept_rate=0.2)


# ---------------------------------------------------------------- counters for benchmarks

def test_accepted_ids_lists_distinct_callback_data_in_acceptance_order() -> None:
    with running(config()) as client:
        for data in ("b", "a", "b", None, "c"):
            body = template_body(biz_opaque_callback_data=data)
            if data is None:
                del body["biz_opaque_callback_data"]
            assert client.post(SEND, json=body).status_code == 200
        ids = client.get("/_sandbox/accepted_ids").json()
        result = stats(client)
    assert ids == ["b", "a", "c"]
    assert result["accepted"] == 5 and result["unique_callback_data"] == 3 and result["duplicate_callback_data"] == 1
    assert "messages" not in result


# ---------------------------------------------------------------- the webhook poster's HTTP client

async def _with_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                       run: Callable[[_Http11Pool], Awaitable[Any]]) -> Any:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = _Http11Pool(f"http://127.0.0.1:{port}/hook?x=1", size=2, timeout_s=2.0)
    try:
        return await run(pool)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    [length] = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    return head + await reader.readexactly(length)


def test_poster_client_reads_length_chunked_and_close_delimited_answers() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nbody until close",
    ]
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while answers:
                seen.append(await _read_request(reader))
                answer = answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if answer.startswith(b"HTTP/1.0"):
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def run(pool: _Http11Pool) -> list[int | None]:
        return [await pool.post(b'{"n":1}', {"X-Hub-Signature-256": "sha256=ab"}) for _ in range(4)]

    assert asyncio.run(_with_server(handler, run)) == [200, 202, 500, 200]
    first = seen[0].decode()
    assert first.startswith("POST /hook?x=1 HTTP/1.1\r\n") and "X-Hub-Signature-256: sha256=ab" in first
    assert first.endswith('\r\n\r\n{"n":1}')


def test_poster_client_retries_a_stale_keep_alive_connection_once() -> None:
    connections = []
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()  # keep-alive promised, then closed: the next POST must not fail for it
        await writer.wait_closed()
        closed.set()

    async def run(pool: _Http11Pool) -> list[int | None]:
        first = await pool.post(b"{}", {})
        await asyncio.wait_for(closed.wait(), 10)  # the pooled connection is now stale
        return [first, await pool.post(b"{}", {})]

    assert asyncio.run(_with_server(handler, run)) == [200, 200]
    assert len(connections) == 2


def test_poster_client_gives_up_on_a_silent_server() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    async def run(pool: _Http11Pool) -> int | None:
        pool.timeout_s = 0.2
        return await pool.post(b"{}", {})

    assert asyncio.run(_with_server(handler, run)) is None


# ---------------------------------------------------------------- command line and separate process

def test_flags_override_the_json_config_which_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, json.dumps({"seed": 3, "fault_5xx_rate": 0.2, "webhook_delay_s": [0.0, 0.1]}))
    from pipeline.sandbox.__main__ import _base_config

    args = parse_args(["--fault-5xx-rate", "0.1", "--timeout-drop-rate", "0.05", "--timeout-after-accept-rate",
                       "0.02", "--timeout-delay", "2", "--burst-429-at", "1", "--burst-429-for", "0.5"])
    cfg = _config(args, "t", "s", _base_config())
    assert (cfg.seed, cfg.fault_5xx_rate, cfg.timeout_drop_rate, cfg.timeout_after_accept_rate) == (3, 0.1, 0.05, 0.02)
    assert (cfg.timeout_delay_s, cfg.burst_429_at_s, cfg.burst_429_for_s) == (2.0, 1.0, 0.5)
    assert cfg.webhook_delay_s == (0.0, 0.1) and cfg.throughput_per_s == 1000.0


def test_process_env_carries_every_field_and_secrets_apart() -> None:
    cfg = config(fault_5xx_rate=0.25, templates={"order_update": "utility"}, burst_429_at_s=3.0)
    env = sandbox_env(cfg, base={})
    fields = json.loads(env[CONFIG_ENV])
    assert "access_token" not in fields and "app_secret" not in fields
    assert env["WHATSAPP_ACCESS_TOKEN"] == TOKEN and env["WHATSAPP_APP_SECRET"] == cfg.app_secret
    rebuilt = type(cfg)(access_token=cfg.access_token, app_secret=cfg.app_secret, **fields)
    assert rebuilt == cfg


def _gone(pid: int) -> bool:
    """True once no process with this pid or process group exists (the child was reaped)."""
    for kill in (os.kill, os.killpg):
        try:
            kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_sandbox_process_serves_its_config_and_leaves_nothing_behind() -> None:
    cfg = config(fault_5xx_rate=1.0)
    with sandbox_process(cfg) as url:
        pid = started_pids()[-1]
        assert not _gone(pid) and pid != os.getpid()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False) as client:
            response = client.post(f"/v23.0/{PNID}/messages", json=template_body())
            result = stats(client)
    assert response.status_code in (500, 503)  # the config reached the child
    assert result["faults"]["5xx"] == 1 and result["accepted"] == 0
    assert _gone(pid) and exit_code(pid) == 0  # stopped cleanly by SIGTERM


def test_sandbox_process_is_stopped_when_the_caller_raises() -> None:
    with pytest.raises(RuntimeError, match="caller failed"), sandbox_process(config()) as url:
        pid = started_pids()[-1]
        assert httpx.get(f"{url}/_sandbox/accepted_ids", trust_env=False).json() == []
        raise RuntimeError("caller failed")
    assert _gone(pid)


def test_sandbox_process_is_killed_if_it_ignores_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.sandbox.process as process

    real = process._signal_group
    signals: list[int] = []

    def record(pgid: int, signum: int) -> None:
        signals.append(signum)
        if signum != signal.SIGTERM:  # pretend SIGTERM got lost
            real(pgid, signum)

    monkeypatch.setattr(process, "_signal_group", record)
    with sandbox_process(config(), stop_timeout_s=0.3):
        pid = started_pids()[-1]
    assert signals[0] == signal.SIGTERM and signal.SIGKILL in signals
    assert _gone(pid) and exit_code(pid) == -signal.SIGKILL


def test_sandbox_process_reports_a_child_that_cannot_start() -> None:
    bad = config().model_copy(update={"fault_5xx_rate": 2.0})  # skips validation here; the child refuses it
    with pytest.raises(RuntimeError, match="did not start"), sandbox_process(bad):
        pass
    assert _gone(started_pids()[-1])
