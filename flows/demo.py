"""`campaign demo [--channel NAME]`: the channel's sandbox and the receiver on loopback, the channel's
sample campaign through the flow, receipts ingested, the summary and the report printed."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import yaml

from flows.campaign import campaign_flow
from pipeline.costs.summary import format_summary
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.receipts.routes import add_provider_routes
from pipeline.sandbox.registry import start_sandbox
from pipeline.servers import serve_in_thread
from pipeline.spec import load_spec

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
