"""What every channel provides: build its wire request, classify its answers, parse its receipts.

Providers never sleep and never retry; the dispatcher owns rate limits, retries and backoff.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

OutcomeKind = Literal["sent", "retry", "permanent", "stop"]


class SendOutcome(BaseModel):
    """The classified answer to one send request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: OutcomeKind
    provider_message_id: str | None = None
    error_code: str | None = None
    error_detail: str | None = None
    retry_after_s: float | None = None  # from Retry-After, when the provider said so
    throttled: bool = False  # a rate-limit answer: slow the sender down, never a failure


class SendRequest(BaseModel):
    """Everything the dispatcher needs to POST one message; built once, at enqueue time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    headers: dict[str, str]
    content: bytes


class Channel(Protocol):
    name: str

    def build_payload(
        self, *, to: str, template: Any, params: dict[str, list[str]], message_id: str
    ) -> dict[str, Any]:
        """The provider's JSON body for one rendered message (stored in the outbox)."""
        ...

    def request_for(self, payload_json: str) -> SendRequest:
        """The HTTP request that sends a stored payload."""
        ...

    def classify_response(self, status_code: int, body: bytes, headers: dict[str, str]) -> SendOutcome:
        ...

    def classify_exception(self, exc: Exception) -> SendOutcome:
        ...
