"""`campaign upload-server` (`make upload`): the webhook receiver with the upload page, wired to Prefect.

The page (pipeline/upload/routes.py) hands a checked upload to the drop folder; with a Prefect server
(PREFECT_API_URL), `PrefectRuns` then starts the inbox watcher deployment at once rather than at its next
minute, and gives the page the runs' states and their Prefect UI links. Without a server the page still works:
the `audience-inbox` deployment's schedule takes the file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from uuid import UUID

from prefect import get_client
from prefect.deployments import run_deployment
from prefect.settings import get_current_settings

from pipeline.receipts.receiver import APP_SECRET, SECRET_ENV, create_receiver_app, secrets_from_env
from pipeline.servers import ServerLimits, check_loopback, serve_forever
from pipeline.upload.routes import WATCHER_DEPLOYMENT, UploadConfig, add_upload_routes


class PrefectRuns:
    """pipeline.upload.routes.Runs over the Prefect API."""

    def __init__(self, watcher_deployment: str = WATCHER_DEPLOYMENT, ui_url: str | None = None) -> None:
        self.watcher_deployment = watcher_deployment
        self.ui_url = (ui_url or get_current_settings().ui_url or "").rstrip("/") or None

    def start_watcher(self, audiences_dir: Path) -> str:
        # The deployment's other parameters (ledger, spool, provider) stay as deployed: only where to look changes.
        run = run_deployment(self.watcher_deployment, parameters={"audiences_dir": str(audiences_dir)}, timeout=0,
                             as_subflow=False)
        return str(run.id)

    def state(self, flow_run_id: str) -> tuple[str, bool] | None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
        return (state.name, state.is_final()) if state is not None else None

    def url(self, flow_run_id: str) -> str | None:
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}" if self.ui_url else None


def serve_upload_page(args: argparse.Namespace, limits: ServerLimits | None = None) -> int:
    """Serves the receiver (every provider whose secret is set) with the upload page until interrupted. A host that
    is not loopback, or a bad server setting, is refused before the page is announced."""
    check_loopback(args.host)
    limits = ServerLimits.from_env() if limits is None else limits
    runs = PrefectRuns(args.watcher_deployment or WATCHER_DEPLOYMENT) if os.environ.get("PREFECT_API_URL") else None
    config = UploadConfig.from_env(specs_dir=args.specs_dir, audiences_dir=args.audiences_dir,
                                   staging_dir=args.staging_dir, runs=runs, database=getattr(args, "db", None))
    if config is None:
        raise ValueError("set UPLOAD_TOKEN in the environment: the upload page needs a token")
    secrets = secrets_from_env()
    if not secrets[APP_SECRET]:
        raise ValueError(f"set {SECRET_ENV[APP_SECRET]} in the environment: the upload page runs in the receiver")
    app = create_receiver_app(Path(args.spool_dir), secrets)  # with every provider's route
    add_upload_routes(app, config)
    print(f"upload page on http://{args.host}:{args.port}/upload (at most {config.max_bytes / 1e6:g} MB); "
          f"webhooks configured for {', '.join(app.state.providers)}; spool {args.spool_dir}", flush=True)
    if runs is None:
        print("no PREFECT_API_URL: started uploads wait for the audience-inbox deployment's next round", flush=True)
    serve_forever(app, args.host, args.port, limits)
    return 0
