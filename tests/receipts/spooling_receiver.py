"""The real webhook receiver on loopback, spooling to a folder, for tests that follow receipts from a
sandbox through the spool into DuckDB."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pipeline.receipts.receiver import create_receiver_app
from pipeline.receipts.routes import add_provider_routes
from pipeline.servers import serve_in_thread


@contextmanager
def spooling_receiver(spool_dir: Path, environ: Mapping[str, str]) -> Iterator[str]:
    """Yields the receiver's base URL; routes for the providers whose secrets `environ` holds. On
    exit the receiver stops and closes its spool, so every acknowledged webhook is in a closed file."""
    app = create_receiver_app(spool_dir, {"whatsapp_app_secret": "unused-here", "whatsapp_verify_token": "unused"},
                              rotate_after_s=0.2)
    add_provider_routes(app, environ)
    with serve_in_thread(app) as url:
        yield url
