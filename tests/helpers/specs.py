"""The demo campaign (campaigns/welcome.yaml) written for a test: its own audience of UK mobiles and rate."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def uk_welcome_spec(tmp: Path, rows: int, block: str, *, rate: float, receipts_wait_s: float,
                    grace_s: float) -> Path:
    """welcome.yaml in `tmp` with `rows` sendable UK mobiles (+44 7400 `block` nnnnn), `rate` messages/s over 8
    connections, and a short reconcile grace (`grace_s`: how long a message in flight when the run stopped waits for
    a receipt on resume before it counts as unknown)."""
    audience = tmp / "audience.csv"
    lines = [f"+447400{block}{i:05d},GB,Ann{i},Leeds,W-{i},yes" for i in range(rows)]
    audience.write_text("phone,country,first_name,city,coupon,opt_in\n" + "\n".join(lines) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(audience=str(audience), rate_limit={"max_per_second": rate, "concurrency": 8},
                receipts_wait_s=receipts_wait_s, retry={"reconcile_grace_s": grace_s, "base_delay_s": 0.05})
    path = tmp / "welcome.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
