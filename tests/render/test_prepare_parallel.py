"""Chunk-parallel preparation gives exactly the single-process output: the same accepted rows,
rejects, counts and files, with duplicates across chunk boundaries resolved as one pass would;
and the campaign flow's prepare task runs it as a Prefect subflow on a Dask cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pipeline import store
from pipeline.audience.load import AudienceError
from pipeline.render.prepare import Prepared, prepare_audience
from pipeline.render.prepare_chunks import ChunkJob, ChunkResult, prepare_chunk, prepare_in_chunks, prepare_settings
from pipeline.render.templates import TemplateProblem
from pipeline.spec import PrepareSpec, SpecError, TemplateSpec, parse_spec
from pipeline.store import run

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TEMPLATE = TemplateSpec(
    name="welcome_offer", language="en_US", category="marketing", text="Hi {{ first_name }}, code {{ code }}",
    body=["{{ first_name }}", "{{ code }}"],
)  # fmt: skip
VARIABLES = {"first_name": "first_name", "code": "coupon"}
SUPPRESSED = "+447400123405"
CAPPED = "+447400123406"
EVERY_REASON = {
    "bad_row", "invalid_number", "not_mobile", "blocked_country", "no_opt_in", "stale_opt_in", "suppressed",
    "frequency_capped", "duplicate", "missing_variable",
}  # fmt: skip


def _corpus(tmp_path: Path, rows: int = 240) -> Path:
    """70 numbers written four ways over and over, so every later sighting of a number is a
    duplicate of a row chunks earlier; with rows that fail each check, quoted newlines and
    commas, and a formula."""
    lines = ["phone,country,first_name,city,coupon,opt_in,opt_in_at"]
    for i in range(rows):
        n = 123400 + i % 70
        phone = [f"+44 7400 {n}", f"07400 {n}", f"0044 7400 {n}", f"+447400{n}"][i % 4]
        country, name, city, coupon = ("GB" if i % 4 == 1 else ""), f"N{i}", "Leeds", f"W-{i}"
        opt_in, when = ("no" if i % 13 == 8 else "maybe" if i % 43 == 11 else "yes"), "2025-06-01"
        if i % 29 == 3:
            phone = "12345"
        elif i % 31 == 4:
            phone = f"+44 20 7946 0{i % 1000:03d}"  # a landline
        elif i % 37 == 5:
            phone = f"+98 912 345 {6000 + i}"  # Iran: blocked on WhatsApp
        if i % 19 == 7:
            name = ""  # the template cannot be rendered
        if i % 17 == 9:
            city = '"Paris\nNord, FR"'  # a quoted newline: chunks must cut between records only
        if i % 41 == 10:
            coupon = "=1+2"
        if i % 11 == 2:
            when = "2019-01-01"  # consent older than 730 days
        line = f"{phone},{country},{name},{city},{coupon},{opt_in},{when}"
        lines.append("+447400999999,GB,Short" if i % 23 == 6 else line)  # a ragged row
    path = tmp_path / "audience.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


OPTIONS = {
    "channel": "whatsapp", "category": "marketing", "template": TEMPLATE, "variables": VARIABLES,
    "suppressed": {SUPPRESSED}, "recently_messaged": {CAPPED}, "now": NOW,
}  # fmt: skip


def in_process(record: list[ChunkResult] | None = None):  # noqa: ANN201 - a RunChunks
    """Runs the chunks here, last first: the merge must not depend on the order results come in."""

    def run(jobs: list[ChunkJob]) -> list[ChunkResult]:
        results = [prepare_chunk(job) for job in reversed(jobs)]
        if record is not None:
            record.extend(results)
        return results

    return run


def assert_same(got: Prepared, want: Prepared) -> None:
    assert got.accepted.schema == want.accepted.schema and got.accepted.equals(want.accepted)
    assert got.rejects.schema == want.rejects.schema and got.rejects.equals(want.rejects)
    assert (got.rows_read, got.accepted_rows, got.counts) == (want.rows_read, want.accepted_rows, want.counts)
    for name in ("accepted.parquet", "rejects.parquet"):
        folders = (got.paths["accepted"].parent, want.paths["accepted"].parent)
        assert pl.read_parquet(folders[0] / name).equals(pl.read_parquet(folders[1] / name))
    assert got.paths["rejects_csv"].read_bytes() == want.paths["rejects_csv"].read_bytes()
    assert sorted(p.name for p in got.paths["accepted"].parent.iterdir()) == [
        "accepted.parquet", "rejects.csv", "rejects.parquet",
    ]  # fmt: skip


def test_chunks_give_the_single_process_output(tmp_path: Path) -> None:
    path = _corpus(tmp_path)
    single = prepare_audience(path, out_dir=tmp_path / "single", **OPTIONS)
    assert set(single.counts) == EVERY_REASON  # the corpus exercises every check
    for chunk_bytes in (400, 1500, 3000):
        results: list[ChunkResult] = []
        got = prepare_in_chunks(
            path, run=in_process(results), chunk_bytes=chunk_bytes, out_dir=tmp_path / f"c{chunk_bytes}", **OPTIONS
        )
        assert len(results) >= 4
        assert_same(got, single)
    # The first row with a number wins even when it sits chunks before its duplicates.
    firsts = single.rejects.filter(pl.col("reason") == "duplicate")["detail"].str.extract(r"row (\d+)").cast(pl.Int64)
    rows = single.rejects.filter(pl.col("reason") == "duplicate")["row_number"]
    assert ((rows - firsts) > 70).any()


def test_a_row_that_cannot_be_sent_does_not_hide_a_duplicate_in_a_later_chunk(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("phone,first_name,coupon,opt_in\n+447400123456,,W-1,yes\n07400 123456,Ann,W-2,yes\n")
    options = {**OPTIONS, "default_country": "GB"}
    got = prepare_in_chunks(path, run=in_process(), chunk_bytes=8, out_dir=tmp_path / "c", **options)
    assert got.accepted.select("row_number", "text").rows() == [(3, "Hi Ann, code W-2")]
    assert_same(got, prepare_audience(path, out_dir=tmp_path / "s", **options))


def test_errors_are_the_single_paths(tmp_path: Path) -> None:
    path = _corpus(tmp_path)
    with path.open("ab") as handle:
        handle.write(b"+447400123499,,Z\xe9,Leeds,W-99,yes,\n")
    last_line = path.read_bytes().count(b"\n")
    with pytest.raises(AudienceError) as single:
        prepare_audience(path, out_dir=tmp_path / "s", **OPTIONS)
    out = tmp_path / "c"
    with pytest.raises(AudienceError) as chunked:
        prepare_in_chunks(path, run=in_process(), chunk_bytes=2000, out_dir=out, **OPTIONS)
    assert str(chunked.value) == str(single.value) and f"line {last_line} is not valid UTF-8" in str(single.value)
    assert list(out.iterdir()) == []  # no partial outputs, no chunk files
    with pytest.raises(TemplateProblem, match="city"):
        prepare_in_chunks(
            path, run=in_process(), chunk_bytes=2000, **{**OPTIONS, "variables": {**VARIABLES, "city": "town"}}
        )


def test_small_and_header_only_files_take_the_single_path(tmp_path: Path) -> None:
    def refuse(jobs: list[ChunkJob]) -> list[ChunkResult]:
        raise AssertionError("no workers for a file of one chunk")

    for content in ("phone,first_name,coupon,opt_in\n", "phone,first_name,coupon,opt_in\n+447400123456,Ann,W,yes\n"):
        path = tmp_path / "small.csv"
        path.write_text(content)
        got = prepare_in_chunks(path, run=refuse, chunk_bytes=1 << 20, out_dir=tmp_path / "c", **OPTIONS)
        assert_same(got, prepare_audience(path, out_dir=tmp_path / "s", **OPTIONS))


def test_settings_from_the_spec_and_the_environment() -> None:
    spec = PrepareSpec(runner="dask", workers=3, chunk_mb=8)
    assert prepare_settings(spec, {}) == spec
    assert prepare_settings(PrepareSpec(), {"CAMPAIGN_PREPARE_RUNNER": "dask", "CAMPAIGN_PREPARE_WORKERS": "4"}) == (
        PrepareSpec(runner="dask", workers=4)
    )
    blank = {"CAMPAIGN_PREPARE_RUNNER": "single", "CAMPAIGN_PREPARE_CHUNK_MB": " "}  # blank: the spec's value
    assert prepare_settings(spec, blank) == PrepareSpec(runner="single", workers=3, chunk_mb=8)
    with pytest.raises(SpecError, match="CAMPAIGN_PREPARE_RUNNER"):
        prepare_settings(spec, {"CAMPAIGN_PREPARE_RUNNER": "ray"})


# The campaign flow's own prepare task, in a real Prefect flow, through a Dask cluster of two
# worker processes, against the single-process run of the same task.


def test_campaign_prepare_task_on_dask(tmp_path: Path, prefect_harness, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

    from flows.campaign import prepare

    monkeypatch.delenv("CAMPAIGN_PREPARE_RUNNER", raising=False)
    db = str(tmp_path / "campaigns.sqlite")
    with store.connect(db) as shared:  # the suppression list and a recent marketing send, as the task reads them
        sent = datetime.now(UTC) - timedelta(hours=1)
        with shared.write() as conn:
            run(conn, "INSERT INTO suppressions (channel, address, reason, source, since)"
                " VALUES ('whatsapp', :address, 'stop', 'test', :at)", address=SUPPRESSED, at=datetime.now(UTC))
            run(conn, "INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category,"
                " payload_json, state, queued_at, sent_at) VALUES ('m1', 'earlier', 0, :key, 'whatsapp', 's',"
                " 'marketing', '{}', 'sent', :at, :at)", key=CAPPED, at=sent)
    spec = {
        "name": "welcome", "audience": str(_corpus(tmp_path)), "channel": "whatsapp", "sender": "1",
        "template": TEMPLATE.model_dump(), "variables": VARIABLES,
    }  # fmt: skip
    single_spec = parse_spec(spec)
    dask_spec = parse_spec({**spec, "prepare": {"runner": "dask", "workers": 2, "chunk_mb": 0.002}})

    @flow
    def both() -> tuple[Prepared, Prepared]:
        return (
            prepare(single_spec, "welcome", db, tmp_path / "single"),
            prepare(dask_spec, "welcome", db, tmp_path / "dask"),
        )

    single, chunked = both()
    assert {"suppressed", "frequency_capped", "duplicate", "blocked_country"} <= set(single.counts)
    # Stale consent is judged at each run's own moment; both runs are within the same day.
    assert_same(chunked, single)

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["prepare-chunks"])))
        assert [r.state.is_completed() for r in runs] == [True]
        # The session's harness holds other tests' runs too: only this subflow's task runs.
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])))
        chunk_runs = [t for t in tasks if t.flow_run_id == runs[0].id and t.name.startswith("prepare-chunk")]
    assert len(chunk_runs) >= 4 and all(t.state.is_completed() for t in chunk_runs)
