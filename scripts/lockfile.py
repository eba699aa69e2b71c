"""requirements.lock's two checks: `check` (does the lock still satisfy pyproject.toml?) and `audit`.

    python scripts/lockfile.py check [--lock requirements.lock]
    python scripts/lockfile.py audit [--lock requirements.lock] [--service pypi|osv] [--timeout-s 15] [--max-s 600]

`check` (run by `make` before installing the project) exits 1 with one line naming the first
requirement of pyproject.toml (dependencies, dev extras, build backend) the lock does not pin
within its range: someone changed a dependency without running `make lock`.

`audit` (`make audit`) is pip-audit over the lock, failing unless every locked package was checked.
pip-audit alone prints "No known vulnerabilities found" and exits 0 when the vulnerability service
answered 404 for every package (it skips them), and dies with a traceback when the service cannot be
reached. Here either is a failure with one line saying so. Exit codes: 0 every package checked and
none vulnerable, 1 known vulnerabilities (one line each), 2 not every package could be checked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")  # name[extras]==version
# The lines of pip-audit's stderr that say why it stopped: its own fatal messages, or the exception
# a traceback ends with.
_REASON = re.compile(r"^(ERROR:pip_audit[^:]*:(?!Tip:).*|[A-Za-z_.]+(Error|Exception): .*)$")
MAX_REASON_CHARS = 300


def canonical(name: str) -> str:
    """PEP 503 name, as pip-audit and pip compare them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_packages(lock: Path) -> dict[str, str]:
    """name -> pinned version of every package in a lock file of `name==version --hash=...` entries."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def stale_requirements(pyproject: Path, pins: dict[str, str], extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """The requirements of `pyproject` (dependencies, `extras`, build-system) that apply on this
    platform and that `pins` does not satisfy."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project", {})
    wanted = [*project.get("dependencies", []), *data.get("build-system", {}).get("requires", [])]
    for extra in extras:
        wanted += project.get("optional-dependencies", {}).get(extra, [])
    out = []
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        pinned = pins.get(canonical(req.name))
        if pinned is None:
            out.append(f"{req} (not in the lock)")
        elif not req.specifier.contains(pinned, prereleases=True):
            out.append(f"{req} (the lock pins {pinned})")
    return out


def unchecked(pins: dict[str, str], report: dict) -> list[str]:
    """Locked packages pip-audit's JSON report does not show as looked up: skipped (with its reason)
    or missing. Empty means every package was checked."""
    seen = {canonical(d["name"]): d for d in report.get("dependencies", [])}
    out = []
    for name in sorted(pins):
        dep = seen.get(name)
        if dep is None:
            out.append(f"{name}: not in the report")
        elif "skip_reason" in dep or Version(str(dep.get("version"))) != Version(pins[name]):
            out.append(f"{name}: {dep.get('skip_reason') or 'version ' + str(dep.get('version'))}")
    return out


def vulnerabilities(report: dict) -> list[str]:
    return [f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v.get('fix_versions', [])) or 'no release'})"
            for d in report.get("dependencies", []) for v in d.get("vulns", [])]


def why_it_stopped(stderr: str) -> str:
    reasons = [line.strip() for line in stderr.splitlines() if _REASON.match(line.strip())]
    reason = reasons[-1] if reasons else (stderr.strip().splitlines() or ["no output"])[-1]
    return re.sub(r"^ERROR:pip_audit[^:]*:", "", reason)[:MAX_REASON_CHARS]


def audit(lock: Path, service: str, timeout_s: int, max_s: float) -> tuple[int, list[str]]:
    """(exit code, lines to print)."""
    if not lock.is_file():
        return 2, [f"audit: FAILED: {lock} does not exist (run `make lock`)"]
    pins = locked_packages(lock)
    if not pins:
        return 2, [f"audit: FAILED: {lock} pins no package (expected name==version lines)"]
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        report_path = Path(tmp) / "report.json"
        # --disable-pip: read the pins and hashes as written, never install or resolve them;
        # --strict: a skipped package stops the audit; a fresh cache: answers come from the service now.
        cmd = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--require-hashes", "--disable-pip", "--strict",
               "--progress-spinner", "off", "--vulnerability-service", service, "--timeout", str(timeout_s),
               "--cache-dir", str(Path(tmp) / "cache"), "--format", "json", "--output", str(report_path)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max_s, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return 2, [f"audit: FAILED: pip-audit ({service}) did not finish within {max_s:g} s; nothing was checked"]
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
    if report is None:
        return 2, [f"audit: FAILED: could not check {lock.name} against the vulnerability service ({service}), "
                   f"so nothing is known about its {len(pins)} packages: {why_it_stopped(done.stderr)}"]
    missing = unchecked(pins, report)
    found = vulnerabilities(report)
    if found:
        return 1, [*found, f"audit: {len(found)} known vulnerabilities in {lock.name} ({service})"]
    if missing or done.returncode != 0:
        detail = missing[0] if missing else why_it_stopped(done.stderr)
        return 2, [f"audit: FAILED: {len(missing)} of {len(pins)} packages in {lock.name} were not checked "
                   f"({service}); first: {detail}"]
    return 0, [f"audit: {len(pins)} packages in {lock.name} checked against {service}: no known vulnerabilities"]


def check(lock: Path, pyproject: Path) -> tuple[int, list[str]]:
    pins = locked_packages(lock) if lock.is_file() else {}
    stale = stale_requirements(pyproject, pins)
    if stale:
        return 1, [f"{lock.name} is out of date with {pyproject.name}: {stale[0]}"
                   f"{f' (and {len(stale) - 1} more)' if len(stale) > 1 else ''}; run `make lock` and commit it"]
    return 0, []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check", "audit"])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--service", choices=["pypi", "osv"], default=os.environ.get("AUDIT_SERVICE", "pypi"))
    parser.add_argument("--timeout-s", type=int, default=15, help="per request to the service")
    parser.add_argument("--max-s", type=float, default=float(os.environ.get("AUDIT_MAX_S", 600)),
                        help="the whole audit (AUDIT_MAX_S)")
    args = parser.parse_args(argv)
    if args.command == "check":
        code, lines = check(args.lock, args.pyproject)
    else:
        code, lines = audit(args.lock, args.service, args.timeout_s, args.max_s)
    for line in lines:
        print(line, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
