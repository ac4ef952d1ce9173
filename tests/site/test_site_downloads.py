"""Every notebook page offers its source as .ipynb and as MyST Markdown (.md), and both hold the chapter.

The .md is checked with MyST-NB's own reader of text notebooks (an independent parser): it must give
back the notebook's cells, kinds, sources and tags, in order.
"""
import json
import re

import nbformat
import pytest
from myst_nb.core.read import read_myst_markdown_notebook

from book_site import HTML, book_pages

NOTEBOOK_PAGES = [p for p in book_pages() if p.source.suffix == ".ipynb"]


def download_links(page) -> list[str]:
    html = page.html.read_text(encoding="utf-8")
    menu = html.split("dropdown-download-buttons", 1)[1].split("</ul>", 1)[0]
    return re.findall(r'href="([^"]+)"', menu)


@pytest.mark.parametrize("page", NOTEBOOK_PAGES, ids=lambda p: p.slug)
def test_download_menu_offers_ipynb_and_md(page):
    links = download_links(page)
    name = page.source.stem
    assert any(link.endswith(f"_sources/book/{name}.ipynb") for link in links), links
    assert any(link.endswith(f"_sources/book/{name}.md") for link in links), links


@pytest.mark.parametrize("page", NOTEBOOK_PAGES, ids=lambda p: p.slug)
def test_markdown_download_round_trips(page):
    md = (HTML / "_sources" / (page.docname + ".md")).read_text(encoding="utf-8")
    parsed = read_myst_markdown_notebook(md)
    original = nbformat.reads(page.source.read_text(encoding="utf-8"), as_version=4)
    assert parsed.metadata.kernelspec.name == original.metadata.kernelspec.name
    assert [c.cell_type for c in parsed.cells] == [c.cell_type for c in original.cells]
    for ours, theirs in zip(parsed.cells, original.cells):
        assert ours.source.strip() == theirs.source.strip()
        assert ours.metadata.get("tags", []) == theirs.metadata.get("tags", [])


@pytest.mark.parametrize("page", NOTEBOOK_PAGES, ids=lambda p: p.slug)
def test_ipynb_download_is_the_stored_notebook(page):
    served = json.loads((HTML / "_sources" / (page.docname + ".ipynb")).read_text(encoding="utf-8"))
    assert served["cells"] == json.loads(page.source.read_text(encoding="utf-8"))["cells"]
