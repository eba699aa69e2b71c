"""Audience preparation at scale: ours (vectorised numbers + compiled template) against the
straightforward way (phonenumbers + Jinja2 per row), and agreement with phonenumbers on every row.

Generates a seeded corpus (every region in libphonenumber's metadata, 5 % invalid or malformed,
1 % blocked countries, 2 % duplicates written differently, opt-in mixed), then:
  - ours: `prepare_audience` (load + validate + dedupe + suppress + frequency cap + render +
    SMS segments), each repeat in a fresh subprocess (cold: metadata loading and regex compiling
    included; importing Polars, phonenumbers and Jinja2 is not, `import_s`), whose ru_maxrss
    is the peak memory; the median of the repeats is `seconds`;
    `seconds_with_output_files` is the same plus writing accepted.parquet, rejects.parquet and
    rejects.csv, as `campaign prepare` does;
  - the baseline: csv module + phonenumbers per row + Jinja2 per row, on a sample (rows/s);
  - disagreements: our number classification against `numbers.classify_number` (phonenumbers
    per row: parse + is_valid_number + number_type + region_code_for_number) on every row, in
    a Pool(2); `rule_00_rows` counts rows where that reference differs from bare phonenumbers
    (our one documented rule: 00<digits> not valid as read is read as +<digits>).

With `--kinds`, the template is the demo's with an image header whose link is built from each recipient's
coupon, a URL button and a copy-code button carrying the coupon, and the opt-out quick reply (issue 18): the
same preparation, with more rendered per row (both ways).

With `--controls` (issue 19), the campaign's preparation with the team's controls on a store that has sent a lot:
a 7-day cap across WhatsApp and Chat App over `--history` (default 10M) sends seeded in the store's outbox, and a
`language` column matched against the template's languages (benchmarks/_controls.py); the JSON names the backend.

Usage: python benchmarks/prepare.py [--rows 1000000] [--repeat 3] [--baseline-rows 50000] [--seed 20261125] [--kinds]
       python benchmarks/prepare.py --controls [--history 10000000] [--backend sqlite|postgresql] [--rows N]
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCKED = frozenset({"KP", "SY", "IR", "CU", "SD", "TR"})
NAMES = ["Ann", "José", "Zoë", "Björn", "Aarav", "Chinedu", "Mia", "Lucía", "Søren", "Amélie", "Li", "Omar"]
CITIES = ["London", "São Paulo", "München", "Lagos", "Delhi", "Kraków", "Montréal", "Cebu", "Nairobi"]
YES = ["yes", "Yes", "YES", "y", "Y", "true", "TRUE", "1"]
NO = ["no", "No", "n", "false", "0"]
BAD = ["maybe", "", "ja", "2"]


def make_corpus(path: Path, rows: int, seed: int, languages: bool = False) -> None:
    """With `languages`, a `language` column as people fill it in (benchmarks/_controls.py)."""
    from benchmarks._controls import WRITTEN
    from pipeline.audience.phonecorpus import sample, written

    rng = random.Random(seed)
    blocked = [r for r in sample(max(1, rows // 50), seed + 1, mistakes=0.0) if r[2] in BLOCKED]
    numbers = sample(rows, seed, mistakes=0.05, exclude=BLOCKED)
    earlier: list[tuple[str, str, str]] = []
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        header = ["phone", "country", "first_name", "city", "coupon", "opt_in"]
        out.writerow(header + (["language"] if languages else []))
        for index in range(rows):
            draw = rng.random()
            if draw < 0.01 and blocked:
                phone, country, _ = rng.choice(blocked)
            elif draw < 0.03 and earlier:
                # The same number again, written another way.
                plus, country, region = rng.choice(earlier)
                code, nsn = _split(plus)
                phone, country = written(region, code, nsn, rng) if code else (plus, country)
            else:
                phone, country, region = next(numbers)
                if phone.startswith("+") and phone[1:].isdigit() and len(earlier) < 50_000:
                    earlier.append((phone, country, region))
            opt = rng.random()
            opt_in = rng.choice(YES) if opt < 0.93 else rng.choice(NO) if opt < 0.995 else rng.choice(BAD)
            coupon = "WELCOME-" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(5))
            name = rng.choice(NAMES) if rng.random() > 0.002 else ""
            extra = [rng.choice(WRITTEN)] if languages else []
            out.writerow([phone, country, name, rng.choice(CITIES), coupon, opt_in, *extra])
            if index % 100_000 == 99_999:
                print(f"  corpus: {index + 1:,} rows", file=sys.stderr, flush=True)


def _split(e164: str) -> tuple[int, str]:
    import phonenumbers

    try:
        number = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return 0, ""
    return number.country_code, phonenumbers.national_significant_number(number)


KINDS = {"header_media": {"format": "image", "link": "https://cdn.acme.test/offers/{{ code }}.jpg"},
         "buttons": [{"sub_type": "url", "text": "{{ code }}"}, {"sub_type": "copy_code", "text": "{{ code }}"},
                     {"sub_type": "quick_reply", "payload": "STOP_PROMOS", "opt_out": True}]}


def load_bench_spec(kinds: bool):  # noqa: ANN201
    """The demo spec, or with `kinds` its template with a media header, a URL and a copy-code button."""
    from pipeline.spec import load_spec

    spec = load_spec(ROOT / "campaigns" / "welcome.yaml")
    if kinds:
        template = spec.template.model_validate({**spec.template.model_dump(exclude_none=True), **KINDS})
        spec = spec.model_copy(update={"template": template})
    return spec


def run_ours(corpus: Path, out_dir: Path | None, kinds: bool = False) -> dict:
    """One cold preparation in this process (called in a subprocess); with `out_dir`, also writing
    the output files (as `campaign prepare` does), else keeping the frames in memory."""
    started = time.perf_counter()
    from pipeline.render.prepare import prepare_audience

    spec = load_bench_spec(kinds)
    imported = time.perf_counter()
    suppressed = {f"+4474001234{i:02d}" for i in range(100)}
    prepared = prepare_audience(
        corpus, channel=spec.channel, category=spec.template.category, template=spec.template,
        variables=spec.variables, suppressed=suppressed, recently_messaged={"+447400123499"}, out_dir=out_dir,
        keep_frames=out_dir is None,
    )  # fmt: skip
    seconds = time.perf_counter() - imported  # the libraries' import time is not preparation
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "import_s": imported - started, "peak_rss_mb": peak, "rows": prepared.rows_read,
            "accepted": prepared.accepted_rows,
            "counts": prepared.counts, "fallback_rows": prepared.fallback_rows}  # fmt: skip


def run_baseline(corpus: Path, limit: int, kinds: bool = False) -> tuple[int, float]:
    """The straightforward way over the first `limit` rows: (rows, seconds)."""
    import phonenumbers
    from jinja2 import StrictUndefined, UndefinedError
    from jinja2.sandbox import SandboxedEnvironment

    spec = load_bench_spec(kinds)
    # Fair to the baseline: over every region phonenumbers' regexes overflow the re module's cache.
    getattr(phonenumbers, "enable_pattern_cache", lambda: None)()
    started = time.perf_counter()
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    text = env.from_string(spec.template.text)
    # Every part rendered per recipient: the header (a media link too), the body, the buttons' values.
    body = [env.from_string(s) for s in [*spec.template.header_sources, *spec.template.body,
                                         *(b.text for b in spec.template.buttons if b.text)]]
    seen: set[str] = set()
    done = accepted = 0
    yes = {"true", "yes", "1", "y"}
    with corpus.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            done += 1
            if done > limit:
                done -= 1
                break
            try:
                number = phonenumbers.parse(row["phone"], row["country"] or None)
            except phonenumbers.NumberParseException:
                continue
            if not phonenumbers.is_valid_number(number):
                continue
            kind = phonenumbers.number_type(number)
            region = phonenumbers.region_code_for_number(number)
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            if kind not in (1, 2) or region in BLOCKED or row["opt_in"].strip().lower() not in yes or e164 in seen:
                continue
            seen.add(e164)
            context = {k: row[v] for k, v in spec.variables.items() if row[v]}
            try:
                text.render(context), [b.render(context) for b in body]
            except UndefinedError:
                continue
            accepted += 1
    return done, time.perf_counter() - started


def _reference(chunk: list[tuple[str, str]]) -> list[tuple]:
    import phonenumbers

    from pipeline.audience.numbers import classify_number

    out = []
    for phone, country in chunk:
        ours = classify_number(phone, country)
        try:
            number = phonenumbers.parse(phone, country if country in phonenumbers.SUPPORTED_REGIONS else None)
            bare = phonenumbers.is_valid_number(number)
        except phonenumbers.NumberParseException:
            bare = False
        out.append((ours[0], ours[1], ours[2], (ours[3] is None) != bare))
    return out


def disagreements(corpus: Path) -> tuple[int, int]:
    """(rows where our classification differs from per-row phonenumbers, rows the 00 rule changes)."""
    import polars as pl

    from pipeline.audience.numbers import classify_number
    from pipeline.audience.numbers_fast import classify_numbers

    frame = pl.read_csv(corpus, infer_schema=False)
    country = frame["country"].str.strip_chars().str.to_uppercase().fill_null("")
    ours, _ = classify_numbers(frame["phone"], country, classify_number)
    pairs = list(zip(frame["phone"].fill_null("").to_list(), country.to_list(), strict=True))
    size = 20_000
    with Pool(2) as pool:
        reference = [r for part in pool.imap(_reference, [pairs[i : i + size] for i in range(0, len(pairs), size)])
                     for r in part]  # fmt: skip
    bad = rule = 0
    for got, ref in zip(ours.select("phone_e164", "region", "number_type").iter_rows(), reference, strict=True):
        bad += got != ref[:3]
        rule += ref[3]
    return bad, rule


MAX_ROWS, MAX_REPEAT, RUN_TIMEOUT_S = 20_000_000, 20, 600


if TYPE_CHECKING:
    from pipeline.store.local_pg import LocalPostgres


def settled(url: str, server: LocalPostgres | None) -> None:
    """The seeded store with its load written out before anything is timed, as a store that has not just taken 10M
    rows is: PostgreSQL's checkpoint (else its checkpointer flushes the load's gigabytes during the timed runs),
    SQLite's WAL folded into the database file."""
    if server is None:
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    import psycopg

    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def controls(args: argparse.Namespace) -> None:
    """`--controls`: the campaign's preparation with a 7-day cap over `--history` sends in the store and a language
    column (benchmarks/_controls.py), each repeat a cold process; the last line one JSON object."""
    from contextlib import ExitStack

    from benchmarks._controls import CAP, audience_keys, seed_history
    from pipeline.store.local_pg import local_postgres

    with tempfile.TemporaryDirectory(prefix="bench-prepare-controls-") as tmp, ExitStack() as stack:
        corpus = Path(tmp) / "audience.csv"
        make_corpus(corpus, args.rows, args.seed, languages=True)
        server = None
        if args.backend == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'campaigns.sqlite'}"
        else:
            server = stack.enter_context(local_postgres(durable=True))
            url = server.create_database("bench")
        seeded = seed_history(url, args.history, audience_keys(corpus), args.seed)
        settled(url, server)
        print(f"  history: {seeded}", file=sys.stderr, flush=True)
        runs = []
        for _ in range(args.repeat):
            done = subprocess.run([sys.executable, __file__, "--controls-worker", str(corpus), url], check=True,
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  run: {runs[-1]['seconds']:.2f} s (cap query {runs[-1]['cap_query_s']:.2f} s)", file=sys.stderr,
                  flush=True)
    first = runs[0]
    print(json.dumps({
        "name": "prepare_controls", "backend": args.backend, "rows": first["rows"], **seeded, "cap": CAP,
        "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
        "cap_query_s": round(statistics.median(r["cap_query_s"] for r in runs), 3),
        "prepare_s": round(statistics.median(r["prepare_s"] for r in runs), 3),
        "runs_s": [round(r["seconds"], 3) for r in runs], "target_s": 3.0,
        "capped_in_store": first["capped_in_store"], "frequency_capped": first["counts"].get("frequency_capped", 0),
        "accepted": first["accepted"], "languages": first["languages"],
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)), "import_s": round(first["import_s"], 3),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--skip-reference", action="store_true", help="do not count disagreements (≈ 30 s for 1M)")
    parser.add_argument("--kinds", action="store_true", help="a media header, URL and copy-code buttons (issue 18)")
    parser.add_argument("--controls", action="store_true",
                        help="issue 19: a 7-day cap over a send history in the store, and a language column")
    parser.add_argument("--history", type=int, default=10_000_000, help="with --controls: outbox rows seeded")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite",
                        help="with --controls: the store holding the history")
    parser.add_argument("--worker", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--controls-worker", nargs=2, metavar=("CORPUS", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.rows <= MAX_ROWS or not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--rows is 1..{MAX_ROWS:,} and --repeat 1..{MAX_REPEAT}")
    if args.controls_worker:
        from benchmarks._controls import run_controls

        print(json.dumps(run_controls(Path(args.controls_worker[0]), args.controls_worker[1])))
        return
    if args.controls:
        controls(args)
        return
    if args.worker:
        out = None if args.worker[1] == "-" else Path(args.worker[1])
        print(json.dumps(run_ours(Path(args.worker[0]), out, args.kinds)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        corpus = Path(tmp) / "audience.csv"
        make_corpus(corpus, args.rows, args.seed)

        def ours(out: str) -> dict:
            result = subprocess.run(
                [sys.executable, __file__, "--worker", str(corpus), out, *(["--kinds"] if args.kinds else [])],
                check=True, capture_output=True, text=True
            )
            run = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"  ours ({'files' if out != '-' else 'in memory'}): {run['seconds']:.2f} s, "
                  f"{run['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
            return run

        runs = [ours("-") for _ in range(args.repeat)]
        written = [ours(str(Path(tmp) / f"out{i}")) for i in range(args.repeat)]
        base_rows, base_seconds = run_baseline(corpus, args.baseline_rows, args.kinds)
        bad, rule = (None, None) if args.skip_reference else disagreements(corpus)
    seconds = statistics.median(r["seconds"] for r in runs)
    with_files = statistics.median(r["seconds"] for r in written)
    per_s = runs[0]["rows"] / seconds
    baseline_per_s = base_rows / base_seconds
    print(json.dumps({
        "name": "prepare_kinds" if args.kinds else "prepare",
        "rows": runs[0]["rows"], "seconds": round(seconds, 3), "per_s": round(per_s),
        "baseline_per_s": round(baseline_per_s), "ratio": round(per_s / baseline_per_s, 1), "disagreements": bad,
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs + written)), "fallback_rows": runs[0]["fallback_rows"],
        "rule_00_rows": rule, "seconds_with_output_files": round(with_files, 3),
        "import_s": round(statistics.median(r["import_s"] for r in runs), 3),
        "runs_s": [round(r["seconds"], 3) for r in runs],
        "runs_with_files_s": [round(r["seconds"], 3) for r in written],
        "accepted": runs[0]["accepted"], "rejects": runs[0]["counts"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
