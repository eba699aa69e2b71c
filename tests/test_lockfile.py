"""scripts/lockfile.py: `make` refuses a lock that no longer satisfies pyproject.toml, and `make audit`
fails with one line when it did not check every locked package."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lockfile_script", ROOT / "scripts" / "lockfile.py")
assert _spec and _spec.loader
lockfile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lockfile)

_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def run_audit(*args: str, proxy_port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = f"http://127.0.0.1:{proxy_port}"
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "lockfile.py"), "audit", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def refusing_port() -> socket.socket:
    """A loopback port that is bound but never listens, so connecting to it is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def test_unreachable_vulnerability_service_fails_with_one_clear_line() -> None:
    with refusing_port() as sock:
        done = run_audit("--lock", str(ROOT / "requirements.lock"), proxy_port=sock.getsockname()[1])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("audit: FAILED: could not check requirements.lock against the vulnerability"), lines
    assert "proxy" in lines[0].lower()
    assert "No known vulnerabilities" not in done.stdout + done.stderr


def test_the_whole_audit_is_bounded_in_time() -> None:
    with refusing_port() as sock:
        done = run_audit("--max-s", "0.001", proxy_port=sock.getsockname()[1])
    assert done.returncode == 2
    assert done.stderr.strip() == "audit: FAILED: pip-audit (pypi) did not finish within 0.001 s; nothing was checked"


def test_skipped_or_missing_packages_are_not_checked() -> None:
    pins = {"httpx": "0.29.0", "duckdb": "2.0.1", "ruamel-yaml": "0.19.1", "polars": "1.20.0"}
    # What pip-audit (without --strict) reports when the service answers 404 for a package.
    report = {"dependencies": [
        {"name": "httpx", "version": "0.29.0", "vulns": []},
        {"name": "duckdb", "skip_reason": "Dependency not found on PyPI and could not be audited: duckdb (2.0.1)"},
        {"name": "ruamel.yaml", "version": "0.19.1", "vulns": []},
    ]}
    assert lockfile.unchecked(pins, report) == [
        "duckdb: Dependency not found on PyPI and could not be audited: duckdb (2.0.1)",
        "polars: not in the report",
    ]
    report["dependencies"][1] = {"name": "duckdb", "version": "2.0.1", "vulns": []}
    report["dependencies"].append({"name": "polars", "version": "1.20", "vulns": []})  # the same version, normalised
    assert lockfile.unchecked(pins, report) == []


def test_lock_pins_are_read_with_canonical_names(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\nruamel.yaml==0.19.1 \\\n    --hash=sha256:ab\n    # via prefect\nPyYAML==6.0.3 \\\n"
                    "    --hash=sha256:cd\ncachecontrol[filecache]==0.14.4 \\\n    --hash=sha256:ef\n"
                    "py-key-value-aio[memory, redis]==0.5.0 \\\n    --hash=sha256:01\n")
    # With its extras (make lock keeps them: pip's hash mode needs `name[extra]` pinned where a package asks for one).
    assert lockfile.locked_packages(lock) == {"ruamel-yaml": "0.19.1", "pyyaml": "6.0.3", "cachecontrol": "0.14.4",
                                              "py-key-value-aio": "0.5.0"}


def test_the_committed_lock_satisfies_pyproject() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "lockfile.py"), "check"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_dependency_added_without_make_lock_stops_the_install(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(text.replace('"duckdb>=1.1",', '"duckdb>=1.1",\n  "lxml>=5.0",'))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "lockfile.py"), "check", "--pyproject",
                           str(pyproject)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1
    assert done.stderr == ("requirements.lock is out of date with pyproject.toml: lxml>=5.0 (not in the "
                           "lock); run `make lock` and commit it\n")


def test_a_raised_lower_bound_or_a_missing_pin_is_out_of_date() -> None:
    pins = lockfile.locked_packages(ROOT / "requirements.lock")
    pyproject = ROOT / "pyproject.toml"
    assert lockfile.stale_requirements(pyproject, pins) == []
    assert lockfile.stale_requirements(pyproject, {**pins, "duckdb": "1.0.0"}) == ["duckdb>=1.1 (the lock pins 1.0.0)"]
    del pins["setuptools"]  # the build backend is locked too
    assert lockfile.stale_requirements(pyproject, pins) == ["setuptools>=68 (not in the lock)"]
