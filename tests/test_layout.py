"""The layout rules of CONTRIBUTING.md, checked on the source: no import cycles, each package imports only what it may,
and no SQL outside `labels/`."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("labels", "embeddings", "curation", "review_pages")
# What each package must not import (module prefixes): labels/ knows no torch and nothing above it; embeddings/
# knows no label store and no curation.
FORBIDDEN = {
    "labels": ("torch", "embeddings", "curation", "review_pages", "streamlit"),
    "embeddings": ("labels.store", "labels.ingest", "labels.export", "curation", "review_pages", "streamlit"),
    "curation": ("review_pages", "streamlit"),
}
SQL = re.compile(r"\b(SELECT\s+\S.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX))\b",
                 re.IGNORECASE | re.DOTALL)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            out[".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_project_has_no_import_cycle():
    modules = _modules()
    assert "embeddings.pipeline" in modules and "labels.store" in modules  # the walk found the packages
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_edges_from((name, t) for t in _imports(path) if t in modules and t != name)
    assert graph.number_of_edges() > 50
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import cycles: {cycles[:5]}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_package_imports_only_what_it_may(package):
    bad = []
    for name, path in _modules().items():
        if name.split(".")[0] != package:
            continue
        for target in _imports(path):
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(REPO)} imports {target}")
    assert bad == []


def test_no_module_outside_labels_issues_sql():
    files = list(REPO.glob("*.py")) + [
        p for d in ("embeddings", "curation", "review_pages", "benchmarks") for p in (REPO / d).rglob("*.py")]
    offenders = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        strings = [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if "sqlite3" in _imports(path) or any(SQL.search(s) for s in strings):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
    # the check can fail: the store itself does issue SQL
    store = (REPO / "labels" / "store.py").read_text(encoding="utf-8")
    assert "sqlite3" in _imports(REPO / "labels" / "store.py") and SQL.search(store)
