"""ACS3-HMAC-SHA256 signing (pipeline.channels.acs3) against hand-computed vectors.

Both vectors were also reproduced with Alibaba's own signer (alibabacloud_openapi_util 0.2.4,
`Client.get_authorization`), which is not a dependency of this project.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from pipeline.channels.acs3 import (
    EMPTY_BODY_SHA256,
    canonical_query,
    canonical_request,
    percent_encode,
    sign_request,
    signature,
)

HOST = "cams.ap-southeast-1.aliyuncs.com"
KEY_ID, SECRET = "LTAI5tExampleKeyId", "ExampleSecret0123456789"
DATE, NONCE = "2023-10-26T09:01:01Z", "3156853299f313e23d1673dc12e1703d"
BODY = b"ChannelType=whatsapp&To=8613800000000"
BODY_SHA256 = "8687aa7be39170585708dd0f88a86dc18dbf54706088ffd2b0634762e5c7dd29"

# Written out by hand from §3.7: METHOD, URI, query (empty), headers (each ending "\n"), signed names, hash.
CANONICAL = (
    "POST\n"
    "/\n"
    "\n"
    f"host:{HOST}\n"
    "x-acs-action:SendChatappMessage\n"
    f"x-acs-content-sha256:{BODY_SHA256}\n"
    f"x-acs-date:{DATE}\n"
    f"x-acs-signature-nonce:{NONCE}\n"
    "x-acs-version:2020-06-06\n"
    "\n"
    "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n"
    f"{BODY_SHA256}"
)
SIGNATURE = "af72077081ee98d943ae80c40593c814e49deb66910a8e84d4a0ade5aa7438af"


def test_body_hash_and_empty_body_hash() -> None:
    assert hashlib.sha256(BODY).hexdigest() == BODY_SHA256
    assert EMPTY_BODY_SHA256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_sign_request_matches_the_hand_computed_vector() -> None:
    headers = sign_request(method="POST", host=HOST, action="SendChatappMessage", version="2020-06-06",
                           access_key_id=KEY_ID, access_key_secret=SECRET, body=BODY, date=DATE, nonce=NONCE)
    # The vector, step by step: StringToSign = algorithm + hex(SHA256(CanonicalRequest)), then HMAC.
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(CANONICAL.encode()).hexdigest()
    assert hmac.new(SECRET.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest() == SIGNATURE
    assert headers["Authorization"] == (
        f"ACS3-HMAC-SHA256 Credential={KEY_ID},SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
        f"x-acs-date;x-acs-signature-nonce;x-acs-version,Signature={SIGNATURE}"
    )
    assert headers["x-acs-content-sha256"] == BODY_SHA256
    assert headers["x-acs-date"] == DATE and headers["x-acs-signature-nonce"] == NONCE


def test_canonical_request_text_is_exactly_the_documented_layout() -> None:
    headers = {"x-acs-version": "2020-06-06", "Host": HOST, "x-acs-date": DATE, "x-acs-action": "SendChatappMessage",
               "x-acs-signature-nonce": NONCE, "x-acs-content-sha256": BODY_SHA256}
    text, signed = canonical_request("post", "/", {}, headers, BODY_SHA256)
    assert text == CANONICAL
    assert signed == "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
    assert signature(SECRET, text) == SIGNATURE


def test_query_and_extra_signed_header_vector() -> None:
    """Query encoding (space, `*`, `~`, UTF-8) and a signed content-type, as Alibaba's SDK signs them."""
    headers = {"host": HOST, "x-acs-action": "SendChatappMessage", "x-acs-content-sha256": BODY_SHA256,
               "x-acs-date": DATE, "x-acs-signature-nonce": NONCE, "x-acs-version": "2020-06-06",
               "content-type": "application/x-www-form-urlencoded"}
    query = {"b": "x y*~", "a": "1", "TemplateParams": '{"1":"Zoë"}'}
    text, signed = canonical_request("POST", "/", query, headers, BODY_SHA256)
    assert text.split("\n")[2] == "TemplateParams=%7B%221%22%3A%22Zo%C3%AB%22%7D&a=1&b=x%20y%2A~"
    assert signed.startswith("content-type;host;")
    assert signature(SECRET, text) == "29fc7cfc88a1eb79c21b8c7e3e2d14a9e9df248f5047ba119289d78d234340ad"


@pytest.mark.parametrize(("raw", "encoded"), [
    ("a b", "a%20b"), ("*", "%2A"), ("~", "~"), ("-_.", "-_."), ("/", "%2F"), ("+", "%2B"), ("=&", "%3D%26"),
    ("é", "%C3%A9"),
])
def test_percent_encoding_is_rfc3986(raw: str, encoded: str) -> None:
    assert percent_encode(raw) == encoded


def test_canonical_query_sorts_by_encoded_name() -> None:
    assert canonical_query({"b": "2", "a": "1", "A": "0"}) == "A=0&a=1&b=2"
    assert canonical_query({}) == ""


def test_every_request_gets_a_fresh_nonce_and_a_different_signature() -> None:
    kwargs = dict(method="POST", host=HOST, action="SendChatappMessage", version="2020-06-06",
                  access_key_id=KEY_ID, access_key_secret=SECRET, body=BODY, date=DATE)
    first, second = sign_request(**kwargs), sign_request(**kwargs)  # type: ignore[arg-type]
    assert first["x-acs-signature-nonce"] != second["x-acs-signature-nonce"]
    assert first["Authorization"] != second["Authorization"]
    wrong = sign_request(**{**kwargs, "access_key_secret": "other", "nonce": NONCE})  # type: ignore[arg-type]
    assert SIGNATURE not in wrong["Authorization"]
