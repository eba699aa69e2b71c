"""Free-form WhatsApp messages inside the 24-hour customer-service window (docs/providers.md §1.2, §1.10): text,
image, video, document, interactive reply buttons and lists, from the spec's `template.session` and each
recipient's rendered text. Which recipients have an open window is decided before queueing
(pipeline/audience/windows.py `session_window`); their params carry the `session` mark this module reads."""

from __future__ import annotations

from typing import Any

from pipeline.spec import SessionMessage

SESSION_MARK = "session"  # params key of a message queued as a free-form one


def is_session(params: dict[str, Any]) -> bool:
    return bool(params.get(SESSION_MARK))


def session_body(session: SessionMessage, text: str) -> tuple[str, dict[str, Any]]:
    """(Meta's message `type`, its object) for one recipient: `{"body": text}` for text, `{"link", "caption"}` for
    media, `{"type": "button"|"list", "body", "action"}` for interactive messages."""
    if session.kind == "text":
        return "text", {"preview_url": False, "body": text}
    if session.kind in ("image", "video", "document"):
        media: dict[str, Any] = {"link": session.link, "caption": text}
        if session.filename:
            media["filename"] = session.filename
        return session.kind, media
    if session.kind == "buttons":
        action: dict[str, Any] = {"buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}}
                                              for b in session.buttons]}
        return "interactive", {"type": "button", "body": {"text": text}, "action": action}
    sections = [{**({"title": s.title} if s.title else {}),
                 "rows": [r.model_dump(exclude_none=True) for r in s.rows]} for s in session.sections]
    return "interactive", {"type": "list", "body": {"text": text},
                           "action": {"button": session.list_button, "sections": sections}}
