"""Find comparative verdicts in the book's prose that no cell computed.

"Batch norm helps", "AdaBN beats fine-tuning", "the bias matters at inference": a sentence
that says one method is better than another reports an experiment, and with three seeds the
author's eye is not a reliable judge of which differences are real. The book's rule is that
such a verdict is computed by ``d2lbn.seeds.compare_seeds`` and pasted with glue, under a
key that ends in ``_verdict`` (`` {glue:text}`ch09_dark_verdict` ``).

This module flags every sentence of a markdown cell that holds a comparative word
(:data:`COMPARATIVE`: beats, better, worse, helps, hurts, ahead, behind, wins, matters,
outperforms, improves, ...) outside code and math, unless the sentence

* pastes a verdict: a glue role whose key ends in ``_verdict``;
* cites a paper (``{cite}``): the sentence reports the paper's finding, not ours;
* is a question (it ends with ``?``: exercises ask, they do not report);
* contains a phrase listed in the notebook's allow-list,
  ``nb.metadata["d2lbn"]["allowed_comparisons"]``, a mapping from a phrase (matched
  case-insensitively inside the sentence) to the reason it is no verdict on an experiment
  (``"helps to read": "a figure of speech"``, ``"better estimate": "a statistical fact,
  proved in the cell above"``).

Usage: ``python tests/prose_verdicts.py book/ch09_practice.ipynb ...`` prints every flagged
sentence and exits 1 if there is any (0 if none).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prose_numbers import _sentences, mask_allowed, markdown_cells, read_notebook  # noqa: E402

#: The words that make a sentence a verdict on a comparison (whole words, any case).
COMPARATIVE = re.compile(
    r"\b(?:beats?|beaten|beating|better|worse|best|worst|helps?|helped|helping|hurts?|"
    r"hurting|ahead|behind|wins?|winning|won|loses|matters?|mattered|outperform\w*|"
    r"improves?|improved|superior|inferior)\b", re.I)
VERDICT_GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]*_verdict(?::[^`]*)?`")


@dataclass(frozen=True)
class Unbacked:
    """One sentence with a comparative word and no computed verdict."""

    notebook: str
    cell: int
    word: str
    sentence: str

    def __str__(self) -> str:
        return f"{self.notebook}: cell {self.cell}: {self.word!r} in \"{self.sentence}\""


def allowed_comparisons(nb: dict, where: str = "notebook") -> dict[str, str]:
    """The notebook's allow-list, checked: phrase -> non-empty reason."""
    allowed = nb.get("metadata", {}).get("d2lbn", {}).get("allowed_comparisons", {})
    if not isinstance(allowed, dict):
        raise ValueError(f"{where}: metadata d2lbn.allowed_comparisons must map phrase -> "
                         f"reason, got {type(allowed).__name__}")
    for phrase, reason in allowed.items():
        if not COMPARATIVE.search(str(phrase)):
            raise ValueError(f"{where}: allowed_comparisons phrase {phrase!r} holds no "
                             "comparative word, so it allows nothing")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{where}: allowed_comparisons[{phrase!r}] needs a reason")
    return allowed


def unbacked_in_text(text: str, allowed: dict[str, str] | None = None
                     ) -> list[tuple[str, str]]:
    """Every flagged sentence of a markdown text, as (word, sentence) pairs."""
    masked = mask_allowed(text)
    phrases = [p.lower() for p in (allowed or {})]
    found = []
    for start, end in _sentences(text):
        sentence = text[start:end]
        m = COMPARATIVE.search(masked[start:end])
        if m is None:
            continue
        flat = " ".join(sentence.split())
        if (VERDICT_GLUE.search(sentence) or "{cite" in sentence
                or flat.rstrip("*_)]").endswith("?")
                or any(p in flat.lower() for p in phrases)):
            continue
        found.append((m.group(0), flat))
    return found


def unbacked(path: str | Path) -> list[Unbacked]:
    """Every flagged sentence in the markdown cells of the notebook at ``path``."""
    path, nb = read_notebook(path)
    allowed = allowed_comparisons(nb, str(path))
    return [Unbacked(str(path), index, word, sentence)
            for index, source in markdown_cells(nb)
            for word, sentence in unbacked_in_text(source, allowed)]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[-1].strip())
        return 2
    total = 0
    for arg in argv:
        found = unbacked(arg)
        total += len(found)
        for item in found:
            print(item)
    print(f"{total} unbacked comparison(s) in {len(argv)} notebook(s)", file=sys.stderr)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
