"""Chunk-parallel audience preparation as a Prefect subflow on Dask (prefect-dask's DaskTaskRunner):
one task run per chunk on a local cluster of worker processes, the merge back in the calling
process (pipeline/render/prepare_chunks.py cuts, prepares and merges; this module only runs the chunks)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from pipeline.render.prepare import Prepared, prepare_audience
from pipeline.render.prepare_chunks import ChunkJob, ChunkResult, prepare_chunk, prepare_in_chunks, prepare_settings
from pipeline.spec import CampaignSpec

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner


@task(name="prepare-chunk", cache_policy=NO_CACHE)
def prepare_chunk_task(job: ChunkJob) -> ChunkResult:
    return prepare_chunk(job)


def dask_runner(workers: int) -> DaskTaskRunner:
    """A local cluster of `workers` processes (the stages hold the GIL in places: Jinja2 and
    phonenumbers for the rows the vectorised paths leave to them), one task at a time each, on
    loopback only, its HTTP endpoint on a free port (two runs at once must not collide on 8787).
    Each worker gets the API of this run, else a worker of a run in ephemeral mode would start
    a temporary Prefect server of its own; and Polars gets its share of the cores rather than
    all of them, so the workers do not fight over the same ones."""
    # Imported here: Dask adds ~0.3 s to every start of the campaign flow, and few runs use it.
    from prefect_dask import DaskTaskRunner

    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    env = {"PREFECT_API_URL": api_url, "POLARS_MAX_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0", "env": env,
        }
    )  # fmt: skip


def run_chunks_on_dask(jobs: list[ChunkJob], *, workers: int) -> list[ChunkResult]:
    """Prepares every chunk in a `prepare-chunks` subflow whose task runner is a fresh Dask cluster."""
    name = f"{jobs[0].path.name}: {len(jobs)} chunks on {workers} workers"

    # The jobs reach the flow through this closure rather than as parameters: Prefect records a
    # flow run's parameters in its API, and the jobs carry the suppressed numbers.
    @flow(name="prepare-chunks", flow_run_name=lambda: name, task_runner=dask_runner(workers))
    def prepare_chunks() -> list[ChunkResult]:
        futures = [prepare_chunk_task.submit(job) for job in jobs]
        return [future.result() for future in futures]

    return prepare_chunks()


def audience_preparer(spec: CampaignSpec) -> Callable[..., Prepared]:
    """prepare_audience, or its chunk-parallel twin on Dask when the spec (or the environment,
    CAMPAIGN_PREPARE_RUNNER=dask) asks for it; both take prepare_audience's keyword arguments."""
    settings = prepare_settings(spec.prepare)
    if settings.runner == "single":
        return prepare_audience
    run: Any = functools.partial(run_chunks_on_dask, workers=settings.workers)
    return functools.partial(prepare_in_chunks, run=run, chunk_bytes=max(1, int(settings.chunk_mb * 1024 * 1024)))
