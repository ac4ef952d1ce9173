"""The reading paths of book/intro.md and their lengths, counted from the notebooks' prose.

``python tests/reading_paths.py`` prints each path's chapters, words and reading minutes, as the
intro's table must state them (``--write`` puts them into book/intro.md's table);
``tests/test_reading_paths.py`` fails when the intro's table and this count disagree (after a
chapter grows or shrinks: run it with ``--write``).

Words: the prose of the notebooks' markdown cells, code fences and directives' bodies left out, a
pasted glue value counted as one word. Minutes: words at 150 a minute (technical prose with
equations; the usual 200-250 a minute is for plain prose), rounded to the nearest 5.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prose_numbers import markdown_cells, read_notebook  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS_PER_MINUTE = 150

#: Each path: its name in the intro's table, and the notebooks it reads, in order.
PATHS = {
    "The d2l-level path": ["ch01_formula", "ch02_train_inference", "ch03_backward", "ch04_lenet",
                           "ch05_gluon"],
    "The practitioner's path": ["ch01_formula", "ch02_train_inference", "ch05_gluon", "ch07_devices",
                                "ch09_practice", "ch10_misbehaves", "ch11_batch_problem",
                                "ch12_deployment", "appendix_classic_bugs", "appendix_frameworks"],
    "The researcher's path": ["ch01_formula", "ch02_train_inference", "ch03_backward",
                              "ch06_beyond", "ch07_devices", "ch07_processes", "ch08_why",
                              "ch11_batch_problem", "ch13_setups"],
    "The whole book": ["ch01_formula", "ch02_train_inference", "ch03_backward", "ch04_lenet",
                       "ch05_gluon", "ch06_beyond", "ch07_devices", "ch07_processes", "ch08_why",
                       "ch09_practice", "ch10_misbehaves", "ch11_batch_problem", "ch12_deployment",
                       "ch13_setups", "appendix_classic_bugs", "appendix_fast_mxnet",
                       "appendix_parameter_server",
                       "appendix_frameworks"],
}

#: A fenced block: its opening line (code language or directive) and its body.
_FENCE = re.compile(r"(`{3,}|:{3,})([^\n]*)\n(.*?)\n?\1[ \t]*(?:\n|$)", re.S)
_ADMONITION = re.compile(r"\{(admonition|note|warning|tip|dropdown|important|caution)\}")
_WORD = re.compile(r"\{glue:text\}`[^`]*`|[A-Za-z][\w'\u2019-]*")


def _prose_of_fence(m: re.Match) -> str:
    """An admonition's body is prose; any other fence (code, a directive's options) is not."""
    return "\n" + m.group(3) + "\n" if _ADMONITION.match(m.group(2)) else " "


def prose_words(notebook: Path) -> int:
    """Words of prose in a notebook's markdown cells (see the module docstring)."""
    _, nb = read_notebook(notebook)
    text = "\n".join(source for _, source in markdown_cells(nb))
    return len(_WORD.findall(_FENCE.sub(_prose_of_fence, text)))


def path_length(notebooks) -> tuple[int, int]:
    """(words rounded to the nearest 100, reading minutes rounded to the nearest 5)."""
    words = sum(prose_words(ROOT / "book" / f"{name}.ipynb") for name in notebooks)
    return int(round(words / 100.0)) * 100, int(round(words / WORDS_PER_MINUTE / 5.0)) * 5


def stated_lengths(intro: str) -> dict:
    """{path name: (words, minutes)} from the intro's table rows
    ``| **name** | ... | 10,400 | 70 |``."""
    out = {}
    for line in intro.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].strip("*") in PATHS:
            out[cells[0].strip("*")] = (int(cells[-2].replace(",", "")), int(cells[-1]))
    return out


def write_lengths(intro_path: Path) -> None:
    """Rewrite the last two cells (words, minutes) of each path's row in the intro's table."""
    lines = intro_path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        cells = line.split("|")
        name = cells[1].strip().strip("*") if len(cells) > 5 else ""
        if name in PATHS:
            words, minutes = path_length(PATHS[name])
            cells[-3], cells[-2] = f" {words:,} ", f" {minutes} "
            lines[i] = "|".join(cells)
    intro_path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    for name, notebooks in PATHS.items():
        words, minutes = path_length(notebooks)
        print(f"{name}: {' '.join(notebooks)}: {words:,} words, {minutes} minutes")
    if "--write" in sys.argv:
        write_lengths(ROOT / "book" / "intro.md")
        print("book/intro.md updated")
