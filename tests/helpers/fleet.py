"""The fleet tests' campaign: the welcome template over several WhatsApp senders, and the 1-s window count."""

from __future__ import annotations

import bisect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def fleet_spec(tmp: Path, senders: list[str], n: int, *, rate: float, concurrency: int, receipts_wait_s: float) -> Path:
    """Campaign `fleet`: `n` UK mobiles (all sendable) spread over `senders`, each at `rate` msg/s."""
    audience = tmp / "audience.csv"
    rows = [f"+4474002{i:05d},GB,Ann{i},Leeds,W-{i},yes" for i in range(n)]
    audience.write_text("phone,country,first_name,city,coupon,opt_in\n" + "\n".join(rows) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="fleet", audience=str(audience), sender=senders[0], senders=senders,
                receipts_wait_s=receipts_wait_s, rate_limit={"max_per_second": rate, "concurrency": concurrency},
                retry={"reconcile_grace_s": 5})
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def max_window(stamps: list[float], width: float = 1.0) -> int:
    """The most of these (sorted) times in any `width`-second window starting at one of them."""
    best = 0
    for i, start in enumerate(stamps):
        best = max(best, bisect.bisect_left(stamps, start + width, lo=i) - i)
    return best
