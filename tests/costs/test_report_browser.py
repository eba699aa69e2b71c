"""The HTML report opened in headless Chromium (Debian's `chromium`, installed by the project's set-up): the
charts render with their bars, the console shows no error, and the page asks for nothing from the network.

Driven over the DevTools protocol (a websocket: `websockets` comes with Prefect), so console messages,
exceptions and requests are seen from the first byte of the page.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from websockets.sync.client import connect as ws_connect

from pipeline import store
from pipeline.costs import costing as costs
from pipeline.costs.report import write_report

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0"]
CHECK_CHARTS = """JSON.stringify([...document.querySelectorAll('svg.chart')].map(s => ({
    id: s.id, bars: s.querySelectorAll('rect.bar').length, width: s.getBoundingClientRect().width,
    height: s.getBoundingClientRect().height, drawn: s.getBBox().width,
    widest: Math.max(0, ...[...s.querySelectorAll('rect.bar')].map(r => r.getBoundingClientRect().width))})))"""


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: Any = None


class Chromium:
    """One headless browser; `load(url, expression)` opens a tab and evaluates `expression` once loaded."""

    def __init__(self, profile: Path) -> None:
        if not Path(CHROMIUM).exists():
            pytest.fail(f"{CHROMIUM} is missing: the test set-up installs it (`apt-get install -y chromium`); "
                        "the HTML report cannot be checked in a browser without it")
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ws_url = self._endpoint()
        self.ws = ws_connect(self.ws_url, max_size=None, open_timeout=20)
        self.next_id = 0

    def _endpoint(self) -> str:
        deadline = time.monotonic() + 30
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
            if not line and self.proc.poll() is not None:
                break
        self.close()
        pytest.fail("chromium did not start its DevTools endpoint within 30 s")

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def load(self, url: str, expression: str) -> PageLoad:
        self._events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            assert time.monotonic() < deadline, "the page did not finish loading within 30 s"
            self._events.append(json.loads(self.ws.recv(timeout=30)))
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        # Anything logged while the page settles: every request it made has ended (a failed one logs an
        # error), then one turn of its task queue; events sent before that answer are all in.
        while self._requests_open():
            assert time.monotonic() < deadline, "the page's requests did not end within 30 s"
            self._events.append(json.loads(self.ws.recv(timeout=30)))
        self.send("Runtime.evaluate", {"expression": "new Promise(done => setTimeout(done, 0))", "awaitPromise": True},
                  session=session)
        page = PageLoad(value=result.get("result", {}).get("value"))
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                page.errors.append(f"{details.get('text', '')} {details.get('exception', {}).get('description', '')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                page.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                page.errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
        self.send("Target.closeTarget", {"targetId": target})
        return page

    def _requests_open(self) -> set[str]:
        started = {e["params"]["requestId"] for e in self._events if e.get("method") == "Network.requestWillBeSent"}
        ended = {e["params"]["requestId"] for e in self._events
                 if e.get("method") in ("Network.loadingFinished", "Network.loadingFailed")}
        return started - ended

    def close(self) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    chromium = Chromium(profile)
    try:
        yield chromium
    finally:
        chromium.close()
        shutil.rmtree(profile, ignore_errors=True)


def sample_campaign(con: duckdb.DuckDBPyConnection) -> None:
    """A campaign over six countries with reads, failures (three codes), a re-categorised and a free message."""
    costs.load_prices(con)
    con.execute("INSERT INTO campaigns VALUES ('autumn', 'Autumn offers', 'whatsapp', 'autumn_offer_v3', "
                "'marketing', TIMESTAMPTZ '2026-10-01 09:00:00+00', '{}')")
    plan = [("GB", 40, 0.9, 0.5), ("DE", 25, 0.88, 0.4), ("BR", 30, 0.95, 0.6), ("IN", 35, 0.93, 0.55),
            ("US", 20, 0.8, 0.3), ("DO", 10, 0.9, 0.5)]
    codes = ["131049", "131026", "131050"]
    outbox, events = [], []
    for country, count, deliver, read in plan:
        for i in range(count):
            mid = f"m{len(outbox) + 1}"
            outbox.append((mid, f"+1555{len(outbox):07d}", country))
            billed, kind = ("utility", "regular") if i == 3 else (("marketing", "free_entry_point") if i == 4
                                                                  else ("marketing", "regular"))
            statuses = (["sent", "delivered", "read"] if i < count * read else ["sent", "delivered"]) \
                if i < count * deliver else ["sent", "failed"]
            events += [(f"{mid}:{status}", mid, status, codes[len(outbox) % 3] if status == "failed" else None,
                        billed if status == "sent" else None, kind if status == "sent" else None)
                       for status in statuses]
    # Set-based inserts: one statement each instead of hundreds.
    con.register("_outbox", pl.DataFrame(outbox, orient="row", schema=["message_id", "recipient_key", "country"]))
    con.register("_events", pl.DataFrame(events, orient="row", schema=[
        "event_id", "message_id", "status", "error_code", "category", "pricing_type"]))
    con.execute("""INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, country, category,
                       payload_json, state, queued_at, sent_at)
                   SELECT message_id, 'autumn', recipient_key, 'whatsapp', 's', country, 'marketing', '{}', 'sent',
                       TIMESTAMPTZ '2026-10-12 09:00:00+00', TIMESTAMPTZ '2026-10-12 10:00:00+00' FROM _outbox""")
    con.execute("""INSERT INTO events (event_id, provider, provider_message_id, message_id, status, error_code,
                       category, pricing_type, occurred_at)
                   SELECT event_id, 'whatsapp', message_id, message_id, status, error_code, category, pricing_type,
                       TIMESTAMPTZ '2026-10-12 10:01:00+00' FROM _events""")
    con.execute("""INSERT INTO recipients (campaign_id, row_number, recipient_key, phone_e164, country)
                   SELECT 'autumn', row_number() OVER () + 1, recipient_key, recipient_key, country FROM _outbox""")
    con.execute("""INSERT INTO rejects SELECT 'autumn', 200 + i, reason, NULL FROM (SELECT unnest(range(14)) AS i,
                   unnest(['invalid_number', 'duplicate', 'duplicate', 'not_mobile', 'duplicate', 'suppressed',
                           'blocked_country', 'invalid_number', 'duplicate', 'no_opt_in', 'duplicate',
                           'invalid_number', 'not_mobile', 'duplicate']) AS reason)""")


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    with store.connect(folder / "campaigns.duckdb") as con:
        sample_campaign(con)
        costs.estimate_cost(con, "autumn")
        return write_report(con, "autumn", folder / "autumn").html


def test_report_charts_render_without_console_errors(browser: Chromium, report_html: Path) -> None:
    page = browser.load(report_html.resolve().as_uri(), CHECK_CHARTS)
    assert page.errors == []
    assert [r for r in page.requests if not r.startswith("file://")] == []  # opens offline
    charts = {c["id"]: c for c in json.loads(page.value)}
    assert set(charts) == {"chart-cost-by-country", "chart-funnel", "chart-failures"}
    # Six countries x (platform, service) bars; sent, delivered, read; three error codes.
    assert {k: c["bars"] for k, c in charts.items()} == {
        "chart-cost-by-country": 12, "chart-funnel": 3, "chart-failures": 3}
    for chart in charts.values():
        assert chart["width"] > 300 and chart["height"] > 60 and chart["drawn"] > 200, chart
        assert chart["widest"] > 100, chart  # the bars have a real size on screen


def test_the_browser_check_catches_errors_and_network_requests(browser: Chromium, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><svg class="chart" id="x"></svg>'
                      '<script>console.error("chart failed"); undefinedFunction();</script>'
                      '<img src="http://127.0.0.1:9/logo.png"></body></html>')
    page = browser.load(broken.as_uri(), CHECK_CHARTS)
    assert any("chart failed" in e for e in page.errors)
    assert any("undefinedFunction" in e for e in page.errors)
    assert "http://127.0.0.1:9/logo.png" in page.requests
    assert json.loads(page.value) == [{"id": "x", "bars": 0, "width": 300, "height": 150, "drawn": 0, "widest": 0}]
