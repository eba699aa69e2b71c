"""The preparation chain (load → validate → suppress → frequency cap → dedupe → render → SMS
segments), batch by batch, and its output files: accepted.parquet, rejects.parquet and a
spreadsheet-safe rejects.csv. Batches carry the dedupe state, so any batch size gives the same
output as one pass."""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import IO, TypeVar

import polars as pl
import pyarrow.parquet as pq

from pipeline.audience.address_sets import AddressSet
from pipeline.audience.blocks import ReadLimits
from pipeline.audience.consent import DEFAULT_OPT_IN_MAX_AGE
from pipeline.audience.frequency import DEFAULT_FREQUENCY_WINDOW
from pipeline.audience.load import DEFAULT_BATCH_BYTES, AudienceReader, Loaded
from pipeline.audience.numbers import Carry, drop_duplicates, validate_numbers
from pipeline.audience.policy import BlockedPolicy, blocked_policy
from pipeline.records import REJECTS_SCHEMA
from pipeline.render.languages import with_languages
from pipeline.render.limits import RenderLimits
from pipeline.render.segments import with_segments
from pipeline.render.templates import TemplateProblem, check_template, render_messages
from pipeline.spec import TemplateSpec

# Cells starting with these are formulas to Excel/LibreOffice/Sheets (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Characters a spreadsheet would hide or act on, written as escapes: controls (NUL among them; tab,
# newline and CR are CSV's own) and the bidirectional overrides that reorder what a cell shows
# ("Trojan Source": U+202E makes "txt.exe" read "exe.txt").
_HIDDEN = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in "\t\n\r"]
_HIDDEN += [chr(c) for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))]
VISIBLE_ESCAPES = {c: f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in _HIDDEN}
_HIDDEN_CLASS = "[" + "".join(f"\\x{{{ord(c):X}}}" for c in _HIDDEN) + "]"
REJECTS_COLUMNS = list(REJECTS_SCHEMA)  # then the row's original columns, as written
Out = TypeVar("Out")
# Batches prepared while the one before them is finished (pipeline/audience/load.DEFAULT_BATCH_BYTES each).
BATCHES_AHEAD = 2


@dataclass(frozen=True)
class Prepared:
    # row_number, CSV columns, phone_e164, region, number_type[, text, params_json, segments, encoding]
    accepted: pl.DataFrame
    rejects: pl.DataFrame  # row_number, reason, detail, then the row's CSV columns as written
    rows_read: int
    counts: dict[str, int]  # rejects by reason
    accepted_rows: int = 0  # = accepted.height, also when the frames were not kept
    fallback_rows: int = 0  # rows phonenumbers classified itself (inputs the vectorised path leaves to it)
    paths: dict[str, Path] = field(default_factory=dict)


def escape_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """Every text cell made safe to open in a spreadsheet: a ' before a cell it would evaluate as a
    formula, and control and bidirectional-override characters written as escapes (NUL as \\x00,
    U+202E as \\u202e)."""
    formula = "^[" + re.escape("".join(FORMULA_PREFIXES)) + "]"
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if text:  # escapes only in the columns that hold such characters (most hold none)
        holding = frame.select(pl.col(text).str.contains(_HIDDEN_CLASS).any()).row(0)
        hiding = [name for name, found in zip(text, holding, strict=True) if found]
        frame = frame.with_columns(pl.col(c).str.replace_many(VISIBLE_ESCAPES) for c in hiding)
    return frame.with_columns(
        pl.when(pl.col(name).str.contains(formula)).then(pl.lit("'") + pl.col(name)).otherwise(pl.col(name)).alias(name)
        for name in text
    )


class _Outputs:
    """accepted.parquet, rejects.parquet and rejects.csv, appended batch by batch under temporary
    names and renamed into place only when the whole file was prepared."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {
            "accepted": out_dir / "accepted.parquet",
            "rejects": out_dir / "rejects.parquet",
            "rejects_csv": out_dir / "rejects.csv",
        }
        self._partial = {k: p.with_name(p.name + ".partial") for k, p in self.paths.items()}
        self._parquet: dict[str, pq.ParquetWriter] = {}
        self._csv: IO[bytes] | None = None

    def write(self, accepted: pl.DataFrame, rejects: pl.DataFrame) -> None:
        for key, frame in (("accepted", accepted), ("rejects", rejects)):
            table = frame.to_arrow()
            if key not in self._parquet:  # lz4: ≈ 2× faster to write than snappy, about as small
                self._parquet[key] = pq.ParquetWriter(self._partial[key], table.schema, compression="lz4")
            self._parquet[key].write_table(table)
        header = self._csv is None
        if self._csv is None:
            self._csv = self._partial["rejects_csv"].open("wb")
        escape_formulas(rejects).write_csv(self._csv, include_header=header)

    def close(self, *, keep: bool) -> None:
        for writer in self._parquet.values():
            writer.close()
        if self._csv is not None:
            self._csv.close()
        for key, unfinished in self._partial.items():
            if keep:
                unfinished.replace(self.paths[key])
            else:
                unfinished.unlink(missing_ok=True)


def _with_originals(rejects: pl.DataFrame, rows: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Rejects in row order, each with its row's values as read (`rows`: the batch, in order)."""
    rejects = rejects.sort("row_number")
    first = rows["row_number"][0] if rows.height else 0
    originals = rows.select(columns).gather(rejects["row_number"] - first)
    return rejects.select(REJECTS_COLUMNS).hstack(originals)


@dataclass(frozen=True)
class Stages:
    """The checks and rendering every batch goes through, with their settings. Plain data, so a
    chunk worker in another process gets its own copy (pipeline/render/prepare_chunks.py)."""

    channel: str
    category: str
    template: TemplateSpec | None = None
    variables: dict[str, str] = field(default_factory=dict)
    policy: BlockedPolicy | None = None
    suppressed: AbstractSet[str] = frozenset()
    suppression_reasons: Mapping[str, str] | None = None  # address -> why: the reject says how they opted out
    recently_messaged: AbstractSet[str] = frozenset()
    frequency_window: timedelta = DEFAULT_FREQUENCY_WINDOW
    frequency_detail: str | None = None  # a team's cap says what it counted (pipeline/audience/frequency.py)
    capped_categories: frozenset[str] = frozenset({"marketing"})
    # The template's languages (the provider's registry); empty: the spec's own list (pipeline/render/languages.py).
    languages: tuple[str, ...] = ()
    opt_in_max_age: timedelta | None = DEFAULT_OPT_IN_MAX_AGE
    now: datetime | None = None
    default_country: str | None = None
    render_limits: RenderLimits = RenderLimits()

    def check_template(self, path: Path | str, columns: list[str]) -> None:
        """Raises TemplateProblem when the template cannot fit this audience, before any row is read."""
        if self.template is not None:
            problems = check_template(self.template, self.variables, columns)
            if problems:
                raise TemplateProblem(f"{path}: " + "; ".join(problems))

    def candidates(self, loaded: Loaded, columns: list[str], carry: Carry) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(the rows sendable but for duplicates, rendered and with their SMS segments; the batch's
        other rejects in row order, with their values as written). Row by row, so any split of
        a file into batches gives the same rows; only drop_repeats needs what came before."""
        batch = self.prepared(loaded, columns)
        carry.fallback_rows += batch.fallback_rows
        return batch.candidates, batch.rejects

    def prepared(self, loaded: Loaded, columns: list[str]) -> Batch:
        """`candidates` of one batch, with the count of rows phonenumbers classified, for one thread."""
        return self.rendered(self.checked(loaded), columns)

    def checked(self, loaded: Loaded) -> Checked:
        """The first half of `candidates`: numbers, consent, suppressions and caps. Needs nothing
        from other batches, so batches can be checked in several threads at once."""
        counted = Carry()  # only its count of rows left to phonenumbers (dedupe=False)
        accepted, number_rejects = validate_numbers(
            loaded.frame, channel=self.channel, category=self.category, policy=self.policy,
            suppressed=self.suppressed, default_country=self.default_country,
            recently_messaged=self.recently_messaged, frequency_window=self.frequency_window,
            opt_in_max_age=self.opt_in_max_age, now=self.now, carry=counted, dedupe=False,
            frequency_detail=self.frequency_detail, capped_categories=self.capped_categories,
            suppression_reasons=self.suppression_reasons,
        )  # fmt: skip
        rejects = pl.concat([loaded.rejects, number_rejects])
        return Checked(loaded.rows, loaded.rows_read, accepted, rejects, counted.fallback_rows)

    def rendered(self, checked: Checked, columns: list[str]) -> Batch:
        """The second half of `candidates`: the message of each row still sendable."""
        accepted, parts = checked.accepted, [checked.rejects]
        if self.template is not None:
            # Rendered before deduplication: a row that cannot be sent does not hide a later one.
            accepted, render_rejects = render_messages(accepted, self.template, self.variables, self.render_limits)
            parts.append(render_rejects)
            accepted = with_segments(accepted)
            t = self.template
            accepted = with_languages(
                accepted, t.language_column, self.languages or (t.language, *t.languages), t.fallback
            )
        rejects = _with_originals(pl.concat(parts), checked.rows, columns)
        return Batch(checked.rows_read, accepted, rejects, checked.fallback_rows)


@dataclass(frozen=True)
class Checked:
    """A batch between the two halves of Stages.candidates."""

    rows: pl.DataFrame  # the batch as read (Loaded.rows), for the rejects' original values
    rows_read: int
    accepted: pl.DataFrame
    rejects: pl.DataFrame
    fallback_rows: int


@dataclass(frozen=True)
class Batch:
    """A batch through Stages.candidates: all but the duplicates decided."""

    rows_read: int
    candidates: pl.DataFrame
    rejects: pl.DataFrame
    fallback_rows: int


def drop_repeats(
    candidates: pl.DataFrame, rejects: pl.DataFrame, columns: list[str], carry: Carry
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accepted, rejects): candidates whose number an earlier row had (in this batch or one
    `carry` has seen) join the rejects as duplicates, in row order with their values as written."""
    accepted, duplicates = drop_duplicates(candidates, carry, keep=columns)
    if duplicates.height == 0:
        return accepted, rejects
    return accepted, pl.concat([rejects, duplicates]).sort("row_number")


class Collector:
    """Each batch's accepted rows and rejects, in file order: checked (every row read lands in
    exactly one of them), counted, written to `out_dir` and kept in memory when asked. Leaving
    the `with` block on an exception removes the partial files."""

    def __init__(self, path: Path | str, out_dir: Path | str | None, *, keep_frames: bool = True) -> None:
        self.path, self.keep_frames = path, keep_frames
        self.outputs = _Outputs(Path(out_dir)) if out_dir is not None else None
        self.counts: Counter[str] = Counter()
        self.kept: list[tuple[pl.DataFrame, pl.DataFrame]] = []
        self.rows_read = self.accepted_rows = 0

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and self.outputs is not None:
            self.outputs.close(keep=False)

    def add(self, accepted: pl.DataFrame, rejects: pl.DataFrame, rows_read: int) -> None:
        if accepted.height + rejects.height != rows_read:
            raise RuntimeError(  # a stage dropped or duplicated rows: never send on that
                f"{self.path}: {rows_read} rows read but {accepted.height} accepted + {rejects.height} rejected"
            )
        self.rows_read += rows_read
        self.accepted_rows += accepted.height
        self.counts.update(dict(rejects["reason"].value_counts().iter_rows()))
        if self.outputs is not None:
            self.outputs.write(accepted, rejects)
        if self.keep_frames:
            self.kept.append((accepted, rejects))
        elif not self.kept:  # empty frames of the right schema only
            self.kept.append((accepted.clear(), rejects.clear()))

    def finish(self, columns: list[str], *, rendered: bool, fallback_rows: int) -> Prepared:
        if not self.kept:  # a header-only file
            accepted, rejects = _empty_outputs(columns, rendered)
            self.kept.append((accepted, rejects))
            if self.outputs is not None:
                self.outputs.write(accepted, rejects)
        if self.outputs is not None:
            self.outputs.close(keep=True)
        return Prepared(
            accepted=pl.concat([a for a, _ in self.kept]),
            rejects=pl.concat([r for _, r in self.kept]),
            rows_read=self.rows_read,
            counts=dict(sorted(self.counts.items())),
            accepted_rows=self.accepted_rows,
            fallback_rows=fallback_rows,
            paths=self.outputs.paths if self.outputs is not None else {},
        )


def prepare_audience(
    path: Path | str,
    *,
    channel: str,
    category: str,
    template: TemplateSpec | None = None,
    variables: dict[str, str] | None = None,
    policy: BlockedPolicy | None = None,
    suppressed: Iterable[str] = frozenset(),
    recently_messaged: Iterable[str] = frozenset(),
    suppression_reasons: Mapping[str, str] | None = None,
    frequency_window: timedelta = DEFAULT_FREQUENCY_WINDOW,
    frequency_detail: str | None = None,
    capped_categories: frozenset[str] = frozenset({"marketing"}),
    languages: tuple[str, ...] = (),
    opt_in_max_age: timedelta | None = DEFAULT_OPT_IN_MAX_AGE,
    now: datetime | None = None,
    out_dir: Path | str | None = None,
    default_country: str | None = None,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    keep_frames: bool = True,
    read_limits: ReadLimits | None = None,
    render_limits: RenderLimits | None = None,
) -> Prepared:
    """Runs every preparation stage over one audience file; raises AudienceError for an unusable
    file, TemplateProblem for a template that cannot fit this audience and SpecError for a bound
    set wrong in the environment.

    `suppressed` and `recently_messaged` are addresses (any notation) from the suppression
    table and the outbox (frequency.recently_messaged); `keep_frames=False` keeps only counts
    in memory (with `out_dir`, for files larger than memory). The bounds default to the
    environment's (ReadLimits.from_env, RenderLimits.for_channel)."""
    stages = make_stages(
        channel=channel, category=category, template=template, variables=variables, policy=policy,
        suppressed=suppressed, recently_messaged=recently_messaged, frequency_window=frequency_window,
        frequency_detail=frequency_detail, capped_categories=frozenset(capped_categories), languages=tuple(languages),
        opt_in_max_age=opt_in_max_age, now=now, default_country=default_country, render_limits=render_limits,
        suppression_reasons=suppression_reasons,
    )  # fmt: skip
    reader = AudienceReader(path, batch_bytes=batch_bytes, limits=read_limits)
    try:
        stages.check_template(path, reader.columns)
    except BaseException:
        reader.close()
        raise
    with reader, Collector(path, out_dir, keep_frames=keep_frames) as collector:
        carry = Carry()
        # Three batches at once: while this thread reads the next one and drops the repeats of the
        # one before, three threads check and render the ones read since. Polars works without the
        # GIL, so on two cores the batches overlap: 1M rows in ~0.85 of the time of one batch after
        # the other, for the memory of two batches more (hence the 16 MB default batch).
        pool = ThreadPoolExecutor(BATCHES_AHEAD + 1, thread_name_prefix="prepare")
        try:
            jobs = (partial(stages.prepared, loaded, reader.columns) for loaded in reader)
            for batch in _in_order(pool, jobs, BATCHES_AHEAD):
                carry.fallback_rows += batch.fallback_rows
                accepted, rejects = drop_repeats(batch.candidates, batch.rejects, reader.columns, carry)
                collector.add(accepted, rejects, batch.rows_read)
                del batch, accepted, rejects
        finally:
            pool.shutdown(cancel_futures=True)  # after an error, no batch is started that nobody would use
        return collector.finish(reader.columns, rendered=template is not None, fallback_rows=carry.fallback_rows)


def _in_order(pool: ThreadPoolExecutor, jobs: Iterable[Callable[[], Out]], ahead: int) -> Iterator[Out]:
    """Each job's result in order, each job run in `pool`; up to `ahead` jobs started after the one
    whose result is being handed on (taking the next job from `jobs` is not started early)."""
    started: deque[Future[Out]] = deque()
    for job in jobs:
        started.append(pool.submit(job))
        del job
        if len(started) > ahead:
            yield started.popleft().result()
    while started:
        yield started.popleft().result()


def make_stages(
    *, channel: str, category: str, template: TemplateSpec | None = None, variables: dict[str, str] | None = None,
    policy: BlockedPolicy | None = None, suppressed: Iterable[str] = frozenset(),
    recently_messaged: Iterable[str] = frozenset(), render_limits: RenderLimits | None = None, **settings: object,
) -> Stages:  # fmt: skip
    """prepare_audience's settings as Stages (the channel's blocked-country policy and message limits
    by default, read here once so chunk workers elsewhere use the same)."""
    return Stages(
        channel=channel, category=category, template=template, variables=dict(variables or {}),
        policy=policy if policy is not None else blocked_policy(channel), suppressed=_as_set(suppressed),
        recently_messaged=_as_set(recently_messaged),
        render_limits=render_limits if render_limits is not None else RenderLimits.for_channel(channel),
        **settings,  # type: ignore[arg-type]
    )  # fmt: skip


def _as_set(addresses: Iterable[str]) -> AbstractSet[str]:
    """A frozenset or an AddressSet as it is (the latter keeps its matcher and may still be being read:
    pipeline/audience/address_sets.py), else a frozenset made."""
    return addresses if isinstance(addresses, frozenset | AddressSet) else frozenset(addresses)


def _empty_outputs(columns: list[str], rendered: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    text = dict.fromkeys(columns, pl.String)
    accepted = {"row_number": pl.Int64, **text, "phone_e164": pl.String, "region": pl.String, "number_type": pl.String}
    if rendered:
        accepted |= {"text": pl.String, "params_json": pl.String, "segments": pl.Int64, "encoding": pl.String}
    return pl.DataFrame(schema=accepted), pl.DataFrame(schema={**REJECTS_SCHEMA, **text})


def write_outputs(prepared: Prepared, out_dir: Path) -> dict[str, Path]:
    """Writes a Prepared's frames (prepare_audience(out_dir=…) writes them as it goes)."""
    outputs = _Outputs(out_dir)
    outputs.write(prepared.accepted, prepared.rejects)
    outputs.close(keep=True)
    return outputs.paths
