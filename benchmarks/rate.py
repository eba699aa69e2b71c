"""Holds the rate: at 80, 500 and 1,000 msg/s for --seconds each (default 30), against the sandbox
(a separate process) on loopback with the ledger on. Achieved rate within ±2 % of the target and no
1-second window above target + 5 %.

    .venv/bin/python benchmarks/rate.py [--seconds 30] [--targets 80,500,1000] [--backend sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._dispatch_kit import (  # noqa: E402
    ENV,
    SECRET,
    TOKEN,
    Recording,
    backends_arg,
    emit,
    queue_campaign,
    stores,
    whatsapp,
)
from pipeline import store  # noqa: E402
from pipeline.dispatch.engine import dispatch_campaign  # noqa: E402
from pipeline.sandbox.process import sandbox_process  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402
from pipeline.spec import RateSpec, RetrySpec  # noqa: E402


def max_window(stamps: list[float], width: float = 1.0) -> int:
    """The most sends in any `width`-second window starting at a send."""
    best = 0
    for i, start in enumerate(stamps):
        best = max(best, bisect.bisect_left(stamps, start + width, lo=i) - i)
    return best


def measure(target: int, seconds: float, base_url: str, url: str) -> tuple[float, float]:
    n = int(target * seconds)
    queue_campaign(url, n)
    channel = Recording(whatsapp(base_url))
    concurrency = max(4, min(64, target // 20))
    with store.connect(url) as db:
        result = asyncio.run(dispatch_campaign(
            db, "bench", channel, rate=RateSpec(max_per_second=target, concurrency=concurrency),
            retry=RetrySpec(max_attempts=3), progress_every_s=10))
    stamps = sorted(channel.stamps)
    assert result.sent == n, f"sent {result.sent} of {n}"
    achieved = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return achieved, max_window(stamps) / target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--targets", default="80,500,1000")
    parser.add_argument("--backend", type=backends_arg, default=["sqlite"])
    args = parser.parse_args()
    os.environ.update(ENV)
    targets = [int(t) for t in args.targets.split(",")]
    config = SandboxConfig(access_token=TOKEN, app_secret=SECRET, throughput_per_s=5000)
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(config) as base_url, \
            stores(args.backend, Path(tmp)) as new_store:
        for backend in args.backend:  # one JSON line each, the last line the last backend's
            achieved, windows = [], []
            for target in targets:
                rate, window = measure(target, args.seconds, base_url, new_store(backend, f"rate_{target}"))
                achieved.append(round(rate, 2))
                windows.append(round(window, 4))
                print(f"{backend}: target {target}/s: achieved {rate:.2f}/s ({rate / target - 1:+.2%}), "
                      f"max 1-s window {window:.3f}x target", flush=True)
            ok = all(abs(a / t - 1) <= 0.02 for a, t in zip(achieved, targets, strict=True)) and \
                all(w <= 1.05 for w in windows)
            emit({"name": "rate", "backend": backend, "targets": targets, "achieved": achieved, "max_window": windows,
                  "ok": ok, "seconds_each": args.seconds})

if __name__ == "__main__":
    main()
