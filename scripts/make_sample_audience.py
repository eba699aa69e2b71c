"""Writes audiences/sample.csv: a seeded, deterministic 3,000-row opt-in audience with the mix of
formats and mistakes a real upload has (invalid, blocked, duplicate, opted-out, landline rows).

Usage: python scripts/make_sample_audience.py [--rows 3000] [--seed 20261125] [--out audiences/sample.csv]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import phonenumbers
from phonenumbers import PhoneNumberFormat as Fmt
from phonenumbers import PhoneNumberType as Type

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["phone", "country", "first_name", "city", "coupon", "opt_in"]

# Allowed markets and their weights (roughly a global consumer brand's audience).
COUNTRIES = {
    "GB": 14, "DE": 9, "IN": 12, "BR": 10, "US": 10, "MX": 6, "NG": 6, "ID": 6, "ES": 5, "FR": 5,
    "IT": 5, "ZA": 4, "AR": 2, "CA": 2, "NL": 2, "PH": 2, "KE": 2,
}  # fmt: skip
BLOCKED = ["IR", "SY", "TR", "CU", "SD"]
LANDLINE_COUNTRIES = ["GB", "DE", "FR", "IT", "ES", "BR", "ZA"]
NAMES = {
    "GB": ["Oliver", "Amelia", "Harry", "Isla"], "DE": ["Lukas", "Jürgen", "Mia", "Lena"],
    "IN": ["Aarav", "Priya", "Vihaan", "Ananya"], "BR": ["João", "Maria", "Lucas", "Júlia"],
    "US": ["James", "Olivia", "Liam", "Emma"], "MX": ["Santiago", "Sofía", "Mateo", "Valentina"],
    "NG": ["Chinedu", "Ngozi", "Emeka", "Aisha"], "ID": ["Budi", "Siti", "Agus", "Dewi"],
    "ES": ["Hugo", "Lucía", "Martín", "Paula"], "FR": ["Léa", "Hugo", "Chloé", "Louis"],
    "IT": ["Giulia", "Leonardo", "Sofia", "Francesco"], "ZA": ["Thabo", "Naledi", "Sipho", "Lerato"],
    "AR": ["Benjamín", "Martina", "Joaquín", "Catalina"], "CA": ["Noah", "Charlotte", "Ethan", "Zoë"],
    "NL": ["Daan", "Emma", "Sem", "Tess"], "PH": ["Jose", "Maria", "Juan", "Angel"],
    "KE": ["Wanjiru", "Otieno", "Achieng", "Kamau"], "IR": ["Reza", "Maryam"], "SY": ["Omar", "Lina"],
    "TR": ["Emre", "Zeynep"], "CU": ["Yoel", "Dayana"], "SD": ["Ahmed", "Fatima"],
}  # fmt: skip
CITIES = {
    "GB": ["London", "Manchester", "Leeds"], "DE": ["Berlin", "München", "Köln"],
    "IN": ["Mumbai", "Bengaluru", "Delhi"], "BR": ["São Paulo", "Rio de Janeiro", "Recife"],
    "US": ["New York", "Austin", "Chicago"], "MX": ["Ciudad de México", "Guadalajara", "Puebla"],
    "NG": ["Lagos", "Abuja", "Ibadan"], "ID": ["Jakarta", "Surabaya", "Bandung"],
    "ES": ["Madrid", "Barcelona", "Sevilla"], "FR": ["Paris", "Lyon", "Marseille"],
    "IT": ["Roma", "Milano", "Napoli"], "ZA": ["Johannesburg", "Cape Town", "Durban"],
    "AR": ["Buenos Aires", "Córdoba", "Rosario"], "CA": ["Toronto", "Montréal", "Vancouver"],
    "NL": ["Amsterdam", "Rotterdam", "Utrecht"], "PH": ["Manila", "Cebu", "Davao"],
    "KE": ["Nairobi", "Mombasa", "Kisumu"], "IR": ["Tehran"], "SY": ["Damascus"], "TR": ["İstanbul"],
    "CU": ["La Habana"], "SD": ["Khartoum"],
}  # fmt: skip
YES = ["yes", "Yes", "TRUE", "true", "1", "y", "Y"]
NO = ["no", "No", "false", "FALSE", "0", "n"]
BAD_OPT_IN = ["maybe", "", "ja", "opted in", "2", "si"]

# Row kinds and their share of the file; "ok" takes the rest.
SHARES = {
    "invalid": 0.04, "blocked": 0.01, "duplicate": 0.02, "opted_out": 0.05, "landline": 0.004,
    "empty_name": 0.004, "bad_opt_in": 0.002, "empty_phone": 0.001,
}  # fmt: skip


class Sample:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.used: set[str] = set()

    def number(self, region: str, kind: int = Type.MOBILE) -> phonenumbers.PhoneNumber:
        """A fresh valid number of `kind` in `region`, varied from the library's example."""
        example = phonenumbers.example_number_for_type(region, kind)
        nsn = phonenumbers.national_significant_number(example)
        wanted = {Type.MOBILE, Type.FIXED_LINE_OR_MOBILE} if kind == Type.MOBILE else {kind}
        for _ in range(1000):
            tail = "".join(self.rng.choice("0123456789") for _ in range(5))
            candidate = phonenumbers.parse(f"+{example.country_code}{nsn[:-5]}{tail}")
            e164 = phonenumbers.format_number(candidate, Fmt.E164)
            if (
                e164 not in self.used
                and phonenumbers.is_valid_number(candidate)
                and phonenumbers.number_type(candidate) in wanted
            ):
                self.used.add(e164)
                return candidate
        raise RuntimeError(f"no valid {kind} number found for {region}")

    def written(self, number: phonenumbers.PhoneNumber, region: str) -> tuple[str, str]:
        """(phone as a person would type it, country cell): E.164, spaced, 00-prefixed or national."""
        style = self.rng.choices(["e164", "spaced", "dashed", "00", "national"], [35, 25, 5, 10, 25])[0]
        international = phonenumbers.format_number(number, Fmt.INTERNATIONAL)
        country = region if self.rng.random() < 0.7 else ""
        if style == "e164":
            return phonenumbers.format_number(number, Fmt.E164), country
        if style == "spaced":
            return international, country
        if style == "dashed":
            return international.replace(" ", self.rng.choice("-.")), country
        if style == "00":
            return "00" + international[1:], country
        return phonenumbers.format_number(number, Fmt.NATIONAL), region  # national needs the country

    def invalid(self, region: str) -> tuple[str, str]:
        number = self.number(region)
        e164 = phonenumbers.format_number(number, Fmt.E164)
        national = phonenumbers.format_number(number, Fmt.NATIONAL)
        choices = [
            (e164[:-5], region),  # too short
            (e164 + "123", ""),  # too long
            (national, ""),  # national format but no country
            (national, "UK" if region == "GB" else "XX"),  # not an ISO code
            ("n/a", region),
            ("unknown", ""),
            (f"{float(e164[1:]):.5E}", region),  # what a spreadsheet makes of it
            ("+999 123 4567", ""),  # no such calling code
            ("+" + str(number.country_code) + "0" * 9, ""),  # right length, not a valid range
            ("=1+1", ""),  # formula-looking junk
        ]
        return self.rng.choice(choices)

    def row(self, region: str, phone: str, country: str, opt_in: str, name: str | None = None) -> dict[str, str]:
        return {
            "phone": phone,
            "country": country,
            "first_name": self.rng.choice(NAMES[region]) if name is None else name,
            "city": self.rng.choice(CITIES[region]),
            "coupon": "WELCOME-" + "".join(self.rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(5)),
            "opt_in": opt_in,
        }


def make_rows(rows: int, seed: int) -> list[dict[str, str]]:
    sample = Sample(seed)
    rng = sample.rng
    kinds = [kind for kind, share in SHARES.items() for _ in range(max(1, round(rows * share)))]
    kinds += ["ok"] * (rows - len(kinds))
    rng.shuffle(kinds)
    regions, weights = list(COUNTRIES), list(COUNTRIES.values())
    out: list[dict[str, str]] = []
    originals: list[tuple[phonenumbers.PhoneNumber, str]] = []  # accepted rows a duplicate can copy
    for index, kind in enumerate(kinds):
        region = rng.choices(regions, weights)[0]
        if kind == "duplicate" and not originals:
            kind = "ok"  # nothing earlier to duplicate yet
        if kind == "ok" or kind == "empty_name" or kind == "opted_out" or kind == "bad_opt_in":
            number = sample.number(region)
            phone, country = sample.written(number, region)
            opt_in = {"opted_out": NO, "bad_opt_in": BAD_OPT_IN}.get(kind, YES)
            row = sample.row(region, phone, country, rng.choice(opt_in), "" if kind == "empty_name" else None)
            if kind == "ok":
                originals.append((number, region))
        elif kind == "duplicate":
            number, region = rng.choice(originals)
            phone, country = sample.written(number, region)  # the same person, typed differently
            row = sample.row(region, phone, country, rng.choice(YES))
        elif kind == "blocked":
            region = BLOCKED[index % len(BLOCKED)]
            phone, country = sample.written(sample.number(region), region)
            row = sample.row(region, phone, country, rng.choice(YES))
        elif kind == "landline":
            region = rng.choice(LANDLINE_COUNTRIES)
            phone, country = sample.written(sample.number(region, Type.FIXED_LINE), region)
            row = sample.row(region, phone, country, rng.choice(YES))
        elif kind == "invalid":
            phone, country = sample.invalid(region)
            row = sample.row(region, phone, country, rng.choice(YES))
        else:  # empty_phone
            row = sample.row(region, "", region, rng.choice(YES))
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--out", type=Path, default=ROOT / "audiences" / "sample.csv")
    args = parser.parse_args()
    rows = make_rows(args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
