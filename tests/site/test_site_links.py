"""Static checks of the built book (_build/html), no browser needed.

* Internal links: every href/src of every page points to a file that exists, and every #fragment to
  an element id (or name) on the target page: cross-references, equation and figure references,
  citations, the sidebar, the previous/next buttons, the download buttons.
* Launch and repository buttons: the Binder, Colab and GitHub links name the right repository, branch
  and a file that exists in this repository.
* Offline: no page loads a script or style sheet from another host (MathJax is served from _static).
* Book structure: every chapter has one title, captions on its figures, and ends with a Summary and
  Exercises section in which at least one solution is hidden (a dropdown).
"""
from __future__ import annotations

import posixpath
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from book_site import HTML, ROOT, book_pages, chapter_pages

LINK_ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src", "source": "src", "iframe": "src"}
EXTERNAL_SCHEMES = ("http:", "https:", "mailto:", "javascript:", "data:", "tel:")


class _PageParser(HTMLParser):
    """Collects a page's ids, its links [(tag, attr value)], and a light outline of its article."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []
        self.scripts: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag in ("a", "span", "div", "section", "figure") else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag in LINK_ATTRS and attrs.get(LINK_ATTRS[tag]):
            self.links.append((tag, attrs[LINK_ATTRS[tag]]))
        if tag in ("script", "link"):
            self.scripts.append({"tag": tag, **attrs})


_parsed: dict[Path, _PageParser] = {}


def parse(path: Path) -> _PageParser:
    if path not in _parsed:
        parser = _PageParser()
        parser.feed(path.read_text(encoding="utf-8"))
        _parsed[path] = parser
    return _parsed[path]


def html_files() -> list[Path]:
    """Every HTML page of the site (not the theme's template snippets under _static)."""
    return sorted(p for p in HTML.rglob("*.html") if "_static" not in p.relative_to(HTML).parts)


def resolve(page: Path, href: str) -> tuple[Path, str] | None:
    """(target file, fragment) of an internal link on `page`; None for external or empty links."""
    if not href or href.startswith(EXTERNAL_SCHEMES) or href.startswith("//"):
        return None
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return None
    if not parts.path:
        return page, unquote(parts.fragment)
    base = "/" + page.relative_to(HTML).parent.as_posix()
    target = posixpath.normpath(posixpath.join(base, unquote(parts.path)))
    path = HTML / target.lstrip("/")
    if href.endswith("/") or path.is_dir():
        path = path / "index.html"
    return path, unquote(parts.fragment)


def test_site_has_every_toc_page():
    missing = [p.docname for p in book_pages() if not p.html.exists()]
    assert not missing, f"pages listed in _toc.yml but not built: {missing}"


def test_internal_links_and_anchors_resolve():
    """No broken cross-reference anywhere: every internal href/src exists, every #anchor is an id."""
    broken = []
    checked = 0
    for page in html_files():
        for tag, href in parse(page).links:
            resolved = resolve(page, href)
            if resolved is None:
                continue
            target, fragment = resolved
            checked += 1
            where = f"{page.relative_to(HTML)}: <{tag}> {href}"
            if not target.exists():
                broken.append(f"{where} -> missing file {target.relative_to(HTML) if HTML in target.parents else target}")
            elif fragment and target.suffix == ".html" and fragment not in parse(target).ids:
                broken.append(f"{where} -> no id {fragment!r} in {target.relative_to(HTML)}")
    assert checked > 50, f"only {checked} internal links found: is the site empty?"
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:50])


def _repo_config() -> tuple[str, str, str]:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    repo = config["repository"]
    owner_repo = urlsplit(repo["url"]).path.strip("/")
    return owner_repo, repo.get("branch", "main"), repo.get("path_to_book", "")


@pytest.mark.parametrize("page", book_pages(), ids=lambda p: p.docname)
def test_launch_and_repository_buttons_point_to_files_that_exist(page):
    """Binder/Colab/GitHub links must name this repository and branch and a file in it."""
    owner_repo, branch, _ = _repo_config()
    links = [href for tag, href in parse(page.html).links if tag == "a" and href.startswith("https://")]
    ours = [h for h in links if owner_repo.lower() in h.lower() or "mybinder.org" in h or "colab." in h]
    assert any(h.rstrip("/").endswith(owner_repo) for h in ours), f"no repository button on {page.docname}"
    assert any("/issues" in h for h in ours), f"no issues button on {page.docname}"
    patterns = [rf"(?:github\.com|colab\.research\.google\.com/github)/{owner_repo}/blob/{branch}/(?P<path>[^?#]+)",
                rf"mybinder\.org/v2/gh/{owner_repo}/{branch}\?urlpath=(?:lab/tree|tree)/(?P<path>[^&#]+)"]   # Binder
    named = []
    for href in ours:
        for pattern in patterns:
            match = re.search(pattern, href)
            if match:
                named.append((href, unquote(match.group("path"))))
    if page.source.suffix == ".ipynb":
        kinds = {("colab" if "colab." in h else "binder" if "mybinder" in h else "github") for h, _ in named}
        assert {"colab", "binder"} <= kinds, f"{page.docname}: launch buttons found: {sorted(kinds)} in {ours}"
    for href, path in named:
        assert (ROOT / path).exists(), f"{page.docname}: {href} names {path}, which is not in the repository"


@pytest.mark.parametrize("page", book_pages(), ids=lambda p: p.docname)
def test_no_script_or_stylesheet_from_another_host(page):
    """Everything a page loads eagerly comes with the site: it works offline and needs no CDN."""
    remote = [s for s in parse(page.html).scripts
              if (s.get("src") or s.get("href") or "").startswith(("http:", "https:", "//"))
              and (s["tag"] == "script" or s.get("rel") in ("stylesheet", "preload", "modulepreload"))]
    assert not remote, f"{page.docname} loads from another host: {remote}"


def test_mathjax_is_served_from_the_site():
    """Pages with math load MathJax 3 from _static/mathjax (sphinx-mathjax-offline), never from a CDN."""
    loads = [(page, s["src"]) for page in book_pages() for s in parse(page.html).scripts
             if "mathjax" in (s.get("src") or "").lower()]
    assert loads, "no page loads MathJax: has the math extension been switched off?"
    for page, src in loads:
        resolved = resolve(page.html, src)
        assert resolved and resolved[0] == HTML / "_static" / "mathjax" / "tex-chtml.js" and resolved[0].exists(), \
            f"{page.docname} loads MathJax from {src!r}, not from the site's _static/mathjax"


class _Outline(HTMLParser):
    """The article's headings (level, text), figures (with or without caption) and dropdowns."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.headings: list[list] = []        # [level, text, dropdowns after it]
        self.figures: list[dict] = []
        self._in_heading = None
        self._in_caption = False
        self._depth_article = 0
        self._in_article = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "article" and "bd-article" in classes:
            self._in_article = True
        if not self._in_article:
            return
        if re.fullmatch(r"h[1-6]", tag):
            self._in_heading = [int(tag[1]), "", 0]
        elif tag == "figure" or (tag == "div" and "figure" in classes):
            self.figures.append({"id": attrs.get("id", ""), "caption": ""})
        elif tag == "figcaption" or (tag == "p" and "caption" in classes):
            self._in_caption = True
        if (("dropdown" in classes and "admonition" in classes) or "sd-dropdown" in classes) and self.headings:
            self.headings[-1][2] += 1

    def handle_endtag(self, tag):
        if tag == "article":
            self._in_article = False
        if self._in_heading and re.fullmatch(r"h[1-6]", tag):
            self._in_heading[1] = re.sub(r"\s+", " ", self._in_heading[1].replace("#", "")).strip()
            self.headings.append(self._in_heading)
            self._in_heading = None
        elif tag in ("figcaption", "p"):
            self._in_caption = False

    def handle_data(self, data):
        if self._in_heading is not None:
            self._in_heading[1] += data
        if self._in_caption and self.figures:
            self.figures[-1]["caption"] += data


def outline(page) -> _Outline:
    parser = _Outline()
    parser.feed(page.html.read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("page", chapter_pages(), ids=lambda p: p.docname)
def test_chapter_ends_with_summary_and_exercises_with_hidden_solutions(page):
    o = outline(page)
    titles = [h for h in o.headings if h[0] == 1]
    assert len(titles) == 1, f"{page.docname}: expected one title (h1), found {[t[1] for t in titles]}"
    sections = [h for h in o.headings if h[0] == 2]
    names = [h[1].lower() for h in sections]
    assert len(sections) >= 2, f"{page.docname}: sections {names}"
    assert "summary" in names[-2], f"{page.docname}: the second-to-last section is {sections[-2][1]!r}, not Summary"
    assert "exercise" in names[-1], f"{page.docname}: the last section is {sections[-1][1]!r}, not Exercises"
    assert sections[-1][2] >= 1, f"{page.docname}: no hidden (dropdown) solution in the Exercises section"


@pytest.mark.parametrize("page", book_pages(), ids=lambda p: p.docname)
def test_every_figure_has_a_caption(page):
    uncaptioned = [f["id"] or "(no id)" for f in outline(page).figures if not f["caption"].strip()]
    assert not uncaptioned, f"{page.docname}: figures without a caption: {uncaptioned}"
