"""Code shown in the book fits the page: at most 88 characters per line.

Checked statically, one test per notebook: every line of every code cell, and every line of every
function or class the notebook shows with ```{literalinclude}``` + ``:pyobject:``. (The browser test,
tests/site/test_site_browser.py, checks the rendered pages: no code block scrolls sideways.)
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_prose_numbers import book_notebooks  # noqa: E402

MAX_WIDTH = 88
# A hidden cell's code (tags hide-cell, hide-input) and code in a dropdown sit in a box whose column
# is 2 px narrower: an 88-character line scrolls there (668 px in 666 px, seen in the browser test).
HIDDEN_MAX_WIDTH = 87
INCLUDE = re.compile(r"^([`:]{3,})\{literalinclude\}\s+(\S+)\s*\n((?:\s*:[\w-]+:.*\n?)*)", re.M)


def pyobject_source(path: Path, name: str) -> tuple[int, list[str]]:
    """(first line number, lines) of the function/class `name` ("f", "C" or "C.method") in `path`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    scope = ast.parse("\n".join(lines)).body
    node = None
    for part in name.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                         ast.ClassDef)) and n.name == part), None)
        if node is None:
            raise LookupError(f"{path.name} has no {name!r} (literalinclude :pyobject:)")
        scope = node.body
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return start, lines[start - 1:node.end_lineno]


def shown_code(notebook: Path) -> list[tuple[str, int, str]]:
    """(where, line number, line) for each line of code the notebook shows (``where`` ends with
    " (hidden)" for a hidden cell or a dropdown)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    shown = []
    for index, cell in enumerate(nb["cells"]):
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        if cell["cell_type"] == "code":
            tags = cell.get("metadata", {}).get("tags", [])
            if "remove-input" in tags or "remove-cell" in tags:
                continue
            hidden = " (hidden)" if {"hide-cell", "hide-input"} & set(tags) else ""
            shown += [(f"cell {index}{hidden}", k, line)
                      for k, line in enumerate(source.splitlines(), 1)]
        elif cell["cell_type"] == "markdown":
            for m in INCLUDE.finditer(source):
                target = (notebook.parent / m.group(2)).resolve()
                options = dict(re.findall(r":([\w-]+):\s*(.*)", m.group(3)))
                if "pyobject" in options:
                    start, lines = pyobject_source(target, options["pyobject"].strip())
                else:
                    start, lines = 1, target.read_text(encoding="utf-8").splitlines()
                before = source[:m.start()]
                opened = before.rfind("{admonition}")
                hidden = (" (hidden)" if opened >= 0 and ":class: dropdown" in before[opened:]
                          else "")
                where = f"cell {index}: {target.name}{hidden}"
                shown += [(where, start + k, line) for k, line in enumerate(lines)]
    return shown


@pytest.mark.parametrize("notebook", book_notebooks(), ids=lambda p: p.stem)
def test_shown_code_fits_the_page(notebook):
    wide = [(where, k, line) for where, k, line in shown_code(notebook)
            if len(line) > (HIDDEN_MAX_WIDTH if where.endswith("(hidden)") else MAX_WIDTH)]
    assert not wide, (f"{notebook.name}: {len(wide)} line(s) of shown code too wide ({MAX_WIDTH} characters, {HIDDEN_MAX_WIDTH} in a hidden cell or dropdown) "
                      "characters (they scroll sideways in the book):\n"
                      + "\n".join(f"  {where} line {k} ({len(line)} chars): {line.strip()[:70]}"
                                  for where, k, line in wide))


def test_the_check_sees_cells_and_included_functions(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text("def short():\n    return 1\n\n\nclass C:\n    def long(self):\n"
                      f"        return {'1 + ' * 30}1\n", encoding="utf-8")
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "x = 1\n" + "y" * 89},
                    {"cell_type": "markdown", "metadata": {},
                     "source": "```{literalinclude} mod.py\n:pyobject: C.long\n```\n\n"
                               "```{literalinclude} mod.py\n:pyobject: short\n```"}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    shown = shown_code(path)
    wide = [(where, k) for where, k, line in shown if len(line) > MAX_WIDTH]
    assert wide == [("cell 0", 2), ("cell 1: mod.py", 7)]
    assert ("cell 1: mod.py", 2, "    return 1") in shown
    with pytest.raises(LookupError, match="no 'missing'"):
        pyobject_source(module, "missing")
