"""`campaign prices import` of hostile files: each refused with one line naming the file, row and field, the file
and its rows bounded (CAMPAIGN_PRICES_MAX_BYTES, CAMPAIGN_PRICES_MAX_ROWS), and a refused import leaves the store's
prices as they were."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.costs import pricing
from pipeline.store import Store, StoreError
from tests.costs.rows import money

D = Decimal
CARD = pricing.WHATSAPP_CARD.read_text(encoding="utf-8")  # 2 comment lines, the header on line 3
BRAZIL = "Brazil,55,0.0625,0.0068,0.0068\n"  # line 6
TIERS = "market,category,from_messages,to_messages,platform_fee_usd\n"
SMS = "market,category,platform_fee_usd\n"
assert BRAZIL in CARD and CARD.splitlines()[5] == BRAZIL.strip()


def _card(brazil: str) -> str:
    return CARD.replace(BRAZIL, brazil)


# (file name, channel, content, the message after the file name)
HOSTILE = {
    "nan": ("wa-2026-12.csv", "whatsapp", _card("Brazil,55,NaN,0.0068,0.0068\n"),
            " row 6: marketing_usd is not a finite number: 'NaN'"),
    "infinity": ("wa-2026-12.csv", "whatsapp", _card("Brazil,55,0.0625,-Infinity,0.0068\n"),
                 " row 6: utility_usd is not a finite number: '-Infinity'"),
    "too large": ("wa-2026-12.csv", "whatsapp", _card("Brazil,55,1e20,0.0068,0.0068\n"),
                  " row 6: marketing_usd is too large: '1e20'"),
    "too precise": ("wa-2026-12.csv", "whatsapp", _card("Brazil,55,0.00000001,0.0068,0.0068\n"),
                    " row 6: marketing_usd has more than 6 decimal places: '0.00000001'"),
    "no market column": ("wa-2026-12.csv", "whatsapp", CARD.replace("market,calling_codes", "mkt,calling_codes"),
                         " row 1: no market column"),
    "short row": ("sms-2026-12.csv", "sms", SMS + "GB,marketing,0.01\nFR\n",
                  " row 3: category is missing (the row has 1 of the header's 3 fields)"),
    "short whatsapp row": ("wa-2026-12.csv", "whatsapp", _card("Brazil,55\n"), " row 6: marketing_usd is missing"),
    "extra field": ("sms-2026-12.csv", "sms", SMS + "GB,marketing,1,000\n",
                    " row 2: 4 fields where the header has 3"),
    "empty market": ("sms-2026-12.csv", "sms", SMS + " ,marketing,0.01\n", " row 2: market is empty"),
    "tier not a count": ("tiers-2026-12.csv", "whatsapp", TIERS + "Rest of Africa,utility,abc,100000,0.004\n",
                         " row 2: from_messages is not a whole number: 'abc'"),
    "tier count too large": ("tiers-2026-12.csv", "whatsapp", TIERS + f"Rest of Africa,utility,1,{2**63},0.004\n",
                             " row 2: to_messages is too large"),
    "duplicate tier": ("tiers-2026-12.csv", "whatsapp",
                       TIERS + "Rest of Africa,utility,1,100000,0.004\nRest of Africa,utility,1,100000,0.003\n",
                       " row 3: market, category and from_messages listed twice: Rest of Africa, utility, 1 "
                       "(first on row 2)"),
    # A ladder covers every monthly count from 1 up, each once (pipeline/costs/pricing.py, _check_ladder).
    "overlapping tiers": ("tiers-2026-12.csv", "whatsapp", TIERS + "Rest of Africa,utility,1,1000,0.004\n"
                          "Rest of Africa,utility,500,2000,0.003\nRest of Africa,utility,2001,,0.002\n",
                          " row 3: from_messages: tier 500..2000 of Rest of Africa, utility overlaps tier 1..1000 on "
                          "row 2"),
    "overlapping tiers out of order": ("tiers-2026-12.csv", "whatsapp", TIERS + "KE,utility,1,,0.004\n"
                                       "Rest of Africa,utility,900,,0.003\nRest of Africa,utility,1,1000,0.004\n",
                                       " row 3: from_messages: tier 900.. of Rest of Africa, utility overlaps tier "
                                       "1..1000 on row 4"),
    "open tier below another": ("tiers-2026-12.csv", "whatsapp", TIERS + "Rest of Africa,utility,1,,0.004\n"
                                "Rest of Africa,utility,1001,,0.003\n",
                                " row 3: from_messages: tier 1001.. of Rest of Africa, utility overlaps tier 1.. on "
                                "row 2"),
    "gap between tiers": ("tiers-2026-12.csv", "whatsapp", TIERS + "Rest of Africa,utility,1,1000,0.004\n"
                          "Rest of Africa,utility,1500,,0.003\n",
                          " row 3: from_messages: tier 1500.. of Rest of Africa, utility leaves a gap after tier "
                          "1..1000 on row 2 (messages 1001..1499 would have no rate)"),
    "ladder from above 1": ("tiers-2026-12.csv", "whatsapp", TIERS + "Rest of Africa,utility,1001,,0.003\n",
                            " row 2: from_messages: the first tier of Rest of Africa, utility starts at 1001, not 1"),
    "closed top tier": ("tiers-2026-12.csv", "whatsapp", TIERS + "Rest of Africa,utility,1,1000,0.004\n",
                        " row 2: to_messages: the top tier of Rest of Africa, utility ends at 1000; leave it empty"),
    "duplicate rate": ("sms-2026-12.csv", "sms", SMS + "# GB twice\nGB,marketing,0.01\nGB,marketing,0.02\n",
                       " row 4: market and category listed twice: GB, marketing (first on row 3)"),
    "not utf-8": ("sms-2026-12.csv", "sms", SMS.encode() + b"\xff\xfe,marketing,0.01\n",
                  " row 2: market is not UTF-8 text (byte 0xff)"),
    "field over 128 KB": ("sms-2026-12.csv", "sms", SMS + "GB,marketing," + "1" * 200_000 + "\n",
                          " row 2: platform_fee_usd is longer than 1,024 characters"),
    "field over 1 KB": ("sms-2026-12.csv", "sms", SMS + "GB," + "m" * 2_000 + ",0.01\n",
                        " row 2: category is longer than 1,024 characters"),
    "month 13": ("wa-2026-13.csv", "whatsapp", CARD, ": file name: 2026-13 is not a day (month must be in 1..12)"),
    "day in a comment": ("sms.csv", "sms", "# effective_from: 2026-02-30\n" + SMS + "GB,marketing,0.01\n",
                         " row 1: effective_from '2026-02-30' is not a day"),
    "service fee too precise": ("fee-2026-12.csv", "sms", "fee_points\n1.005\n",
                                " row 2: fee_points has more than 2 decimal places: '1.005'"),
}


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_file_is_refused_naming_the_row_and_field(tmp_path: Path, case: str) -> None:
    name, channel, content, message = HOSTILE[case]
    path = _write(tmp_path, name, content)
    with pytest.raises(pricing.PriceDataError) as refused:
        pricing.read_card(path, channel=channel)
    assert str(refused.value).startswith(f"{name}{message}")
    assert "\n" not in str(refused.value)


def _prices(db: Store) -> list[tuple[object, ...]]:
    return [(*row[:-1], money(row[-1])) for row in db.rows(
        "SELECT channel, market, category, effective_from, source, platform_fee_usd FROM prices ORDER BY 1, 2, 3, 4")]


def _tiers(db: Store) -> list[tuple[object, ...]]:
    return [(*row[:-1], money(row[-1])) for row in db.rows(
        "SELECT channel, market, category, from_messages, to_messages, effective_from, source, platform_fee_usd "
        "FROM price_tiers ORDER BY 1, 2, 3, 4, 6")]


@pytest.fixture
def imported(db: Store, tmp_path: Path) -> Store:
    """A store holding the shipped data and an imported card and ladder of each hostile file's channel and date."""
    pricing.load_reference_data(db)
    good = tmp_path / "good"
    good.mkdir()
    for name, channel, content in [("wa-2026-12.csv", "whatsapp", CARD),
                                   ("tiers-2026-12.csv", "whatsapp", TIERS + "Rest of Africa,utility,1,,0.0041\n"),
                                   ("sms-2026-12.csv", "sms", SMS + "GB,segment,0.03\nDefault,segment,0.04\n")]:
        pricing.import_card(db, _write(good, name, content), channel=channel)
    return db


@pytest.mark.parametrize("case", HOSTILE)
def test_the_command_prints_one_line_exits_2_and_the_store_keeps_its_prices(
        imported: Store, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    name, channel, content, message = HOSTILE[case]
    path = _write(tmp_path, name, content)
    prices, tiers = _prices(imported), _tiers(imported)
    assert main(["prices", "import", str(path), "--channel", channel, "--db", imported.url]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"error: {name}{message}")
    assert out.err.count("\n") == 1
    assert (_prices(imported), _tiers(imported)) == (prices, tiers)


def test_a_refused_file_does_not_create_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "sms-2026-12.csv", SMS + "GB,segment,NaN\n")
    assert main(["prices", "import", str(path), "--channel", "sms", "--db", str(tmp_path / "new.sqlite")]) == 2
    assert "row 2: platform_fee_usd is not a finite number" in capsys.readouterr().err
    assert not (tmp_path / "new.sqlite").exists()


def test_an_import_failing_inside_its_transaction_writes_nothing(
        imported: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = _prices(imported)
    path = _write(tmp_path, "sms-2026-12.csv", SMS + "GB,segment,0.05\n")

    def fail(*_: object, **__: object) -> None:  # after the DELETE of the card being replaced
        raise StoreError("the store went away")

    monkeypatch.setattr(pricing, "insert_frame", fail)
    with pytest.raises(StoreError):
        pricing.import_card(imported, path, channel="sms")
    assert _prices(imported) == prices


def test_the_file_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    content = SMS + "".join(f"M{i:05},segment,0.01\n" for i in range(100))  # 33 + 100 x 19 bytes
    path = _write(tmp_path, "sms-2026-12.csv", content)
    size = path.stat().st_size
    assert pricing.read_card(path, channel="sms", max_bytes=size).rows.height == 100
    with pytest.raises(pricing.PriceDataError, match=rf"^sms-2026-12\.csv: larger than {size - 1:,} bytes "
                                                      r"\(CAMPAIGN_PRICES_MAX_BYTES raises the bound\)$"):
        pricing.read_card(path, channel="sms", max_bytes=size - 1)
    monkeypatch.setenv("CAMPAIGN_PRICES_MAX_BYTES", "1_000")
    with pytest.raises(pricing.PriceDataError, match="larger than 1,000 bytes"):
        pricing.read_card(path, channel="sms")
    assert main(["prices", "import", str(path), "--channel", "sms", "--db", str(tmp_path / "s.sqlite")]) == 2
    assert capsys.readouterr().err == "error: sms-2026-12.csv: larger than 1,000 bytes (CAMPAIGN_PRICES_MAX_BYTES " \
                                      "raises the bound)\n"
    monkeypatch.setenv("CAMPAIGN_PRICES_MAX_BYTES", "lots")
    with pytest.raises(pricing.PriceDataError, match="CAMPAIGN_PRICES_MAX_BYTES: 'lots' is not a whole number"):
        pricing.read_card(path, channel="sms")


def test_the_default_file_bound_refuses_a_larger_file(tmp_path: Path) -> None:
    line = "Fake market,segment,0.01\n"
    path = _write(tmp_path, "sms-2026-12.csv",
                  SMS + line * (pricing.DEFAULT_MAX_BYTES // len(line) + 1))  # 1.5M fake markets (the review's 36 MB)
    assert pricing.DEFAULT_MAX_BYTES == 16 * 1024 * 1024
    with pytest.raises(pricing.PriceDataError, match="larger than 16,777,216 bytes"):
        pricing.read_card(path, channel="sms")


def test_the_rows_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "sms-2026-12.csv", "# a comment\n" + SMS + "".join(
        f"M{i},segment,0.01\n" for i in range(11)))
    assert pricing.read_card(path, channel="sms", max_rows=11).rows.height == 11
    with pytest.raises(pricing.PriceDataError, match=r"^sms-2026-12\.csv row 13: more than 10 rows "
                                                      r"\(CAMPAIGN_PRICES_MAX_ROWS raises the bound\)$"):
        pricing.read_card(path, channel="sms", max_rows=10)
    monkeypatch.setenv("CAMPAIGN_PRICES_MAX_ROWS", "5")
    with pytest.raises(pricing.PriceDataError, match="row 8: more than 5 rows"):
        pricing.read_card(path, channel="sms")
    assert pricing.DEFAULT_MAX_ROWS == 100_000
    monkeypatch.delenv("CAMPAIGN_PRICES_MAX_ROWS")
    path.write_text(SMS + "".join(f"M{i},segment,0.01\n" for i in range(100_001)))
    with pytest.raises(pricing.PriceDataError, match="row 100002: more than 100,000 rows"):
        pricing.read_card(path, channel="sms")


def test_good_files_read_as_before(tmp_path: Path) -> None:
    """Exact rates of at most 6 places (trailing zeros past them included), CR-only lines, an empty trailing field
    and a comment's date read as they always did."""
    path = _write(tmp_path, "sms.csv", "# effective_from: 2026-12-15\r" + SMS.replace("\n", "\r")
                  + "GB,segment,0.123456\rFR,segment,999999.999999,\rDefault,segment,0.0500000000\r")
    card = pricing.read_card(path, channel="sms")
    assert (card.kind, card.effective_from) == ("rates", date(2026, 12, 15))
    assert card.rows.rows() == [("GB", "segment", D("0.123456")), ("FR", "segment", D("999999.999999")),
                                ("*", "segment", D("0.05"))]
    whatsapp = pricing.read_card(_write(tmp_path, "wa-2026-12.csv", CARD))
    assert whatsapp.rows.height == 84 and whatsapp.effective_from == date(2026, 12, 1)


def test_a_byte_order_mark_and_rows_of_empty_fields_are_read_past(tmp_path: Path) -> None:
    path = _write(tmp_path, "sms-2026-12.csv", "\ufeff" + SMS + "GB,segment,0.03\n,,\n , ,\n")  # as Excel writes
    assert pricing.read_card(path, channel="sms").rows.rows() == [("GB", "segment", D("0.03"))]
