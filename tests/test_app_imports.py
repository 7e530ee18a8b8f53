"""Imports between the apps run one way: a cycle between two apps fails here."""

import subprocess
import sys
from pathlib import Path

from tests.processes import ROOT

CHECKER = ROOT.parent / "shared" / "tools" / "app_cycles.py"


def app_edges() -> dict[str, set[str]]:
    """Which apps each app imports (their modules, not tests, migrations or bench)."""
    import ast

    apps = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests", "bench", "maschina"}
    edges: dict[str, set[str]] = {app: set() for app in apps}
    for app in apps:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                edges[app] |= {name.split(".")[0] for name in names} & (apps - {app})
    return edges


def test_app_imports_are_acyclic():
    edges = app_edges()
    done: set[str] = set()

    def visit(app, path):
        assert app not in path, f"import cycle between apps: {' -> '.join([*path, app])}"
        if app not in done:
            for other in sorted(edges[app]):
                visit(other, [*path, app])
            done.add(app)

    for app in sorted(edges):
        visit(app, [])


def test_the_layers_are_as_documented():
    """docs/architecture.md: audit <- routing <- billing <- accounts, agents <- runs;
    providers is plain I/O."""
    edges = app_edges()
    assert edges["providers"] == set()
    assert edges["audit"] == set()
    assert "runs" not in set().union(*(edges[app] for app in edges if app != "runs"))
    assert "billing" not in edges["routing"] | edges["agents"]


def test_the_shared_checker_agrees():
    if not Path(CHECKER).exists():  # the shared tools sit beside the repository, on CI too
        raise AssertionError(f"{CHECKER} is missing")
    result = subprocess.run([sys.executable, str(CHECKER), str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
