"""The upload page's test-send button: the uploaded audience's rows rendered with the chosen spec, sent over the
WhatsApp sandbox on loopback to the seeds typed into the form, behind the page's token, kept apart, bounded."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline.sandbox.whatsapp import create_app
from pipeline.store import Store
from tests.helpers.channels import serving
from tests.helpers.upload import Page, audience, serve_page, upload_config, visible_text
from tests.helpers.whatsapp import TOKEN as WA_TOKEN
from tests.helpers.whatsapp import config as sandbox_config

SEEDS = "+33612365637\n+447911123456\n"


@pytest.fixture
def stack(db: Store, tmp_path: Path, specs: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Page, object]]:
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", WA_TOKEN)
    with serving(create_app, sandbox_config()) as (base, sandbox):
        config = upload_config(tmp_path, specs, database=str(db.path) if db.path else db.url,
                               provider_base_url=base)
        yield from ((page, sandbox) for page in serve_page(config, tmp_path))


def _uploaded(page: Page) -> str:
    answer = page.upload(audience(12))
    assert answer.status_code == 200, answer.text
    assert 'id="test-send-form"' in answer.text  # the button is on the check's page
    return str(answer.url).rsplit("/", 1)[1]


def test_the_button_sends_the_rows_to_the_seeds_kept_apart(db: Store, stack) -> None:
    page, sandbox = stack
    upload_id = _uploaded(page)
    # Behind the token: without the session cookie or the token, nothing is sent.
    refused = httpx.post(f"{page.url}/upload/{upload_id}/test-send", data={"seeds": SEEDS})
    assert refused.status_code == 401 and sandbox.accepted == 0
    answer = page.client.post(f"/upload/{upload_id}/test-send", data={"seeds": SEEDS, "rows": "2"})
    assert answer.status_code == 200, answer.text
    assert sorted(to for _, to, *_ in sandbox.messages) == ["33612365637", "33612365637", "447911123456",
                                                             "447911123456"]
    text = visible_text(answer.text)
    for wamid, *_ in sandbox.messages:
        assert wamid in text
    assert "+33******637" in text and "+44*******456" in text and "33612365637" not in answer.text
    assert re.search(r"Test cost USD 0\.\d+ \(apart from the campaign\)", text)
    with db.read() as conn:
        rows = conn.exec_driver_sql("SELECT campaign_id, row_number, payload_json FROM test_sends").all()
        outbox = conn.exec_driver_sql("SELECT count(*) FROM outbox").scalar()
    assert outbox == 0 and {r[0] for r in rows} == {f"upload-{upload_id}"}
    # The uploaded file's first two sendable rows, rendered with the spec's template and variables.
    names = {json.loads(p)["template"]["components"][0]["parameters"][0]["text"] for _, _, p in rows}
    first_names = [line.split(",")[2] for line in audience(12).splitlines()[1:]]
    assert names <= set(first_names) and len(names) == 2


@pytest.mark.parametrize(("seeds", "rows", "status", "says"), [
    ("".join(f"+3361236560{i}\n" for i in range(11)), "", 422, "more than 10 seeds"),
    ("+33612365637\nnot-a-phone\n", "", 422, "seeds field: row 2, field seed: not a phone number"),
    (SEEDS, "11", 422, "11 rows asked, at most 10"),
    ("+33612365637\n" * 2000, "", 413, "the test-send form is larger than"),
])
def test_bounds(stack, seeds: str, rows: str, status: int, says: str) -> None:
    page, sandbox = stack
    upload_id = _uploaded(page)
    answer = page.client.post(f"/upload/{upload_id}/test-send", data={"seeds": seeds, "rows": rows})
    assert answer.status_code == status and says in visible_text(answer.text), answer.text
    assert sandbox.accepted == 0


def _variants_spec(specs: Path) -> str:
    """welcome.yaml with an experiment: variant a its own template, b another filling the body in another order."""
    spec = yaml.safe_load((specs / "welcome.yaml").read_text())
    b = {**spec["template"], "name": "welcome_b", "text": "{{ city }}: {{ first_name }}, {{ code }}",
         "body": ["{{ city }}", "{{ first_name }}", "{{ code }}"]}
    spec["experiment"] = {"variants": [{"name": "a", "template": spec["template"]}, {"name": "b", "template": b}]}
    (specs / "ab.yaml").write_text(yaml.safe_dump(spec))
    return "ab.yaml"


def _templates_sent(db: Store) -> list[str]:
    with db.read() as conn:
        payloads = conn.exec_driver_sql("SELECT payload_json FROM test_sends ORDER BY sent_at, message_id").all()
    return sorted(json.loads(p)["template"]["name"] for (p,) in payloads)


def test_a_spec_with_variants_tests_each_variant_or_the_one_named(db: Store, stack, specs: Path) -> None:
    page, sandbox = stack
    answer = page.upload(audience(12), spec=_variants_spec(specs))
    assert answer.status_code == 200, answer.text
    upload_id = str(answer.url).rsplit("/", 1)[1]
    # Blank variant: each variant's first row, with its own template, to both seeds.
    answer = page.client.post(f"/upload/{upload_id}/test-send", data={"seeds": SEEDS, "rows": "1"})
    assert answer.status_code == 200, answer.text
    assert _templates_sent(db) == ["welcome_b", "welcome_b", "welcome_offer", "welcome_offer"]
    table = re.findall(r'<table id="test-results".*?</table>', answer.text, re.S)[0]
    assert re.findall(r"<th[^>]*>(.*?)</th>", table)[:2] == ["row", "variant"]
    assert sorted(re.findall(r"<tr><td[^>]*>\d+</td><td[^>]*>([ab])</td>", table)) == ["a", "a", "b", "b"]
    # The variant field names one: b's template only.
    answer = page.client.post(f"/upload/{upload_id}/test-send", data={"seeds": SEEDS, "rows": "1", "variant": " b "})
    assert answer.status_code == 200, answer.text
    assert _templates_sent(db).count("welcome_b") == 4 and _templates_sent(db).count("welcome_offer") == 2
    # A name the spec does not have is refused, naming those it has; nothing more is sent.
    answer = page.client.post(f"/upload/{upload_id}/test-send", data={"seeds": SEEDS, "variant": "c"})
    assert answer.status_code == 422 and "not a variant of the spec (a, b)" in visible_text(answer.text)
    assert sandbox.accepted == 6
