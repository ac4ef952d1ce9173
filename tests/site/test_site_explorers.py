"""The interactive explorers (d2lbn/explore.py) in the built book, driven in headless Chromium.

Every explorer stored in a notebook's outputs must be on its page and:
* draw itself from the book's own files (Plotly from _static), with no console error;
* hold the very data the notebook stored (the d2lbn computations), byte for byte after parsing;
* respond to each of its controls, used as a reader would (the slider's or drop-down's value set
  and its input/change event dispatched): the readout and the data Plotly draws become those
  precomputed for the new setting, and the drawn SVG changes;
* follow the dark theme (light text on the dark page) and fit a phone-width screen (390 px).
Screenshots of each explorer in light and dark mode and at phone width go to _build/screenshots/
(explorer-<name>-light.png, -dark.png, -phone.png).
"""
from __future__ import annotations

import base64
import json
import os
import re
import time

import pytest
from book_site import SCREENSHOTS, book_pages
from chromium_cdp import Browser, find_chromium

DATA_RE = re.compile(r'<script type="application/json" class="d2lbn-explorer-data">(.*?)</script>',
                     re.S)
#: The explorers issue 18 asks for; more may be added, none of these may go.
REQUIRED = {"ch01-formula", "ch02-momentum", "ch06-figure1"}


def stored_explorers() -> dict:
    """{explorer name: (page, spec)} from the notebooks' stored text/html outputs."""
    found = {}
    for page in book_pages():
        if page.source.suffix != ".ipynb":
            continue
        nb = json.loads(page.source.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                html = out.get("data", {}).get("text/html", "")
                html = "".join(html) if isinstance(html, list) else html
                for match in DATA_RE.finditer(html):
                    spec = json.loads(match.group(1))
                    found[spec["id"]] = (page, spec)
    return found


EXPLORERS = stored_explorers()


def test_the_book_has_its_explorers():
    missing = REQUIRED - set(EXPLORERS)
    assert not missing, f"explorers missing from the notebooks' outputs: {sorted(missing)}"


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        message = "no Chromium found; run tools/ensure_chromium.sh"
        if os.environ.get("D2LBN_REQUIRE_SITE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with Browser(executable) as b:
        yield b


WAIT_READY_JS = r"""
(async (name) => {
  for (let i = 0; i < 300; i++) {
    const root = document.querySelector(`.d2lbn-explorer[data-explorer="${name}"]`);
    if (root && root.dataset.ready === '1') return true;
    await new Promise(r => setTimeout(r, 50));
  }
  return false;
})
"""

# Move one control to `position` the way a reader does, wait for the redraw, and report what is
# drawn: the data of the traces the frame changes, the readout, and a fingerprint of the SVG.
MOVE_JS = r"""
(async (name, control, position) => {
  const root = document.querySelector(`.d2lbn-explorer[data-explorer="${name}"]`);
  const plot = root.querySelector('.d2lbn-explorer-plot');
  const spec = JSON.parse(root.querySelector('script.d2lbn-explorer-data').textContent);
  const svg = () => [...plot.querySelectorAll('svg path')].map(p => p.getAttribute('d')).join('|');
  const input = root.querySelector(`[name="${control}"]`);
  const before = {state: root.dataset.state, svg: svg()};
  input.value = String(position);
  input.dispatchEvent(new Event(input.tagName === 'SELECT' ? 'change' : 'input', {bubbles: true}));
  const want = [...root.querySelectorAll('.d2lbn-explorer-controls [name]')]
                 .map(i => i.value).join('-');
  for (let i = 0; i < 200 && root.dataset.state !== want; i++) {
    await new Promise(r => setTimeout(r, 25));
  }
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const frame = spec.frames[want];
  const drawn = {};
  for (const [index, update] of Object.entries(frame.traces)) {
    drawn[index] = {};
    for (const prop of Object.keys(update)) drawn[index][prop] = Array.from(plot.data[index][prop]);
  }
  return {before, want, state: root.dataset.state, drawn, expected: frame.traces,
          readout: root.querySelector('.d2lbn-explorer-readout').textContent,
          expectedReadout: frame.readout, svg: svg(), kind: input.tagName};
})
"""


def _load(browser, server, page, name, width=1280, height=900, mobile=False, dark=False):
    tab = browser.new_tab(width, height, mobile=mobile)
    if dark:
        tab.send("Emulation.setEmulatedMedia",
                 {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    since = tab.mark()
    tab.goto(server.url(page))
    ready = tab.evaluate(f"({WAIT_READY_JS})({json.dumps(name)})", await_promise=True, timeout=30)
    assert ready, f"{name}: the explorer on {page.docname} did not draw itself"
    return tab, since


def _shot(tab, name: str, suffix: str) -> None:
    """A screenshot of the explorer alone. As for tab.screenshot(full_page=True), the viewport is
    made as tall as the page (no scrolling, so no sticky header over the explorer), then the
    explorer's box is cut out."""
    height = min(30000, int(tab.evaluate("document.documentElement.scrollHeight")))
    metrics = {"width": tab.width, "deviceScaleFactor": 1, "mobile": tab.mobile}
    tab.send("Emulation.setDeviceMetricsOverride", {**metrics, "height": height})
    try:
        tab.evaluate("new Promise(r => { scrollTo(0, 0); requestAnimationFrame(() => "
                     "requestAnimationFrame(() => setTimeout(r, 300))); })", await_promise=True)
        box = tab.evaluate(f"""(() => {{
            const b = document.querySelector('.d2lbn-explorer[data-explorer="{name}"]')
                        .getBoundingClientRect();
            return {{x: b.left + scrollX, y: b.top + scrollY, width: b.width, height: b.height}};
          }})()""")
        clip = {"x": max(0, box["x"] - 4), "y": max(0, box["y"] - 4), "width": box["width"] + 8,
                "height": box["height"] + 8, "scale": 1}
        data = tab.send("Page.captureScreenshot", {"format": "png", "clip": clip},
                        timeout=60)["data"]
    finally:
        tab.send("Emulation.setDeviceMetricsOverride", {**metrics, "height": tab.height})
    path = SCREENSHOTS / f"explorer-{name}-{suffix}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(data))
    assert path.stat().st_size > 5_000, path


def _other_position(control) -> int:
    """A position far from the control's initial one."""
    last = len(control["labels"]) - 1
    return 0 if control["initial"] > last / 2 else last


@pytest.mark.parametrize("name", sorted(EXPLORERS))
def test_explorer_responds_to_its_controls(name, browser, server):
    page, stored = EXPLORERS[name]
    tab, since = _load(browser, server, page, name)
    on_page = tab.evaluate(f"""JSON.parse(document.querySelector(
        '.d2lbn-explorer[data-explorer="{name}"] script.d2lbn-explorer-data').textContent)""")
    assert on_page == stored, f"{name}: the page does not hold the data the notebook stored"
    for control in stored["controls"]:
        position = _other_position(control)
        result = tab.evaluate(f"({MOVE_JS})({json.dumps(name)}, {json.dumps(control['name'])}, "
                              f"{position})", await_promise=True, timeout=30)
        where = f"{name}, {control['name']} -> {control['labels'][position]!r}"
        assert result["state"] == result["want"] != result["before"]["state"], \
            f"{where}: the explorer did not redraw ({result['before']['state']} -> {result['state']})"
        assert result["drawn"] == result["expected"], f"{where}: Plotly draws other data"
        assert result["expected"] == {k: {p: v for p, v in u.items()}
                                      for k, u in stored["frames"][result["want"]]["traces"].items()}
        assert result["readout"] == result["expectedReadout"], f"{where}: wrong readout"
        assert result["svg"] != result["before"]["svg"], f"{where}: nothing changed on screen"
    errors = tab.console_errors(since)
    assert not errors, f"{name}: console errors:\n" + "\n".join(errors)
    foreign = [u for u in tab.requests(since)
               if not u.startswith((server.base + "/", "data:", "blob:", "about:"))]
    assert not foreign, f"{name}: requests to other hosts: {foreign}"
    assert any(u.split("?")[0].endswith("/_static/plotly.min.js") for u in tab.requests(since))
    browser.send("Target.closeTarget", {"targetId": tab.target})


LUMINANCE_JS = r"""
(name => {
  const root = document.querySelector(`.d2lbn-explorer[data-explorer="${name}"]`);
  const lum = c => { const m = (c || '').match(/[\d.]+/g); if (!m) return null;
                     const [r, g, b] = m.slice(0, 3).map(Number);
                     return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; };
  const plot = root.querySelector('.d2lbn-explorer-plot');
  const tick = plot.querySelector('.ytick text');
  return {theme: document.documentElement.dataset.theme,
          readout: lum(getComputedStyle(root.querySelector('.d2lbn-explorer-readout')).color),
          label: lum(getComputedStyle(root.querySelector('label')).color),
          tick: tick ? lum(tick.style.fill || getComputedStyle(tick).fill) : null,
          page: lum(getComputedStyle(document.body).backgroundColor),
          rootWidth: root.getBoundingClientRect().width, scrollWidth: root.scrollWidth,
          clientWidth: root.clientWidth, viewport: innerWidth,
          svgWidth: Math.max(...[...plot.querySelectorAll('svg.main-svg')]
                              .map(s => s.getBoundingClientRect().width))};
})
"""


@pytest.mark.parametrize("name", sorted(EXPLORERS))
def test_explorer_in_light_and_dark_mode_and_on_a_phone(name, browser, server):
    page, _ = EXPLORERS[name]
    tab, since = _load(browser, server, page, name)
    light = tab.evaluate(f"({LUMINANCE_JS})({json.dumps(name)})")
    assert light["theme"] == "light" and light["tick"] < 0.4, f"{name}: light mode: {light}"
    _shot(tab, name, "light")
    # switching the theme on the page (the theme button) recolours the drawn figure too
    tab.evaluate("document.documentElement.dataset.theme = 'dark'")
    time.sleep(0.3)
    switched = tab.evaluate(f"({LUMINANCE_JS})({json.dumps(name)})")
    assert switched["tick"] > 0.6, f"{name}: the figure kept dark text on a dark page: {switched}"
    assert not tab.console_errors(since)
    browser.send("Target.closeTarget", {"targetId": tab.target})

    tab, since = _load(browser, server, page, name, dark=True)
    dark = tab.evaluate(f"({LUMINANCE_JS})({json.dumps(name)})")
    assert dark["theme"] == "dark" and dark["page"] < 0.3, f"{name}: not in dark mode: {dark}"
    for part in ("readout", "label", "tick"):
        assert dark[part] > 0.6, f"{name}: {part} is hard to read in dark mode: {dark}"
    _shot(tab, name, "dark")
    assert not tab.console_errors(since)
    browser.send("Target.closeTarget", {"targetId": tab.target})

    tab, since = _load(browser, server, page, name, width=390, height=844, mobile=True)
    phone = tab.evaluate(f"({LUMINANCE_JS})({json.dumps(name)})")
    assert phone["rootWidth"] <= phone["viewport"], f"{name}: wider than the phone: {phone}"
    assert phone["scrollWidth"] <= phone["clientWidth"] + 1, f"{name}: scrolls sideways: {phone}"
    assert phone["svgWidth"] <= phone["clientWidth"] + 1, f"{name}: plot too wide: {phone}"
    _shot(tab, name, "phone")
    assert not tab.console_errors(since)
    browser.send("Target.closeTarget", {"targetId": tab.target})
