"""`campaign webhooks`, `campaign sandbox` and `campaign upload-server` refuse a setting or an option they cannot use
with one `error:` line and exit code 2, before announcing or binding a server: a host that is not loopback, a port
that is not one, a server bound that is not a number, a throughput that is not positive. So do the modules run on
their own (`python -m pipeline.receipts.receiver`, `python -m pipeline.sandbox`) for a port that is not one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.sandbox.__main__ import parse_args as sandbox_args

# What upload-server needs to get as far as announcing itself: a token and the receiver's secret.
UPLOAD_ENV = {"UPLOAD_TOKEN": "t" * 32, "WHATSAPP_APP_SECRET": "test-app-secret"}


def _folders(command: str, tmp_path) -> list[str]:
    if command == "sandbox":
        return []
    folders = ["--spool-dir", str(tmp_path / "spool")]
    if command == "upload-server":
        folders += ["--specs-dir", str(tmp_path / "campaigns"), "--audiences-dir", str(tmp_path / "audiences"),
                    "--staging-dir", str(tmp_path / "staging"), "--db", str(tmp_path / "campaigns.sqlite")]
    return folders


@pytest.mark.parametrize(("command", "env", "expected"), [
    (["webhooks", "--host", "0.0.0.0"], {}, "error: --host 0.0.0.0: servers bind to loopback only"),
    (["sandbox", "--host", "192.168.1.5"], {}, "error: --host 192.168.1.5: servers bind to loopback only"),
    (["upload-server", "--host", "0.0.0.0"], UPLOAD_ENV, "error: --host 0.0.0.0: servers bind to loopback only"),
    (["webhooks"], {"CAMPAIGN_MAX_BODY_BYTES": "abc"},
     "error: CAMPAIGN_MAX_BODY_BYTES: 'abc' is not a whole number of at least 1"),
    (["sandbox"], {"CAMPAIGN_HEADER_TIMEOUT_S": "inf"},
     "error: CAMPAIGN_HEADER_TIMEOUT_S: 'inf' is not a positive number of seconds"),
    (["upload-server"], {**UPLOAD_ENV, "CAMPAIGN_BODY_TIMEOUT_S": "0"},
     "error: CAMPAIGN_BODY_TIMEOUT_S: '0' is not a positive number of seconds"),
], ids=["webhooks-host", "sandbox-host", "upload-host", "body-bytes", "header-timeout", "upload-body-timeout"])
def test_a_server_that_will_not_start_is_one_line_and_not_announced(tmp_path, capsys, monkeypatch, command, env,
                                                                    expected):
    monkeypatch.chdir(tmp_path)  # whatever a server would make on its way to announcing itself lands here
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    port = ["--port", "9"]  # never bound: refused before
    assert main([*command, *port, *_folders(command[0], tmp_path)]) == 2
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


@pytest.mark.parametrize("command", ["webhooks", "sandbox", "upload-server"])
@pytest.mark.parametrize("port", ["70000", "65536", "-1", "0", "abc", "80.5", ""])
def test_a_port_that_is_not_one_is_refused_before_anything_is_announced(tmp_path, capsys, monkeypatch, command,
                                                                        port):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for name, value in UPLOAD_ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:  # argparse's refusal: it never reaches the command
        main([command, f"--port={port}", *_folders(command, tmp_path)])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert errors == [f"campaign {command}: error: argument --port: {port!r} is not a port number from 1 to 65535"]
    assert "Traceback" not in captured.err


# module -> (its lowest port, what it says once it serves): the sandbox binds first, so 0 (any free port) is one.
MODULES = {"pipeline.receipts.receiver": (1, "receiver on "), "pipeline.sandbox": (0, "WhatsApp sandbox on ")}


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("port", ["70000", "abc"])
def test_a_server_module_refuses_a_port_that_is_not_one_before_it_serves(tmp_path, module, port):
    env = {**os.environ, **UPLOAD_ENV, "WHATSAPP_ACCESS_TOKEN": "test-token", "WHATSAPP_VERIFY_TOKEN": "v"}
    folders = ["--spool-dir", str(tmp_path / "spool")] if module == "pipeline.receipts.receiver" else []
    done = subprocess.run([sys.executable, "-m", module, "--port", port, *folders], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    lowest, serving = MODULES[module]
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [f"python -m {module}: error: argument --port: {port!r} is not a port number from {lowest} "
                      "to 65535"], done.stderr
    assert serving not in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no spool made: refused before anything else


@pytest.mark.parametrize("port", ["0", "1", "65535"])
def test_the_sandbox_module_still_takes_port_0_for_any_free_port(port):
    assert sandbox_args(["--port", port]).port == int(port)
