"""The upload page's test send: the staged audience's first rows (or chosen rows) rendered with the staged spec as
the campaign will render them, sent to the seeds typed into the page's form, kept apart from the campaign
(pipeline/dispatch/test_sends.py); a spec with experiment variants sends each variant's own template (or the one
variant the form names), as `campaign test-send` does. The masked results are kept in the staging folder for the
page to show."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline import store
from pipeline.channels import channel_for
from pipeline.dispatch.preparation import prepare_campaign
from pipeline.dispatch.seeds import SeedError, SendLimits, read_seeds_text
from pipeline.dispatch.test_sends import masked, pick_variant_rows, send_tests
from pipeline.render.personalise import stand_in
from pipeline.upload import inbox
from pipeline.upload.check import Staged

RESULTS_FILE = "test_sends.json"


def parse_rows(value: str) -> tuple[int | None, list[int] | None]:
    """The form's rows field: empty (the first 3), a count ("5"), or row numbers ("2,5,9")."""
    value = value.strip()
    if not value:
        return None, None
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise SeedError(f"rows field: {value[:40]!r} is neither a count nor row numbers (2,5,9)") from None
    if "," in value:
        if any(n < 2 for n in numbers):
            raise SeedError("rows field: audience rows are numbered from 2 (row 1 is the header)")
        return None, list(dict.fromkeys(numbers))
    return numbers[0], None


def test_send(upload: Staged, seeds_text: str, rows_text: str, *, database: str | None,
              base_url: str | None, variant_text: str = "") -> dict[str, Any]:
    """Sends, records in the store and in the staging folder; returns what the page shows. `variant_text` names one
    experiment variant to test (blank: each). Raises SeedError (and the spec / audience errors the check raises)
    for input the operator has to fix."""
    csv = upload.csv
    assert csv is not None, "a staged upload has its CSV"
    claimed = inbox.Claimed(f"upload-{upload.upload_id}", csv.name, csv, None, datetime.now(UTC))
    spec, _ = inbox.resolve_spec(claimed, upload.spec, csv)  # as the check and the watcher resolve it
    limits = SendLimits.from_env()
    seeds = read_seeds_text(seeds_text, spec.channel, limits)
    rows, row_numbers = parse_rows(rows_text)
    campaign_id = f"upload-{upload.upload_id}"  # the watcher names the campaign later; tests belong to the upload
    url = store.database_url(database)
    with tempfile.TemporaryDirectory(prefix="test-send-") as out:
        prepared = prepare_campaign(stand_in(spec), campaign_id, url, Path(out), audience=csv)
        picked = pick_variant_rows(spec, campaign_id, prepared, limits, variant=variant_text.strip() or None,
                                   rows=rows, row_numbers=row_numbers, source=csv.name)
    with store.connect(url) as db:
        results = send_tests(db, spec, campaign_id, channel_for(spec, base_url=base_url), picked, seeds, limits,
                             started_by="upload page")
    shown = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cost_usd": str(sum((r.cost_usd for r in results), Decimal(0))),
        "results": [{"row": r.row_number, "variant": r.variant, "seed": masked(r.seed), "status": r.status,
                     "provider_message_id": r.provider_message_id, "error": r.error, "cost_usd": str(r.cost_usd)}
                    for r in results],
    }
    (upload.root / RESULTS_FILE).write_text(json.dumps(shown))
    return shown


def last_results(upload: Staged) -> dict[str, Any] | None:
    path = upload.root / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else None


async def read_small_form(request: Any, *, max_bytes: int, max_fields: int) -> dict[str, str]:
    """An urlencoded form of a few short fields, read up to `max_bytes` (more is refused, not read on)."""
    from urllib.parse import parse_qs

    from pipeline.upload.stream import UploadRefused

    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise UploadRefused(413, f"the test-send form is larger than {max_bytes} bytes")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        raise UploadRefused(400, "the test-send form could not be read (too many fields, or not UTF-8)") from None
    return {name: values[0] for name, values in parsed.items()}
