"""The team's frequency cap (pipeline/audience/frequency.py): counted in the store across campaigns and across the
channels that reach the same app (Chat App's WhatsApp with WhatsApp's), over its period and categories; capped
recipients are `frequency_capped` rejects saying what was counted. Through the campaign flow's prepare task, on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from pipeline import store
from pipeline.audience.frequency import capped_recipients, frequency_cap_for
from pipeline.spec import FrequencyCap, SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[2]
A, B, C, D, E, F = (f"+44740012300{i}" for i in range(1, 7))
NOW = datetime.now(UTC)


def _history(db: store.Store) -> None:
    """A: one WhatsApp send in each of two campaigns; B: one by WhatsApp, one by Chat App's WhatsApp; C: two, more
    than 7 days ago; D: two utility messages; E: two SMS; F: one WhatsApp send."""
    sends = [(A, "whatsapp", "c1", 1), (A, "whatsapp", "c2", 2), (B, "whatsapp", "c1", 1), (B, "chatapp", "c3", 3),
             (C, "whatsapp", "c1", 8), (C, "whatsapp", "c2", 9), (D, "whatsapp", "u1", 1), (D, "whatsapp", "u2", 1),
             (E, "sms", "s1", 1), (E, "sms", "s2", 1), (F, "whatsapp", "c2", 1)]
    for seq, (key, channel, campaign, days_ago) in enumerate(sends):
        at = NOW - timedelta(days=days_ago) + timedelta(hours=12)  # "1 day ago": within the last 24 h
        db.execute("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category, "
                   "payload_json, state, queued_at, sent_at) VALUES (:m, :c, :seq, :k, :ch, 'S1', :cat, '{}', 'sent', "
                   ":at, :at)", m=f"m{seq}", c=campaign, seq=seq, k=key, ch=channel, at=at,
                   cat="utility" if campaign.startswith("u") else "marketing")


def _spec(tmp: Path, **extra: object) -> dict:
    audience = tmp / "cap.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "".join(
        f"{n},Ann,Leeds,W-1,yes\n" for n in (A, B, C, D, E, F)))
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    # welcome.yaml's 400/s is WhatsApp's; the tests that make this a Chat App spec need one Chat App allows (250).
    data.update(name="capped", audience=str(audience), rate_limit={"max_per_second": 200, "concurrency": 16}, **extra)
    return data


def test_a_cap_counts_across_campaigns_and_the_channels_reaching_the_same_app(db_url: str, tmp_path: Path) -> None:
    from flows.campaign import prepare

    with store.connect(db_url) as db:
        _history(db)
    spec = parse_spec(_spec(tmp_path, frequency_cap={"max": 2, "per": "7d", "channels": ["whatsapp", "chatapp"]}))
    prepared = prepare.fn(spec, "capped", db_url, tmp_path / "out")
    rejects = {r["phone"]: r for r in prepared.rejects.iter_rows(named=True)}
    # A (two campaigns) and B (WhatsApp + Chat App) reach 2 within 7 days; C's are older, D's utility, E's SMS, F 1.
    assert {k for k, r in rejects.items() if r["reason"] == "frequency_capped"} == {A, B}
    assert rejects[A]["detail"] == ("reached the cap of 2 marketing messages per 7d on whatsapp + chatapp, "
                                    "counted across campaigns")
    assert set(prepared.accepted["phone_e164"].to_list()) == {C, D, E, F}
    with store.connect(db_url) as db:
        # A campaign resumed does not count its own sends: c2's A and F are its own.
        assert capped_recipients(db, spec.frequency_cap, exclude_campaign="c2") == {B}
        # Utility counted too when the cap says so.
        both = FrequencyCap(max=2, per="7d", channels=["whatsapp"], categories=["marketing", "utility"])
        assert capped_recipients(db, both) == {A, D}


def test_the_teams_default_is_one_per_24h_over_whatsapp_and_chat_apps_whatsapp(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.campaign import prepare

    with store.connect(db_url) as db:
        _history(db)
    spec = parse_spec(_spec(tmp_path))
    cap = frequency_cap_for(spec)
    assert (cap.max, cap.per, cap.channels, cap.categories) == (1, "24h", ["chatapp", "whatsapp"], ["marketing"])
    # Chat App to Viber does not reach WhatsApp: its own channel only.
    viber = parse_spec({**_spec(tmp_path), "channel": "chatapp", "provider": {"options": {"channel_type": "viber"}}})
    assert frequency_cap_for(viber).channels == ["chatapp"]
    prepared = prepare.fn(spec, "capped", db_url, tmp_path / "out")
    # 1 day ago on WhatsApp: A, B, F (D's were utility).
    assert set(prepared.rejects.filter(reason="frequency_capped")["phone"].to_list()) == {A, B, F}
    # The settings file changes every spec that does not set its own.
    settings = tmp_path / "controls.yaml"
    settings.write_text("frequency_cap: {max: 3, per: 30d}\nsame_app: [[whatsapp, chatapp]]\n")
    monkeypatch.setenv("CAMPAIGN_CONTROLS_FILE", str(settings))
    prepared = prepare.fn(spec, "capped", db_url, tmp_path / "out2")
    assert set(prepared.rejects.filter(reason="frequency_capped")["phone"].to_list()) == set()  # nobody has 3


def test_a_cap_written_wrong_is_refused_naming_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match=r"frequency_cap\.per"):
        parse_spec(_spec(tmp_path, frequency_cap={"max": 2, "per": "7w"}))
    with pytest.raises(SpecError, match=r"frequency_cap\.max"):
        parse_spec(_spec(tmp_path, frequency_cap={"max": 0, "per": "7d"}))
    monkeypatch.setenv("CAMPAIGN_CONTROLS_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(SpecError, match="missing.yaml: cannot read the controls settings"):
        frequency_cap_for(parse_spec(_spec(tmp_path)))


def test_the_count_reads_the_period_in_slices_each_send_once(db_url: str) -> None:
    """The period is read slice by slice (frequency.SLICE): a send exactly on a slice's edge is counted in one slice,
    one at the period's start is in, one just before it is out, and one stamped after `now` (a clock ahead) is in."""
    from pipeline.audience import frequency

    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    cap = FrequencyCap(max=2, per="2d", channels=["whatsapp"])
    since = now - cap.window
    edge = since + frequency.SLICE
    sends = [(A, edge), (B, edge), (B, since), (C, since - timedelta(microseconds=1)), (C, now - timedelta(hours=1)),
             (D, now + timedelta(minutes=5)), (D, since + timedelta(hours=30))]
    with store.connect(db_url) as db:
        for seq, (key, at) in enumerate(sends):
            db.execute("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category, "
                       "payload_json, state, queued_at, sent_at) VALUES (:m, 'c1', :seq, :k, 'whatsapp', 'S1', "
                       "'marketing', '{}', 'sent', :at, :at)", m=f"m{seq}", seq=seq, k=key, at=at)
        # A: one send on an edge (counted twice it would be capped); B: the edge and the start; C: one before the
        # period, one in it; D: one in it, one after `now`.
        assert capped_recipients(db, cap, now=now) == {B, D}
        assert capped_recipients(db, FrequencyCap(max=1, per="2d", channels=["whatsapp"]), now=now) == {A, B, C, D}


def test_keys_written_otherwise_are_counted_as_written_beside_the_plain_numbers(db_url: str) -> None:
    with store.connect(db_url) as db:
        sends = [A, A, "+0123456", "+0123456", "+44 7400 123002", "+44 7400 123002", B]
        for seq, key in enumerate(sends):
            db.execute("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category, "
                       "payload_json, state, queued_at, sent_at) VALUES (:m, 'c', :seq, :k, 'whatsapp', 'S1', "
                       "'marketing', '{}', 'sent', :at, :at)", m=f"m{seq}", seq=seq, k=key, at=NOW)
        capped = capped_recipients(db, FrequencyCap(max=2, per="1d", channels=["whatsapp"]))
    # Each text counted on its own (B's one send is not helped by the spaced form, which reached 2 itself).
    assert capped == {A, "+0123456", "+44 7400 123002"}
    assert sorted(capped.matcher.numbers.to_list()) == [447400123001, 447400123002]  # the spaced form normalised
    assert capped.matcher.others.to_list() == ["+0123456"]


def test_the_cap_read_meanwhile_waits_for_its_thread_and_raises_its_error_on_leaving(db_url: str) -> None:
    from pipeline.audience.frequency import capped_meanwhile

    with store.connect(db_url) as db:
        _history(db)
    cap = FrequencyCap(max=2, per="7d", channels=["whatsapp", "chatapp"])
    with capped_meanwhile(db_url, cap) as capped:
        assert capped == {A, B}
    unreachable = "postgresql://campaigns@127.0.0.1:1/campaigns"  # nothing listens on port 1
    with pytest.raises(store.StoreError):  # nothing asked for the set: the error comes on leaving
        with capped_meanwhile(unreachable, cap):
            pass


def test_chat_app_sends_count_with_the_app_they_went_over(db_url: str, tmp_path: Path) -> None:
    """Chat App's WhatsApp sends count with WhatsApp's, its Viber sends with Viber's: read from the hours kept in
    columns (2 h ago) and from the outbox (minutes ago) alike."""
    from pipeline.audience.frequency import app_of
    from tests.costs.rows import add_campaign

    kept_v, live_v, kept_w, live_w = (f"+44740012310{i}" for i in range(1, 5))
    with store.connect(db_url) as db:
        for campaign, via in (("cv", "viber"), ("cw", "whatsapp")):
            add_campaign(db, campaign, channel="chatapp",
                         spec_json=json.dumps({"provider": {"options": {"channel_type": via}}}))
        sends = [(kept_v, "cv", 120), (live_v, "cv", 5), (kept_w, "cw", 120), (live_w, "cw", 5)]
        for seq, (key, campaign, minutes_ago) in enumerate(sends):
            at = NOW - timedelta(minutes=minutes_ago)
            db.execute("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category, "
                       "payload_json, state, queued_at, sent_at) VALUES (:m, :c, :seq, :k, 'chatapp', 'S1', "
                       "'marketing', '{}', 'sent', :at, :at)", m=f"v{seq}", c=campaign, seq=seq, k=key, at=at)
        whatsapp = parse_spec(_spec(tmp_path))
        viber = parse_spec({**_spec(tmp_path), "channel": "chatapp",
                            "provider": {"options": {"channel_type": "viber"}}})
        assert capped_recipients(db, frequency_cap_for(whatsapp), app=app_of(whatsapp)) == {kept_w, live_w}
        assert capped_recipients(db, frequency_cap_for(viber), app=app_of(viber)) == {kept_v, live_v}
