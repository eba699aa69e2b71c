"""Headless Chromium (Debian's `chromium`, `make browser`) driven over the DevTools protocol: one browser
for the session, one tab per test. A tab opens a page and waits for its text, evaluates script, reports
what the page logged and asked the network for, and takes screenshots.

One websocket to the browser with flattened sessions (`Target.attachToTarget`), so console messages,
exceptions and requests of a tab are seen from the first byte of its page.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.helpers.processes import Processes
from tests.helpers.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1400,1000"]
ANSWER_S = 30  # one DevTools call, at most
PAGE_S = 45  # a page to show what a test waits for, at most


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: Any = None


class Browser:
    """One headless Chromium and its DevTools websocket; `tab()` opens a tab."""

    def __init__(self, workdir: Path) -> None:
        if not Path(CHROMIUM).exists():
            pytest.fail(f"{CHROMIUM} is missing: the test set-up installs it (`make browser`); the HTML report, "
                        "the upload page and the Prefect UI cannot be checked in a browser without it")
        self.procs = Processes(workdir / "logs")
        profile = workdir / "profile"
        self.proc = self.procs.start("chromium", [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     env=dict(os.environ), cwd=workdir)
        active = profile / "DevToolsActivePort"  # "<port>\n<browser websocket path>" once DevTools listens

        def endpoint() -> str | None:
            assert self.proc.poll() is None, self.procs.log("chromium")
            lines = active.read_text().split() if active.exists() else []
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) == 2 else None

        url = wait_for(endpoint, timeout_s=30, what="Chromium's DevTools endpoint", details=self.procs.tails)
        self.ws = ws_connect(url, max_size=None, open_timeout=20)
        self.next_id = 0
        self.events: dict[str | None, list[dict[str, Any]]] = {}

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Sends one command (to a tab's `session`, else to the browser) and returns its result; events that
        arrive meanwhile are kept for their tab."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result") or {}

    def _receive(self, timeout_s: float = ANSWER_S) -> dict[str, Any]:
        message = json.loads(self.ws.recv(timeout=timeout_s))
        if "method" in message:
            self.events.setdefault(message.get("sessionId"), []).append(message)
        return message

    def tab(self, *, width: int = 1400, height: int = 1000) -> Tab:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tab = Tab(self, target, session)
        for domain in ("Page", "Runtime"):
            tab.call(f"{domain}.enable")
        tab.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        return tab

    def close(self) -> None:
        self.ws.close()
        self.procs.stop_all()


class Tab:
    """One page of the browser."""

    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.browser.events.setdefault(self.session, [])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        return result["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def open(self, url: str, *expected: str, tab: str | None = None, scroll: bool = False) -> str:
        """Opens `url` (and clicks its `tab`), then waits until the page's text shows every `expected` string;
        returns the text."""
        self.call("Page.navigate", url=url)
        if tab is not None:
            click = f"""(() => {{
                const tab = [...document.querySelectorAll('[role=tab], .p-tab, button, a')]
                    .find(e => (e.innerText || '').trim() === {json.dumps(tab)});
                if (tab) tab.click();
                return !!tab; }})()"""
            wait_for(lambda: self.evaluate(click), timeout_s=PAGE_S, what=f"the {tab!r} tab of {url}", every_s=0.2)

        def shown() -> str | None:
            if scroll:  # lazily loaded sections (the task runs' artifacts) load once scrolled into view
                self.evaluate("document.querySelectorAll('*').forEach(e => { if (e.scrollHeight > e.clientHeight)"
                              " e.scrollTop = e.scrollHeight; })")
            text = self.text()
            return text if all(s in text for s in expected) else None

        return wait_for(shown, timeout_s=PAGE_S, what=f"{expected} on {url}", every_s=0.2,
                        details=lambda: f"it shows:\n{self.text()[:3000]}")

    def click(self, element: str) -> None:
        """Clicks the element `element` (a script expression) evaluates to, with the mouse at its centre, as a
        person clicks: a press and a release, which widgets that open on a pointer press (Radix menus, the V2 UI)
        need; a scripted `element.click()` sends neither."""
        centre = self.evaluate(f"""(() => {{ const e = {element}; if (!e) return null;
            e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        assert centre, f"nothing to click: {element}"
        x, y = centre
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def load(self, url: str, expression: str) -> PageLoad:
        """Opens `url`, evaluates `expression` once it has loaded, and reports what the page logged as errors
        and every request it made, up to the moment it has settled."""
        for domain in ("Log", "Network"):
            self.call(f"{domain}.enable")
        self.events.clear()
        self.call("Page.navigate", url=url)
        self._until(lambda: any(e["method"] == "Page.loadEventFired" for e in self.events), f"{url} to load")
        value = self.evaluate(expression)
        # Anything logged while the page settles: every request it made has ended (a failed one logs an
        # error), then one turn of its task queue; events sent before that answer are all in.
        self._until(lambda: not self._requests_open(), f"the requests of {url} to end")
        self.evaluate("new Promise(done => setTimeout(done, 0))", await_promise=True)
        page = PageLoad(value=value)
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                page.errors.append(f"{details.get('text', '')} {details.get('exception', {}).get('description', '')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                page.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                page.errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
        return page

    def _until(self, done: Callable[[], bool], what: str) -> None:
        """Reads the browser's messages until `done()` holds (events are what it looks at)."""
        deadline = time.monotonic() + ANSWER_S
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"gave up after {ANSWER_S} s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                self.browser._receive(left)

    def _requests_open(self) -> set[str]:
        started = {e["params"]["requestId"] for e in self.events if e["method"] == "Network.requestWillBeSent"}
        ended = {e["params"]["requestId"] for e in self.events
                 if e["method"] in ("Network.loadingFinished", "Network.loadingFailed")}
        return started - ended

    def screenshot(self, path: Path) -> None:
        top = ("window.scrollTo(0, 0); document.querySelectorAll('*').forEach(e => e.scrollTop = 0);"
               "window.scrollY === 0 && [...document.querySelectorAll('*')].every(e => e.scrollTop === 0)")
        wait_for(lambda: self.evaluate(top), timeout_s=10, what="the page scrolled to its top")  # smooth scrolling
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})
