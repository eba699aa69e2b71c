"""`campaign demo [--channel NAME]`: the channel's sandbox and the receiver on loopback, the channel's
sample campaign through the flow, receipts ingested, the summary and the report printed."""

from __future__ import annotations

import contextlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import yaml

from flows.campaign import campaign_flow
from pipeline import store
from pipeline.costs.summary import format_summary
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.receipts.routes import add_provider_routes
from pipeline.sandbox.registry import start_sandbox
from pipeline.servers import serve_in_thread
from pipeline.spec import load_spec
from pipeline.store import run_many

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPECS = {
    "whatsapp": "campaigns/welcome.yaml",
    "messenger": "campaigns/messenger.yaml",
    "instagram": "campaigns/instagram.yaml",
    "viber": "campaigns/viber.yaml",
    "sms": "campaigns/sms.yaml",
    "email": "campaigns/email.yaml",
    "chatapp": "campaigns/chatapp.yaml",
}


def _users_wrote(database: Path, channel: str, audience: Path) -> None:
    """Messenger and Instagram reach only users who wrote first (the 24-h window; a tag answers a conversation
    the user started, docs/providers.md §5): the demo's users each wrote an hour ago."""
    users = pl.read_csv(audience, columns=["user_id"], infer_schema=False)["user_id"].drop_nulls().unique()
    at = datetime.now(UTC) - timedelta(hours=1)
    with store.connect(database) as db, db.write() as conn:
        run_many(conn, "INSERT INTO inbound (event_id, provider, sender, text, occurred_at, raw_json) "
                       "VALUES (:e, :p, :s, 'hi', :at, '{\"demo\": true}')",
                 [{"e": f"demo-{channel}-{u}", "p": channel, "s": u, "at": at} for u in users.to_list()])


def run_demo(channel: str = "whatsapp", workdir: Path = Path("data/demo"), reports_dir: Path = Path("reports")) -> int:
    spec_path = ROOT / DEMO_SPECS[channel]
    spec = load_spec(spec_path)
    # A fresh ledger each time: the demo always shows a whole campaign, never a resumed one.
    workdir = workdir / channel if channel != "whatsapp" else workdir
    shutil.rmtree(workdir, ignore_errors=True)
    spool = workdir / "spool"
    spool.mkdir(parents=True)
    receiver = create_receiver_app(spool, secrets_from_env())
    add_provider_routes(receiver)
    with contextlib.ExitStack() as stack:
        receiver_url = stack.enter_context(serve_in_thread(receiver))
        base_url, options = start_sandbox(spec, receiver_url, stack)
        # The sample spec, pointed at the loopback receiver (status callbacks, unsubscribe links).
        data = yaml.safe_load(spec_path.read_text())
        data["audience"] = str((ROOT / data["audience"]).resolve())
        data.setdefault("provider", {}).setdefault("options", {}).update(options)
        local_spec = workdir / spec_path.name
        local_spec.write_text(yaml.safe_dump(data, sort_keys=False))
        if channel in ("messenger", "instagram"):
            _users_wrote(workdir / "campaigns.sqlite", channel, Path(data["audience"]))
        print(f"{channel} sandbox on {base_url}; webhook receiver on {receiver_url}", flush=True)
        summary = campaign_flow(
            str(local_spec), campaign_id=spec.name, database=str(workdir / "campaigns.sqlite"), spool_dir=str(spool),
            reports_dir=str(reports_dir), provider_base_url=base_url,
        )
    print()
    print(format_summary(summary))
    print(f"\nreport: {summary['report_html']}\n        {summary['report_csv']}")
    print(f"store: {workdir / 'campaigns.sqlite'}")
    return 0
