"""The processes of the concurrency benchmark (benchmarks/concurrency.py), each in its own process as in
production, all on one store. Each writes what it measured to OUT (JSON) when it ends; an exception in
any store call is counted there (type and first line) and the process carries on: none dies on one.

    python benchmarks/_concurrency_worker.py dispatch STORE_URL OUT CAMPAIGN SENDER SANDBOX_URL SPOOL RATE CONCURRENCY
    python benchmarks/_concurrency_worker.py ingest STORE_URL OUT SPOOL STOP_FILE [EVERY_S]
    python benchmarks/_concurrency_worker.py report STORE_URL OUT CAMPAIGN STOP_FILE [EVERY_S]

`dispatch` sends one campaign through a Recording channel and writes its send times (time.monotonic(),
one clock for every process of the machine); `ingest` calls ingest_spool every EVERY_S (default 1) and
`report` computes the campaign's cost report every EVERY_S (default 2), recording each call's latency,
until STOP_FILE exists.

Every write transaction a process opens through `Store.write` is timed (instrumented here, not in pipeline/):
how long it waited to begin (on SQLite: for the write lock) and how long it held it, commit included.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import resource
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._dispatch_kit import Recording, whatsapp  # noqa: E402
from pipeline import store  # noqa: E402
from pipeline.dispatch import operations  # noqa: E402
from pipeline.dispatch.engine import dispatch_campaign  # noqa: E402
from pipeline.receipts.ingest import ingest_spool  # noqa: E402
from pipeline.spec import RateSpec, RetrySpec  # noqa: E402
from pipeline.store.arrow import read_arrow  # noqa: E402

# What a cost report reads, until pipeline/costs takes a Store (the costs port): the campaign's outbox by
# state and country, its receipts folded per message (joined by message_id) as reports/cost_report.sql
# counts them. Read as Arrow, the way the ported reports read the store.
STAND_IN_REPORT = """
WITH s AS (
    SELECT e.message_id,
        max(CASE e.status WHEN 'failed' THEN 9 WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 WHEN 'sent' THEN 1
            ELSE 0 END) AS status_rank,
        max(e.category) AS billed_category, max(e.pricing_type) AS pricing_type
    FROM events e JOIN outbox o ON o.message_id = e.message_id
    WHERE o.campaign_id = :c
    GROUP BY e.message_id
)
SELECT o.channel, o.country, o.state, coalesce(s.billed_category, o.category) AS category,
    count(*) AS messages,
    sum(CASE WHEN o.state = 'sent' THEN 1 ELSE 0 END) AS sent,
    sum(CASE WHEN s.status_rank IN (2, 3) THEN 1 ELSE 0 END) AS delivered,
    sum(CASE WHEN s.status_rank = 3 THEN 1 ELSE 0 END) AS "read",
    sum(CASE WHEN o.state = 'failed' OR s.status_rank = 9 THEN 1 ELSE 0 END) AS failed
FROM outbox o LEFT JOIN s ON s.message_id = o.message_id
WHERE o.campaign_id = :c
GROUP BY o.channel, o.country, o.state, coalesce(s.billed_category, o.category)
"""


def report_function() -> tuple[str, Any]:
    """The real `cost_report(db, campaign_id)` once pipeline/costs takes a Store, else the stand-in query."""
    from pipeline.costs import costing

    first = next(iter(inspect.signature(costing.cost_report).parameters.values()))
    if str(first.annotation).split(".")[-1] == "Store":
        return "cost_report", costing.cost_report
    return "stand_in", lambda db, campaign_id: read_arrow(db, STAND_IN_REPORT, c=campaign_id)


class Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, where: str, error: BaseException) -> None:
        lines = str(error).strip().splitlines()
        self.items.append({"where": where, "type": type(error).__name__, "message": lines[0] if lines else "",
                           "at": time.monotonic(),
                           "trace": traceback.format_exception(error)[-3:]})


class WriteTimes:
    """Each write transaction of this process: when it asked, how long it waited to begin, how long it held."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, float, str]] = []
        self.lock = threading.Lock()

    def install(self) -> None:
        original = store.Store.write
        times = self

        @contextmanager
        def write(db: store.Store) -> Iterator[Any]:
            asked = time.monotonic()
            began = None
            try:
                with original(db) as conn:
                    began = time.monotonic()
                    yield conn
            finally:
                ended = time.monotonic()
                with times.lock:
                    times.rows.append((asked, (began or ended) - asked, ended - (began or ended),
                                       threading.current_thread().name))

        store.Store.write = write  # type: ignore[method-assign]

    def summary(self) -> dict[str, Any]:
        waits = sorted(r[1] for r in self.rows)
        holds = sorted(r[2] for r in self.rows)

        def q(values: list[float], f: float) -> float | None:
            return round(values[min(len(values) - 1, int(f * len(values)))] * 1000, 1) if values else None

        worst = sorted(self.rows, key=lambda r: -r[1])[:10]
        return {"count": len(self.rows), "wait_p50_ms": q(waits, 0.5), "wait_p99_ms": q(waits, 0.99),
                "wait_max_ms": q(waits, 1.0), "hold_p50_ms": q(holds, 0.5), "hold_p99_ms": q(holds, 0.99),
                "hold_max_ms": q(holds, 1.0),
                "worst_waits": [{"at": r[0], "wait_ms": round(r[1] * 1000, 1), "hold_ms": round(r[2] * 1000, 1),
                                 "thread": r[3]} for r in worst]}


WRITES = WriteTimes()
STARTED = time.monotonic()


def write(out: Path, figures: dict[str, Any]) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)  # this process's CPU time, for comparing with wall
    figures["wall_s"] = round(time.monotonic() - STARTED, 2)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures))
    tmp.replace(out)


def _quantiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def q(f: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(f * len(ordered)))] * 1000, 1) if ordered else None

    mean = round(sum(ordered) / len(ordered) * 1000, 1) if ordered else None
    return {"n": len(ordered), "mean_ms": mean, "p50_ms": q(0.5), "p95_ms": q(0.95), "max_ms": q(1.0)}


class TimedSends(Recording):
    """Also how long each request took (the sandbox's answer, as the event loop saw it)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.durations: list[float] = []

    async def send(self, session: Any, payloads: list[str]) -> Any:
        started = time.monotonic()
        try:
            return await super().send(session, payloads)
        finally:
            self.durations.append(time.monotonic() - started)


def time_claims() -> list[float]:
    """How long each worker waits for its claim (the next group commit): instrumented here, not in pipeline/."""
    from pipeline.dispatch import writer

    waits: list[float] = []
    original = writer.GroupWriter.claim

    async def claim(self: Any, *args: Any, **kwargs: Any) -> set[int]:
        started = time.monotonic()
        try:
            return await original(self, *args, **kwargs)
        finally:
            waits.append(time.monotonic() - started)

    writer.GroupWriter.claim = claim  # type: ignore[method-assign]
    return waits


def dispatch(url: str, out: Path, campaign_id: str, sender: str, sandbox_url: str, spool: Path, rate: float,
             concurrency: int) -> None:
    errors = Errors()
    channel = TimedSends(whatsapp(sandbox_url, sender))
    claim_waits = time_claims()
    runs: list[dict[str, Any]] = []
    with store.connect(url) as db:

        def status(info: dict[str, Any]) -> None:
            try:  # on the ledger's thread, as a future nobody reads: an error would vanish unseen
                operations.record_status(db, campaign_id, info)
            except Exception as error:  # noqa: BLE001 - counted, and the run goes on
                errors.add("record_status", error)

        print("started", flush=True)
        for _ in range(5):  # a run that fails is resumed, as an operator would (counted as an error)
            try:
                result = asyncio.run(dispatch_campaign(
                    db, campaign_id, {sender: channel}, rate=RateSpec(max_per_second=rate, concurrency=concurrency),
                    retry=RetrySpec(max_attempts=3), reconcile=lambda: ingest_spool(db, spool),
                    on_status=status, progress_every_s=3.0))
            except Exception as error:  # noqa: BLE001
                errors.add("dispatch_campaign", error)
                continue
            runs.append({"sent": result.sent, "failed": result.failed, "unknown": result.unknown,
                         "seconds": round(result.seconds, 3), "stopped_reason": result.stopped_reason})
            break
        states = dict(db.rows("SELECT state, count(*) FROM outbox WHERE campaign_id = :c GROUP BY 1", c=campaign_id))
    write(out, {"role": "dispatch", "campaign_id": campaign_id, "stamps": sorted(channel.stamps), "runs": runs,
                "states": states, "errors": errors.items, "writes": WRITES.summary(),
                "claim_wait": _quantiles(claim_waits), "send": _quantiles(channel.durations)})


def loop(role: str, url: str, out: Path, stop_file: Path, every_s: float, call: Any) -> None:
    """Calls `call(db)` every `every_s` (from one call's start to the next) until `stop_file` exists."""
    errors = Errors()
    calls: list[dict[str, Any]] = []
    with store.connect(url) as db:
        print("started", flush=True)
        while True:
            stopping = stop_file.exists()  # one last call after the stop: what came in by then is taken
            started = time.monotonic()
            try:
                detail = call(db)
                calls.append({"at": started, "ms": round((time.monotonic() - started) * 1000, 2), **detail})
            except Exception as error:  # noqa: BLE001 - counted; the loop goes on
                errors.add(role, error)
            if stopping:
                break
            while time.monotonic() < started + every_s and not stop_file.exists():  # a long pause ends at the stop
                time.sleep(min(0.05, max(0.0, started + every_s - time.monotonic())))
    write(out, {"role": role, "calls": calls, "errors": errors.items, "writes": WRITES.summary()})


def main() -> None:
    role, url, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    WRITES.install()
    args = sys.argv[4:]
    if role == "dispatch":
        campaign_id, sender, sandbox_url, spool, rate, concurrency = args
        dispatch(url, out, campaign_id, sender, sandbox_url, Path(spool), float(rate), int(concurrency))
    elif role == "ingest":
        spool, stop_file = Path(args[0]), Path(args[1])

        def ingest(db: store.Store) -> dict[str, Any]:
            result = ingest_spool(db, spool)  # its writes are timed with every other (WRITES)
            return {"files": result.files, "events": result.events_added}

        loop(role, url, out, stop_file, float(args[2]) if len(args) > 2 else 1.0, ingest)
    elif role == "report":
        campaign_id, stop_file = args[0], Path(args[1])
        kind, report = report_function()

        def one_report(db: store.Store) -> dict[str, Any]:
            rows = report(db, campaign_id)
            return {"kind": kind, "rows": len(rows)}

        loop(role, url, out, stop_file, float(args[2]) if len(args) > 2 else 2.0, one_report)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
