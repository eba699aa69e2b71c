"""The rules that keep the house: pipeline/ never imports Prefect, stages import only the ground and
earlier stages, no import cycle, nothing outside the repository is read."""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parents[1]

# Which way arrows may run: a module may import its own package, the ground, and the layers listed
# before its own. The stages in the order the data flows, with channels (which the sandbox, dispatch
# and receipts speak through) after render (SMS segments) and the front-ends last.
GROUND = {"spec", "spec_kinds", "spec_rates", "errors", "records", "store", "masking", "servers", "settings", "runtime"}
LAYERS = ["audience", "render", "channels", "costs", "dispatch", "receipts", "upload", "sandbox", "cli"]
# The fake channel for tests implements the channel protocol, so it sits with the channels.
PLACED = {"testing": "channels"}


def _layer(module: str) -> str:
    """The layer of a dotted module name inside pipeline (`pipeline.dispatch.engine` -> dispatch)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in GROUND or top == "":
        return "ground"
    return PLACED.get(top, top)


def _rank(layer: str) -> int:
    return -1 if layer == "ground" else LAYERS.index(layer)


def _imports(path: Path, module: str) -> set[str]:
    """Every pipeline module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pipeline"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.split(".")[0] != "pipeline":
                continue
            for alias in node.names:  # `from pipeline.costs import charts` imports the module charts
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _module_path(candidate) else base)
    return found


def _module_path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "pipeline").rglob("*.py")
    }


def _graph() -> dict[str, set[str]]:
    return {module: _imports(path, module) for module, path in _modules().items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in graph.items():
        own = _layer(module)
        for target in imported:
            theirs = _layer(target)
            if theirs != own and _rank(theirs) >= _rank(own):
                wrong.append(f"{module} ({own}) imports {target} ({theirs})")
    return sorted(wrong)


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between packages (a stage package, the ground counted as one)."""
    edges: dict[str, set[str]] = {}
    for module, imported in graph.items():
        for target in imported:
            a, b = _layer(module), _layer(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return _cycles(edges)


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules, lazy imports included (a package's __init__ importing its own modules
    is how a package re-exports, not a cycle)."""
    edges = {m: {t for t in ts if t in graph and not (m.startswith(t + ".") and _modules()[t].name == "__init__.py")}
             for m, ts in graph.items()}
    return _cycles(edges)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_only_the_ground_sits_at_the_top_of_pipeline():
    loose = sorted(p.stem for p in (ROOT / "pipeline").glob("*.py") if p.stem != "__init__")
    assert set(loose) <= GROUND | set(PLACED), loose


def test_every_package_opens_with_what_it_owns():
    for init in (ROOT / "pipeline").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 60, f"{init.relative_to(ROOT)} has no docstring saying what it owns"


def test_stages_import_only_the_ground_and_earlier_stages():
    assert upward_imports(_graph()) == []


def test_no_import_cycle_between_packages_or_modules():
    graph = _graph()
    assert package_cycles(graph) == []
    assert module_cycles(graph) == []


def test_the_checks_see_a_deliberate_bad_import(tmp_path):
    # An earlier stage importing a later one, lazily inside a function, and the cycle it closes.
    graph = _graph()
    graph["pipeline.audience.load"] = graph["pipeline.audience.load"] | {"pipeline.dispatch.engine"}
    assert upward_imports(graph) == [
        "pipeline.audience.load (audience) imports pipeline.dispatch.engine (dispatch)"
    ]
    assert any({"audience", "dispatch"} <= set(cycle) for cycle in package_cycles(graph))
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from pipeline.receipts import ingest\n")
    assert _imports(source, "pipeline.audience.bad") == {"pipeline.receipts.ingest"}


def test_no_prefect_import_statement_in_pipeline():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "pipeline").rglob("*.py")
        if re.search(r"^\s*(import prefect|from prefect)", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


def test_importing_every_pipeline_module_leaves_prefect_unloaded():
    modules = [m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.") if not m.name.endswith("__main__")]
    assert "pipeline.dispatch.engine" in modules and len(modules) > 10
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_project_never_reads_or_cites_files_outside_the_repository():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("pipeline", "flows", "tests", "benchmarks", "scripts", "docs")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".md", ".csv", ".yaml", ".sql") and path.name != "test_layout.py"
        and re.search(r"shared/reference|PROVIDERS\.md|\.\./shared", path.read_text(errors="replace"))
    ]
    assert offenders == []


def test_no_test_module_imports_another():
    """Tests share scaffolding through tests/helpers/ and conftest.py, never by importing a test module (which
    would also collect and run its tests twice, and tie one test's helpers to another's)."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name.split(".")[0] == "tests" and name.split(".")[-1].startswith("test_")]
    assert offenders == []
