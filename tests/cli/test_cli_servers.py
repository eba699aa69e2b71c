"""`campaign webhooks` and `campaign sandbox` refuse a setting or an option they cannot use with one `error:` line
and exit code 2, before announcing a server: a host that is not loopback, a server bound that is not a number, a
throughput that is not positive."""

from __future__ import annotations

import pytest

from pipeline.cli import main


@pytest.mark.parametrize(("command", "env", "expected"), [
    (["webhooks", "--host", "0.0.0.0"], {}, "error: --host 0.0.0.0: servers bind to loopback only"),
    (["sandbox", "--host", "192.168.1.5"], {}, "error: --host 192.168.1.5: servers bind to loopback only"),
    (["webhooks"], {"CAMPAIGN_MAX_BODY_BYTES": "abc"},
     "error: CAMPAIGN_MAX_BODY_BYTES: 'abc' is not a whole number of at least 1"),
    (["sandbox"], {"CAMPAIGN_HEADER_TIMEOUT_S": "inf"},
     "error: CAMPAIGN_HEADER_TIMEOUT_S: 'inf' is not a positive number of seconds"),
], ids=["webhooks-host", "sandbox-host", "body-bytes", "header-timeout"])
def test_a_server_that_will_not_start_is_one_line_and_not_announced(tmp_path, capsys, monkeypatch, command, env,
                                                                    expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    port = ["--port", "9"]  # never bound: refused before
    assert main([*command, *port, *(["--spool-dir", str(tmp_path / "spool")] if command[0] == "webhooks" else [])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "receiver on http://..." for a server that does not start
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), captured.err


@pytest.mark.parametrize("throughput", ["0", "-5", "nan", "inf", "fast"])
def test_sandbox_throughput_must_be_a_positive_number(capsys, throughput):
    with pytest.raises(SystemExit) as exited:
        main(["sandbox", "--port", "9", "--throughput", throughput])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --throughput: '{throughput}' is not a positive number" in err and "Traceback" not in err
