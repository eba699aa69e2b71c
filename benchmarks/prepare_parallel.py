"""Chunk-parallel preparation (a Prefect subflow on a local Dask cluster) against the single
process, over the same seeded corpus as benchmarks/prepare.py, both writing the output files.

Both run inside one Prefect flow in ephemeral mode (the temporary server's start is not timed;
the Dask cluster's start is, it is part of every parallel run). `identical` says whether the
two runs' accepted and rejects frames and rejects.csv bytes are the same.

Usage: python benchmarks/prepare_parallel.py [--rows 1000000] [--workers 2] [--chunk-mb 8] [--seed 20261125]
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prepare import make_corpus  # noqa: E402 - benchmarks/prepare.py, this script's neighbour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-mb", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=20261125)
    args = parser.parse_args()

    import polars as pl
    from prefect import flow

    from flows.prepare_parallel import audience_preparer
    from pipeline.spec import load_spec

    spec = load_spec(ROOT / "campaigns" / "welcome.yaml")
    settings = {"runner": "dask", "workers": args.workers, "chunk_mb": args.chunk_mb}
    parallel_spec = spec.model_copy(update={"prepare": spec.prepare.model_validate(settings)})
    options = {
        "channel": spec.channel, "category": spec.template.category, "template": spec.template,
        "variables": spec.variables, "suppressed": {f"+4474001234{i:02d}" for i in range(100)},
        "recently_messaged": {"+447400123499"}, "keep_frames": False,
    }  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "audience.csv"
        make_corpus(corpus, args.rows, args.seed)

        @flow(name="benchmark-prepare-parallel")
        def measure() -> dict[str, float]:
            timings = {}
            for name, chosen in (("single", spec), ("parallel", parallel_spec)):
                started = time.perf_counter()
                audience_preparer(chosen)(corpus, out_dir=Path(tmp) / name, **options)
                timings[name] = time.perf_counter() - started
            return timings

        seconds = measure()
        single, parallel = Path(tmp) / "single", Path(tmp) / "parallel"
        same = all(
            pl.read_parquet(single / name).equals(pl.read_parquet(parallel / name))
            for name in ("accepted.parquet", "rejects.parquet")
        ) and (single / "rejects.csv").read_bytes() == (parallel / "rejects.csv").read_bytes()
        size_mb = corpus.stat().st_size / 1e6
    print(json.dumps({
        "rows": args.rows, "file_mb": round(size_mb, 1), "workers": args.workers, "chunk_mb": args.chunk_mb,
        "cores": os.cpu_count(), "seconds_single": round(seconds["single"], 2),
        "seconds_parallel": round(seconds["parallel"], 2), "speedup": round(seconds["single"] / seconds["parallel"], 2),
        "identical": same,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
