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
    data["rate_limit"] = {"max_per_second": 200}  # within every channel's ceiling (welcome.yaml's 400 is WhatsApp's)
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


# --- bounds: the spec file's size, and the document's once its aliases are expanded ---------------------------------

BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"]
                 + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)])


def test_a_spec_file_larger_than_its_bound_is_refused_unread(tmp_path, monkeypatch):
    path = _write(tmp_path)
    size = path.stat().st_size
    monkeypatch.setenv("CAMPAIGN_MAX_SPEC_BYTES", str(size))
    assert load_spec(path).name == "welcome"  # at the bound: read
    monkeypatch.setenv("CAMPAIGN_MAX_SPEC_BYTES", str(size - 1))
    with pytest.raises(SpecError, match=f"^{path}: .*larger than {size - 1:,} bytes .*CAMPAIGN_MAX_SPEC_BYTES"):
        load_spec(path)
    monkeypatch.delenv("CAMPAIGN_MAX_SPEC_BYTES")
    with path.open("a") as handle:  # the default, 1 MiB: a comment past it
        handle.write("#" + "x" * (1024 * 1024) + "\n")
    with pytest.raises(SpecError, match="larger than 1,048,576 bytes"):
        load_spec(path)


def test_a_yaml_alias_bomb_is_refused_without_being_expanded(tmp_path):
    import time

    path = _write(tmp_path)
    path.write_text(path.read_text() + BOMB + "\n")  # 10**9 values once expanded, in 400 bytes
    assert path.stat().st_size < 4096
    started = time.monotonic()
    with pytest.raises(SpecError, match=f"^{path}: .*more than 100,000 values .*CAMPAIGN_MAX_SPEC_NODES"):
        load_spec(path)
    assert time.monotonic() - started < 5  # counted up to the budget, never expanded


def test_a_cyclic_spec_and_a_string_repeated_by_aliases_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "cyclic.yaml"
    path.write_text("name: x\nloop: &a [*a]\n")
    with pytest.raises(SpecError, match="CAMPAIGN_MAX_SPEC_NODES"):
        load_spec(path)
    text = "x" * 100_000
    path.write_text(f"name: &t {text}\nmore: [{', '.join(['*t'] * 50)}]\n")  # 100 KB of YAML, 5 MB of text
    with pytest.raises(SpecError, match="more than 4,194,304 characters .*CAMPAIGN_MAX_SPEC_CHARS"):
        load_spec(path)


def test_the_expanded_bounds_are_settings(tmp_path, monkeypatch):
    path = _write(tmp_path)
    monkeypatch.setenv("CAMPAIGN_MAX_SPEC_NODES", "20")
    with pytest.raises(SpecError, match="more than 20 values"):
        load_spec(path)
    monkeypatch.setenv("CAMPAIGN_MAX_SPEC_NODES", "100_000")
    monkeypatch.setenv("CAMPAIGN_MAX_SPEC_CHARS", "100")
    with pytest.raises(SpecError, match="more than 100 characters"):
        load_spec(path)
    monkeypatch.setenv("CAMPAIGN_MAX_SPEC_CHARS", "lots")
    with pytest.raises(SpecError, match="CAMPAIGN_MAX_SPEC_CHARS: 'lots' is not a whole number"):
        load_spec(path)


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfename: x\n", "line 1 is not valid UTF-8 (byte 0xFF)"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b"name: " + b"1" * 5000 + b"\n", "not valid YAML: Exceeds the limit"),
], ids=["not-utf8", "deep", "huge-int"])
def test_a_spec_yaml_cannot_read_is_one_line_through_the_cli(tmp_path, capsys, content, expected):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    assert main(["run", str(path), "--db", str(tmp_path / "db.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and expected in err[0], err
