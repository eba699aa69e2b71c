"""What must hold of a template before a campaign sends it, and before a template is submitted.

`check_spec`: the template exists in the spec's language, is APPROVED, and what the spec fills matches its
components (parameters per component, header format, button kinds and indexes); the provider's category is the
one that applies. `fallback_problem`: the language recipients get when theirs is not APPROVED is APPROVED too.
`lint`: Meta's published rules for a template's text. `submission_refusal`: the FAQ's limits on edits and deleted
names (docs/providers.md §1.11). Every finding is named (`name: detail`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.channels import templates as registry
from pipeline.spec import CampaignSpec, SpecError
from pipeline.store import Store

VARIABLE = re.compile(r"\{\{\s*(\d+)\s*\}\}")
SENDERS_UNVERIFIED, SENDERS_VERIFIED = 2, 20


class TemplateRefused(SpecError):
    """The campaign cannot send this template: nothing was sent; the message names each reason."""


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    category: str | None = None  # the category that applies (the provider's)
    notes: list[str] = field(default_factory=list)


def _component(components: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((c for c in components if str(c.get("type", "")).upper() == kind), None)


def _variables(text: str | None) -> list[int]:
    return sorted({int(n) for n in VARIABLE.findall(text or "")})


def check_spec(spec: CampaignSpec, t: registry.ProviderTemplate | None, provider: str, account: str) -> Verdict:
    v = Verdict()
    name, language = spec.template.name, spec.template.language
    if t is None:
        v.problems.append(f"template_unknown: {name} [{language}] is not a template of {provider} account "
                          f"{account or '(default)'} (after `campaign templates sync`)")
        return v
    if t.status != registry.SENDABLE:
        v.problems.append(f"template_not_approved: {name} [{language}] is {t.status}"
                          + (f" ({t.reason})" if t.reason else ""))
    comps = t.components
    header = _component(comps, "HEADER")
    fmt = str(header.get("format", "TEXT")).upper() if header else None
    media = spec.template.header_media
    if header and fmt in ("IMAGE", "VIDEO", "DOCUMENT", "LOCATION"):
        if media is None or media.format.upper() != fmt:
            v.problems.append(f"header_format: the template's header is {fmt}; the spec gives "
                              f"{media.format.upper() if media else 'no media'} (header_media)")
    elif header and fmt != "TEXT":
        v.problems.append(f"header_format: the template's header is {fmt}; the spec cannot fill it")
    elif media is not None:
        v.problems.append(f"header_format: the spec gives a {media.format} header, the template's is "
                          f"{fmt or 'absent'}")
    wanted = len(_variables(header.get("text"))) if header and fmt == "TEXT" else 0
    if wanted != len(spec.template.header):
        v.problems.append(f"header_parameters: the template's header takes {wanted}, the spec fills "
                          f"{len(spec.template.header)}")
    body = _component(comps, "BODY")
    wanted = len(_variables(body.get("text") if body else None))
    if wanted != len(spec.template.body):
        v.problems.append(f"body_parameters: the template's body takes {wanted}, the spec fills "
                          f"{len(spec.template.body)}")
    buttons = (_component(comps, "BUTTONS") or {}).get("buttons") or []
    for index, button in enumerate(spec.template.buttons):
        if index >= len(buttons):
            v.problems.append(f"button_index: the spec fills button {index}, the template has {len(buttons)}")
            continue
        kind = str(buttons[index].get("type", "")).upper()
        if kind != button.sub_type.upper():
            v.problems.append(f"button_kind: button {index} is {kind} in the template, {button.sub_type} in the spec")
    for index, button in enumerate(buttons):
        dynamic = str(button.get("type", "")).upper() == "URL" and VARIABLE.search(str(button.get("url", "")))
        if dynamic and index >= len(spec.template.buttons):
            v.problems.append(f"button_parameters: URL button {index} takes a parameter the spec does not fill")
    cards = (_component(comps, "CAROUSEL") or {}).get("cards") or []
    if len(cards) != len(spec.template.cards):
        v.problems.append(f"carousel_cards: the template has {len(cards)} cards, the spec fills "
                          f"{len(spec.template.cards)}")
    v.category = t.pipeline_category
    if v.category and v.category != spec.template.category:
        v.notes.append(f"category: the spec declares {spec.template.category}, {provider} has {v.category} "
                       f"(since {t.changed_at.isoformat(timespec='minutes') if t.changed_at else 'the last sync'}); "
                       f"{v.category} applies to consent, the frequency cap and the estimate")
    return v


def fallback_problem(db: Store, spec: CampaignSpec, provider: str, account: str) -> str | None:
    """Why the template's fallback language cannot be sent, or None. Recipients pick among the registry's APPROVED
    languages (pipeline/render/languages.py), so the only language a campaign may choose beyond them is the
    fallback: it must be APPROVED too, or every recipient without an approved language of their own is queued in a
    language the provider refuses. Checked when the registry knows the template (its languages override the
    spec's list); a fallback that is the spec's `language` is `check_spec`'s."""
    name, fallback = spec.template.name, spec.template.fallback
    if fallback == spec.template.language:
        return None
    known = [t for t in registry.templates(db, provider, name) if t.account == account]
    if not known:
        return None
    t = next((t for t in known if t.language == fallback), None)
    if t is None:
        return (f"fallback_language_unknown: {name} [{fallback}] (the fallback language) is not a template of "
                f"{provider} account {account or '(default)'}, which has {name} in "
                f"{', '.join(sorted(t.language for t in known))}")
    if t.status != registry.SENDABLE:
        return (f"fallback_language_not_approved: {name} [{fallback}] (the fallback language) is {t.status}"
                + (f" ({t.reason})" if t.reason else ""))
    return None


def senders_refusal(spec: CampaignSpec) -> str | None:
    verified = bool(spec.provider.options.get("business_verified"))
    most = SENDERS_VERIFIED if verified else SENDERS_UNVERIFIED
    if len(spec.all_senders) > most:
        return (f"too_many_senders: the spec names {len(spec.all_senders)} sending numbers; a "
                f"{'verified' if verified else 'unverified'} business may register {most}")
    return None


def checked_spec(db: Store, spec: CampaignSpec, provider: str, account: str) -> tuple[CampaignSpec, list[str]]:
    """The spec as it will send (its template's category the provider's current one) and the notes for the run;
    TemplateRefused (nothing sent) naming every problem."""
    t = registry.template(db, provider, spec.template.name, spec.template.language, account)
    verdict = check_spec(spec, t, provider, account)
    for refusal in (fallback_problem(db, spec, provider, account), senders_refusal(spec)):
        if refusal:
            verdict.problems.append(refusal)
    if verdict.problems:
        raise TemplateRefused(f"{spec.name}: not sent: " + "; ".join(verdict.problems))
    if verdict.category and verdict.category != spec.template.category:
        spec = spec.model_copy(update={"template": spec.template.model_copy(update={"category": verdict.category})})
    return spec, verdict.notes


# ---- submission ----------------------------------------------------------------------------------------------

HEADER_MAX, BODY_MAX, FOOTER_MAX, BUTTON_TEXT_MAX, BUTTONS_MAX = 60, 1024, 60, 25, 10
NAME = re.compile(r"[a-z0-9_]{1,512}")


def lint(name: str, components: list[dict[str, Any]]) -> list[str]:
    """Meta's published rules for a template (docs/providers.md §1.11), each finding named."""
    found: list[str] = []
    if not NAME.fullmatch(name):
        found.append("name: lower-case letters, digits and underscores, at most 512")
    header, body, footer = (_component(components, k) for k in ("HEADER", "BODY", "FOOTER"))
    if body is None or not str(body.get("text") or "").strip():
        found.append("body_missing: a template needs a body text")
    for kind, comp, most in (("header", header, HEADER_MAX), ("body", body, BODY_MAX), ("footer", footer, FOOTER_MAX)):
        text = str((comp or {}).get("text") or "")
        if len(text) > most:
            found.append(f"{kind}_length: {len(text)} characters, at most {most}")
    if header and len(VARIABLE.findall(str(header.get("text") or ""))) > 1:
        found.append("header_variables: a header takes at most one variable")
    if footer and VARIABLE.search(str(footer.get("text") or "")):
        found.append("footer_variable: a footer takes no variable")
    text = str((body or {}).get("text") or "").strip()
    if text:
        if re.match(r"^\{\{\s*\d+\s*\}\}", text):
            found.append("variable_at_start: the body may not start with a variable")
        if re.search(r"\{\{\s*\d+\s*\}\}[.!?]?$", text):
            found.append("variable_at_end: the body may not end with a variable")
        if re.search(r"\}\}\s*\{\{", text):
            found.append("adjacent_variables: two variables side by side")
        numbers = [int(n) for n in VARIABLE.findall(text)]
        if sorted(set(numbers)) != list(range(1, len(set(numbers)) + 1)):
            found.append("variable_numbering: variables are numbered 1, 2, 3 ... without gaps")
    buttons = (_component(components, "BUTTONS") or {}).get("buttons") or []
    if len(buttons) > BUTTONS_MAX:
        found.append(f"button_count: {len(buttons)} buttons, at most {BUTTONS_MAX}")
    kinds = [str(b.get("type", "")).upper() for b in buttons]
    if kinds.count("URL") > 2:
        found.append("button_count: at most 2 URL buttons")
    if kinds.count("PHONE_NUMBER") > 1:
        found.append("button_count: at most 1 phone-number button")
    for i, b in enumerate(buttons):
        if len(str(b.get("text") or "")) > BUTTON_TEXT_MAX:
            found.append(f"button_text_length: button {i} has {len(str(b.get('text')))} characters, at most "
                         f"{BUTTON_TEXT_MAX}")
    return found


def submission_refusal(db: Store, provider: str, account: str, name: str, language: str,
                       now: datetime | None = None) -> tuple[str | None, registry.ProviderTemplate | None]:
    """(why the FAQ's rules refuse this create or edit, or None; the template it would edit, if any)."""
    now = now or datetime.now(UTC)
    t = registry.template(db, provider, name, language, account)
    if t is not None and t.status == "DELETED":
        if t.deleted_at and now - t.deleted_at < registry.DELETED_NAME_LOCK:
            until = (t.deleted_at + registry.DELETED_NAME_LOCK).isoformat(timespec="minutes")
            return f"deleted_name_locked: {name} [{language}] was deleted; the name is locked until {until}", None
        return None, None
    if t is None:
        return None, None
    month = registry.edits_since(db, provider, name, language, now - timedelta(days=30))
    if month >= registry.EDITS_PER_30_DAYS:
        return (f"edit_limit_30_days: {name} [{language}] was edited {month} times in 30 days "
                f"(at most {registry.EDITS_PER_30_DAYS})"), t
    if t.status == registry.SENDABLE:
        day = registry.edits_since(db, provider, name, language, now - timedelta(hours=24))
        if day >= registry.EDITS_PER_DAY_APPROVED:
            return (f"edit_limit_24_hours: {name} [{language}] is APPROVED and was edited in the last 24 h "
                    f"(at most {registry.EDITS_PER_DAY_APPROVED})"), t
    return None, t
