"""`campaign demo`: the sandbox and the receiver on loopback, the sample campaign through the flow."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flows.campaign import campaign_flow
from pipeline.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from pipeline.spec import load_spec
from pipeline.summary import format_summary

DEMO_SPECS = {"whatsapp": Path("campaigns/welcome.yaml")}


def run_demo(channel: str = "whatsapp", workdir: Path = Path("data/demo")) -> int:
    spec_path = DEMO_SPECS[channel]
    spec = load_spec(spec_path)
    # A fresh ledger each time: the demo always shows a whole campaign, never a resumed one.
    shutil.rmtree(workdir, ignore_errors=True)
    spool = workdir / "spool"
    spool.mkdir(parents=True)
    secrets = secrets_from_env()
    with serve_in_thread(create_receiver_app(spool, secrets)) as receiver_url:
        config = SandboxConfig(
            access_token=os.environ["WHATSAPP_ACCESS_TOKEN"], app_secret=secrets["whatsapp_app_secret"],
            webhook_url=f"{receiver_url}/webhooks/whatsapp", templates={spec.template.name: spec.template.category},
            seed=7,
        )
        with serve_in_thread(create_app(config)) as sandbox_url:
            print(f"sandbox (WhatsApp Cloud API) on {sandbox_url}; webhook receiver on {receiver_url}", flush=True)
            summary = campaign_flow(
                str(spec_path), db_path=str(workdir / "campaigns.duckdb"), spool_dir=str(spool),
                reports_dir="reports", provider_base_url=sandbox_url,
            )
    print()
    print(format_summary(summary))
    print(f"\nreport: {summary['report_html']}\n        {summary['report_csv']}")
    print(f"ledger: {workdir / 'campaigns.duckdb'}")
    return 0
