"""The template and number registry: templates and sending numbers as the provider knows them, in the store.

Filled by `sync` from the provider's own API (Meta's `GET /{waba-id}/message_templates` and `/phone_numbers`,
Chat App's `ListChatappTemplate` + `GetChatappTemplateDetail` and `QueryChatappPhoneNumbers`: the clients are
`whatsapp_manage.py` and `chatapp_manage.py`), kept current by Meta's template and number webhooks
(`whatsapp_account_webhooks.py`, applied by receipts ingest through `apply_updates`), and read by dispatch before
the first send (`template_rules.check_spec`) and while it sends (pipeline/dispatch/template_watch.py).

Components are kept in Meta's shape (lower-case keys: `type`, `format`, `text`, `buttons[{type, text, url}]`)
whichever provider listed them, so one set of rules reads both. docs/providers.md §1.11, §3.8.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from pipeline.spec import positive_setting
from pipeline.store import Store, run, utc

# Bounds on what a sync reads (a provider answering without end must not fill memory or the store).
MAX_TEMPLATES_ENV, DEFAULT_MAX_TEMPLATES = "CAMPAIGN_MAX_SYNC_TEMPLATES", 5_000  # Meta allows 250 per WABA (§1.5)
MAX_NUMBERS_ENV, DEFAULT_MAX_NUMBERS = "CAMPAIGN_MAX_SYNC_NUMBERS", 200
PAGE_SIZE_ENV, DEFAULT_PAGE_SIZE = "CAMPAIGN_SYNC_PAGE_SIZE", 100  # Meta's `limit` tops out at 100
MAX_COMPONENTS_BYTES = 64 * 1024  # one template's components JSON (Meta's bodies are ≤ 1,024 characters)

SENDABLE = "APPROVED"
# Statuses that stop a running campaign's channel (docs/providers.md §1.11): sending them fails (132001/132015/132016).
STOPPING = frozenset({"PAUSED", "DISABLED", "PENDING", "REJECTED", "DELETED", "PENDING_DELETION", "LIMIT_EXCEEDED",
                      "IN_APPEAL", "LOCKED"})
# Quality ratings and statuses of a number that pause its own lane; YELLOW slows it (§1.8, §1.11).
NUMBER_PAUSING_QUALITY = frozenset({"RED"})
NUMBER_PAUSING_STATUS = frozenset({"FLAGGED", "RESTRICTED", "RATE_LIMITED", "BANNED", "DISCONNECTED", "OFFLINE"})
SLOW_ENV, DEFAULT_SLOW = "CAMPAIGN_YELLOW_RATE_FACTOR", 0.5
# Messaging-limit tiers (Meta §1.6, Chat App §3.8) as unique recipients per 24 h; None = unlimited.
TIER_LIMITS: dict[str, int | None] = {
    "TIER_50": 250, "TIER_250": 250, "TIER_1K": 2_000, "TIER_2K": 2_000, "TIER_10K": 10_000,
    "TIER_100K": 100_000, "TIER_UNLIMITED": None, "UNLIMITED": None,
    # Chat App's names (its phone-number reference): TIER_10 = 1K (now 2K), TIER_50 was 10K, TIER_1000 = 100K.
    "TIER_10": 2_000, "TIER_1000": 100_000,
}
# Meta's limits as numbers (business_capability_update's max_daily_conversations_per_business, -1 = unlimited; some
# answers of whatsapp_business_manager_messaging_limit) as the tier names the registry keeps. 1000 is the old 1K tier.
NUMERIC_TIERS = {250: "TIER_250", 1_000: "TIER_1K", 2_000: "TIER_2K", 10_000: "TIER_10K", 100_000: "TIER_100K",
                 -1: "TIER_UNLIMITED"}


def limit_tier(value: Any) -> str | None:
    """The registry's tier name for a limit as Meta writes it (`TIER_2K`, 2000, "2000", -1); ValueError for a number
    that is no tier, since an unknown tier would read as unlimited (TIER_LIMITS)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"messaging limit {value!r} is neither a tier name nor a number")
    text = value.strip() if isinstance(value, str) else str(value)
    if text.lstrip("-").isdigit():
        if int(text) not in NUMERIC_TIERS:
            raise ValueError(f"messaging limit {value!r} is not one of Meta's tiers")
        return NUMERIC_TIERS[int(text)]
    return text.upper()


@dataclass(frozen=True)
class Limits:
    """How much a sync reads at most, and in pages of what size (settings: the three environment variables)."""

    templates: int = DEFAULT_MAX_TEMPLATES
    numbers: int = DEFAULT_MAX_NUMBERS
    page_size: int = DEFAULT_PAGE_SIZE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Limits:
        return cls(templates=positive_setting(MAX_TEMPLATES_ENV, DEFAULT_MAX_TEMPLATES, environ),
                   numbers=positive_setting(MAX_NUMBERS_ENV, DEFAULT_MAX_NUMBERS, environ),
                   page_size=min(100, positive_setting(PAGE_SIZE_ENV, DEFAULT_PAGE_SIZE, environ)))


class SyncError(RuntimeError):
    """The provider's answer could not be used (one line: the call and why)."""


@dataclass(frozen=True)
class ProviderTemplate:
    provider: str
    account: str
    name: str
    language: str
    status: str
    category: str | None = None
    components: list[dict[str, Any]] = field(default_factory=list)
    template_id: str | None = None
    quality: str | None = None
    previous_category: str | None = None
    reason: str | None = None
    changed_at: datetime | None = None
    deleted_at: datetime | None = None

    @property
    def pipeline_category(self) -> str | None:
        """The category as the pipeline names it (marketing, utility, authentication)."""
        return self.category.lower() if self.category else None


@dataclass(frozen=True)
class ProviderNumber:
    provider: str
    account: str
    phone_number_id: str
    display_phone_number: str | None = None
    verified_name: str | None = None
    status: str | None = None
    quality_rating: str | None = None
    messaging_limit_tier: str | None = None
    code_verification_status: str | None = None
    changed_at: datetime | None = None

    @property
    def messaging_limit(self) -> int | None:
        return TIER_LIMITS.get(self.messaging_limit_tier or "", None)

    def lane_verdict(self, slow_factor: float) -> tuple[float, str | None]:
        """(rate factor, reason to pause) for this number's lane: RED / FLAGGED / RESTRICTED pause it, YELLOW
        slows it by `slow_factor`."""
        if (self.quality_rating or "").upper() in NUMBER_PAUSING_QUALITY or \
                (self.status or "").upper() in NUMBER_PAUSING_STATUS:
            return 0.0, (f"number {self.phone_number_id} is {self.quality_rating or '?'} / {self.status or '?'} "
                         "at the provider: its lane pauses, its messages stay queued")
        if (self.quality_rating or "").upper() == "YELLOW":
            return slow_factor, None
        return 1.0, None


@dataclass(frozen=True)
class Update:
    """One change the provider announced (a webhook): of a template (`name`, `language`) or of a number."""

    provider: str
    account: str
    kind: str  # status | category | quality | number_quality | number_limit (every number of the account)
    at: datetime
    name: str | None = None
    language: str | None = None
    template_id: str | None = None
    value: str | None = None  # the new status / category / quality score / number event
    previous: str | None = None
    reason: str | None = None
    phone: str | None = None  # number_quality: the display phone number
    limit_tier: str | None = None


def slow_factor(environ: Mapping[str, str] = os.environ) -> float:
    raw = environ.get(SLOW_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_SLOW
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        from pipeline.spec import SpecError

        raise SpecError(f"{SLOW_ENV}: {raw!r} is not a number in (0, 1]")
    return value


# ---- the store -------------------------------------------------------------------------------------------

def _components_json(components: list[dict[str, Any]]) -> str:
    text = json.dumps(components, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > MAX_COMPONENTS_BYTES:
        raise SyncError(f"template components of {len(text.encode()):,} bytes (at most {MAX_COMPONENTS_BYTES:,})")
    return text


def _template(row: Any) -> ProviderTemplate:
    return ProviderTemplate(
        provider=row.provider, account=row.account, name=row.name, language=row.language, status=row.status,
        category=row.category, components=json.loads(row.components_json or "[]"), template_id=row.template_id,
        quality=row.quality, previous_category=row.previous_category, reason=row.reason,
        changed_at=utc(row.changed_at), deleted_at=utc(row.deleted_at))


_TEMPLATE_COLUMNS = ("provider, account, name, language, template_id, status, category, previous_category, "
                     "components_json, quality, reason, changed_at, deleted_at")


def _record(conn: Connection, t: ProviderTemplate | Update, kind: str, old: str | None, new: str | None,
            source: str, at: datetime) -> None:
    run(conn, """INSERT INTO template_changes
                 (provider, account, name, language, kind, old_value, new_value, source, at)
                 VALUES (:p, :a, :n, :l, :k, :o, :v, :s, :at)""",
        p=t.provider, a=t.account, n=t.name, l=t.language, k=kind, o=old, v=new, s=source, at=at)


def store_templates(db: Store, provider: str, account: str, templates: Iterable[ProviderTemplate]) -> dict[str, int]:
    """The provider's list, as synced: new and changed templates written, each change of status, category or
    quality kept in template_changes; templates the provider no longer lists become DELETED (their name locked
    30 days from now, as Meta locks a deleted name). Returns counts."""
    now = datetime.now(UTC)
    counts = {"templates": 0, "changed": 0, "deleted": 0}
    with db.write() as conn:
        known = {(r.name, r.language): _template(r) for r in run(
            conn, f"SELECT {_TEMPLATE_COLUMNS} FROM provider_templates WHERE provider = :p AND account = :a",
            p=provider, a=account)}
        seen: set[tuple[str, str]] = set()
        for t in templates:
            seen.add((t.name, t.language))
            counts["templates"] += 1
            old = known.get((t.name, t.language))
            changes = [(kind, getattr(old, attr) if old else None, getattr(t, attr))
                       for kind, attr in (("status", "status"), ("category", "category"), ("quality", "quality"))]
            changes = [c for c in changes if c[1] != c[2] and (old is not None or c[0] == "status")]
            changed_at = (t.changed_at or now) if changes else (old.changed_at if old else now)
            for kind, before, after in changes:
                _record(conn, t, kind, before, after, "sync", now)
            counts["changed"] += bool(changes)
            run(conn, "DELETE FROM provider_templates WHERE provider = :p AND account = :a AND name = :n "
                      "AND language = :l", p=provider, a=account, n=t.name, l=t.language)
            run(conn, f"""INSERT INTO provider_templates ({_TEMPLATE_COLUMNS}, synced_at)
                          VALUES (:p, :a, :n, :l, :tid, :st, :cat, :prev, :comp, :q, :r, :ch, NULL, :now)""",
                p=provider, a=account, n=t.name, l=t.language, tid=t.template_id, st=t.status, cat=t.category,
                prev=t.previous_category or (old.previous_category if old else None),
                comp=_components_json(t.components), q=t.quality, r=t.reason, ch=changed_at, now=now)
        for key, old in known.items():
            if key not in seen and old.status != "DELETED":
                _record(conn, old, "status", old.status, "DELETED", "sync", now)
                run(conn, """UPDATE provider_templates SET status = 'DELETED', deleted_at = :now, changed_at = :now,
                             synced_at = :now WHERE provider = :p AND account = :a AND name = :n AND language = :l""",
                    now=now, p=provider, a=account, n=old.name, l=old.language)
                counts["deleted"] += 1
    return counts


def store_numbers(db: Store, provider: str, account: str, numbers: Iterable[ProviderNumber]) -> int:
    now = datetime.now(UTC)
    n = 0
    with db.write() as conn:
        for x in numbers:
            n += 1
            run(conn, "DELETE FROM provider_numbers WHERE provider = :p AND account = :a AND phone_number_id = :i",
                p=provider, a=account, i=x.phone_number_id)
            run(conn, """INSERT INTO provider_numbers (provider, account, phone_number_id, display_phone_number,
                             verified_name, status, quality_rating, messaging_limit_tier, code_verification_status,
                             changed_at, synced_at)
                         VALUES (:p, :a, :i, :d, :v, :s, :q, :t, :c, :now, :now)""",
                p=provider, a=account, i=x.phone_number_id, d=x.display_phone_number, v=x.verified_name, s=x.status,
                q=x.quality_rating, t=x.messaging_limit_tier, c=x.code_verification_status, now=now)
    return n


def templates(db: Store, provider: str | None = None, name: str | None = None) -> list[ProviderTemplate]:
    where, params = [], {}
    if provider:
        where.append("provider = :p")
        params["p"] = provider
    if name:
        where.append("name = :n")
        params["n"] = name
    sql = f"SELECT {_TEMPLATE_COLUMNS} FROM provider_templates" + (" WHERE " + " AND ".join(where) if where else "")
    return [_template(r) for r in db.rows(sql + " ORDER BY provider, account, name, language", **params)]


def template(db: Store, provider: str, name: str, language: str, account: str | None = None) -> ProviderTemplate | None:
    found = [t for t in templates(db, provider, name) if t.language == language and account in (None, t.account)]
    return found[0] if found else None


def approved_languages(db: Store, provider: str, account: str, name: str) -> tuple[str, ...]:
    """The languages the template exists in and may be sent in now (APPROVED), as the provider has them: which
    template language each recipient may get (pipeline/render/languages.py)."""
    return tuple(t.language for t in templates(db, provider, name) if t.account == account and t.status == "APPROVED")


def numbers(db: Store, provider: str | None = None) -> list[ProviderNumber]:
    sql = ("SELECT provider, account, phone_number_id, display_phone_number, verified_name, status, quality_rating, "
           "messaging_limit_tier, code_verification_status, changed_at FROM provider_numbers")
    rows = db.rows(sql + (" WHERE provider = :p" if provider else "") + " ORDER BY phone_number_id",
                   **({"p": provider} if provider else {}))
    return [ProviderNumber(provider=r.provider, account=r.account, phone_number_id=r.phone_number_id,
                           display_phone_number=r.display_phone_number, verified_name=r.verified_name,
                           status=r.status, quality_rating=r.quality_rating,
                           messaging_limit_tier=r.messaging_limit_tier,
                           code_verification_status=r.code_verification_status, changed_at=utc(r.changed_at))
            for r in rows]


def history(db: Store, provider: str, name: str, since: datetime | None = None) -> list[Any]:
    """The template's changes (every language), oldest first."""
    return db.rows("""SELECT language, kind, old_value, new_value, source, at FROM template_changes
                      WHERE provider = :p AND name = :n AND at >= :since ORDER BY at, change_id""",
                   p=provider, n=name, since=since or datetime(1970, 1, 1, tzinfo=UTC))


def record_submission(db: Store, t: ProviderTemplate, kind: str, at: datetime | None = None) -> None:
    """Our own create / edit / delete of a template, after the provider accepted it (the edit limits count these)."""
    at = at or datetime.now(UTC)
    with db.write() as conn:
        _record(conn, t, kind, None, t.status, "submit", at)
        run(conn, "DELETE FROM provider_templates WHERE provider = :p AND account = :a AND name = :n AND language = :l",
            p=t.provider, a=t.account, n=t.name, l=t.language)
        run(conn, f"""INSERT INTO provider_templates ({_TEMPLATE_COLUMNS}, synced_at)
                      VALUES (:p, :a, :n, :l, :tid, :st, :cat, NULL, :comp, :q, NULL, :at, :dl, NULL)""",
            p=t.provider, a=t.account, n=t.name, l=t.language, tid=t.template_id,
            st="DELETED" if kind == "delete" else t.status, cat=t.category, comp=_components_json(t.components),
            q=t.quality, at=at, dl=at if kind == "delete" else None)


# ---- webhooks -------------------------------------------------------------------------------------------

def apply_updates(conn: Connection, updates: list[Update]) -> int:
    """Applies the provider's announced changes in the caller's transaction (receipts ingest), oldest first; a
    change older than a webhook already applied of the same kind is kept in the history only (webhooks
    arrive out of order and are replayed). A template the registry has never seen is added. Returns how many
    changed the registry."""
    applied = 0
    for u in sorted(updates, key=lambda x: x.at):
        if u.kind in ("number_quality", "number_limit"):
            applied += _apply_number(conn, u)
            continue
        if u.name is None:  # Chat App names the template by its TemplateCode only (chatapp_webhooks.py)
            named = _named(conn, u)
            if named is None:
                continue  # a template the registry has never synced: the next sync brings it
            u = named
        row = run(conn, f"SELECT {_TEMPLATE_COLUMNS} FROM provider_templates WHERE provider = :p AND account = :a "
                        "AND name = :n AND language = :l", p=u.provider, a=u.account, n=u.name, l=u.language).first()
        current = _template(row) if row else None
        column = {"status": "status", "category": "category", "quality": "quality"}[u.kind]
        before = getattr(current, column) if current else None
        if before == u.value and current is not None:
            continue  # a replay, or a sync already saw it
        later = run(conn, """SELECT count(*) FROM template_changes WHERE provider = :p AND account = :a AND name = :n
                             AND language = :l AND kind = :k AND source = 'webhook' AND at > :at""",
                    p=u.provider, a=u.account, n=u.name, l=u.language, k=u.kind, at=u.at).scalar()
        _record(conn, u, u.kind, before, u.value, "webhook", u.at)
        if later:
            continue  # an older change arriving after a newer one of the same kind: history only
        if current is None:
            run(conn, f"""INSERT INTO provider_templates ({_TEMPLATE_COLUMNS}, synced_at)
                          VALUES (:p, :a, :n, :l, :tid, :st, :cat, NULL, '[]', :q, :r, :at, NULL, NULL)""",
                p=u.provider, a=u.account, n=u.name, l=u.language, tid=u.template_id,
                st=u.value if u.kind == "status" else "UNKNOWN", cat=u.value if u.kind == "category" else None,
                q=u.value if u.kind == "quality" else None, r=u.reason, at=u.at)
        else:
            extra = ", previous_category = :prev" if u.kind == "category" else ""
            run(conn, f"""UPDATE provider_templates SET {column} = :v, changed_at = :at, reason = :r{extra}
                          WHERE provider = :p AND account = :a AND name = :n AND language = :l""",
                v=u.value, at=u.at, r=u.reason if u.kind == "status" else current.reason, p=u.provider,
                a=u.account, n=u.name, l=u.language, **({"prev": u.previous or before} if u.kind == "category" else {}))
        applied += 1
    return applied


def _named(conn: Connection, u: Update) -> Update | None:
    """The update with the registry's account and name for its template id and language, or None."""
    row = run(conn, """SELECT account, name FROM provider_templates WHERE provider = :p AND template_id = :t
                       AND language = :l ORDER BY account LIMIT 1""", p=u.provider, t=u.template_id,
              l=u.language).first()
    return replace(u, account=row.account, name=row.name) if row else None


# Meta's phone_number_quality_update events (§1.11) as the number's (quality, status). UPGRADE and DOWNGRADE are
# messaging-limit changes (their current_limit is the new tier), not quality: a lower limit is enforced by the
# dispatcher's messaging-limit guard, and since Oct 2025 a drop in quality no longer lowers the limit (§1.8).
_NUMBER_EVENTS = {"FLAGGED": ("RED", "FLAGGED"), "UNFLAGGED": ("GREEN", "CONNECTED"),
                  "DOWNGRADE": (None, None), "UPGRADE": (None, None), "ONBOARDING": (None, None),
                  "THROUGHPUT_UPGRADE": (None, None), "RED": ("RED", None), "YELLOW": ("YELLOW", None),
                  "GREEN": ("GREEN", None)}


def _digits(phone: str | None) -> str:
    return "".join(ch for ch in (phone or "") if ch.isdigit())


def _apply_number(conn: Connection, u: Update) -> int:
    """A number event to the number it names; a number_limit (the portfolio's limit, shared by all its numbers since
    Oct 2025, §1.6) to every number of the account."""
    quality, status = (None, None) if u.kind == "number_limit" else \
        _NUMBER_EVENTS.get((u.value or "").upper(), (None, None))
    rows = [r for r in run(conn, "SELECT phone_number_id, display_phone_number, changed_at, quality_rating, status, "
                                 "messaging_limit_tier FROM provider_numbers WHERE provider = :p AND account = :a",
                           p=u.provider, a=u.account)
            if u.kind == "number_limit" or _digits(r.display_phone_number) == _digits(u.phone)]
    n = 0
    for r in rows:
        known = utc(r.changed_at)
        if known is not None and known.replace(microsecond=0) > u.at:  # Meta's times are whole seconds
            continue  # the number changed (or was synced) after this event
        if (quality or r.quality_rating, status or r.status, u.limit_tier or r.messaging_limit_tier) == (
                r.quality_rating, r.status, r.messaging_limit_tier):
            continue  # a replay: nothing to change
        run(conn, """UPDATE provider_numbers SET quality_rating = coalesce(:q, quality_rating),
                         status = coalesce(:s, status), messaging_limit_tier = coalesce(:t, messaging_limit_tier),
                         changed_at = :at WHERE provider = :p AND account = :a AND phone_number_id = :i""",
            q=quality, s=status, t=u.limit_tier, at=u.at, p=u.provider, a=u.account, i=r.phone_number_id)
        n += 1
    return n


# ---- the FAQ's edit rules ---------------------------------------------------------------------------------

EDITS_PER_30_DAYS = 10
EDITS_PER_DAY_APPROVED = 1
DELETED_NAME_LOCK = timedelta(days=30)


def edits_since(db: Store, provider: str, name: str, language: str, since: datetime) -> int:
    return int(db.scalar("""SELECT count(*) FROM template_changes WHERE provider = :p AND name = :n AND language = :l
                            AND kind = 'edit' AND at >= :since""", p=provider, n=name, l=language, since=since) or 0)


def edits_left(db: Store, t: ProviderTemplate, now: datetime | None = None) -> int:
    """Edits still allowed in the rolling 30 days (and, for an APPROVED template, in the last 24 h)."""
    now = now or datetime.now(UTC)
    month = EDITS_PER_30_DAYS - edits_since(db, t.provider, t.name, t.language, now - timedelta(days=30))
    if t.status == SENDABLE:
        day = EDITS_PER_DAY_APPROVED - edits_since(db, t.provider, t.name, t.language, now - timedelta(hours=24))
        month = min(month, day)
    return max(0, month)
