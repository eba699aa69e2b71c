"""ACS3-HMAC-SHA256: Alibaba Cloud's V3 request signature (docs/providers.md §3.7), as pure functions.

CanonicalRequest -> StringToSign -> hex HMAC-SHA256 keyed with the AccessKey secret, sent in the
`Authorization` header. Used by the ChatApp channel; the sandbox verifies with its own code.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime

ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()  # e3b0c442...b855
# The headers §3.7 signs, in canonical (sorted) order; x-acs-security-token joins them under STS.
SIGNED_HEADERS = ("host", "x-acs-action", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce",
                  "x-acs-version")


def percent_encode(value: str) -> str:
    """RFC 3986: only unreserved characters stay; space is %20, `*` is %2A, `~` stays as is."""
    return urllib.parse.quote(value, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Encoded `name=value` pairs sorted by encoded name, joined with `&` (empty for no parameters)."""
    pairs = sorted((percent_encode(k), percent_encode(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_request(
    method: str, uri: str, query: Mapping[str, str], headers: Mapping[str, str], payload_sha256: str
) -> tuple[str, str]:
    """(CanonicalRequest, SignedHeaders) over exactly the `headers` given (names lower-cased, values trimmed)."""
    lowered = {name.strip().lower(): value.strip() for name, value in headers.items()}
    names = sorted(lowered)
    canonical_headers = "".join(f"{name}:{lowered[name]}\n" for name in names)
    signed_headers = ";".join(names)
    path = "/".join(percent_encode(part) for part in (uri or "/").split("/"))
    text = "\n".join([method.upper(), path, canonical_query(query), canonical_headers, signed_headers,
                      payload_sha256])
    return text, signed_headers


def string_to_sign(canonical: str) -> str:
    return f"{ALGORITHM}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def signature(access_key_secret: str, canonical: str) -> str:
    return hmac.new(access_key_secret.encode("utf-8"), string_to_sign(canonical).encode("utf-8"),
                    hashlib.sha256).hexdigest()


def acs_date(now: datetime | None = None) -> str:
    """`x-acs-date`: ISO 8601 UTC to the second, e.g. 2023-10-26T09:01:01Z."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_request(
    *,
    method: str,
    host: str,
    action: str,
    version: str,
    access_key_id: str,
    access_key_secret: str,
    body: bytes = b"",
    query: Mapping[str, str] | None = None,
    uri: str = "/",
    date: str | None = None,
    nonce: str | None = None,
    security_token: str | None = None,
) -> dict[str, str]:
    """Every header a signed V3 request carries, `Authorization` included.

    `date` and `nonce` default to now and a fresh random value: Alibaba refuses a reused nonce
    (SignatureNonceUsed), so every attempt of a request is signed anew.
    """
    headers = {
        "host": host,
        "x-acs-action": action,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
        "x-acs-date": date or acs_date(),
        "x-acs-signature-nonce": nonce or secrets.token_hex(16),
        "x-acs-version": version,
    }
    if security_token:
        headers["x-acs-security-token"] = security_token
    canonical, signed = canonical_request(method, uri, query or {}, headers, headers["x-acs-content-sha256"])
    headers["Authorization"] = (
        f"{ALGORITHM} Credential={access_key_id},SignedHeaders={signed},"
        f"Signature={signature(access_key_secret, canonical)}"
    )
    return headers
