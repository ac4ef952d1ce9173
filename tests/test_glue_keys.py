"""Every glue role in the book's prose names a key that a cell stored, in its own notebook or, across
documents (`` {glue:text}`ch06_beyond.ipynb::key:.2f` ``), in the notebook it names.

The strict build (`make book`) fails on a missing key too, but only after the whole book is built; this
test names the notebook, the cell and the key in seconds. One trap it catches that reads fine in the
source: MyST-NB 1.4 splits a ``{glue:text}`` argument at its *last* colon to find the format, so a
cross-document ``{glue:text}`doc.ipynb::key``` without a format splits inside the ``::`` and pastes
nothing; such a role needs a format (``:s``, ``:d``, ``:.3f``).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_prose_numbers import book_notebooks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
ROLE = re.compile(r"\{glue(?::(\w+))?\}`([^`]+)`")
DIRECTIVE = re.compile(r"^```\{glue(?::\w+)?\}\s+(\S+)", re.M)


def stored_keys(path: Path) -> set[str]:
    """The glue keys stored in a notebook's outputs."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    keys = set()
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                keys.add(name)
    return keys


def glue_references(text: str) -> list[tuple[str | None, str, str]]:
    """(document or None, key, problem or '') for every glue role and directive in a text."""
    refs = []
    for m in ROLE.finditer(text):
        kind, arg = m.group(1), m.group(2)
        problem = ""
        if kind == "text":
            if ":" not in arg.replace("::", ""):
                problem = ("{glue:text} needs a format (:s, :d, :.3f)" if "::" in arg
                           else "")
            head = arg.rsplit(":", 1)[0] if ":" in arg.replace("::", "") else arg
        else:
            head = arg
        doc, _, key = head.rpartition("::")
        refs.append((doc or None, key, problem))
    for m in DIRECTIVE.finditer(text):
        doc, _, key = m.group(1).rpartition("::")
        refs.append((doc or None, key, ""))
    return refs


def _sources(path: Path) -> list[tuple[int, str]]:
    if path.suffix == ".md":
        return [(0, path.read_text(encoding="utf-8"))]
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(i, c["source"] if isinstance(c["source"], str) else "".join(c["source"]))
            for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"]


def documents() -> list[Path]:
    return book_notebooks() + sorted(BOOK.glob("*.md"))


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_every_glue_key_is_stored(path):
    own = stored_keys(path) if path.suffix == ".ipynb" else set()
    missing = []
    for cell, text in _sources(path):
        for doc, key, problem in glue_references(text):
            if problem:
                missing.append(f"cell {cell}: {doc}::{key}: {problem}")
                continue
            if doc is None:
                keys, where = own, path.name
            else:
                target = (path.parent / doc).resolve()
                if not target.exists():
                    missing.append(f"cell {cell}: {doc} does not exist")
                    continue
                keys, where = stored_keys(target), doc
            if key not in keys:
                missing.append(f"cell {cell}: key {key!r} is not stored in {where}")
    assert not missing, f"{path.name}:\n  " + "\n  ".join(missing)


def test_the_checker_sees_a_missing_key_and_a_formatless_cross_reference():
    refs = glue_references("a {glue:text}`k:.2f` b {glue:text}`ch06.ipynb::k2:.1f` "
                           "c {glue:text}`ch09.ipynb::k3` d {glue}`k4`")
    assert refs == [(None, "k", ""), ("ch06.ipynb", "k2", ""),
                    ("ch09.ipynb", "k3", "{glue:text} needs a format (:s, :d, :.3f)"),
                    (None, "k4", "")]
