"""Alibaba Cloud RPC-style request signing, V2 (`SignatureVersion=1.0`, HMAC-SHA1), as dysmsapi uses it.

StringToSign = METHOD & pct("/") & pct(sorted, percent-encoded `k=v&...`); the key is
`AccessKeySecret + "&"`; the signature is Base64 of the HMAC-SHA1 digest (docs/providers.md §3.7).
"""

from __future__ import annotations

import base64
import hmac
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

SIGNATURE_METHOD = "HMAC-SHA1"
SIGNATURE_VERSION = "1.0"


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Alibaba wants it: only `A-Z a-z 0-9 - _ . ~` stay as they are.

    So a space is `%20` (not `+`), `*` is `%2A` and `/` is `%2F`; UTF-8 bytes are encoded one by one.
    """
    return quote(value.encode("utf-8"), safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """`k=v&...` over every parameter but `Signature`, sorted by name, names and values encoded."""
    return "&".join(
        f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()) if k != "Signature"
    )


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign(method: str, params: Mapping[str, str], access_key_secret: str) -> str:
    key = (access_key_secret + "&").encode("utf-8")
    digest = hmac.digest(key, string_to_sign(method, params).encode("utf-8"), "sha1")
    return base64.b64encode(digest).decode("ascii")


def timestamp_now() -> str:
    """The `Timestamp` parameter: ISO 8601 in UTC, seconds precision (`2026-10-01T08:00:00Z`)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signed_params(
    action: str,
    params: Mapping[str, str],
    *,
    access_key_id: str,
    access_key_secret: str,
    version: str,
    method: str = "POST",
    nonce: str | None = None,
    timestamp: str | None = None,
) -> dict[str, str]:
    """The action's parameters plus the common ones and their `Signature`.

    A fresh nonce and timestamp per call: Alibaba refuses a reused nonce (`SignatureNonceUsed`)
    and a timestamp older than 15 minutes, so a signed request is never stored and replayed.
    """
    full = {
        "Action": action,
        "Version": version,
        "Format": "JSON",
        "AccessKeyId": access_key_id,
        "SignatureMethod": SIGNATURE_METHOD,
        "SignatureVersion": SIGNATURE_VERSION,
        "SignatureNonce": nonce or uuid.uuid4().hex,
        "Timestamp": timestamp or timestamp_now(),
        **params,
    }
    full["Signature"] = sign(method, full, access_key_secret)
    return full


def encode_form(params: Mapping[str, str]) -> bytes:
    """The form body of a signed POST (the same encoding the signature used, Signature included)."""
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in params.items()).encode("ascii")
