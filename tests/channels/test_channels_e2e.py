"""`campaign demo --channel NAME` for every channel: the real flow against that channel's sandbox and
the receiver on loopback, ending with receipts ingested (and linked to our messages) and a report.

Each demo runs its own sample spec over the first ROWS rows of its sample audience: the size of the
audience proves nothing here, and the full ones took 3,000 messages at the spec's rate through SMS and ChatApp.
RECEIPTS_WAIT_S bounds the wait for receipts that never come (Instagram reports reads only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import store
from pipeline.sandbox.registry import DEMO_ENV

ROOT = Path(__file__).resolve().parents[2]
ROWS, RECEIPTS_WAIT_S = 120, 5


def _smaller(spec_path: Path, tmp: Path) -> Path:
    """The demo's own spec over the first ROWS rows of its audience, waiting at most RECEIPTS_WAIT_S for receipts."""
    data = yaml.safe_load(spec_path.read_text())
    lines = (ROOT / data["audience"]).read_text().splitlines()
    audience = tmp / Path(data["audience"]).name
    audience.write_text("\n".join(lines[: ROWS + 1]) + "\n")
    data.update(audience=str(audience), receipts_wait_s=RECEIPTS_WAIT_S)
    smaller = tmp / spec_path.name
    smaller.write_text(yaml.safe_dump(data, sort_keys=False))
    return smaller


@pytest.mark.parametrize("channel", ["messenger", "instagram", "viber", "sms", "email", "chatapp"])
def test_demo_runs_end_to_end(channel, tmp_path, prefect_harness, monkeypatch, capsys):
    from flows.demo import DEMO_SPECS, run_demo
    from pipeline.spec import load_spec

    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(DEMO_SPECS, channel, str(_smaller(ROOT / DEMO_SPECS[channel], tmp_path)))
    assert run_demo(channel, workdir=tmp_path / "demo", reports_dir=tmp_path / "reports") == 0
    campaign = load_spec(DEMO_SPECS[channel]).name
    # The demo keeps its store in a SQLite file of its workdir (flows/demo.py).
    with store.connect(tmp_path / "demo" / channel / "campaigns.sqlite") as db:
        states = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
        linked = db.scalar("SELECT count(DISTINCT e.message_id) FROM events e JOIN outbox o USING (message_id)")
        channels = {r[0] for r in db.rows("SELECT DISTINCT channel FROM outbox")}
    assert states.get("sent", 0) > 0 and not states.get("queued") and not states.get("sending")
    # Receipts came back signed, were ingested and name our messages. Instagram has no delivery
    # receipts, only "seen" (about 60 % read in the sandbox): there only read messages are named.
    assert linked >= (0.5 if channel == "instagram" else 0.9) * states["sent"]
    assert channels == {channel}
    assert (tmp_path / "reports" / campaign / "report.html").exists()
    out = capsys.readouterr().out
    assert "cost (USD)" in out and "delivered" in out
