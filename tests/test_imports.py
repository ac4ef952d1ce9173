"""d2lbn's modules import each other one way (issue 11): no cycle among module-level imports, and
every module can be imported first in a fresh interpreter."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "d2lbn"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def d2lbn_imports(name, anywhere=False):
    """The d2lbn modules ``name`` imports: at module level, or with ``anywhere`` also inside
    functions (lazy imports)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("d2lbn."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "d2lbn":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("d2lbn."))
    return found & (set(MODULES) | {"__init__"})


def module_level_imports(name):
    """The d2lbn modules ``name`` imports at module level (imports inside functions are lazy)."""
    return d2lbn_imports(name) & set(MODULES)


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


@pytest.mark.parametrize("first", ["fast_norm", "checks", "norm", "parallel", "training", "moving_stats",
                                   "seeds", "experiments"])
def test_each_module_imports_first(first):
    result = subprocess.run([sys.executable, "-c", f"import d2lbn.{first}"], capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


# ---- layers: library modules below, each chapter's study module above (issue 26) -----------------

#: The study modules: the measurements of one chapter each, by the chapter's number. Every other
#: module is a library module, which the chapters and the studies share.
STUDIES = {"experiments": 6, "landscape": 8, "practice": 9, "diagnose": 10,
           "batch_problem": 11, "deployment": 12, "setups": 13, "classic_bug": 14}


def all_imports(name):
    """The d2lbn modules ``name`` imports anywhere: at module level and inside functions."""
    return d2lbn_imports(name, anywhere=True)


def upward_imports(graph):
    """(importer, imported) pairs that import upward: a library module importing a study
    module, or a study module importing the study of a later chapter."""
    bad = []
    for module, imported in graph.items():
        for other in sorted(imported & set(STUDIES)):
            if module not in STUDIES or STUDIES[other] > STUDIES[module]:
                bad.append((module, other))
    return bad


def test_every_study_module_exists():
    assert set(STUDIES) <= set(MODULES)


def test_no_module_imports_upward():
    """No library module imports a study module (function-level imports included), and no
    study imports a later chapter's study: the data, the moving-statistics tools and the seed
    bookkeeping live below every chapter."""
    graph = {m: all_imports(m) for m in MODULES}
    assert upward_imports(graph) == []


def test_upward_import_is_caught():
    """The rule above fails on the imports it forbids (a planted graph)."""
    graph = {"distributed": {"experiments", "data"}, "landscape": {"experiments"},
             "experiments": {"diagnose"}, "data": set()}
    assert upward_imports(graph) == [("distributed", "experiments"), ("experiments", "diagnose")]


def test_every_module_docstring_says_what_and_where():
    """Each module's first docstring line says what it holds and which chapters use it: it
    names a chapter (``ch06``), a range (``ch04-ch10``), "every chapter", an appendix, the
    command line, or the benchmarks."""
    where = re.compile(r"\bch\d\d\b|every chapter|appendi|command line|benchmark|tests")
    missing = []
    for name in MODULES + ["__init__"]:
        doc = ast.get_docstring(ast.parse((PACKAGE / f"{name}.py").read_text())) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        if not where.search(first):
            missing.append(f"{name}: {first!r}")
    assert missing == []


def test_the_front_door_is_cheap_and_complete():
    """``from d2lbn import BatchNorm`` and the other reused names work; importing the package
    loads no plotting backend, no study module and no data."""
    code = ("import sys, d2lbn\n"
            "from d2lbn import (BatchNorm, LayerNorm, batch_norm, layer_norm, load_fashion_mnist,\n"
            "                   train, evaluate_accuracy, try_gpu, num_gpus, set_seed, compare_seeds)\n"
            "import d2lbn.training, d2lbn.norm\n"
            "assert callable(train) and d2lbn.training.train is train\n"
            "assert d2lbn.norm.BatchNorm is BatchNorm\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('matplotlib', 'plotly')))\n"
            "assert not loaded, loaded\n"
            "studies = [m for m in sys.modules if m.split('.')[-1] in %r]\n"
            "assert not studies, studies\n"
            "from d2lbn import data\n"
            "assert data._read_split.cache_info().currsize == 0\n" % (sorted(STUDIES),))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
