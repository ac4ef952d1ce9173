"""Local Sphinx extension: small fixes to the HTML pages Jupyter Book 1.x writes.

Inline scripts added by extensions after the builder starts (sphinx-thebe's `const THEBE_JS_URL = ...`,
sphinx-togglebutton's selector) are registered twice by Sphinx 7.4 (once as filename None, once as ''),
so every page declared `const THEBE_JS_URL` twice and the browser console showed
"SyntaxError: Identifier 'THEBE_JS_URL' has already been declared". Drop exact duplicates per page.
"""
from __future__ import annotations


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


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)   # after the themes have added theirs
    return {"parallel_read_safe": True, "parallel_write_safe": True}
