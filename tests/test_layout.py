"""pipeline/ never imports Prefect: every stage stays testable and benchmarkable without it."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_no_prefect_import_statement_in_pipeline():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "pipeline").rglob("*.py")
        if re.search(r"^\s*(import prefect|from prefect)", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


def test_importing_every_pipeline_module_leaves_prefect_unloaded():
    modules = [m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.") if not m.name.endswith("__main__")]
    assert "pipeline.dispatch" in modules and len(modules) > 10
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_project_never_reads_shared_reference():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("pipeline", "flows", "tests", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if "shared/reference" in path.read_text() and path.name != "test_layout.py"
    ]
    assert offenders == []
