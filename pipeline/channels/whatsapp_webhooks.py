"""WhatsApp Cloud API webhooks: the X-Hub-Signature-256 check and Meta's envelope -> Receipts/Inbounds.

Pure functions over raw bytes: the receiver verifies, the receipts stage parses (much later, from the spool).
`parse_webhook` is the reference parser, one body at a time; `whatsapp_bulk.sql` (used by
pipeline.receipts.ingest for large spools) must give identical rows, so two choices here follow DuckDB's
JSON reader: of duplicate keys the first wins, and `raw_json` is the object re-serialised compactly
with its members in their original order (duplicates kept), which is what DuckDB writes back.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.records import Inbound, Receipt

PROVIDER = "whatsapp"
SIGNATURE_HEADER = "X-Hub-Signature-256"
_KNOWN_STATUSES = {"sent", "delivered", "read", "failed"}
# `played` is the first play of a voice message: the recipient has opened it, so it ranks as read.
_STATUS_ALIASES = {"played": "read"}
# Meta's marketing opt-outs and opt-ins (docs/providers.md §1.9): a change of this field, parsed by `parse_preferences`.
PREFERENCES_FIELD = "user_preferences"
# A spool line can hold such a change only if it names the field: the cheap test before parsing it twice.
PREFERENCES_MARKER = f'"{PREFERENCES_FIELD}"'.encode()


class MalformedPayload(ValueError):
    """The body is not a WhatsApp webhook envelope we understand; ingest quarantines it."""


def sign(raw_body: bytes, app_secret: str) -> str:
    """The header value Meta would send for `raw_body` (used by the sandbox and the tests)."""
    return "sha256=" + hmac.digest(app_secret.encode("utf-8"), raw_body, "sha256").hex()


def verify_signature(raw_body: bytes, header_value: str | None, app_secret: str) -> bool:
    """True when `header_value` is `sha256=<hex HMAC-SHA256 of the raw bytes>`; compared in constant time.

    Hashes the bytes as received: re-serialised JSON would not match.
    """
    if not header_value or not app_secret:
        return False
    scheme, _, received = header_value.strip().partition("=")
    if scheme.lower() != "sha256" or not received:
        return False
    # hmac.digest is OpenSSL's one-shot HMAC: no Python HMAC object per request on the hot path.
    expected = hmac.digest(app_secret.encode("utf-8"), raw_body, "sha256").hex()
    # compare_digest on bytes: it refuses non-ASCII str, and a forged header may contain anything.
    return hmac.compare_digest(expected.encode("ascii"), received.strip().lower().encode("utf-8"))


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise MalformedPayload(f"{where}: expected a non-empty string")


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def _timestamp(value: Any, where: str) -> datetime:
    """Meta sends unix seconds as a string ("1750030073")."""
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise MalformedPayload(f"{where}: timestamp {value!r} is not unix seconds") from None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedPayload(f"{where}: timestamp {value!r} is out of range") from None


class _JSONObject(dict):  # type: ignore[type-arg]
    """A parsed JSON object: lookups see the first of duplicate keys; `pairs` keeps every member."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(reversed(pairs))  # inserted last-to-first, so the first occurrence wins
        self.pairs = pairs


class _JSONFloat(float):
    """A JSON number with a fraction or exponent (or NaN/Infinity), remembering how it was written."""

    text: str

    def __new__(cls, text: str) -> _JSONFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_JSONObject, parse_float=_JSONFloat, parse_constant=_JSONFloat)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _float_text(value: float, text: str) -> str:
    """A float as DuckDB's JSON writer (yyjson) prints it: shortest digits, plain notation for decimal
    exponents -6 < n <= 21 (integers get ".0"), else `<d>[.<ddd>]e<n-1>`; values a double cannot hold
    (NaN, Infinity, 1e400) stay as written."""
    if value != value or value in (float("inf"), float("-inf")):
        return text
    sign, r = ("-", repr(value)[1:]) if repr(value).startswith("-") else ("", repr(value))
    mantissa, _, exponent = r.partition("e")
    whole, _, fraction = mantissa.partition(".")
    if exponent:
        digits, point = (whole + fraction).rstrip("0"), int(exponent) + 1
    elif whole != "0":
        digits, point = (whole + fraction).rstrip("0"), len(whole)
    else:
        digits = fraction.lstrip("0").rstrip("0")
        point = -(len(fraction) - len(fraction.lstrip("0")))
    if not digits:
        return sign + "0.0"
    k = len(digits)
    if k <= point <= 21:
        out = digits + "0" * (point - k) + ".0"
    elif 0 < point <= 21:
        out = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        out = "0." + "0" * -point + digits
    else:
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + f"e{point - 1}"
    return sign + out


def _dumps(value: Any) -> str:
    """Compact JSON exactly as DuckDB writes a parsed value back (member order and duplicates kept)."""
    if isinstance(value, _JSONObject):
        return "{" + ",".join(f"{_dumps(k)}:{_dumps(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    if isinstance(value, _JSONFloat):
        return _float_text(value, value.text)
    return json.dumps(value, ensure_ascii=False)


def _raw_json(value: Any, where: str) -> str:
    try:
        text = _dumps(value)
    except RecursionError:  # hundreds of levels deep: no status is; never let it stop an ingest
        raise MalformedPayload(f"{where}: nested too deeply") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape ("\\ud800"): not text any database can store
        raise MalformedPayload(f"{where}: string is not valid Unicode") from None
    return text


def _receipt(status_obj: Any, where: str) -> Receipt:
    s = _obj(status_obj, where)
    raw_status = _str(s.get("status"), f"{where}.status")
    status = _STATUS_ALIASES.get(raw_status, raw_status)
    if status not in _KNOWN_STATUSES:
        raise MalformedPayload(f"{where}.status: unknown status {raw_status!r}")
    errors = _list(s.get("errors"), f"{where}.errors")
    first_error = _obj(errors[0], f"{where}.errors[0]") if errors else {}
    pricing = s.get("pricing") or {}
    pricing = _obj(pricing, f"{where}.pricing")
    callback = s.get("biz_opaque_callback_data")
    return Receipt(
        provider=PROVIDER,
        provider_message_id=_str(s.get("id"), f"{where}.id"),
        message_id=callback if isinstance(callback, str) and callback else None,
        status=status,  # type: ignore[arg-type]  # checked against _KNOWN_STATUSES above
        error_code=_opt_str(first_error.get("code")),
        error_title=_opt_str(first_error.get("title") or first_error.get("message")),
        category=_opt_str(pricing.get("category")),
        pricing_type=_opt_str(pricing.get("type")),
        recipient=_opt_str(s.get("recipient_id")),
        occurred_at=_timestamp(s.get("timestamp"), f"{where}.timestamp"),
        raw_json=_raw_json(s, where),
    )


def _inbound_text(m: dict[str, Any]) -> str | None:
    """The words a recipient sent: a text body, a tapped quick-reply button, or an interactive reply."""
    kind = m.get("type")
    body = m.get(kind) if isinstance(kind, str) else None
    if not isinstance(body, dict):
        body = {}
    if kind == "text":
        return _opt_str(body.get("body"))
    if kind == "button":
        return _opt_str(body.get("text") or body.get("payload"))
    if kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply") or {}
        return _opt_str(reply.get("title")) if isinstance(reply, dict) else None
    return None


def _scalar(value: Any) -> str | None:
    """A payload or id as text when it is a string or a number; anything else (a nested object) names nothing."""
    return str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None


def _inbound_payload(m: dict[str, Any]) -> str | None:
    """A tapped button's payload: a template quick reply's `button.payload`, an interactive reply's id."""
    body = m.get(m.get("type")) if isinstance(m.get("type"), str) else None
    if not isinstance(body, dict):
        return None
    if m.get("type") == "button":
        return _scalar(body.get("payload"))
    reply = body.get("button_reply") or body.get("list_reply")
    return _scalar(reply.get("id")) if isinstance(reply, dict) else None


def _inbound(message_obj: Any, where: str) -> Inbound:
    m = _obj(message_obj, where)
    _str(m.get("id"), f"{where}.id")  # the provider message id: ingest keys and cites it
    context = m.get("context")
    return Inbound(
        provider=PROVIDER,
        sender=_str(m.get("from"), f"{where}.from"),
        text=_inbound_text(m),
        occurred_at=_timestamp(m.get("timestamp"), f"{where}.timestamp"),
        raw_json=_raw_json(m, where),
        payload=_inbound_payload(m),
        # The message replied to or whose button was tapped: Meta's wamid of our send.
        context_id=_scalar(context.get("id")) if isinstance(context, dict) else None,
    )


def _changes(raw_body: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, change) for every change of Meta's envelope; anything else raises MalformedPayload."""
    try:
        doc = _loads(raw_body)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MalformedPayload(f"not JSON: {exc}") from None
    doc = _obj(doc, "body")
    if doc.get("object") != "whatsapp_business_account":
        raise MalformedPayload(f"object: expected 'whatsapp_business_account', got {doc.get('object')!r}")
    entries = doc.get("entry")
    if not isinstance(entries, list):
        raise MalformedPayload("entry: expected a list")
    for i, entry in enumerate(entries):
        changes = _list(_obj(entry, f"entry[{i}]").get("changes"), f"entry[{i}].changes")
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            yield where, _obj(change, where)


def parse_webhook(raw_body: bytes) -> tuple[list[Receipt], list[Inbound]]:
    """Every status and inbound message in one webhook POST body.

    Changes of other fields (template status updates, user preferences, ...) carry neither and
    yield nothing here (`parse_preferences` reads the latter). Anything that is not Meta's envelope
    raises MalformedPayload.
    """
    receipts: list[Receipt] = []
    inbound: list[Inbound] = []
    for where, change in _changes(raw_body):
        if change.get("field", "messages") != "messages":
            continue
        value = _obj(change.get("value"), f"{where}.value")
        for k, status in enumerate(_list(value.get("statuses"), f"{where}.value.statuses")):
            receipts.append(_receipt(status, f"{where}.value.statuses[{k}]"))
        for k, message in enumerate(_list(value.get("messages"), f"{where}.value.messages")):
            inbound.append(_inbound(message, f"{where}.value.messages[{k}]"))
    return receipts, inbound


@dataclass(frozen=True)
class Preference:
    """A user's marketing preference change: `value` is "stop" or "resume", `category` "marketing_messages"
    (the only one Meta sends today; others are kept as given, for the caller to ignore)."""

    wa_id: str
    category: str
    value: str
    occurred_at: datetime


def parse_preferences(raw_body: bytes) -> list[Preference]:
    """Every entry of the `user_preferences` changes in one webhook POST body (none when it has no such change).

    Malformed entries raise MalformedPayload: a lost opt-out must show up in the quarantine, not vanish.
    """
    found: list[Preference] = []
    for where, change in _changes(raw_body):
        if change.get("field") != PREFERENCES_FIELD:
            continue
        value = _obj(change.get("value"), f"{where}.value")
        for k, item in enumerate(_list(value.get(PREFERENCES_FIELD), f"{where}.value.{PREFERENCES_FIELD}")):
            at = f"{where}.value.{PREFERENCES_FIELD}[{k}]"
            p = _obj(item, at)
            found.append(Preference(
                wa_id=_str(p.get("wa_id"), f"{at}.wa_id"), category=_str(p.get("category"), f"{at}.category"),
                value=_str(p.get("value"), f"{at}.value"),
                occurred_at=_timestamp(p.get("timestamp"), f"{at}.timestamp"),
            ))
    return found


def inbound_message_id(item: Inbound) -> str | None:
    """The provider's id of an inbound message (kept in its raw JSON; Inbound has no field for it)."""
    try:
        raw = _loads(item.raw_json)
        value = raw.get("id") or raw.get("MessageId")  # Meta's wamid; Chat App's MessageId
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


# ---- the bulk path: the same parse in DuckDB SQL, for spool files of v2 records -----------------
# A line is parsed here only when all of it is plain: a well-formed v2 whatsapp record whose body is
# Meta's envelope with statuses only, each value read of a JSON type `parse_webhook` maps the same
# way, and no trailing commas (DuckDB's reader accepts them, Python's does not).
# Every other line (inbound messages, user preference changes, other providers, JSON records, anything
# odd or malformed) is marked `ok = false` or never matched, and pipeline.receipts.ingest hands it, whole,
# to the reference parser (pipeline.receipts.staging).
# Known gap: a status nested hundreds of levels deep is quarantined by parse_webhook (recursion
# limit) but would be parsed here; Meta sends nothing like it.
# A level that cannot be trusted unnests to a single NULL marker, so the marker survives to the end.
_ENVELOPE = ('{"object":"VARCHAR","entry":[{"changes":[{"field":"JSON","value":'
             '{"statuses":["JSON"],"messages":"JSON"}}]}]}')
_TRAILING_COMMA = r",[ \t\r]*[\]}]"  # DuckDB's reader accepts `[1,]`; Python's does not
_STAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z"
# The lines the bulk SQL looks at; the rest go to parse_webhook.
BULK_CANDIDATE = "starts_with(line, 'v2 ') AND substr(line, 31, 10) = ' whatsapp '"


# Each status is read once, into the JSON text of the members we map (DuckDB writes JSON null and a
# missing member alike as NULL, which parse_webhook treats alike too). The first character of a
# JSON text is its type; a string without a backslash is its text between the quotes.
_STATUS = ('{"id":"JSON","status":"JSON","timestamp":"JSON","recipient_id":"JSON",'
           '"biz_opaque_callback_data":"JSON","pricing":"JSON","errors":"JSON"}')
_PRICING = '{"category":"JSON","type":"JSON"}'
_ERROR = '{"code":"JSON","title":"JSON","message":"JSON"}'


def _as_text(structure: str) -> str:
    """The SQL type with each JSON member as VARCHAR (JSON texts compared and sliced as plain text)."""
    members = json.loads(structure)
    return "STRUCT(" + ", ".join(f'"{name}" VARCHAR' for name in members) + ")"


def _sql_is_str(x: str) -> str:
    return f"starts_with({x}, '\"')"


def _sql_str(x: str) -> str:
    """The value of a JSON string text (NULL for NULL)."""
    return (f"CASE WHEN NOT contains({x}, '\\') THEN substr({x}, 2, length({x}) - 2)"
            f" ELSE json_extract_string({x}, '$') END")


def _sql_null_or_str(x: str) -> str:
    return f"({x} IS NULL OR {_sql_is_str(x)})"


_STATUS_OK = " AND ".join([
    "starts_with(s, '{')", _sql_is_str("j.id"), "j.id <> '\"\"'",
    "j.status IN ('\"sent\"', '\"delivered\"', '\"read\"', '\"failed\"', '\"played\"')",
    "regexp_full_match(j.timestamp, '\"[0-9]{1,11}\"|[0-9]{1,11}')",
    _sql_null_or_str("j.recipient_id"), "(j.pricing IS NULL OR starts_with(j.pricing, '{'))",
    _sql_null_or_str("p.category"), _sql_null_or_str("p.type"),
    # errors: absent, null, or a list whose first element (if any) is an object
    "(j.errors IS NULL OR j.errors = '[]' OR starts_with(errors[1], '{'))",
    "(e.code IS NULL OR starts_with(e.code, '\"') OR regexp_full_match(e.code, '-?[0-9]+'))",
    _sql_null_or_str("e.title"), _sql_null_or_str("e.message"),
])

_BULK_SQL = f"""
WITH docs AS (
    SELECT file_idx, line_no,
           CASE WHEN regexp_full_match(substr(line, 4, 27), '{_STAMP}')
                THEN try_cast(substr(line, 4, 27) AS TIMESTAMPTZ) END AS received_at,
           try(json_transform({{BODY}}, '{_ENVELOPE}')) AS doc,
           regexp_matches({{BODY}}, '{_TRAILING_COMMA}') AS risky
    FROM {{LINES}} WHERE {BULK_CANDIDATE}
), lines AS (
    SELECT file_idx, line_no, received_at, doc,
           coalesce(received_at IS NULL OR risky OR doc.object <> 'whatsapp_business_account'
                    OR doc.entry IS NULL, true) AS bad
    FROM docs
), entries AS (
    SELECT file_idx, line_no, received_at, bad,
           unnest(CASE WHEN bad THEN [NULL] ELSE doc.entry END) AS e,
           generate_subscripts(CASE WHEN bad THEN [NULL] ELSE doc.entry END, 1) AS e_idx
    FROM lines
), changes AS (
    SELECT file_idx, line_no, received_at, e_idx, b AS bad,
           unnest(CASE WHEN b THEN [NULL] ELSE e.changes END) AS c,
           generate_subscripts(CASE WHEN b THEN [NULL] ELSE e.changes END, 1) AS c_idx
    FROM (SELECT *, bad OR e IS NULL OR e.changes IS NULL AS b FROM entries)
), kept AS (
    -- Changes of other fields (template updates, ...) carry no statuses: skipped, as parse_webhook does. A user's
    -- preference change (an opt-out to stage) sends its line to the reference parser (DuckDB writes JSON
    -- texts back unescaped, so a field name written with escapes matches too).
    SELECT *, coalesce(bad OR c.field IS NULL OR c.field = '"{PREFERENCES_FIELD}"' OR (c.field = '"messages"' AND (
                  c.value IS NULL OR c.value.statuses IS NULL OR coalesce(c.value.messages, '[]') <> '[]')), true) AS b
    FROM changes
), statuses AS (
    SELECT file_idx, line_no, received_at, e_idx, c_idx, b AS bad,
           unnest(CASE WHEN b THEN [NULL] ELSE c.value.statuses END) AS s,
           generate_subscripts(CASE WHEN b THEN [NULL] ELSE c.value.statuses END, 1) AS s_idx
    FROM kept WHERE b OR c.field = '"messages"'
), fields AS (
    SELECT *, try(json_transform(s, '{_STATUS}'))::{_as_text(_STATUS)} AS j FROM statuses
), lists AS (
    SELECT *,
           CASE WHEN starts_with(j.errors, '[') THEN try(json_transform(j.errors, '["JSON"]'))::VARCHAR[] END AS errors
    FROM fields
), nested AS (
    -- pricing on about one status in three, errors only on failed ones: parsed only where present
    SELECT *,
           CASE WHEN starts_with(j.pricing, '{{')
                THEN try(json_transform(j.pricing, '{_PRICING}'))::{_as_text(_PRICING)} END AS p,
           CASE WHEN starts_with(errors[1], '{{')
                THEN try(json_transform(errors[1], '{_ERROR}'))::{_as_text(_ERROR)} END AS e
    FROM lists
), checked AS (
    SELECT *, coalesce(NOT bad AND j IS NOT NULL AND {_STATUS_OK}, false) AS ok FROM nested
)
SELECT file_idx, line_no, (e_idx * 1000000 + c_idx) * 1000000 + s_idx AS pos, ok,
       'whatsapp' AS provider, {_sql_str("j.id")} AS provider_message_id,
       CASE WHEN {_sql_is_str("j.biz_opaque_callback_data")} AND j.biz_opaque_callback_data <> '""'
            THEN {_sql_str("j.biz_opaque_callback_data")} END AS message_id,
       CASE j.status WHEN '"played"' THEN 'read' ELSE {_sql_str("j.status")} END AS status,
       CASE WHEN {_sql_is_str("e.code")} THEN {_sql_str("e.code")} ELSE e.code END AS error_code,
       CASE WHEN {_sql_is_str("e.title")} AND e.title <> '""' THEN {_sql_str("e.title")}
            ELSE {_sql_str("e.message")} END AS error_title,
       {_sql_str("p.category")} AS category, {_sql_str("p.type")} AS pricing_type,
       {_sql_str("j.recipient_id")} AS recipient,
       to_timestamp(CASE WHEN ok THEN try_cast(trim(j.timestamp, '"') AS BIGINT) END) AS occurred_at,
       received_at, s AS raw_json
FROM checked
"""


def bulk_statuses_sql(lines: str, body: str = "substr(line, 41)") -> str:
    """A query over the relation `lines` (file_idx, line_no, line): one row per status of each line
    matching BULK_CANDIDATE (`pos` orders a line's statuses), with `ok = false` rows marking the lines
    that must go to `parse_webhook` instead; event columns as pipeline.receipts.ingest stages them.

    `body` is the SQL of a candidate's body (after its 40-character header); a relation that has
    it as a column (pipeline.receipts.spool.lines_table's `body`) spares a character-counting substr per line.
    """
    return _BULK_SQL.replace("{LINES}", lines).replace("{BODY}", body)
