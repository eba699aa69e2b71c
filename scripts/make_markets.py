"""Writes pipeline/data/whatsapp_markets.csv: every libphonenumber region -> its WhatsApp price market.

The lists are Meta's country -> market table (developers.facebook.com/docs/whatsapp/pricing, "country
calling codes"), transcribed by hand; run `python scripts/make_markets.py` after changing them or the card.
Columns: region, market (a market of the shipped card), source, own_market (Meta's own market for a country
it prices on its own: the report uses it as soon as a card in force has a row for it, e.g. an imported one).
"""

from __future__ import annotations

import csv
from pathlib import Path

import phonenumbers

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "pipeline" / "data" / "whatsapp-rates-2026-10-usd.csv"
OUT = ROOT / "pipeline" / "data" / "whatsapp_markets.csv"

# Countries Meta prices on their own. Some have no row in our Oct 2026 card transcription; those fall
# back to the regional group they belong to geographically (their real rates are closest to it), and
# the `source` column says so. `own_market` keeps Meta's name, so a later, fuller card (imported with
# `campaign prices import`) prices them on their own from its date without re-running this script.
OWN_MARKETS: dict[str, tuple[str, str]] = {
    "AR": ("Argentina", "Rest of Latin America"),
    "BR": ("Brazil", "Rest of Latin America"),
    "CL": ("Chile", "Rest of Latin America"),
    "CO": ("Colombia", "Rest of Latin America"),
    "EG": ("Egypt", "Rest of Africa"),
    "FR": ("France", "Rest of Western Europe"),
    "DE": ("Germany", "Rest of Western Europe"),
    "IN": ("India", "Rest of Asia Pacific"),
    "ID": ("Indonesia", "Rest of Asia Pacific"),
    "IL": ("Israel", "Rest of Middle East"),
    "IT": ("Italy", "Rest of Western Europe"),
    "MY": ("Malaysia", "Rest of Asia Pacific"),
    "MX": ("Mexico", "Rest of Latin America"),
    "NL": ("Netherlands", "Rest of Western Europe"),
    "NG": ("Nigeria", "Rest of Africa"),
    "PK": ("Pakistan", "Rest of Asia Pacific"),
    "PE": ("Peru", "Rest of Latin America"),
    "RU": ("Russia", "Rest of Central & Eastern Europe"),
    "SA": ("Saudi Arabia", "Rest of Middle East"),
    "ZA": ("South Africa", "Rest of Africa"),
    "ES": ("Spain", "Rest of Western Europe"),
    "TR": ("Turkey", "Rest of Central & Eastern Europe"),
    "AE": ("United Arab Emirates", "Rest of Middle East"),
    "GB": ("United Kingdom", "Rest of Western Europe"),
    "HK": ("Hong Kong", "Rest of Asia Pacific"),
    "HU": ("Hungary", "Rest of Central & Eastern Europe"),
    "PL": ("Poland", "Rest of Central & Eastern Europe"),
    "QA": ("Qatar", "Rest of Middle East"),
    "RO": ("Romania", "Rest of Central & Eastern Europe"),
    "SG": ("Singapore", "Rest of Asia Pacific"),
    # Own markets from 1 Oct 2026 (docs/providers.md 2.4); their rates are not in our transcription of the card.
    "BD": ("Bangladesh", "Rest of Asia Pacific"),
    "IQ": ("Iraq", "Rest of Middle East"),
    "NP": ("Nepal", "Rest of Asia Pacific"),
    "LK": ("Sri Lanka", "Rest of Asia Pacific"),
    "KZ": ("Kazakhstan", "Rest of Central & Eastern Europe"),
    "KW": ("Kuwait", "Rest of Middle East"),
    "MA": ("Morocco", "Rest of Africa"),
    "OM": ("Oman", "Rest of Middle East"),
    "UA": ("Ukraine", "Rest of Central & Eastern Europe"),
}

# Meta's "Rest of ..." groups, country by country (ISO 3166 alpha-2 as libphonenumber spells them).
GROUPS: dict[str, list[str]] = {
    # Algeria ... Zambia; "Congo" is the Republic of the Congo (+242), "Swaziland" is Eswatini.
    "Rest of Africa": [
        "DZ", "AO", "BJ", "BW", "BF", "BI", "CM", "TD", "CG", "ER", "ET", "GA", "GM", "GH", "GW", "CI",
        "KE", "LS", "LR", "LY", "MG", "MW", "ML", "MR", "MZ", "NA", "NE", "RW", "SN", "SL", "SO",
        "SS", "SD", "SZ", "TZ", "TG", "TN", "UG", "ZM",
    ],
    "Rest of Asia Pacific": [
        "AF", "AU", "KH", "CN", "JP", "LA", "MN", "NZ", "PG", "PH", "TW",
        "TJ", "TH", "TM", "UZ", "VN",
    ],
    # Meta lists Greece here, not in Western Europe.
    "Rest of Central & Eastern Europe": [
        "AL", "AM", "AZ", "BY", "BG", "HR", "CZ", "GE", "GR", "LV", "LT", "MK", "MD",
        "RS", "SK", "SI",
    ],
    # Meta lists Peru on its own; it is in OWN_MARKETS with this group as its fallback.
    "Rest of Latin America": ["BO", "CR", "EC", "SV", "GT", "HT", "HN", "NI", "PA", "PY", "UY", "VE"],
    "Rest of Middle East": ["BH", "JO", "LB", "YE"],
    "Rest of Western Europe": ["AT", "BE", "DK", "FI", "IE", "NO", "PT", "SE", "CH"],
}

# +1: Meta prices the whole NANP as North America except these area codes (809/829/849, 658/876,
# 787/939), which libphonenumber gives their own regions.
NANP_LATIN_AMERICA = ["DO", "JM", "PR"]

# Meta prices by calling code, so territories that share a listed country's code pay its rate.
SHARED_CODE: dict[str, str] = {
    "GG": "GB", "JE": "GB", "IM": "GB",  # +44
    "AX": "FI",  # +358
    "SJ": "NO",  # +47
    "VA": "IT",  # +39
    "CC": "AU", "CX": "AU",  # +61
    "EH": "MA",  # +212
}


def card_markets(card: Path = CARD) -> set[str]:
    with card.open(newline="", encoding="utf-8") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {row["market"] for row in rows}


def build(card_names: set[str]) -> list[tuple[str, str, str, str]]:
    """(region, market, source, own_market) for every libphonenumber region; own_market is '' unless Meta
    prices the country on its own."""
    regions = set(phonenumbers.SUPPORTED_REGIONS)
    mapping: dict[str, tuple[str, str, str]] = {}

    def put(region: str, market: str, source: str, own: str = "") -> None:
        assert region in regions or region == "001", f"{region} is not a libphonenumber region"
        assert region not in mapping, f"{region} is listed twice"
        mapping[region] = (market, source, own)

    for region, (name, fallback) in OWN_MARKETS.items():
        if name in card_names:
            put(region, name, "meta-market", name)
        else:
            put(region, fallback, f"meta-market {name} not on card: nearest group", name)
    for market, members in GROUPS.items():
        for region in members:
            put(region, market, "meta-group")
    for region in NANP_LATIN_AMERICA:
        put(region, "Rest of Latin America", "meta-nanp-area-codes")
    for region in sorted(r for r in regions if phonenumbers.country_code_for_region(r) == 1):
        if region not in mapping:
            put(region, "North America", "meta-nanp")
    for region, parent in SHARED_CODE.items():
        put(region, mapping[parent][0], f"shares calling code with {parent}", mapping[parent][2])
    for region in sorted(regions - mapping.keys()):
        put(region, "Other", "not listed by meta")
    put("001", "Other", "non-geographic numbers")

    unknown = {market for market, _, _ in mapping.values()} - card_names
    assert not unknown, f"market names not in the rate card: {sorted(unknown)}"
    return [(region, market, source, own) for region, (market, source, own) in sorted(mapping.items())]


def main() -> None:
    rows = build(card_markets())
    with OUT.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["region", "market", "source", "own_market"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} regions to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
