"""E-mail unsubscribe end to end: a campaign through the SMTP sandbox, the recipient's mail client
POSTs RFC 8058 one-click to the List-Unsubscribe URL of the message it received, the receiver spools
it, ingest makes it a suppression (on SQLite and on PostgreSQL), and the next campaign's preparation rejects the
address."""

from __future__ import annotations

import httpx
import pytest

from pipeline import store
from pipeline.channels.email import from_spec
from pipeline.receipts.ingest import ingest_spool
from pipeline.render.prepare_ids import prepare_ids
from tests.helpers.channels import dispatch
from tests.helpers.providers import (
    EMAIL_UNSUB_SECRET,
    EMAIL_WEBHOOK_SECRET,
    email_addresses,
    email_queue,
    email_spec,
    email_stack,
)
from tests.helpers.receipts import spooling_receiver

RECEIVER_ENV = {"EMAIL_UNSUBSCRIBE_SECRET": EMAIL_UNSUB_SECRET, "EMAIL_WEBHOOK_SECRET": EMAIL_WEBHOOK_SECRET}


def test_one_click_unsubscribe_suppresses_the_address_for_the_next_campaign(
    db: store.Store, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_UNSUBSCRIBE_SECRET", EMAIL_UNSUB_SECRET)
    spool = tmp_path / "spool"
    addresses = email_addresses(4)
    leaving = addresses[2]
    with spooling_receiver(spool, RECEIVER_ENV) as receiver, \
            email_stack(webhook_url=f"{receiver}/webhooks/email") as (sandbox, _):
        spec = email_spec(unsubscribe_url=f"{receiver}/unsubscribe")
        channel = from_spec(spec, sandbox.url)
        email_queue(db, channel, spec, addresses)
        assert dispatch(db, channel).sent == 4
        assert sandbox.drain(10)
        (message,) = [m for m in sandbox.messages() if m["To"] == leaving]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = message["List-Unsubscribe"].split(">")[0].lstrip("<")
        assert link.startswith(f"{receiver}/unsubscribe/") and leaving not in link
        # What a mail client does on "Unsubscribe": one form POST, no redirect, no confirmation page.
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            answer = client.post(link, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 200

    result = ingest_spool(db, spool)
    assert (result.quarantined, result.suppressions_added) == (0, 1)
    # The delivery reports came back through the same receiver.
    assert db.scalar("SELECT count(*) FROM events WHERE provider = 'email' AND status = 'delivered'"
                     " AND message_id IS NOT NULL") == 4
    (row,) = db.rows("SELECT channel, address, reason, source FROM suppressions")
    token = link.rsplit("/", 1)[1]
    assert tuple(row) == ("email", leaving, "unsubscribe", f"list-unsubscribe:{token}")

    # The next campaign to the same list (the address written differently) leaves it out.
    audience = tmp_path / "next.csv"
    audience.write_text("email,opt_in,name\n"
                        + "".join(f"{a.upper() if a == leaving else a},yes,Reader\n" for a in addresses))
    prepared = prepare_ids(audience, channel="email", category="marketing", template=spec.template,
                           variables={"n": "name"}, suppressed=store.suppressed_addresses(db, "email"))
    assert prepared.counts == {"suppressed": 1}
    assert prepared.rejects.select("row_number", "reason").rows() == [(4, "suppressed")]
    assert sorted(prepared.accepted["recipient_key"]) == sorted(a for a in addresses if a != leaving)
