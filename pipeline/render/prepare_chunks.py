"""Chunk-parallel preparation of one audience file, with the output of prepare_audience.

The file is cut into byte ranges of whole records (where the streaming reader cuts its batches,
so quoted newlines stay inside their record); each chunk runs the row-by-row stages
(Stages.candidates: load, validate, suppress, frequency cap, render, SMS segments) wherever the
caller's `run` sends it and leaves its rows in Arrow files; the merge then walks the chunks in
file order, numbers their rows, and drops duplicates with one carry, exactly as the single
process does batch after batch: the first row with a number wins, wherever it is. How the chunks
run (a Prefect flow on Dask: flows/prepare_parallel.py) is not this module's business.
"""

from __future__ import annotations

import codecs
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from pipeline.audience.blocks import Oversized, ReadLimits, blocks
from pipeline.audience.load import AudienceReader, read_block
from pipeline.audience.numbers import Carry
from pipeline.render.prepare import Collector, Prepared, Stages, drop_repeats, make_stages, prepare_audience
from pipeline.spec import PrepareSpec, SpecError

# The environment overrides a spec's `prepare` settings, so an operator can switch a run (or a
# deployment) to chunk-parallel preparation without editing the spec.
ENVIRONMENT = {name: f"CAMPAIGN_PREPARE_{name.upper()}" for name in ("runner", "workers", "chunk_mb")}


def prepare_settings(spec: PrepareSpec, environ: Mapping[str, str] = os.environ) -> PrepareSpec:
    """`spec` with the CAMPAIGN_PREPARE_* variables that are set taking precedence."""
    given = {name: environ[var] for name, var in ENVIRONMENT.items() if environ.get(var, "").strip()}
    try:
        return PrepareSpec.model_validate({**spec.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{ENVIRONMENT.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"prepare settings: {problems}") from None


@dataclass(frozen=True)
class ChunkJob:
    """One byte range of whole records and everything needed to prepare it in another process."""

    index: int
    path: Path
    columns: list[str]
    header: bytes  # the header line, which fixes the number of columns
    start: int
    end: int
    first_line: int  # of the range in the file, so errors name the line as the single path does
    stages: Stages
    work_dir: Path
    limits: ReadLimits = ReadLimits()


@dataclass(frozen=True)
class ChunkResult:
    index: int
    rows_read: int
    fallback_rows: int
    candidates: Path  # rows sendable but for duplicates; row_number counts from 0 within the chunk
    rejects: Path


def plan_chunks(
    path: Path, stages: Stages, chunk_bytes: int, work_dir: Path, limits: ReadLimits
) -> list[ChunkJob] | None:
    """The file's chunks, after the checks the single path makes before reading any row (an
    unusable header or file, a template that does not fit), with the same errors; None for a file
    the single path reads better: one with a record over the row bound (which it skips without
    holding) or CR-only line endings (which it translates)."""
    with AudienceReader(path, batch_bytes=min(chunk_bytes, 1 << 20), limits=limits) as reader:
        columns = reader.columns
    stages.check_template(path, columns)
    jobs: list[ChunkJob] = []
    with path.open("rb") as handle:
        first = handle.readline(limits.max_row_bytes + 2)
        if not first.endswith(b"\n"):  # CR-only line endings (or no row at all)
            return None
        header = first.removeprefix(codecs.BOM_UTF8).rstrip(b"\r\n") + b"\n"
        start, line = handle.tell(), 2
        for block in blocks(handle, max(1, chunk_bytes), limits.max_row_bytes):
            if isinstance(block, Oversized):
                return None
            job = ChunkJob(len(jobs), path, columns, header, start, start + len(block), line, stages, work_dir, limits)
            jobs.append(job)
            start, line = start + len(block), line + block.count(b"\n")
    return jobs


def prepare_chunk(job: ChunkJob) -> ChunkResult:
    """Runs the row-by-row stages over one chunk (in a worker process) and writes its rows."""
    with job.path.open("rb") as handle:
        handle.seek(job.start)
        block = handle.read(job.end - job.start)
    # Rows count from 0 here: only the merge knows how many rows the chunks before this one hold.
    loaded = read_block(
        job.path, job.columns, job.header, block, first_row=0, first_line=job.first_line, limits=job.limits
    )
    carry = Carry()
    candidates, rejects = job.stages.candidates(loaded, job.columns, carry)
    # Arrow IPC, uncompressed: written once and read once on the same machine.
    paths = (job.work_dir / f"{job.index:05d}.candidates.arrow", job.work_dir / f"{job.index:05d}.rejects.arrow")
    candidates.write_ipc(paths[0], compression="uncompressed")
    rejects.write_ipc(paths[1], compression="uncompressed")
    return ChunkResult(job.index, loaded.rows_read, carry.fallback_rows, *paths)


def merge_chunks(
    path: Path, jobs: list[ChunkJob], results: Iterable[ChunkResult], *, out_dir: Path | str | None,
    keep_frames: bool = True,
) -> Prepared:  # fmt: skip
    """The chunks' rows in file order, numbered and deduplicated as one pass would, written to
    `out_dir` as prepare_audience writes them."""
    results = sorted(results, key=lambda r: r.index)
    if [r.index for r in results] != [j.index for j in jobs]:
        raise RuntimeError(f"{path}: {len(jobs)} chunks planned, results for {[r.index for r in results]}")
    columns, carry, first_row = jobs[0].columns, Carry(), 2  # the header is row 1
    with Collector(path, out_dir, keep_frames=keep_frames) as collector:
        for result in results:
            numbered = pl.col("row_number") + first_row
            candidates = pl.read_ipc(result.candidates).with_columns(numbered)
            rejects = pl.read_ipc(result.rejects).with_columns(numbered)
            collector.add(*drop_repeats(candidates, rejects, columns, carry), result.rows_read)
            carry.fallback_rows += result.fallback_rows
            first_row += result.rows_read
        rendered = jobs[0].stages.template is not None
        return collector.finish(columns, rendered=rendered, fallback_rows=carry.fallback_rows)


RunChunks = Callable[[list[ChunkJob]], list[ChunkResult]]


def prepare_in_chunks(
    path: Path | str, *, run: RunChunks, chunk_bytes: int, out_dir: Path | str | None = None,
    keep_frames: bool = True, **options: Any,
) -> Prepared:  # fmt: skip
    """prepare_audience(path, out_dir=…, keep_frames=…, **options), the chunks run by `run`
    (which returns one ChunkResult per job, in any order). A file of one chunk or none goes the
    single-process way: starting workers would cost more than it saves."""
    path = Path(path)
    # One clock for every chunk: stale consent is judged against the same moment everywhere.
    options["now"] = options.get("now") or datetime.now(UTC)
    limits = options.pop("read_limits", None) or ReadLimits.from_env()
    stages = make_stages(**options)
    work_root = Path(out_dir) if out_dir is not None else None
    if work_root is not None:
        work_root.mkdir(parents=True, exist_ok=True)
    # Next to the outputs: worker processes on this machine read and write it.
    with tempfile.TemporaryDirectory(prefix=".chunks-", dir=work_root) as work_dir:
        jobs = plan_chunks(path, stages, chunk_bytes, Path(work_dir), limits)
        if jobs is None or len(jobs) < 2:
            return prepare_audience(path, out_dir=out_dir, keep_frames=keep_frames, read_limits=limits, **options)
        return merge_chunks(path, jobs, run(jobs), out_dir=out_dir, keep_frames=keep_frames)
