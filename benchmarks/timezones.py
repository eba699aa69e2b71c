"""Recipients' time zones for a timed campaign (a send window or a send-at time): the vectorised lookup
(pipeline/audience/timezones.py over numberzones.py) against the per-number loop it replaced, in the same run.

Generates a seeded audience of distinct valid numbers (benchmarks/prepare.py's mix: every region in libphonenumber's
metadata, mostly mobiles, written the ways people write them), classified as the audience stage does, then:
  - ours: `recipient_timezones` on the accepted frame as the campaign flow passes it (phone_e164, region,
    number_type), median of `--repeat` runs (`seconds`; `first_s` is the first, building the prefix tables);
    `unclassified_s`, once, on phone_e164 alone (the lookup classifies the numbers itself);
  - the baseline, the loop as it was (phonenumbers.parse + time_zones_for_number + region_code_for_number +
    principal_zone per distinct number, then replace_strict), on the first `--baseline-rows` numbers, scaled to
    `--rows` (`baseline_s_scaled`: its per-number cost times the rows, as its cost grows linearly);
  - disagreements: ours against the baseline on the baseline's numbers (goal 0).

Usage: python benchmarks/timezones.py [--rows 1000000] [--repeat 3] [--baseline-rows 100000] [--seed 20261208]
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.audience.numbers import classify_number  # noqa: E402
from pipeline.audience.numbers_fast import classify_numbers  # noqa: E402
from pipeline.audience.phonecorpus import sample  # noqa: E402
from pipeline.audience.timezones import _zone_of_number, recipient_timezones  # noqa: E402


def make_audience(rows: int, seed: int) -> pl.DataFrame:
    """`rows` distinct valid numbers as the audience stage accepts them (a fifth more drawn: some repeat)."""
    drawn = list(sample(rows + rows // 5 + 1000, seed, mistakes=0.0))
    phones = pl.Series([p for p, _, _ in drawn], dtype=pl.String)
    countries = pl.Series([c for _, c, _ in drawn], dtype=pl.String)
    found, _ = classify_numbers(phones, countries, classify_number)
    accepted = found.filter(pl.col("phone_e164").is_not_null()).unique("phone_e164", maintain_order=True)
    if accepted.height < rows:
        raise SystemExit(f"the corpus gave {accepted.height:,} distinct valid numbers, fewer than {rows:,}")
    return accepted.head(rows).select("phone_e164", "region", "number_type")


def per_number(frame: pl.DataFrame) -> pl.Series:
    """The loop as it was (pipeline/audience/timezones.py before the vectorised lookup)."""
    lookup = {n: _zone_of_number(n) for n in frame["phone_e164"].unique().to_list()}
    return frame["phone_e164"].replace_strict(lookup, default=None, return_dtype=pl.String).alias("timezone")


def timed(call: Callable[[pl.DataFrame], pl.Series], frame: pl.DataFrame) -> tuple[float, pl.Series]:
    started = time.perf_counter()
    result = call(frame)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261208)
    args = parser.parse_args()
    if not 1 <= args.baseline_rows <= args.rows <= 20_000_000 or not 1 <= args.repeat <= 20:
        parser.error("1 <= --baseline-rows <= --rows <= 20,000,000 and --repeat is 1..20")

    started = time.perf_counter()
    accepted = make_audience(args.rows, args.seed)
    print(f"  audience: {accepted.height:,} numbers, {accepted['region'].n_unique()} regions, "
          f"{time.perf_counter() - started:.1f} s (not timed)", file=sys.stderr, flush=True)  # fmt: skip

    runs = []
    for _ in range(args.repeat):
        seconds, zones = timed(recipient_timezones, accepted)
        runs.append(seconds)
        print(f"  ours: {seconds:.3f} s", file=sys.stderr, flush=True)
    unclassified_s, unclassified = timed(recipient_timezones, accepted.select("phone_e164"))
    print(f"  ours, classifying the numbers itself: {unclassified_s:.3f} s", file=sys.stderr, flush=True)

    head = accepted.head(args.baseline_rows)
    baseline_s, expected = timed(per_number, head)
    print(f"  baseline: {baseline_s:.2f} s for {head.height:,}", file=sys.stderr, flush=True)
    disagreements = int((zones.head(head.height).ne_missing(expected)).sum())
    disagreements += int((unclassified.head(head.height).ne_missing(expected)).sum())

    seconds = statistics.median(runs)
    baseline_scaled = baseline_s * accepted.height / head.height
    print(json.dumps({
        "name": "timezones", "rows": accepted.height, "distinct": accepted["phone_e164"].n_unique(),
        "regions": accepted["region"].n_unique(), "seconds": round(seconds, 3), "first_s": round(runs[0], 3),
        "runs_s": [round(r, 3) for r in runs], "unclassified_s": round(unclassified_s, 3),
        "baseline_rows": head.height, "baseline_s": round(baseline_s, 3),
        f"baseline_s_scaled_from_{head.height // 1000}k": round(baseline_scaled, 2),
        "baseline_us_per_number": round(baseline_s / head.height * 1e6, 1),
        "ratio": round(baseline_scaled / seconds, 1), "disagreements": disagreements,
        "zones": zones.n_unique(), "no_zone": zones.null_count(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
