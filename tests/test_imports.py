"""d2lbn's modules import each other one way (issue 11): no cycle among module-level imports, and
every module can be imported first in a fresh interpreter."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "d2lbn"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def module_level_imports(name):
    """The d2lbn modules ``name`` imports at module level (imports inside functions are lazy)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("d2lbn."):
            found.add(node.module.split(".")[1])
    return found & set(MODULES)


def test_no_import_cycle():
    graph = {m: module_level_imports(m) for m in MODULES}
    assert "norm" not in graph["fast_norm"] and graph["checks"] == set()
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "active", "import cycle: " + " -> ".join(path + [m])
        state[m] = "active"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"
    for m in MODULES:
        visit(m, [])


@pytest.mark.parametrize("first", ["fast_norm", "checks", "norm", "parallel", "train"])
def test_each_module_imports_first(first):
    result = subprocess.run([sys.executable, "-c", f"import d2lbn.{first}"], capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
