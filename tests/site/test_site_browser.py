"""The built book in a real browser: headless Chromium, driven over the DevTools protocol.

_build/html is served on 127.0.0.1 and every page of _toc.yml is opened. For each page:
* it loads without console errors, uncaught exceptions or failed requests, and asks no other host for
  anything (the book works offline: MathJax, fonts and scripts all come with the site);
* its images are present (loaded, naturalWidth > 0), at least as many as the source has figures;
* its math is typeset by MathJax (mjx-container elements, no TeX errors), and no raw TeX (`$...$`,
  `\\(`, `\\frac`) is left in the text;
* the sidebar lists every page, marks the current one, and all its links resolve;
* chapters' dropdown solutions start hidden and open on a click;
* no code block (`pre`: cell inputs and outputs, included functions) scrolls sideways at 1280 px.
Walking the book with the "next" button from the front page visits every page in _toc.yml order, and
"previous" walks back. The search page finds every chapter. Screenshots go to _build/screenshots/ (top of each page, the full page, one
dark-mode and one phone-sized view) for people to look at.

Chromium comes from Debian's `chromium` package (`make test` installs it when missing); without it
these tests are skipped, or fail under D2LBN_REQUIRE_SITE=1 (as in `make test`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from book_site import SCREENSHOTS, book_pages, chapter_pages
from chromium_cdp import Browser, find_chromium

PAGES = book_pages()

# Everything the checks need from a loaded page, in one round trip. Runs after MathJax has finished.
PAGE_FACTS_JS = r"""
(() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const images = [...document.images].map(i => ({src: i.currentSrc || i.src, complete: i.complete,
      width: i.naturalWidth, inArticle: article.contains(i), inOutput: !!i.closest('.cell_output')}));
  const figures = [...article.querySelectorAll('figure')].map(f => ({id: f.id,
      caption: (f.querySelector('figcaption') || {innerText: ''}).innerText.trim(),
      loaded: [...f.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)}));
  const math = [...article.querySelectorAll('.math')];
  const clone = article.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight').forEach(e => e.remove());
  const text = clone.textContent;
  const raw = [];
  const rawTeX = /\$\$|\\\(|\\\)|\\\[|\\\]|(?:^|[^\w$])\$[^$\s](?:[^$\n]*[^$\s\\])?\$(?!\w)|\\(?:frac|hat|mathcal|mathbb|mathbf|sqrt|sum|prod|epsilon|sigma|mu|gamma|beta|partial|left|right|begin|end|label)\b/g;
  for (const m of text.matchAll(rawTeX)) raw.push(text.slice(Math.max(0, m.index - 30), m.index + 40).replace(/\s+/g, ' '));
  const abs = a => { const u = new URL(a.getAttribute('href'), location.href); return u.origin + u.pathname; };
  const side = [...document.querySelectorAll('nav.bd-docs-nav a[href]')];
  const prev = document.querySelector('.prev-next-area a.left-prev');
  const next = document.querySelector('.prev-next-area a.right-next');
  const drops = [...article.querySelectorAll('.admonition.dropdown, details.sd-dropdown')];
  return {
    url: location.origin + location.pathname, title: document.title,
    images, figures,
    mathElements: math.length,
    untypeset: math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.trim().slice(0, 60)),
    mjx: article.querySelectorAll('mjx-container').length,
    mjxErrors: [...article.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent),
    rawTeX: raw,
    sidebar: side.map(abs),
    sidebarCurrent: side.filter(a => a.classList.contains('current') || a.closest('li.current')).map(abs),
    prev: prev ? abs(prev) : null, next: next ? abs(next) : null,
    dropdowns: drops.length,
    h1: [...article.querySelectorAll('h1')].map(h => h.textContent.replace(/#$/, '').trim()),
    wideCode: [...article.querySelectorAll('pre')].filter(p => p.scrollWidth > p.clientWidth + 1)
      .map(p => ({kind: p.closest('.cell_output, .output') ? 'cell output' : 'code',
                  scrollWidth: p.scrollWidth, clientWidth: p.clientWidth,
                  line: p.textContent.split('\n').reduce((a, b) => b.length > a.length ? b : a, '').slice(0, 90)})),
  };
})()
"""

# Open the first dropdown solution; report whether its body was hidden before and is shown after.
DROPDOWN_JS = r"""
(async () => {
  const drop = document.querySelector('article .admonition.dropdown, article details.sd-dropdown');
  if (!drop) return null;
  const body = drop.tagName === 'DETAILS' ? drop.querySelector('.sd-summary-content, .sd-card-body')
             : [...drop.children].find(c => !c.classList.contains('admonition-title'));
  const shown = () => !!body && body.getClientRects().length > 0 && getComputedStyle(body).visibility !== 'hidden';
  const before = shown();
  const toggle = drop.tagName === 'DETAILS' ? drop.querySelector('summary')
               : (drop.querySelector('button.toggle-button') || drop.querySelector('.admonition-title'));
  toggle.click();
  await new Promise(r => setTimeout(r, 400));
  return {before, after: shown(), text: body ? body.innerText.trim().slice(0, 80) : ''};
})()
"""

WAIT_MATH_JS = r"""
(async () => {
  await document.fonts.ready;
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return 'no mathjax';
  await MathJax.startup.promise;
  await document.fonts.ready;
  return 'typeset';
})()
"""


def _source_figures(page) -> int:
    """How many images the page's source shows: image outputs of a notebook, image syntax in markdown."""
    if page.source.suffix == ".ipynb":
        nb = json.loads(page.source.read_text(encoding="utf-8"))
        count = 0
        for cell in nb["cells"]:
            tags = set(cell.get("metadata", {}).get("tags", []))
            if cell["cell_type"] != "code" or tags & {"remove-output", "remove-cell"}:
                continue
            count += sum(1 for out in cell.get("outputs", [])
                         if any(k.startswith("image/") for k in out.get("data", {})))
        return count
    text = page.source.read_text(encoding="utf-8")
    return len(re.findall(r"!\[[^\]]*\]\(|^[`:]{3,}\{(?:figure|image)\}", text, flags=re.M))


def _source_has_math(page) -> bool:
    if page.source.suffix == ".ipynb":
        nb = json.loads(page.source.read_text(encoding="utf-8"))
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = page.source.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)                      # not code blocks
    return bool(re.search(r"\$[^$\n]+\$|\$\$|\{math\}|\\begin\{", text))


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        message = ("no Chromium found (looked for $CHROMIUM, chromium, chromium-browser, google-chrome); "
                   "install it with `apt-get install chromium` or run tools/ensure_chromium.sh")
        if os.environ.get("D2LBN_REQUIRE_SITE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    with Browser(executable) as b:
        yield b


@pytest.fixture(scope="module")
def visit(browser, server):
    """visit(page) -> facts about the loaded page (cached: each page is loaded once for all checks)."""
    tab = browser.new_tab(1280, 900)
    cache: dict[str, dict] = {}

    def _visit(page) -> dict:
        if page.docname in cache:
            return cache[page.docname]
        since, failed = tab.mark(), len(server.failures)
        start = time.perf_counter()
        tab.goto(server.url(page))
        state = tab.evaluate(WAIT_MATH_JS, await_promise=True, timeout=60)
        facts = tab.evaluate(PAGE_FACTS_JS)
        facts["seconds"] = time.perf_counter() - start
        facts["mathjax"] = state
        shots = [tab.screenshot(SCREENSHOTS / f"{page.slug}.png"),
                 tab.screenshot(SCREENSHOTS / f"{page.slug}-full.png", full_page=True)]
        facts["dropdown"] = tab.evaluate(DROPDOWN_JS, await_promise=True) if facts["dropdowns"] else None
        facts["screenshots"] = shots
        time.sleep(0.2)                                  # let late console messages arrive
        facts["console"] = tab.console_errors(since)
        facts["requests"] = tab.requests(since)
        facts["server_failures"] = server.failures[failed:]
        cache[page.docname] = facts
        return facts

    return _visit


def _ids(page):
    return page.docname


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_page_loads_without_console_errors(page, visit, server):
    facts = visit(page)
    assert facts["url"] == server.url(page), f"ended up at {facts['url']}"
    assert facts["h1"] and facts["title"], f"{page.docname}: no title"
    assert not facts["console"], f"{page.docname}: console errors:\n" + "\n".join(facts["console"])
    assert not facts["server_failures"], f"{page.docname}: requests that failed: {facts['server_failures']}"


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_page_requests_nothing_from_another_host(page, visit, server):
    foreign = [u for u in visit(page)["requests"]
               if not u.startswith((server.base + "/", "data:", "blob:", "about:"))]
    assert not foreign, f"{page.docname} reaches outside the site (it must work offline): {foreign}"


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_figures_are_present(page, visit):
    facts = visit(page)
    broken = [i["src"] for i in facts["images"] if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"{page.docname}: images that did not load: {broken}"
    shown = sum(1 for i in facts["images"] if i["inArticle"])
    expected = _source_figures(page)
    assert shown >= expected, f"{page.docname}: the source has {expected} images, the page shows {shown}"
    for figure in facts["figures"]:
        assert figure["loaded"], f"{page.docname}: figure {figure['id']} has no loaded image"
        assert figure["caption"], f"{page.docname}: figure {figure['id']} has no caption"


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_math_is_typeset(page, visit):
    facts = visit(page)
    if _source_has_math(page):
        assert facts["mathjax"] == "typeset" and facts["mjx"] > 0, f"{page.docname}: math was not typeset ({facts['mathjax']})"
    assert not facts["untypeset"], f"{page.docname}: math elements MathJax did not typeset: {facts['untypeset'][:5]}"
    assert not facts["mjxErrors"], f"{page.docname}: MathJax errors: {facts['mjxErrors']}"
    assert not facts["rawTeX"], f"{page.docname}: raw TeX left in the text: {facts['rawTeX'][:5]}"


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_code_blocks_fit_the_page(page, visit):
    """No code block (cell input, literalinclude; outputs wrap by CSS) scrolls sideways at 1280 px: code
    stays within about 88 characters a line (tests/test_code_width.py checks the sources)."""
    wide = visit(page)["wideCode"]
    assert not wide, (f"{page.docname}: {len(wide)} code block(s) scroll sideways at the desktop width:\n"
                      + "\n".join(f"  {w['kind']}: {w['scrollWidth']} px in {w['clientWidth']} px, "
                                   f"longest line {w['line']!r}" for w in wide))


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_sidebar_lists_every_page_and_its_links_resolve(page, visit, server):
    facts = visit(page)
    sidebar = set(facts["sidebar"])
    missing = [p.docname for p in PAGES if server.url(p) not in sidebar]
    assert not missing, f"{page.docname}: the sidebar lacks {missing}"
    unknown = sorted(sidebar - {server.url(p) for p in PAGES})
    assert not unknown, f"{page.docname}: the sidebar links to pages outside _toc.yml: {unknown}"
    if page.index > 0:
        assert server.url(page) in facts["sidebarCurrent"], f"{page.docname}: not marked current in the sidebar"


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_previous_and_next_links_follow_the_toc(page, visit, server):
    facts = visit(page)
    i = page.index
    expected_prev = server.url(PAGES[i - 1]) if i > 0 else None
    expected_next = server.url(PAGES[i + 1]) if i + 1 < len(PAGES) else None
    assert facts["prev"] == expected_prev, f"{page.docname}: previous -> {facts['prev']}, expected {expected_prev}"
    assert facts["next"] == expected_next, f"{page.docname}: next -> {facts['next']}, expected {expected_next}"


@pytest.mark.parametrize("page", chapter_pages(), ids=_ids)
def test_solutions_are_hidden_until_clicked(page, visit):
    facts = visit(page)
    assert facts["dropdowns"] >= 1, f"{page.docname}: no dropdown (hidden) solution"
    drop = facts["dropdown"]
    assert drop and not drop["before"] and drop["after"], f"{page.docname}: dropdown did not toggle: {drop}"


def _click_and_wait(tab, selector: str) -> str:
    since = tab.mark()
    clicked = tab.evaluate(f"(() => {{ const a = document.querySelector({json.dumps(selector)}); "
                           f"if (!a) return false; a.click(); return true; }})()")
    if not clicked:
        return ""
    tab.wait_load(since)
    return tab.evaluate("location.origin + location.pathname")


def test_next_and_previous_buttons_walk_the_whole_book(browser, server):
    """From the site's front door (index.html redirects), 'next' visits every page in order; 'previous' returns."""
    tab = browser.new_tab(1280, 900)
    tab.goto(server.base + "/")
    deadline = time.monotonic() + 10
    while tab.evaluate("location.origin + location.pathname + ' ' + document.readyState") != server.url(PAGES[0]) + " complete":
        assert time.monotonic() < deadline, "index.html does not lead to the front page"
        time.sleep(0.1)
    visited = [server.url(PAGES[0])]
    while len(visited) <= len(PAGES):
        url = _click_and_wait(tab, ".prev-next-area a.right-next")
        if not url:
            break
        visited.append(url)
    assert visited == [server.url(p) for p in PAGES]
    back = [visited[-1]]
    while len(back) <= len(PAGES):
        url = _click_and_wait(tab, ".prev-next-area a.left-prev")
        if not url:
            break
        back.append(url)
    assert back == visited[::-1]
    assert not server.failures, f"requests the server could not answer: {server.failures}"


def test_search_finds_the_chapters(browser, server):
    """The built-in search (the sidebar field, Ctrl+K) works offline and finds every chapter's title word."""
    tab = browser.new_tab(1280, 900)
    since = tab.mark()
    tab.goto(server.base + "/search.html?q=normalization")
    found = tab.evaluate(r"""
      (async () => {
        for (let i = 0; i < 100; i++) {
          const items = [...document.querySelectorAll('#search-results li a')].map(a => new URL(a.href).pathname);
          const summary = document.querySelector('#search-results .search-summary');
          if (summary && /finished|did not match/i.test(summary.textContent)) return items;
          await new Promise(r => setTimeout(r, 100));
        }
        return [...document.querySelectorAll('#search-results li a')].map(a => new URL(a.href).pathname);
      })()""", await_promise=True, timeout=30)
    assert not tab.console_errors(since), tab.console_errors(since)
    missing = [p.docname for p in chapter_pages() if p.url_path not in found]
    assert found and not missing, f"searching 'normalization' finds {found}, not {missing}"
    tab.screenshot(SCREENSHOTS / "search.png")


def test_screenshots_for_people_to_look_at(browser, server, visit):
    """Top and full-page shots of every page, plus a phone-sized front page and a dark-mode chapter."""
    for page in PAGES:
        for shot in visit(page)["screenshots"]:
            assert shot.exists() and shot.stat().st_size > 10_000, shot
    phone = browser.new_tab(390, 844, mobile=True)
    phone.goto(server.url(PAGES[0]))
    phone.evaluate(WAIT_MATH_JS, await_promise=True, timeout=60)
    assert phone.screenshot(SCREENSHOTS / f"{PAGES[0].slug}-phone.png").stat().st_size > 10_000
    page = (chapter_pages() or PAGES)[0]
    dark = browser.new_tab(1280, 900)
    dark.send("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    dark.goto(server.url(page))
    dark.evaluate(WAIT_MATH_JS, await_promise=True, timeout=60)
    assert dark.evaluate("document.documentElement.dataset.theme") == "dark"
    assert dark.screenshot(SCREENSHOTS / f"{page.slug}-dark.png").stat().st_size > 10_000
    print(f"\nscreenshots: {SCREENSHOTS}")
