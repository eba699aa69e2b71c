"""The upload page's configuration: its token, folders and bounds, from the environment (UPLOAD_*), and what it
may know of Prefect runs (`Runs`, injected from flows/)."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.upload import inbox
from pipeline.upload.stream import DEFAULT_MAX_FIELD_BYTES, DEFAULT_MAX_FIELDS, form_bytes

TOKEN_ENV, MAX_MB_ENV = "UPLOAD_TOKEN", "UPLOAD_MAX_MB"
MAX_FIELDS_ENV, MAX_FIELD_BYTES_ENV = "UPLOAD_MAX_FIELDS", "UPLOAD_MAX_FIELD_BYTES"
TOKEN_HEADER, SESSION_COOKIE = "x-upload-token", "upload_session"
MIN_TOKEN_CHARS = 16
DEFAULT_MAX_MB = 50.0


class Runs(Protocol):
    """What the page knows of Prefect, injected from flows/ (see flows/upload_server.py)."""

    def start_watcher(self, audiences_dir: Path) -> str:
        """Starts a run of the inbox watcher over `audiences_dir` now; returns its flow run id."""
        ...

    def state(self, flow_run_id: str) -> tuple[str, bool] | None:
        """The run's state name and whether it is final; None if unknown."""
        ...

    def url(self, flow_run_id: str) -> str | None:
        """The run's page in the Prefect UI."""
        ...


@dataclass(frozen=True)
class UploadConfig:
    token: str = field(repr=False)
    specs_dir: Path = Path("campaigns")
    audiences_dir: Path = Path("audiences")  # the drop folder is its inbox/
    staging_dir: Path = Path("data/uploads")
    max_bytes: int = int(DEFAULT_MAX_MB * 1_000_000)
    runs: Runs | None = None
    max_fields: int = DEFAULT_MAX_FIELDS  # form fields besides the file
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES  # a field's value, and a form part's headers
    # Test sends from the page (pipeline/upload/test_send.py): the store they are kept in (None: the default
    # store, CAMPAIGN_DATABASE_URL) and the provider they go to (None: the spec's, or CAMPAIGN_PROVIDER_BASE_URL).
    database: str | None = None
    provider_base_url: str | None = None

    def __post_init__(self) -> None:
        if len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the upload token must have at least {MIN_TOKEN_CHARS} characters "
                             "(e.g. `openssl rand -hex 16`)")
        if min(self.max_bytes, self.max_fields, self.max_field_bytes) <= 0:
            raise ValueError("the upload limits must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> UploadConfig | None:
        """The page's configuration from UPLOAD_TOKEN (and UPLOAD_MAX_MB, UPLOAD_MAX_FIELDS,
        UPLOAD_MAX_FIELD_BYTES); None without a token."""
        env = os.environ if environ is None else environ
        if not env.get(TOKEN_ENV):
            return None
        max_mb = _positive(env, MAX_MB_ENV, float, DEFAULT_MAX_MB)
        return cls(token=env[TOKEN_ENV], max_bytes=int(max_mb * 1_000_000),
                   max_fields=_positive(env, MAX_FIELDS_ENV, int, DEFAULT_MAX_FIELDS),
                   max_field_bytes=_positive(env, MAX_FIELD_BYTES_ENV, int, DEFAULT_MAX_FIELD_BYTES), **overrides)

    @property
    def body_bytes(self) -> int:
        """The most an upload's body may carry: the file and the form around it."""
        return self.max_bytes + form_bytes(self.max_fields, self.max_field_bytes)

    @property
    def folders(self) -> inbox.Folders:
        return inbox.Folders.under(self.audiences_dir)

    @property
    def session(self) -> str:
        return hmac.new(self.token.encode(), b"upload-page-session", hashlib.sha256).hexdigest()


def _positive(env: Mapping[str, str], name: str, kind: type[Any], default: Any) -> Any:
    raw = (env.get(name) or "").strip()
    try:
        value = kind(raw) if raw else default
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise ValueError(f"{name}: expected a positive {kind.__name__}, got {raw!r}")
    return value
