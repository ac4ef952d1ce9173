"""Local Sphinx extension: small fixes to the HTML pages Jupyter Book 1.x writes.

Inline scripts added by extensions after the builder starts (sphinx-thebe's `const THEBE_JS_URL = ...`,
sphinx-togglebutton's selector) are registered twice by Sphinx 7.4 (once as filename None, once as ''),
so every page declared `const THEBE_JS_URL` twice and the browser console showed
"SyntaxError: Identifier 'THEBE_JS_URL' has already been declared". Drop exact duplicates per page.

Notebook pages also get a ".md" download: the notebook as a MyST Markdown text notebook (the format
MyST-NB and jupytext read), written next to the .ipynb under _sources/, without outputs.
"""
from __future__ import annotations

import json
from pathlib import Path


def _script_key(script) -> tuple:
    attributes = getattr(script, "attributes", {})
    return (str(getattr(script, "filename", script) or ""),
            tuple(sorted((k, str(v)) for k, v in attributes.items() if k != "priority")))


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def notebook_to_myst(notebook: dict) -> str:
    """A notebook (parsed .ipynb JSON) as a MyST Markdown text notebook; outputs are left out."""
    kernel = notebook.get("metadata", {}).get("kernelspec", {"name": "python3", "display_name": "Python 3",
                                                             "language": "python"})
    parts = ["---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
             f"kernelspec:\n  display_name: {kernel.get('display_name', 'Python 3')}\n"
             f"  language: {kernel.get('language', 'python')}\n  name: {kernel.get('name', 'python3')}\n---"]
    previous = None
    for cell in notebook.get("cells", []):
        source = "".join(cell.get("source", [])).rstrip("\n")
        if cell.get("cell_type") == "code":
            tags = cell.get("metadata", {}).get("tags", [])
            options = f":tags: [{', '.join(tags)}]\n\n" if tags else ""
            parts.append(f"```{{code-cell}} ipython3\n{options}{source}\n```")
        elif cell.get("cell_type") == "markdown":
            if previous == "markdown":
                parts.append("+++")           # keeps consecutive markdown cells apart
            parts.append(source)
        previous = cell.get("cell_type")
    return "\n\n".join(parts) + "\n"


def add_markdown_download(app, pagename, templatename, context, doctree) -> None:
    """Write _sources/<page>.md for a notebook page and add it to the page's download menu."""
    if context.get("page_source_suffix") != ".ipynb" or "header_buttons" not in context:
        return
    source = Path(app.env.doc2path(pagename))
    target = Path(app.outdir) / "_sources" / f"{pagename}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(notebook_to_myst(json.loads(source.read_text(encoding="utf-8"))), encoding="utf-8")
    for group in context["header_buttons"]:
        if group.get("label") == "download-buttons":
            group["buttons"].insert(1, {
                "type": "link", "url": f"{context['pathto']('_sources', 1)}/{pagename}.md", "text": ".md",
                "tooltip": "Download as MyST Markdown", "icon": "fab fa-markdown",
                "label": "download-markdown-button"})


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)   # after the themes have added theirs
    app.connect("html-page-context", add_markdown_download, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
