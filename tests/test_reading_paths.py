"""The intro's reading paths (issue 26): each row of its table states the words and minutes that
tests/reading_paths.py counts from the notebooks now, and names every notebook of its path."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reading_paths import PATHS, ROOT, path_length, prose_words, stated_lengths  # noqa: E402

INTRO = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", list(PATHS))
def test_intro_states_each_paths_length(name):
    stated = stated_lengths(INTRO)
    assert name in stated, f"book/intro.md has no table row for {name!r}"
    assert stated[name] == path_length(PATHS[name]), (
        f"{name}: the intro says {stated[name]} (words, minutes), the notebooks hold "
        f"{path_length(PATHS[name])}; run `python tests/reading_paths.py --write`")


@pytest.mark.parametrize("name", [n for n in PATHS if n != "The whole book"])
def test_each_row_links_the_notebooks_of_its_path(name):
    row = next(line for line in INTRO.splitlines() if line.startswith(f"| **{name}**"))
    linked = [part.split(")")[0] for part in row.split("](")[1:]]
    assert linked == [f"{n}.ipynb" for n in PATHS[name]]


def test_the_whole_book_is_every_notebook():
    assert sorted(PATHS["The whole book"]) == sorted(p.stem for p in (ROOT / "book").glob("*.ipynb"))


def test_word_count_is_independent_of_code_and_counts_admonitions(tmp_path):
    """The counter against a hand-counted notebook: code fences and code cells are not prose, an
    admonition's text is, a glued value is one word."""
    import json
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["# Two words\n", "Five words {glue:text}`k:.2f` here.\n",
                                             "```python\nx = not counted at all\n```\n"]},
        {"cell_type": "markdown", "source": ["```{note}\nThree more words\n```\n"]},
        {"cell_type": "code", "source": ["print('not prose either')"]}]}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert prose_words(path) == 2 + 4 + 3   # '# Two words', 'Five words <glue> here.', the note
