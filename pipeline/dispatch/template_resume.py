"""A campaign its template stopped continues by itself once the provider approves the template again.

Two ways, by whether the dispatcher is still alive (docs/providers.md §1.11; README "Templates and numbers"):

- **It holds.** After a stop for the template (pipeline/dispatch/template_watch.py: PAUSED, DISABLED, PENDING,
  REJECTED, or the first 132000-family answer) the dispatch task does not end at once: for up to
  CAMPAIGN_TEMPLATE_HOLD_S (default 600 s: an edit's review or a short pause) it keeps ingesting the webhook spool
  and reading the registry, and when the template is APPROVED again it dispatches what is still queued, in the same
  run (`dispatch_with_holds`). Each message still goes once: claims are transactions and unsent messages stayed
  queued. At most CAMPAIGN_TEMPLATE_RESUMES such resumptions per run.
- **The run has ended** (the hold ran out, or was 0): the run records what to run again in `template_waits` (the
  deployment and its parameters, flows/reapproval.py), and whatever next brings the APPROVED status into the registry
  — receipts ingest (`campaign receipts`, the collect-receipts deployment) or `campaign templates sync` — schedules
  a run of that deployment at once (`due_waits`, at most CAMPAIGN_MAX_REAPPROVAL_RUNS per call; the rest on the next).

"Approved again" needs evidence that the template was stopped: a stop by a 132000 answer can come before the
PAUSED webhook, and the registry saying APPROVED then only means it has not heard yet. So a hold resumes when the
registry says APPROVED and, since the pass began, it either said something else or recorded a change to another
status (both webhooks may be ingested in the same call).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pipeline.channels import templates as registry
from pipeline.dispatch.policy import DispatchResult
from pipeline.dispatch.template_watch import NUMBER_STOP, ends_not_completed
from pipeline.spec import SpecError, positive_setting
from pipeline.store import Store, run, utc

log = logging.getLogger(__name__)
HOLD_ENV, DEFAULT_HOLD_S, MAX_HOLD_S = "CAMPAIGN_TEMPLATE_HOLD_S", 600.0, 86_400.0
RESUMES_ENV, DEFAULT_RESUMES = "CAMPAIGN_TEMPLATE_RESUMES", 10
RUNS_ENV, DEFAULT_RUNS = "CAMPAIGN_MAX_REAPPROVAL_RUNS", 100
POLL_S = 0.5  # as often as the dispatcher's own watch polls


def hold_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """How long a dispatcher waits for re-approval after a template stop (0: the run ends at once)."""
    raw = environ.get(HOLD_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_HOLD_S
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_HOLD_S:
        raise SpecError(f"{HOLD_ENV}: {raw!r} is not a number of seconds from 0 to {MAX_HOLD_S:g}")
    return value


def is_template_stop(reason: str | None) -> bool:
    """A stop for the template (not for one number's lane, nor the operator, the budget or the limit)."""
    return ends_not_completed(reason) and not (reason or "").startswith(NUMBER_STOP)


@dataclass(frozen=True)
class Target:
    """The template a campaign sends, in the registry."""

    provider: str
    account: str
    name: str
    language: str

    def status(self, db: Store) -> str | None:
        t = registry.template(db, self.provider, self.name, self.language, self.account)
        return t.status if t is not None else None

    def mark(self, db: Store) -> int:
        """The newest status change recorded so far (what a later change is counted after)."""
        return int(db.scalar("""SELECT coalesce(max(change_id), 0) FROM template_changes WHERE provider = :p
                                AND account = :a AND name = :n AND language = :l AND kind = 'status'""",
                             p=self.provider, a=self.account, n=self.name, l=self.language) or 0)

    def stopped_since(self, db: Store, mark: int) -> bool:
        return bool(db.scalar("""SELECT count(*) FROM template_changes WHERE provider = :p AND account = :a
                                 AND name = :n AND language = :l AND kind = 'status' AND change_id > :m
                                 AND new_value <> :ok""", p=self.provider, a=self.account, n=self.name,
                              l=self.language, m=mark, ok=registry.SENDABLE))


def wait_for_reapproval(db: Store, target: Target, mark: int, *, ingest: Callable[[], Any] | None, hold_s: float,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> bool:
    """True once the registry has the template APPROVED again after a stop (see the module's docstring); False
    when `hold_s` passes first. Polls every POLL_S, ingesting the spool first."""
    deadline, seen = clock() + hold_s, False
    while True:
        if ingest is not None:
            ingest()
        status = target.status(db)
        seen = seen or status != registry.SENDABLE or target.stopped_since(db, mark)
        if seen and status == registry.SENDABLE:
            return True
        if clock() >= deadline:
            return False
        sleep(min(POLL_S, max(0.0, deadline - clock())))


_SUMMED = ("sent", "failed", "deferred", "retries", "throttled", "reconciled_sent", "unknown", "resent_after_timeout",
           "seconds")


def merged(first: DispatchResult, later: DispatchResult) -> DispatchResult:
    """Two passes of one run as one: counters summed, the outcome (stop, waiting, states) the later pass's."""
    errors = dict(first.errors)
    for code, n in later.errors.items():
        errors[code] = errors.get(code, 0) + n
    return replace(later, total=first.total, errors=errors,
                   **{name: getattr(first, name) + getattr(later, name) for name in _SUMMED})


def dispatch_with_holds(db: Store, run_pass: Callable[[], DispatchResult], target: Target, *,
                        ingest: Callable[[], Any] | None, hold_s: float | None = None,
                        resumes: int | None = None) -> tuple[DispatchResult, int]:
    """Runs `run_pass` (one dispatch over what is queued) and, after each stop for the template, holds for its
    re-approval and runs it again: (the passes as one result, how many times it resumed)."""
    hold_s = hold_seconds() if hold_s is None else hold_s
    resumes = positive_setting(RESUMES_ENV, DEFAULT_RESUMES) if resumes is None else resumes
    total: DispatchResult | None = None
    for resumed in range(resumes + 1):
        mark = target.mark(db)
        result = run_pass()
        total = result if total is None else merged(total, result)
        if not is_template_stop(result.stopped_reason) or resumed == resumes or hold_s <= 0:
            return total, resumed
        log.warning("template %s [%s] stopped the channel; holding up to %.0f s for its re-approval (%s)",
                    target.name, target.language, hold_s, HOLD_ENV)
        if not wait_for_reapproval(db, target, mark, ingest=ingest, hold_s=hold_s):
            return total, resumed
        log.warning("template %s [%s] is APPROVED again: the dispatcher continues with what is still queued",
                    target.name, target.language)
    raise AssertionError("unreachable")  # the loop returns on its last pass


# ---- the runs that ended: template_waits ------------------------------------------------------------------

@dataclass(frozen=True)
class Wait:
    campaign_id: str
    target: Target
    reason: str | None
    deployment_id: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    stopped_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    continued_at: datetime | None = None
    flow_run_id: str | None = None


def record_wait(db: Store, wait: Wait) -> None:
    """The campaign's latest stop (an earlier one of the same campaign is replaced)."""
    with db.write() as conn:
        run(conn, "DELETE FROM template_waits WHERE campaign_id = :c", c=wait.campaign_id)
        run(conn, """INSERT INTO template_waits (campaign_id, provider, account, name, language, reason, deployment_id,
                         parameters_json, stopped_at) VALUES (:c, :p, :a, :n, :l, :r, :d, :j, :at)""",
            c=wait.campaign_id, p=wait.target.provider, a=wait.target.account, n=wait.target.name,
            l=wait.target.language, r=wait.reason, d=wait.deployment_id,
            j=json.dumps(wait.parameters, default=str), at=wait.stopped_at)


def settle_wait(db: Store, campaign_id: str) -> int:
    """A run that was not stopped by the template: nothing waits for a re-approval any more."""
    return db.execute("DELETE FROM template_waits WHERE campaign_id = :c AND continued_at IS NULL", c=campaign_id)


_WAIT_COLUMNS = ("w.campaign_id, w.provider, w.account, w.name, w.language, w.reason, w.deployment_id, "
                 "w.parameters_json, w.stopped_at, w.continued_at, w.flow_run_id")


def _wait(r: Any) -> Wait:
    return Wait(campaign_id=r.campaign_id, target=Target(r.provider, r.account, r.name, r.language), reason=r.reason,
                deployment_id=r.deployment_id, parameters=json.loads(r.parameters_json),
                stopped_at=utc(r.stopped_at) or datetime.now(UTC), continued_at=utc(r.continued_at),
                flow_run_id=r.flow_run_id)


def waits(db: Store) -> list[Wait]:
    return [_wait(r) for r in db.rows(f"SELECT {_WAIT_COLUMNS} FROM template_waits AS w ORDER BY w.stopped_at")]


def due_waits(db: Store, campaign_id: str | None = None, limit: int | None = None) -> list[Wait]:
    """Waits whose template the registry has APPROVED now and whose continuation is not scheduled yet (a deployment
    to run), oldest first, at most `limit` (CAMPAIGN_MAX_REAPPROVAL_RUNS)."""
    limit = positive_setting(RUNS_ENV, DEFAULT_RUNS) if limit is None else limit
    rows = db.rows(f"""SELECT {_WAIT_COLUMNS} FROM template_waits AS w JOIN provider_templates AS t
                       ON t.provider = w.provider AND t.account = w.account AND t.name = w.name
                       AND t.language = w.language
                       WHERE t.status = :ok AND w.continued_at IS NULL AND w.deployment_id IS NOT NULL
                       {"AND w.campaign_id = :c" if campaign_id is not None else ""}
                       ORDER BY w.stopped_at, w.campaign_id LIMIT :n""",
                   ok=registry.SENDABLE, n=limit, **({"c": campaign_id} if campaign_id is not None else {}))
    return [_wait(r) for r in rows]


def mark_continued(db: Store, wait: Wait, flow_run_id: str) -> bool:
    """Records the continuation of this stop (not of a later one of the same campaign); False if already recorded."""
    return db.execute("""UPDATE template_waits SET continued_at = :now, flow_run_id = :f WHERE campaign_id = :c
                         AND stopped_at = :at AND continued_at IS NULL""",
                      now=datetime.now(UTC), f=flow_run_id, c=wait.campaign_id, at=wait.stopped_at) == 1
