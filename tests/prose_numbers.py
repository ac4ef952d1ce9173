"""Find bare numbers in the prose (markdown cells) of the book's notebooks.

Every number in prose that comes from a computation must be pasted from a cell with MyST-NB's glue
(`` {glue:text}`ch03_error:.3f` ``), so that the text cannot disagree with the outputs beside it.
This module finds every digit in a notebook's markdown cells that is *not* in one of these places:

* a glue role or directive (`` {glue:text}`key:.3f` ``, `` {glue}`key` ``, ...);
* math: ``$...$``, ``$$...$$``, a ```` ```{math} ```` block, ``\\begin{..}...\\end{..}``, `` {math}`..` ``;
* code: inline ``code`` (so ``float32``, ``LeNet-5``, ``x2`` are fine *written as code*) and fenced
  code blocks, including ```` ```{literalinclude} ````, ```` ```{code-cell} ```` and friends;
* a cross-reference or citation role: ``{cite}`` (and ``{cite:p}``, ``{cite:t}``), ``{numref}``,
  ``{ref}``, ``{eq}``, ``{doc}``, ``{download}``;
* a label line ``(name)=``, a directive option line (``:label: eq-1``, ``:class: dropdown``), the
  opening and closing fence of a directive, a link target (``[text](target)``, ``<https://..>``),
  an HTML comment or tag, a footnote reference ``[^1]``;
* a token listed in the notebook's own allow-list, ``nb.metadata["d2lbn"]["allowed_numbers"]``, a
  mapping from a literal token to the reason it may be typed (cited constants, versions, dates,
  defaults): ``{"1.9.1": "MXNet version", "0.9": "MXNet's default momentum"}``. A token may be a
  phrase (``"Algorithm 2": "Ioffe & Szegedy's Algorithm 2"``); it matches as a whole word.

Built in (short and structural, so that no allow-list has to repeat them):

1. **List numbers**: the marker of an ordered-list item (``1.`` or ``1)`` at the start of a line).
2. **Exercise numbers**: ``exercise 2``, ``exercises 2 and 3``, ``Solution to exercise 2`` -- the
   numbered list under the chapter's own ``## Exercises``.
3. **A paper's figure, table, section, equation or algorithm** (``Fig. 2``, ``Figure 2(a)``,
   ``Table 1``, ``Section 3.4``, ``Sec. 2``, ``Eq. (1)``, ``Algorithm 2``, ``Alg. 1``), when the
   same sentence has a ``{cite}``: the number belongs to the cited paper, not to a computation.
4. **Years** (``1900``-``2099``) in a sentence that has a ``{cite}``.

Decisions:

* Only digits are numbers: ASCII ``0-9``, full-width ``０-９`` and every other Unicode decimal digit.
  Chinese numerals (一, 二, 十) are *not* checked: they appear inside terms (归一化, "normalise to
  one") far more often than as quantities, and a computed quantity is written with digits anyway.
  A Chinese term beside an English one is otherwise checked like any text (``第2章`` is flagged).
* Ordinals in digits (``1st``, ``2nd``) and digits glued to letters (``float32``, ``3x``, ``LeNet-5``)
  are flagged outside inline code: write ``first``/``second``, and identifiers as code.
* Words for numbers ("two sums", "ten classes") are not checked: a qualitative or counting word is
  the author's responsibility, and an assertion in a cell should back it when it is a result.

A flagged token is reported with its notebook, cell index (0-based) and the text around it.

Usage: ``python tests/prose_numbers.py book/ch01_formula.ipynb ...`` prints every bare number and
exits 1 if there is any (0 if none).
"""
from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

# Fenced blocks whose whole content is code or math (masked); any other directive holds prose.
CODE_DIRECTIVES = {"math", "code", "code-block", "sourcecode", "code-cell", "literalinclude",
                   "raw", "eval-rst", "glue", "glue:any", "glue:text", "glue:md", "glue:figure",
                   "glue:math", "mermaid", "csv-table", "bibliography", "tableofcontents"}
# Roles whose content is masked: glue, math, cross-references, citations, links to files.
MASKED_ROLES = r"glue(?::\w+)?|math|cite(?::\w+)?|numref|ref|eq|doc|download|term|abbr"

PAPER_PARTS = (r"(?:Fig(?:ure)?s?\.?|Tables?|Sec(?:tion)?s?\.?|§|Eqs?\.?|Equations?|"
               r"Alg(?:orithm)?s?\.?|Appendix|Theorem|Lemma|Proposition)")
PAPER_REF = re.compile(PAPER_PARTS + r"\s*\(?\d+(?:\.\d+)*\)?(?:\s*\([a-z]\))?"
                       r"(?:\s*(?:,|and|-|–)\s*\(?\d+(?:\.\d+)*\)?)*")
YEAR = re.compile(r"(?<![\w.])(?:19|20)\d\d(?!\w|\.\d)")
EXERCISE = re.compile(r"\b[Ee]xercises?\s+\d+(?:\s*(?:,|and|or|-|–)\s*\d+)*")
LIST_MARKER = re.compile(r"^(\s*)(\d+)([.)])(?=\s)", re.M)
DIGIT = re.compile(r"\d")        # str's \d: every Unicode decimal digit (ASCII, full-width, ...)
WORD_CHARS = re.compile(r"[\w.,%+/\-–−×:'’]")


@dataclass(frozen=True)
class BareNumber:
    """One bare number: where it is and what it looks like."""

    notebook: str
    cell: int
    token: str
    context: str

    def __str__(self) -> str:
        return f"{self.notebook}: cell {self.cell}: {self.token!r} in \"...{self.context}...\""


def _blank(text: str, start: int, end: int) -> str:
    """Replace text[start:end] by spaces, keeping newlines (positions stay valid)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def _mask_pattern(text: str, pattern: re.Pattern | str, flags: int = 0) -> str:
    for m in reversed(list(re.finditer(pattern, text, flags))):
        text = _blank(text, m.start(), m.end())
    return text


def _mask_fences(text: str) -> str:
    """Mask fenced code/math blocks, and the fence and option lines of prose directives."""
    lines = text.split("\n")
    out = []
    stack: list[tuple[str, int, bool]] = []      # (fence char, length, is code) of open fences
    fence_re = re.compile(r"^\s*(`{3,}|:{3,}|~{3,})\s*(.*)$")
    for line in lines:
        m = fence_re.match(line)
        in_code = bool(stack) and stack[-1][2]
        if m:
            char, length, info = m.group(1)[0], len(m.group(1)), m.group(2).strip()
            if stack and char == stack[-1][0] and length >= stack[-1][1] and not info:
                stack.pop()                                   # closing fence
                out.append(" " * len(line))
                continue
            if not in_code:
                name = re.match(r"\{([^}]*)\}", info)
                is_code = char != ":" if name is None else name.group(1) in CODE_DIRECTIVES
                if char == ":" and name is None:
                    is_code = False
                stack.append((char, length, is_code))
                # The fence line of a prose directive keeps its title (e.g. "Solution to exercise 2").
                if is_code or name is None:
                    out.append(" " * len(line))
                else:
                    out.append(" " * (line.index("}") + 1) + line[line.index("}") + 1:])
                continue
        if in_code:
            out.append(" " * len(line))
        elif stack and re.match(r"^\s*:[\w-]+:", line):
            out.append(" " * len(line))                       # directive option line
        else:
            out.append(line)
    return "\n".join(out)


def mask_allowed(text: str, allowed: dict[str, str] | None = None) -> str:
    """The markdown `text` with every allowed place blanked out (same length, same line breaks)."""
    text = _mask_pattern(text, r"<!--.*?-->", re.S)                      # HTML comments
    text = _mask_fences(text)
    text = _mask_pattern(text, r"\{(?:" + MASKED_ROLES + r")\}(`+).*?\1", re.S)   # roles
    text = _mask_pattern(text, r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)       # inline code
    text = _mask_pattern(text, r"(?<!\\)\$\$.+?(?<!\\)\$\$", re.S)        # display math
    text = _mask_pattern(text, r"(?<![\\$])\$(?!\s)(?:[^$\n]|\n(?!\s*\n))+?(?<![\s\\])\$")
    text = _mask_pattern(text, r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S)  # amsmath blocks
    text = _mask_pattern(text, r"^\s*\([\w:.\-]+\)=\s*$", re.M)         # labels (name)=
    text = _mask_pattern(text, r"\]\([^)\s]*(?:\s+\"[^\"]*\")?\)")       # link targets
    text = _mask_pattern(text, r"^\s*\[[^\]]+\]:\s*\S+.*$", re.M)        # reference-link lines
    text = _mask_pattern(text, r"<https?://[^>]+>")                      # autolinks
    text = _mask_pattern(text, r"\[\^[^\]]+\]")                          # footnote references
    text = _mask_pattern(text, r"</?[A-Za-z][^>\n]*>")                   # HTML tags
    for token in sorted(allowed or {}, key=len, reverse=True):
        text = _mask_pattern(text, r"(?<![\w.])" + re.escape(token) + r"(?![\w]|\.\d)")
    text = LIST_MARKER.sub(lambda m: m.group(1) + " " * (len(m.group(2)) + 1), text)
    text = _mask_pattern(text, EXERCISE)
    return text


def _sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence or paragraph (a full stop before a capital, or a blank line)."""
    bounds, start = [], 0
    for m in re.finditer(r"(?<=[.!?])\s+(?=[A-Z(*\[{`$])|\n\s*\n", text):
        if re.search(r"(?:\b(?:Figs?|Eqs?|Secs?|Alg|al|e\.g|i\.e|cf|vs|resp|approx)\.)$",
                     text[max(0, m.start() - 8):m.start()]):
            continue                                          # an abbreviation, not a full stop
        bounds.append((start, m.start()))
        start = m.end()
    bounds.append((start, len(text)))
    return bounds


def _mask_cited(original: str, masked: str) -> str:
    """Mask paper figure/section/equation references and years in sentences that cite a paper."""
    for start, end in _sentences(original):
        if "{cite" not in original[start:end]:
            continue
        for pattern in (PAPER_REF, YEAR):
            for m in pattern.finditer(original, start, end):
                masked = _blank(masked, m.start(), m.end())
    return masked


def _token_at(text: str, i: int) -> tuple[int, int]:
    """The span of the word around position i: letters, digits and number punctuation."""
    start, end = i, i + 1
    while start > 0 and WORD_CHARS.match(text[start - 1]):
        start -= 1
    while end < len(text) and WORD_CHARS.match(text[end]):
        end += 1
    while end > start + 1 and text[end - 1] in ".,:;'’-–/":                   # trailing punctuation
        end -= 1
    while start < i and text[start] in ".,:;'’-–/+(":
        start += 1
    return start, end


def bare_numbers_in_text(text: str, allowed: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Every bare number of a markdown text, as (token, context) pairs, in reading order."""
    masked = _mask_cited(text, mask_allowed(text, allowed))
    found, covered = [], -1
    for m in DIGIT.finditer(masked):
        if m.start() < covered:
            continue
        start, end = _token_at(masked, m.start())
        covered = end
        token = masked[start:end].strip()
        context = " ".join(text[max(0, start - 40):min(len(text), end + 40)].split())
        found.append((token, context))
    return found


def allowed_numbers(nb: dict, where: str = "notebook") -> dict[str, str]:
    """The notebook's allow-list, nb.metadata["d2lbn"]["allowed_numbers"], checked for reasons."""
    allowed = nb.get("metadata", {}).get("d2lbn", {}).get("allowed_numbers", {})
    if not isinstance(allowed, dict):
        raise ValueError(f"{where}: metadata d2lbn.allowed_numbers must map token -> reason, "
                         f"got {type(allowed).__name__}")
    for token, reason in allowed.items():
        if not DIGIT.search(str(token)):
            raise ValueError(f"{where}: allowed_numbers token {token!r} has no digit")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{where}: allowed_numbers[{token!r}] needs a reason (a non-empty string)")
    return allowed


def read_notebook(path: str | Path) -> tuple[Path, dict]:
    """(path, parsed notebook); a path that is not a .ipynb is a ValueError."""
    import json

    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"path must be a .ipynb notebook, got {str(path)!r}")
    return path, json.loads(path.read_text(encoding="utf-8"))


def markdown_cells(nb: dict):
    """(index, NFC-normalised source) of every markdown cell of a parsed notebook."""
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            yield index, unicodedata.normalize("NFC", source)


def bare_numbers(path: str | Path) -> list[BareNumber]:
    """Every bare number in the markdown cells of the notebook at `path`."""
    path, nb = read_notebook(path)
    allowed = allowed_numbers(nb, str(path))
    return [BareNumber(str(path), index, token, context)
            for index, source in markdown_cells(nb)
            for token, context in bare_numbers_in_text(source, allowed)]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[-1].strip())
        return 2
    total = 0
    for arg in argv:
        found = bare_numbers(arg)
        total += len(found)
        for bare in found:
            print(bare)
    print(f"{total} bare number(s) in {len(argv)} notebook(s)", file=sys.stderr)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
