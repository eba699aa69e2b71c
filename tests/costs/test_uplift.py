"""Per-arm results: the intervals against published values, coverage of a known effect on seeded synthetic
outcomes, every count read from the store (SQLite and PostgreSQL), the report's files, and the conversions
import (bad rows named by file, row and field; bounded; a re-import adds nothing)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from statsmodels.stats.proportion import proportion_confint

from pipeline.cli import main
from pipeline.costs import costing
from pipeline.costs.conversions import ConversionsError, import_conversions, read_conversions
from pipeline.costs.report import write_report
from pipeline.costs.uplift import arm_results, uplift_interval, with_statistics
from pipeline.store import Store
from pipeline.store.bulk import insert_frame
from tests.costs.rows import add_campaign, add_outbox, add_receipt

SENT_AT = datetime(2026, 10, 10, 10, 0, tzinfo=UTC)


def test_intervals_match_published_values():
    # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10 (hybrid score): 56/70 - 48/80 and
    # 9/10 - 3/10.
    assert uplift_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert uplift_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=5e-5)
    counts = pl.DataFrame({"arm": ["holdout", "a", "b"], "recipients": [80, 70, 263], "conversions": [48, 56, 81],
                           "cost_usd": [0.0, 7.0, 1.0], **{c: [0, 0, 0] for c in (
                               "sent", "delivered", "read", "replies", "taps", "opt_outs")},
                           "conversion_value": [None, None, None]})
    table = with_statistics(counts)
    a, b = table.row(1, named=True), table.row(2, named=True)
    assert a["uplift"] == pytest.approx(0.2) and (a["uplift_low"], a["uplift_high"]) == pytest.approx(
        (0.0524, 0.3339), abs=5e-5)
    # Wilson's score interval of 81/263: 0.2553 to 0.3662 (Newcombe 1998, Statistics in Medicine 17:857, table I).
    assert (b["rate_low"], b["rate_high"]) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert a["cost_per_conversion_usd"] == pytest.approx(0.125)


def test_the_interval_covers_a_known_effect_about_95_percent_of_the_time():
    rng = random.Random(20)
    p0, effect, n = 0.05, 0.02, 5000
    covered = 0
    for _ in range(400):
        k0 = sum(rng.random() < p0 for _ in range(n))
        k1 = sum(rng.random() < p0 + effect for _ in range(n))
        low, high = uplift_interval(k1, n, k0, n)
        covered += low <= effect <= high
    assert 0.92 <= covered / 400 <= 0.98


def _experiment_store(db: Store, rates: dict[str, float], n: int, seed: int) -> dict[str, list[str]]:
    """A campaign whose arms convert at `rates` (the holdout sent nothing); returns each arm's keys."""
    add_campaign(db, "exp")
    rng = random.Random(seed)
    keys = {arm: [f"+44770{arm[:1]}{i:06d}" for i in range(n)] for arm in rates}
    arms = pl.DataFrame([(k, arm) for arm, ks in keys.items() for k in ks], schema=["recipient_key", "arm"],
                        orient="row")
    conversions = arms.filter(pl.Series([rng.random() < rates[a] for a in arms["arm"]]))
    with db.write() as conn:
        insert_frame(conn, "experiment_arms", arms.with_columns(
            campaign_id=pl.lit("exp"), country=pl.lit("GB"), assigned_at=pl.lit(SENT_AT)))
        insert_frame(conn, "conversions", conversions.select(
            "recipient_key", campaign_id=pl.lit("exp"), converted_at=pl.lit(SENT_AT + timedelta(days=1)),
            value=pl.lit(10.0), source=pl.lit("test")))
    return keys


def test_seeded_outcome_with_a_known_effect_is_covered_by_the_reports_interval(sqlite_db: Store):
    _experiment_store(sqlite_db, {"holdout": 0.04, "a": 0.04, "b": 0.07}, 20_000, seed=7)
    got = {r["arm"]: r for r in arm_results(sqlite_db, "exp").iter_rows(named=True)}
    assert list(got) == ["holdout", "a", "b"] and got["holdout"]["uplift"] is None
    assert got["b"]["uplift_low"] <= 0.03 <= got["b"]["uplift_high"] and got["b"]["uplift_low"] > 0
    assert got["a"]["uplift_low"] <= 0.0 <= got["a"]["uplift_high"]
    low, high = proportion_confint(got["b"]["conversions"], 20_000, method="wilson")
    assert (got["b"]["rate_low"], got["b"]["rate_high"]) == (low, high)


def test_every_count_per_arm_comes_from_the_store(db: Store, tmp_path: Path):
    costing.load_prices(db)
    keys = _experiment_store(db, {"holdout": 0.0, "a": 0.0}, 4, seed=1)
    a = keys["a"]
    for i, key in enumerate(a):
        add_outbox(db, "exp", f"m{i}", recipient_key=key, state="sent", country="GB", sent_at=SENT_AT)
    add_outbox(db, "exp", "unsent", recipient_key="+nobody", state="queued")  # no arm: not counted
    db.execute("UPDATE outbox SET est_cost_usd = 0.25 WHERE campaign_id = 'exp'")
    for i, status in enumerate(["read", "delivered", "failed"]):
        add_receipt(db, f"e{i}", f"m{i}", status, SENT_AT + timedelta(minutes=1))
    later, earlier = SENT_AT + timedelta(minutes=5), SENT_AT - timedelta(minutes=5)
    inbound = [(a[0], '{"type": "button", "button": {"payload": "STOP_PROMOS"}}', later),
               (a[0], '{"type":"text"}', later), (a[1], '{"type":"text"}', later),
               (a[2], '{"type":"text"}', earlier)]  # before the message: not a reply
    for i, (who, raw, at) in enumerate(inbound):
        db.execute("INSERT INTO inbound (event_id, provider, sender, text, occurred_at, raw_json) "
                   "VALUES (:e, 'whatsapp', :s, 'x', :at, :raw)", e=f"i{i}", s=who.lstrip("+"), at=at, raw=raw)
    db.execute("INSERT INTO suppressions (channel, address, reason, source, since) VALUES "
               "('whatsapp', :a, 'stop', 'inbound', :t)", a=a[0], t=later)
    db.execute("INSERT INTO conversions (campaign_id, recipient_key, converted_at, value, source) VALUES "
               "('exp', :k, :t, 30, 'test'), ('exp', :k, :t2, 12, 'test'), ('exp', :h, :t, NULL, 'test')",
               k=a[1], h=keys["holdout"][0], t=later, t2=later + timedelta(hours=1))
    got = {r["arm"]: r for r in arm_results(db, "exp").iter_rows(named=True)}
    assert {k: got["a"][k] for k in ("recipients", "sent", "delivered", "read", "replies", "taps", "opt_outs",
                                     "conversions")} == {"recipients": 4, "sent": 4, "delivered": 2, "read": 1,
                                                         "replies": 2, "taps": 1, "opt_outs": 1, "conversions": 1}
    # The bill, not the dispatch's estimate (0.25 each): 2 delivered GB marketing at 0.0635 + 4 sent at 0.005.
    assert got["a"]["conversion_value"] == 42 and got["a"]["cost_usd"] == pytest.approx(0.147)
    assert got["a"]["cost_per_conversion_usd"] == pytest.approx(0.147)
    assert got["holdout"]["sent"] == 0 and got["holdout"]["conversions"] == 1
    assert got["a"]["uplift"] == pytest.approx(0.0)

    files = write_report(db, "exp", tmp_path / "exp")
    table = pl.read_csv(files.experiment_csv)
    assert table["arm"].to_list() == ["holdout", "a"] and table["conversions"].to_list() == [1, 1]
    assert 'id="arms"' in files.html.read_text() and "uplift" in files.markdown.read_text()
    assert "+44770" not in files.html.read_text() + files.markdown.read_text()  # aggregates only


def test_conversions_import_reads_rows_and_a_reimport_adds_nothing(db: Store, tmp_path: Path):
    add_campaign(db, "exp")
    path = tmp_path / "conv.csv"
    path.write_text("recipient,converted_at,value\n+44 7700 900001,2026-10-11T10:00:00Z,19.90\n"
                    "user-77,2026-10-11,\n\n+447700900001,2026-10-11 10:00:00+00:00,19.90\n")
    first = import_conversions(db, "exp", path)
    assert (first.rows, first.added, first.unknown) == (2, 2, 2)  # the third row is the first again
    rows = sorted(db.rows("SELECT recipient_key, value FROM conversions"))
    assert [tuple(r) for r in rows] == [("+447700900001", 19.9), ("user-77", None)]
    assert import_conversions(db, "exp", path).added == 0


@pytest.mark.parametrize(("text", "message"), [
    ("recipient,converted_at\n+447700900001,yesterday\n", "row 2: field converted_at: not an ISO 8601 time"),
    ("recipient,converted_at,value\n,2026-10-11,1\n", "row 2: field recipient: empty"),
    ("recipient,converted_at,value\nu1,2026-10-11,1\nu2,2026-10-11,-3\n", "row 3: field value: not a number"),
    ("recipient,converted_at,value\nu1,2026-10-11,nan\n", "row 2: field value: not a number"),
    ("recipient,value\nu1,3\n", "row 1: the header lacks converted_at"),
    ("recipient,converted_at\n" + "x" * 300 + ",2026-10-11\n", "row 2: field recipient: longer than 256"),
])
def test_bad_rows_are_named_by_file_row_and_field_and_nothing_is_imported(sqlite_db: Store, tmp_path: Path,
                                                                         text: str, message: str):
    add_campaign(sqlite_db, "exp")
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConversionsError) as caught:
        import_conversions(sqlite_db, "exp", path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert sqlite_db.scalar("SELECT count(*) FROM conversions") == 0


def test_the_row_bound_holds_and_the_command_exits_2(sqlite_db: Store, tmp_path: Path, capsys, monkeypatch):
    path = tmp_path / "many.csv"
    path.write_text("recipient,converted_at\n" + "".join(f"u{i},2026-10-11\n" for i in range(11)))
    assert read_conversions(path, max_rows=11).height == 11
    with pytest.raises(ConversionsError, match="more than 10 rows"):
        read_conversions(path, max_rows=10)
    monkeypatch.setenv("CAMPAIGN_CONVERSIONS_MAX_ROWS", "5")
    with pytest.raises(ConversionsError, match="more than 5 rows"):
        read_conversions(path)
    add_campaign(sqlite_db, "exp")
    assert main(["conversions", "import", str(path), "--campaign", "exp", "--db", sqlite_db.url]) == 2
    assert "CAMPAIGN_CONVERSIONS_MAX_ROWS" in capsys.readouterr().err
    monkeypatch.delenv("CAMPAIGN_CONVERSIONS_MAX_ROWS")
    assert main(["conversions", "import", str(path), "--campaign", "exp", "--db", sqlite_db.url]) == 0
    assert "11 conversions read, 11 new" in capsys.readouterr().out
    assert main(["conversions", "import", str(path), "--campaign", "nope", "--db", sqlite_db.url]) == 2


def _assign(db: Store, campaign_id: str, arms: dict[str, str]) -> None:
    for key, arm in arms.items():
        db.execute("INSERT INTO experiment_arms (campaign_id, recipient_key, arm, country, assigned_at) "
                   "VALUES (:c, :k, :a, 'GB', :t)", c=campaign_id, k=key, a=arm, t=SENT_AT)


@pytest.mark.parametrize(("channel", "spec_json", "keys", "written"), [
    # Numeric page-scoped ids: never phone numbers.
    ("messenger", "{}", ["24783984325010000", "24783984325010001"], ["24783984325010000", "24783984325010001"]),
    # Chat App to Instagram: prepared as Instagram ids.
    ("chatapp", '{"provider": {"options": {"channel_type": "instagram"}}}', ["178414000000001", "178414000000002"],
     ["178414000000001", " 178414000000002 "]),
    # E-mail addresses: the outbox keys them lower-cased.
    ("email", "{}", ["jane@example.com", "joe@example.com"], ["Jane@Example.COM", "JOE@example.com"]),
])
def test_conversions_of_id_and_email_recipients_match_their_arms(db: Store, tmp_path: Path, channel: str,
                                                                 spec_json: str, keys: list[str], written: list[str]):
    add_campaign(db, "ids", channel=channel, spec_json=spec_json)
    _assign(db, "ids", {keys[0]: "holdout", keys[1]: "a"})
    path = tmp_path / "conv.csv"
    path.write_text("recipient,converted_at\n" + "".join(f"{w},2026-10-11T10:00:00Z\n" for w in written))
    imported = import_conversions(db, "ids", path)
    assert (imported.added, imported.unknown) == (2, 0)
    assert sorted(k for (k,) in db.rows("SELECT recipient_key FROM conversions")) == sorted(keys)
    got = {r["arm"]: r["conversions"] for r in arm_results(db, "ids").iter_rows(named=True)}
    assert got == {"holdout": 1, "a": 1}


def test_an_arms_cost_is_its_part_of_the_bill(db: Store):
    costing.load_prices(db)
    outcomes = {"whatsapp": {"a": ["delivered", "failed"], "b": ["delivered", "delivered"]},
                "sms": {"a": ["delivered", "delivered"], "b": ["delivered"]}}
    for n, (channel, arms) in enumerate(outcomes.items()):
        add_campaign(db, channel, channel=channel)
        _assign(db, channel, {f"+4477009{n}0999": "holdout"})
        for j, (arm, statuses) in enumerate(arms.items()):
            for i, status in enumerate(statuses):
                key, mid = f"+4477009{n}0{j}0{i}", f"{channel}-{arm}{i}"
                _assign(db, channel, {key: arm})
                add_outbox(db, channel, mid, recipient_key=key, state="sent", country="GB", channel=channel,
                           sent_at=SENT_AT)
                add_receipt(db, f"{mid}:{status}", mid, status, SENT_AT + timedelta(minutes=1), provider=channel,
                            error_code="131026" if status == "failed" else None)
        # What the dispatch estimated (nothing off WhatsApp): not what the messages cost.
        db.execute("UPDATE outbox SET est_cost_usd = :e, segments = 1 WHERE campaign_id = :c",
                   e=0.25 if channel == "whatsapp" else None, c=channel)
        got = {r["arm"]: r["cost_usd"] for r in arm_results(db, channel).iter_rows(named=True)}
        bill = float(costing.summary_totals(costing.cost_report(db, channel))["total_usd"])  # type: ignore[arg-type]
        assert got["holdout"] == 0 and got["a"] + got["b"] == pytest.approx(bill) and bill > 0
        if channel == "whatsapp":  # 0.0635 per delivered GB marketing message + 0.005 per sent one
            assert (got["a"], got["b"]) == pytest.approx((0.0735, 0.137))
        else:  # per sent part: a sent two, b one
            assert got["a"] == pytest.approx(2 * got["b"]) and got["b"] > 0
