"""Local Sphinx extension: Plotly for the pages with interactive explorers (d2lbn/explore.py).

* A page whose body holds an explorer (``class="d2lbn-explorer"``) gets ``_static/plotly.min.js``,
  ``_static/d2lbn_explorers.js`` and ``_static/d2lbn_explorers.css``; other pages load none of them.
* ``plotly.min.js`` is not kept in the repository (4.8 MB): after an HTML build it is copied into
  ``_static`` from the installed ``plotly`` package (``requirements.txt``), so the page and the
  notebook outputs use the same Plotly release and nothing is fetched from another host.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)
MARKER = 'class="d2lbn-explorer"'


def plotly_js() -> Path:
    """The plotly.min.js that ships inside the installed plotly package."""
    import plotly
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall plotly (requirements.txt)")
    return path


def add_explorer_assets(app, pagename, templatename, context, doctree) -> None:
    if MARKER not in (context.get("body") or ""):
        return
    app.add_js_file("plotly.min.js", priority=600)
    app.add_js_file("d2lbn_explorers.js", priority=601)
    app.add_css_file("d2lbn_explorers.css")


def copy_plotly(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    try:
        source = plotly_js()
    except (ImportError, FileNotFoundError) as error:
        logger.warning(f"d2lbn explorers need plotly's JavaScript: {error}")
        return
    target = Path(app.outdir) / "_static" / "plotly.min.js"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def setup(app):
    app.connect("html-page-context", add_explorer_assets)
    app.connect("build-finished", copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
