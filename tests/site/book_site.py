"""The built book (_build/html) as the site tests see it: its pages in _toc.yml order, and a local server."""
from __future__ import annotations

import functools
import http.server
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]            # the repository (the book's source root)
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"


@dataclass(frozen=True)
class Page:
    """One page of the book, in table-of-contents order. docname: "book/ch01_formula"."""

    index: int
    docname: str
    source: Path          # book/ch01_formula.ipynb or book/intro.md
    html: Path            # _build/html/book/ch01_formula.html

    @property
    def url_path(self) -> str:
        return "/" + self.docname + ".html"

    @property
    def slug(self) -> str:
        return f"{self.index:02d}-{Path(self.docname).name}"


def _toc_docnames(toc: dict) -> list[str]:
    """Docnames of a jb-book _toc.yml in reading order: root, then parts/chapters/sections depth-first."""
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(n).with_suffix("")) if Path(n).suffix in {".md", ".ipynb"} else n for n in names]


def _source_of(docname: str) -> Path:
    for suffix in (".ipynb", ".md"):
        if (ROOT / (docname + suffix)).exists():
            return ROOT / (docname + suffix)
    raise FileNotFoundError(f"_toc.yml lists {docname!r} but neither {docname}.ipynb nor {docname}.md exists")


def book_pages() -> list[Page]:
    """Every page listed in _toc.yml, in reading order (read at collection time, so tests parametrize)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return [Page(i, d, _source_of(d), HTML / (d + ".html")) for i, d in enumerate(_toc_docnames(toc))]


def chapter_pages() -> list[Page]:
    """The chapters proper: every page but the front page (root) and the references page."""
    return [p for p in book_pages()[1:] if Path(p.docname).name != "references"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves _build/html; remembers every request that failed (404s of missing assets)."""

    failures: list  # set per server

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def send_error(self, code, message=None, explain=None):
        self.failures.append((code, self.path))
        super().send_error(code, message, explain)


@dataclass
class Server:
    base: str             # "http://127.0.0.1:PORT"
    failures: list        # [(status, path)] of requests the server could not answer

    def url(self, page: Page) -> str:
        return self.base + page.url_path


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, Server]:
    """Serve `directory` on 127.0.0.1 (a free port) from a daemon thread; call .shutdown() when done."""
    failures: list = []
    handler = type("Handler", (_QuietHandler,), {"failures": failures})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, Server(f"http://127.0.0.1:{httpd.server_address[1]}", failures)
