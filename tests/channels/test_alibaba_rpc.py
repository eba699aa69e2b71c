"""Alibaba V2 RPC signing (HMAC-SHA1) against published and hand-computed vectors, and the sandbox's own check."""

from __future__ import annotations

from urllib.parse import parse_qsl

from pipeline.channels.alibaba_rpc import (
    canonical_query,
    encode_form,
    percent_encode,
    sign,
    signed_params,
    string_to_sign,
)
from pipeline.sandbox.alibaba_sms import expected_signature


def test_percent_encoding_follows_rfc3986_as_alibaba_wants():
    assert percent_encode("a b*c~d/e+f") == "a%20b%2Ac~d%2Fe%2Bf"
    assert percent_encode("2016-02-23T12:46:24Z") == "2016-02-23T12%3A46%3A24Z"
    assert percent_encode("阿里") == "%E9%98%BF%E9%87%8C"
    assert percent_encode("-_.~") == "-_.~"


def test_documented_describe_regions_vector():
    # Alibaba's "RPC signature" documentation example (GET, secret "testsecret").
    params = {
        "AccessKeyId": "testid", "Action": "DescribeRegions", "Format": "XML", "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "SignatureVersion": "1.0",
        "Timestamp": "2016-02-23T12:46:24Z", "Version": "2014-05-26",
    }
    assert string_to_sign("GET", params) == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1"
        "%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0"
        "%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
    )
    assert sign("GET", params, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_documented_dysmsapi_send_sms_vector():
    # The dysmsapi "HTTP protocol and signature" example: non-ASCII SignName and a JSON TemplateParam.
    params = {
        "AccessKeyId": "testId", "Action": "SendSms", "Format": "XML", "OutId": "123", "PhoneNumbers": "15300000001",
        "RegionId": "cn-hangzhou", "SignName": "阿里云短信测试专用", "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466", "SignatureVersion": "1.0",
        "TemplateCode": "SMS_71390007", "TemplateParam": '{"customer":"test"}', "Timestamp": "2017-07-12T02:42:19Z",
        "Version": "2017-05-25",
    }
    assert sign("GET", params, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="


# Computed by hand for this test: the string to sign written out below, then
# `printf %s "$STS" | openssl dgst -sha1 -hmac 'testSecret&' -binary | base64`.
BATCH_PARAMS = {
    "Action": "SendBatchSms", "Version": "2017-05-25", "Format": "JSON", "AccessKeyId": "testId",
    "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": "n-1",
    "Timestamp": "2026-10-01T08:00:00Z", "PhoneNumberJson": '["44770090001","861390000000"]',
    "SignNameJson": '["Acme","Acme"]', "TemplateCode": "SMS_123",
    "TemplateParamJson": '[{"name":"Ann Lee*~"},{}]', "OutId": "m-1",
}
BATCH_STS = (
    "POST&%2F&AccessKeyId%3DtestId%26Action%3DSendBatchSms%26Format%3DJSON%26OutId%3Dm-1"
    "%26PhoneNumberJson%3D%255B%252244770090001%2522%252C%2522861390000000%2522%255D"
    "%26SignNameJson%3D%255B%2522Acme%2522%252C%2522Acme%2522%255D%26SignatureMethod%3DHMAC-SHA1"
    "%26SignatureNonce%3Dn-1%26SignatureVersion%3D1.0%26TemplateCode%3DSMS_123"
    "%26TemplateParamJson%3D%255B%257B%2522name%2522%253A%2522Ann%2520Lee%252A~%2522%257D%252C%257B%257D%255D"
    "%26Timestamp%3D2026-10-01T08%253A00%253A00Z%26Version%3D2017-05-25"
)


def test_hand_computed_send_batch_sms_post_vector():
    assert string_to_sign("POST", BATCH_PARAMS) == BATCH_STS
    assert sign("POST", BATCH_PARAMS, "testSecret") == "HkLvQVOn/UFMjkLQRqnZOeB1Iwo="
    # The method is part of what is signed.
    assert sign("GET", BATCH_PARAMS, "testSecret") != "HkLvQVOn/UFMjkLQRqnZOeB1Iwo="


def test_signed_params_add_the_common_parameters_and_ignore_signature_when_signing():
    action_params = {k: v for k, v in BATCH_PARAMS.items() if k not in (
        "Action", "Version", "Format", "AccessKeyId", "SignatureMethod", "SignatureVersion", "SignatureNonce",
        "Timestamp")}
    signed = signed_params("SendBatchSms", action_params, access_key_id="testId", access_key_secret="testSecret",
                           version="2017-05-25", nonce="n-1", timestamp="2026-10-01T08:00:00Z")
    assert signed["Signature"] == "HkLvQVOn/UFMjkLQRqnZOeB1Iwo="
    assert "Signature=" not in canonical_query(signed)
    assert sign("POST", signed, "testSecret") == signed["Signature"]  # re-signing ignores the Signature
    # Fresh nonce and timestamp when none are given.
    a = signed_params("SendBatchSms", {}, access_key_id="k", access_key_secret="s", version="2017-05-25")
    b = signed_params("SendBatchSms", {}, access_key_id="k", access_key_secret="s", version="2017-05-25")
    assert a["SignatureNonce"] != b["SignatureNonce"] and a["Timestamp"].endswith("Z")


def test_sandbox_verifier_agrees_with_the_channel_signer():
    params = {"SignNameJson": '["阿里云", "A & B"]', "TemplateParamJson": '[{"x":"1+1=2 ~*/"}]', "OutId": "é"}
    signed = signed_params("SendBatchSms", params, access_key_id="id", access_key_secret="sec", version="2017-05-25")
    assert expected_signature("POST", signed, "sec") == signed["Signature"]
    assert expected_signature("POST", signed, "other") != signed["Signature"]
    # The form body decodes back to the exact signed values.
    assert dict(parse_qsl(encode_form(signed).decode())) == signed
