"""A template's header file uploaded once per campaign: `POST /{version}/{phone-number-id}/media` (multipart:
`messaging_product=whatsapp`, `type`, `file`; answer `{"id": ...}`, docs/providers.md §1.2), its id kept in the
store's `media_uploads` by campaign and file digest, so a resumed or re-queued campaign reuses it and every
message of the campaign names the same media id. Sizes are Meta's limits per kind; a missing or oversized file
is a SpecError naming the file before anything is sent."""

from __future__ import annotations

import hashlib
import mimetypes
from datetime import UTC, datetime
from pathlib import Path

import httpx

from pipeline.channels.chatapp_params import check_media
from pipeline.spec import CampaignSpec, SpecError
from pipeline.store import Store, run

# Meta's supported media: the types a header may carry and the largest file of each kind.
MAX_BYTES = {"image": 5 * 1024 * 1024, "video": 16 * 1024 * 1024, "document": 100 * 1024 * 1024}
TYPES = {"image": frozenset({"image/jpeg", "image/png"}), "video": frozenset({"video/mp4", "video/3gpp"}),
         "document": frozenset({"application/pdf", "text/plain", "application/msword", "application/vnd.ms-excel",
                                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                                "application/vnd.ms-powerpoint",
                                "application/vnd.openxmlformats-officedocument.presentationml.presentation"})}


def _read(path: Path, kind: str) -> tuple[bytes, str]:
    where = f"template.header_media.file: {path}"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SpecError(f"{where}: cannot read: {exc.strerror}") from None
    if size > MAX_BYTES[kind]:
        raise SpecError(f"{where}: {size:,} bytes, WhatsApp takes at most {MAX_BYTES[kind]:,} for a {kind}")
    mime = mimetypes.guess_type(path.name)[0] or ""
    if mime not in TYPES[kind]:
        raise SpecError(f"{where}: type {mime or 'unknown'} is not one WhatsApp takes for a {kind}")
    return path.read_bytes(), mime


def with_uploaded_media(db: Store, spec: CampaignSpec, campaign_id: str, *, base_url: str, access_token: str,
                        transport: httpx.BaseTransport | None = None) -> CampaignSpec:
    """`spec` with its header file replaced by the media id (uploaded now, or earlier for this campaign)."""
    media = spec.template.header_media
    if media is None or media.file is None:
        return spec
    if spec.channel == "chatapp":
        check_media(spec.template)  # by link only, and says why
    if spec.channel != "whatsapp":
        raise SpecError(f"template.header_media.file: {spec.channel} takes a header by 'link' (or 'id'), not a file")
    content, mime = _read(media.file, media.format)
    digest = hashlib.sha256(content).hexdigest()
    media_id = db.scalar("SELECT media_id FROM media_uploads WHERE campaign_id = :c AND sha256 = :d",
                         c=campaign_id, d=digest)
    if media_id is None:
        version = spec.provider.api_version or "v23.0"
        url = f"{base_url.rstrip('/')}/{version}/{spec.sender}/media"
        with httpx.Client(timeout=spec.provider.timeout_s * 6, transport=transport) as client:
            answer = client.post(url, headers={"Authorization": f"Bearer {access_token}"},
                                 data={"messaging_product": "whatsapp", "type": mime},
                                 files={"file": (media.file.name, content, mime)})
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        media_id = body.get("id") if isinstance(body, dict) else None
        if answer.status_code != 200 or not isinstance(media_id, str):
            raise SpecError(f"template.header_media.file: {media.file}: upload refused: HTTP {answer.status_code} "
                            f"{str((body or {}).get('error', ''))[:200]}")
        with db.write() as conn:
            run(conn, "INSERT INTO media_uploads (campaign_id, sha256, media_id, file_name, uploaded_at) "
                      "VALUES (:c, :d, :m, :f, :at) ON CONFLICT (campaign_id, sha256) DO NOTHING",
                c=campaign_id, d=digest, m=media_id, f=media.file.name, at=datetime.now(UTC))
        media_id = db.scalar("SELECT media_id FROM media_uploads WHERE campaign_id = :c AND sha256 = :d",
                             c=campaign_id, d=digest)  # a concurrent queue's upload, if it won
    header = media.model_copy(update={"file": None, "id": str(media_id)})
    return spec.model_copy(update={"template": spec.template.model_copy(update={"header_media": header})})
