"""Message kinds beyond text for Messenger, Instagram and Viber, from the spec's `template.session` (the same
SessionMessage WhatsApp sends inside its window) and each recipient's rendered text (docs/providers.md §4, §5):

- Messenger: an image, video or file attachment by URL, or text with up to 13 quick replies;
- Instagram: an image or video attachment, or text with quick replies (Instagram takes no file attachments);
- Viber (REST bot API): a picture with its text (at most 768 characters), or text with a keyboard of reply buttons.

A kind the channel does not offer is a SpecError before anything is queued (`check_kinds`).
"""

from __future__ import annotations

from typing import Any

from pipeline.spec import SessionMessage, SpecError

KINDS = {"messenger": frozenset({"text", "image", "video", "document", "buttons"}),
         "instagram": frozenset({"text", "image", "video", "buttons"}),
         "viber": frozenset({"text", "image", "buttons"})}
_ATTACHMENT = {"image": "image", "video": "video", "document": "file"}
VIBER_PICTURE_TEXT = 768


def check_kinds(channel: str, session: SessionMessage | None) -> None:
    if session is not None and session.kind not in KINDS[channel]:
        raise SpecError(f"template.session.kind: {channel} sends {sorted(KINDS[channel])}, not {session.kind!r}")


def meta_message(session: SessionMessage, text: str) -> dict[str, Any]:
    """The Send API `message` object (Messenger and Instagram)."""
    if session.kind in _ATTACHMENT:
        return {"attachment": {"type": _ATTACHMENT[session.kind],
                               "payload": {"url": session.link, "is_reusable": True}}}
    message: dict[str, Any] = {"text": text}
    if session.kind == "buttons":
        message["quick_replies"] = [{"content_type": "text", "title": b.title, "payload": b.id}
                                    for b in session.buttons]
    return message


def viber_message(session: SessionMessage, text: str) -> dict[str, Any]:
    """The Viber `send_message` fields beyond receiver and sender: a picture, or text with a keyboard."""
    if session.kind == "image":
        if len(text) > VIBER_PICTURE_TEXT:
            raise ValueError(f"viber: a picture's text is {len(text)} characters, the limit is {VIBER_PICTURE_TEXT}")
        return {"type": "picture", "text": text, "media": session.link}
    fields: dict[str, Any] = {"type": "text", "text": text}
    if session.kind == "buttons":
        fields["keyboard"] = {"Type": "keyboard", "DefaultHeight": False, "Buttons": [
            {"ActionType": "reply", "ActionBody": b.id, "Text": b.title, "Columns": 6 // len(session.buttons)}
            for b in session.buttons]}
    return fields
