"""Campaign specs: a wrong spec fails before anything is sent, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(leaf)
        else:
            node[leaf] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_demo_spec_is_valid():
    spec = load_spec(ROOT / "campaigns/welcome.yaml")
    assert spec.channel == "whatsapp" and spec.template.category == "marketing"
    assert spec.variables == {"first_name": "first_name", "code": "coupon", "city": "city"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channel": "telegraph"}, "channel"),
        ({"template__category": "promo"}, "template.category"),
        ({"template__language": "English"}, "template.language"),
        ({"rate_limit__max_per_second": 5000}, "rate_limit.max_per_second"),
        ({"credentials__access_token": "my token"}, "credentials"),
        ({"sender": None}, "sender"),
        ({"surprise": 1}, "surprise"),
        ({"blocked_countries": ["Iran"]}, "blocked_countries"),
    ],
)
def test_a_wrong_spec_names_the_field(tmp_path, change, field):
    path = _write(tmp_path, **change)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    assert f"{field}:" in str(info.value)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_cli_run_reports_a_spec_error_before_sending(tmp_path, capsys):
    path = _write(tmp_path, template__category="promo")
    assert main(["run", str(path), "--db", str(tmp_path / "db.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "template.category" in err and "Traceback" not in err
    assert not (tmp_path / "db.sqlite").exists()


def test_missing_secret_names_the_env_var(monkeypatch):
    spec = load_spec(ROOT / "campaigns/welcome.yaml")
    monkeypatch.delenv("WHATSAPP_ACCESS_TOKEN")
    with pytest.raises(SpecError, match="credentials.access_token: environment variable WHATSAPP_ACCESS_TOKEN"):
        spec.secret("access_token", "WHATSAPP_ACCESS_TOKEN")


@pytest.mark.parametrize(
    ("channel", "options", "env", "cls"),
    [
        ("whatsapp", {}, {}, "WhatsAppChannel"),
        ("messenger", {}, {"MESSENGER_PAGE_ACCESS_TOKEN": "x"}, "MessengerChannel"),
        ("instagram", {}, {"INSTAGRAM_ACCESS_TOKEN": "x"}, "InstagramChannel"),
        ("viber", {}, {"VIBER_AUTH_TOKEN": "x"}, "ViberChannel"),
        ("sms", {}, {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "x"}, "TwilioSmsChannel"),
        ("sms", {"provider": "alibaba_sms"},
         {"ALIBABA_CLOUD_ACCESS_KEY_ID": "k", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s"}, "AlibabaSmsChannel"),
        ("email", {"from_address": "news@example.com", "unsubscribe_url": "https://example.com/unsubscribe"},
         {"EMAIL_UNSUBSCRIBE_SECRET": "u"}, "EmailChannel"),
        ("chatapp", {"channel_type": "whatsapp"},
         {"ALIBABA_CLOUD_ACCESS_KEY_ID": "k", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s"}, "ChatAppChannel"),
    ],
)
def test_the_registry_builds_every_channel_from_a_spec(monkeypatch, channel, options, env, cls):
    from pipeline.channels import channel_for
    from pipeline.spec import parse_spec

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data["channel"] = channel
    data["provider"] = {"options": options}
    base_url = "smtp://127.0.0.1:1" if channel == "email" else "http://127.0.0.1:1"
    built = channel_for(parse_spec(data), base_url=base_url)
    assert type(built).__name__ == cls


def test_an_unknown_sms_provider_is_named():
    from pipeline.channels import channel_for
    from pipeline.spec import parse_spec

    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(channel="sms", provider={"options": {"provider": "carrier-pigeon"}})
    with pytest.raises(SpecError, match="provider.options.provider"):
        channel_for(parse_spec(data))
