"""The WhatsApp sandbox's media endpoint: `POST /{version}/{phone-number-id}/media`, multipart with
`messaging_product=whatsapp`, `type` and `file`, checked as Meta does (supported type, size per kind), answered
`{"id": ...}`; `uploads` counts what was stored, for tests that check one upload per campaign."""

from __future__ import annotations

import itertools

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline.channels.whatsapp_media import MAX_BYTES, TYPES

_KIND = {mime: kind for kind, mimes in TYPES.items() for mime in mimes}
MAX_FORM_BYTES = max(MAX_BYTES.values()) + 64 * 1024


def _error(message: str, code: int = 100) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "OAuthException", "code": code}}, status_code=400)


class MediaStore:
    def __init__(self) -> None:
        self._ids = itertools.count(1013859600000001)
        self.uploads: dict[str, tuple[str, int]] = {}  # media id -> (type, bytes)

    async def upload(self, request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return _error("(#100) The file is larger than WhatsApp takes")
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        mime = str(form.get("type") or "")
        if form.get("messaging_product") != "whatsapp":
            return _error("(#100) Param messaging_product must be whatsapp")
        if upload is None or isinstance(upload, str):
            return _error("(#100) Param file is required")
        kind = _KIND.get(mime)
        if kind is None:
            return _error(f"(#100) Param type {mime!r} is not a supported media type", 131053)
        content = await upload.read()
        if not content or len(content) > MAX_BYTES[kind]:
            return _error(f"(#131053) A {kind} is 1 to {MAX_BYTES[kind]:,} bytes", 131053)
        media_id = str(next(self._ids))
        self.uploads[media_id] = (mime, len(content))
        return JSONResponse({"id": media_id})
