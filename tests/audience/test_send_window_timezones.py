"""Send windows over recipients' own time zones (pipeline/audience/timezones.py): the audience's `timezone`
column where it has one (an unknown zone falls back), else the zone of the number; through the campaign flow,
those whose local time is outside the window stay queued and the sandbox receives only the others. The flow runs
on a SQLite store: its subject is the send window, not the store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import yaml

from pipeline import store
from pipeline.audience.timezones import recipient_timezones
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
UK, UK2, JP, JP2 = "+447400123456", "+447400123457", "+819012345678", "+819012345679"
# The second campaign's recipients: the first campaign's would be frequency-capped by then.
UK3, UK4, JP3, JP4 = "+447400123458", "+447400123459", "+819012345680", "+819012345681"


def _london_like(zone: str | None) -> bool:
    now = datetime.now(UTC)
    return zone is not None and ZoneInfo(zone).utcoffset(now) == ZoneInfo("Europe/London").utcoffset(now)


def test_the_column_wins_where_it_names_a_zone_else_the_numbers_zone() -> None:
    numbers = pl.DataFrame({"phone_e164": [UK, JP, UK2, JP2]})
    from_numbers = recipient_timezones(numbers).to_list()
    assert _london_like(from_numbers[0]) and _london_like(from_numbers[2])
    assert from_numbers[1] == from_numbers[3] == "Asia/Tokyo"
    given = numbers.with_columns(pl.Series("tz", ["Asia/Tokyo", "Europe/London", "Mars/Olympus", None]))
    zones = recipient_timezones(given, "tz").to_list()
    assert zones[:2] == ["Asia/Tokyo", "Europe/London"]  # the column's zone, whatever the number says
    assert _london_like(zones[2]) and zones[3] == "Asia/Tokyo"  # unknown or missing: the number's zone
    assert recipient_timezones(numbers.head(0)).to_list() == []


def _window_open_in_london() -> dict[str, str]:
    """Two hours from London's current hour: open in London, closed in Tokyo (8 or 9 hours ahead)."""
    hour = datetime.now(ZoneInfo("Europe/London")).hour
    return {"start": f"{hour:02d}:00", "end": f"{(hour + 2) % 24:02d}:00"}


def _campaign(tmp: Path, name: str, rows: list[str], header: str) -> Path:
    audience = tmp / f"{name}.csv"
    audience.write_text(header + "\n" + "\n".join(rows) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name=name, audience=str(audience), receipts_wait_s=0, send_window=_window_open_in_london())
    spec = tmp / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def test_a_send_window_sends_only_to_recipients_inside_it_with_and_without_a_zone_column(
    tmp_path: Path, prefect_harness
) -> None:
    from flows.campaign import campaign_flow

    plain = _campaign(tmp_path, "plain", [f"{n},Ann,Leeds,W-1,yes" for n in (UK, JP, UK2, JP2)],
                      "phone,first_name,city,coupon,opt_in")
    zones = {UK3: "Asia/Tokyo", JP3: "Europe/London", UK4: "Mars/Olympus", JP4: ""}
    zoned = _campaign(tmp_path, "zoned", [f"{n},Ann,Leeds,W-1,yes,{zone}" for n, zone in zones.items()],
                      "phone,first_name,city,coupon,opt_in,timezone")
    db = tmp_path / "campaigns.sqlite"
    config = SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                           templates={"welcome_offer": "marketing"})
    app = create_app(config)
    with serve_in_thread(app) as url:
        for spec in (plain, zoned):
            campaign_flow(str(spec), database=str(db), spool_dir=str(tmp_path / "spool"),
                          reports_dir=str(tmp_path / "reports"), provider_base_url=url)
    sent_to = [to for _, to, *_ in app.state.sandbox.messages]
    with store.connect(db) as shared:
        ledger = {(c, k): (s, z) for c, k, s, z in shared.rows(
            "SELECT campaign_id, recipient_key, state, timezone FROM outbox")}
    # Without the column: the numbers' zones, so the UK numbers go and the Japanese ones wait.
    assert {k: s for (c, k), (s, _) in ledger.items() if c == "plain"} == {
        UK: "sent", UK2: "sent", JP: "queued", JP2: "queued"}
    assert ledger[("plain", JP)][1] == "Asia/Tokyo" and _london_like(ledger[("plain", UK)][1])
    # With it: the column decides where it names a zone, the number where it names none or an unknown one.
    assert {k: s for (c, k), (s, _) in ledger.items() if c == "zoned"} == {
        UK3: "queued", JP3: "sent", UK4: "sent", JP4: "queued"}
    assert [ledger[("zoned", k)][1] for k in (UK3, JP3, JP4)] == ["Asia/Tokyo", "Europe/London", "Asia/Tokyo"]
    # The sandbox received exactly the messages inside the window, each once.
    assert sorted(sent_to) == sorted(n.lstrip("+") for n in (UK, UK2, JP3, UK4))
    assert app.state.sandbox.duplicate_callback_data == 0
