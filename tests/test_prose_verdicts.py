"""No comparative verdict in the book's prose that no cell computed (tests/prose_verdicts.py).

One test per notebook, so a failure names it; then tests of the checker itself, which must flag a
planted verdict and pass each allowed form.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prose_verdicts import allowed_comparisons, unbacked, unbacked_in_text  # noqa: E402
from test_prose_numbers import book_notebooks  # noqa: E402

@pytest.mark.parametrize("notebook", book_notebooks(), ids=lambda p: p.stem)
def test_every_comparison_is_a_computed_verdict(notebook):
    found = unbacked(notebook)
    assert not found, (
        f"{notebook.name}: {len(found)} sentence(s) state a comparison that no cell decided. "
        "Compute it with d2lbn.seeds.compare_seeds and glue its .text under a key ending in "
        "_verdict, cite the paper it comes from, or list the phrase in metadata "
        "d2lbn.allowed_comparisons (phrase -> why it is no verdict on an experiment):\n"
        + "\n".join(f"  cell {u.cell}: {u.word!r} in {u.sentence!r}" for u in found))


def test_a_planted_verdict_is_flagged():
    found = unbacked_in_text("We trained both nets. AdaBN beats fine-tuning on dark images.")
    assert found == [("beats", "AdaBN beats fine-tuning on dark images.")]


def test_a_glued_number_is_not_a_verdict():
    text = "Batch norm is better: {glue:text}`ch04_acc_bn:.4f` against {glue:text}`ch04_acc:.4f`."
    assert [w for w, _ in unbacked_in_text(text)] == ["better"]


@pytest.mark.parametrize("text", [
    "Batch norm is {glue:text}`ch04_bn_verdict` against the plain net, so it helps here.",
    "Batch norm helps at large learning rates {cite}`ioffe2015batch`.",
    "Does batch norm help with a learning rate of 1.0?",
    "The variable `better_lr` holds it, and $\\mathrm{best}(x)$ is a function of $x$.",
])
def test_allowed_forms_pass(text):
    assert unbacked_in_text(text) == []


def test_the_allow_list_needs_a_phrase_with_a_word_and_a_reason():
    assert unbacked_in_text("It helps to read the graph bottom-up.",
                            {"helps to read": "a figure of speech"}) == []
    with pytest.raises(ValueError, match="reason"):
        allowed_comparisons({"metadata": {"d2lbn": {"allowed_comparisons": {"helps to": ""}}}})
    with pytest.raises(ValueError, match="no comparative word"):
        allowed_comparisons({"metadata": {"d2lbn": {"allowed_comparisons": {"the graph": "x"}}}})


def test_a_planted_violation_in_a_real_notebook_fails(tmp_path):
    import json
    source = book_notebooks()[0]
    nb = json.loads(source.read_text(encoding="utf-8"))
    nb["cells"].append({"cell_type": "markdown", "metadata": {},
                        "source": "Our layer beats MXNet's on every input."})
    planted = tmp_path / "planted.ipynb"
    planted.write_text(json.dumps(nb), encoding="utf-8")
    found = unbacked(planted)
    assert found and found[-1].word == "beats" and found[-1].cell == len(nb["cells"]) - 1
