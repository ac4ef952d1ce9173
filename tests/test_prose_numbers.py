"""No bare numbers in the book's prose: every computed number is pasted from a cell (MyST-NB glue).

The rules are in tests/prose_numbers.py's docstring. One test per notebook (every notebook in _toc.yml
and every book/*.ipynb), so a failure names the notebook; then tests of the checker itself, which
must fail on a planted bare number and pass on every allowed form.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prose_numbers import allowed_numbers, bare_numbers, bare_numbers_in_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _toc_files(entries) -> list[str]:
    files = []
    for entry in entries or []:
        if "file" in entry:
            files.append(entry["file"])
        files += _toc_files(entry.get("sections")) + _toc_files(entry.get("chapters"))
    return files


def book_notebooks() -> list[Path]:
    """Every notebook of the book: those _toc.yml lists, and every book/*.ipynb (listed or not)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]] + _toc_files(toc.get("chapters"))
    for part in toc.get("parts", []):
        names += _toc_files(part.get("chapters"))
    paths = {ROOT / (str(Path(n).with_suffix("")) + ".ipynb") for n in names}
    paths = {p for p in paths if p.exists()} | set((ROOT / "book").glob("*.ipynb"))
    return sorted(paths)


@pytest.mark.parametrize("notebook", book_notebooks(), ids=lambda p: p.stem)
def test_no_bare_numbers_in_prose(notebook):
    found = bare_numbers(notebook)
    assert not found, (
        f"{notebook.name}: {len(found)} number(s) in prose that no cell produced. Paste computed "
        "numbers with {glue:text}`key:.3f`, write formulas as $math$ and identifiers as `code`, "
        "or list a cited constant in metadata d2lbn.allowed_numbers (token -> reason):\n"
        + "\n".join(f"  cell {b.cell}: {b.token!r} in ...{b.context}..." for b in found))


def test_the_book_has_notebooks_to_check():
    names = {p.stem for p in book_notebooks()}
    assert {"ch01_formula", "ch02_train_inference", "ch03_backward"} <= names, names


# --- the checker itself -------------------------------------------------------------------------

def tokens(text: str, allowed: dict | None = None) -> list[str]:
    return [token for token, _ in bare_numbers_in_text(text, allowed)]


def test_a_planted_bare_number_fails():
    assert tokens("Batch norm reaches an accuracy of 0.912 after ten epochs.") == ["0.912"]
    assert tokens("It is 35 times slower, and 1.3x faster, in 12% of the runs.") == ["35", "1.3x", "12%"]


def test_a_glued_number_passes():
    assert tokens("Accuracy {glue:text}`ch04_acc:.3f`, steps {glue:}`ch04_steps`, "
                  "figure {glue}`ch04_fig_2`.") == []
    # ...but a number typed next to the glue is still caught
    assert tokens("Accuracy {glue:text}`ch04_acc:.3f` against 0.85.") == ["0.85"]


def test_math_passes():
    text = ("With $m = 100$ the error is about $1/\\sqrt{m} = 0.1$, and $$\\sigma^2 = 9 \\cdot 3/4$$ "
            "for $m=4$.\n\n```{math}\n:label: eq-x\ny = 2x + 1\n```\n\n"
            "\\begin{aligned} a &= 1 \\\\ b &= 2 \\end{aligned} and {math}`e^{2}`.")
    assert tokens(text) == []
    assert tokens("Two dollars $ and 3 $ are not math.") in (["3"], [])   # stray dollars: no crash


def test_inline_and_fenced_code_pass_but_glued_digits_outside_code_fail():
    assert tokens("In `float32`, `LeNet-5` and ``x2`` the digits are code.") == []
    assert tokens("```python\nx = nd.arange(6)  # 6 values\n```") == []
    assert tokens("~~~\n1 2 3\n~~~") == []
    assert tokens("```{literalinclude} ../d2lbn/norm.py\n:pyobject: batch_norm\n:lines: 1-20\n```") == []
    assert tokens("Cast it to float32, then train LeNet-5.") == ["float32", "LeNet-5"]
    assert tokens("The 1st run and the 2nd one.") == ["1st", "2nd"]


def test_roles_labels_options_links_and_comments_pass():
    text = ("(ch-2-train)=\n# Title\n\nAs {cite}`ioffe2015batch` and {cite:p}`wu2021rethinking` say, "
            "see {numref}`fig-2-acc`, {ref}`ch-3 <ch-backward>`, {eq}`eq-bn-2`, {doc}`ch03_backward`, "
            "[the docs](https://mxnet.apache.org/versions/1.9.1/api) and <https://arxiv.org/abs/1502.03167>."
            "\n<!-- TODO: 42 -->\n\n```{admonition} Solution\n:class: dropdown\n:name: sol-3\nText.\n```")
    assert tokens(text) == []
    assert tokens("[version 2](https://x.org/2)") == ["2"]                  # link *text* is prose


def test_prose_inside_a_directive_is_checked():
    assert tokens("```{admonition} Solution to exercise 2\n:class: dropdown\nIt scored 81%.\n```") \
        == ["81%"]
    assert tokens("::::{note}\nA note with 7 things.\n::::") == ["7"]


def test_allow_list_tokens_pass_and_only_as_whole_tokens():
    allowed = {"1.9.1": "MXNet version", "0.9": "MXNet's default momentum",
               "Algorithm 2": "the paper's Algorithm 2"}
    text = "MXNet 1.9.1 uses momentum 0.9 by default; Algorithm 2 of the paper differs."
    assert tokens(text, allowed) == []
    assert tokens("A momentum of 0.95, not 0.9.", allowed) == ["0.95"]
    assert tokens("Algorithm 21 is not Algorithm 2.", allowed) == ["21"]
    assert tokens(text) == ["1.9.1", "0.9", "2"]                            # without the list


def test_structural_patterns():
    # list markers and exercise numbers
    assert tokens("1. First exercise.\n2. Second, see exercise 1 and exercises 1 and 2.") == []
    # a paper's figure / section / equation / algorithm, or a year, in a sentence with a citation
    assert tokens("Ioffe and Szegedy {cite}`ioffe2015batch` (Section 3.1, Eq. (2), Fig. 2(a)) "
                  "argued this in 2015.") == []
    assert tokens("The tutorial {cite}`gluonbook2017` was written in 2017.") == []
    # ...but not without a citation in the same sentence
    assert tokens("See Fig. 2 of the paper. It came out in 2015.") == ["2", "2015"]
    assert tokens("Cited {cite}`ioffe2015batch`. In 2015 it was new.") == ["2015"]


def test_chinese_text():
    assert tokens("批量归一化 (batch normalization) 和 一 二 三 are words.") == []
    assert tokens("见第2章，共３个。") == ["见第2章", "共３个"]


def test_numbers_report_notebook_cell_and_context(tmp_path):
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"d2lbn": {"allowed_numbers": {
              "2015": "year of Ioffe & Szegedy"}}},
          "cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Title\n\nIn 2015 it began."},
                    {"cell_type": "code", "metadata": {}, "source": "x = 42", "outputs": [],
                     "execution_count": None},
                    {"cell_type": "markdown", "metadata": {}, "source": ["It reached ", "0.91 accuracy."]}]}
    path = tmp_path / "planted.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    found = bare_numbers(path)
    assert [(b.cell, b.token) for b in found] == [(2, "0.91")]
    assert "reached 0.91 accuracy" in found[0].context
    cli = subprocess.run([sys.executable, str(ROOT / "tests" / "prose_numbers.py"), str(path)],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and "planted.ipynb: cell 2: '0.91'" in cli.stdout, cli
    nb["cells"][2]["source"] = "It reached {glue:text}`acc:.2f` accuracy."
    path.write_text(json.dumps(nb), encoding="utf-8")
    cli = subprocess.run([sys.executable, str(ROOT / "tests" / "prose_numbers.py"), str(path)],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout == "", cli


def test_allow_list_needs_reasons():
    with pytest.raises(ValueError, match="needs a reason"):
        allowed_numbers({"metadata": {"d2lbn": {"allowed_numbers": {"0.9": ""}}}})
    with pytest.raises(ValueError, match="token -> reason"):
        allowed_numbers({"metadata": {"d2lbn": {"allowed_numbers": ["0.9"]}}})
    with pytest.raises(ValueError, match="has no digit"):
        allowed_numbers({"metadata": {"d2lbn": {"allowed_numbers": {"momentum": "x"}}}})
    with pytest.raises(ValueError, match="path must be a .ipynb"):
        bare_numbers("book/intro.md")
