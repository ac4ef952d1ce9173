"""Fixtures for the tests of the *built* book (_build/html).

These tests run after `jupyter-book build` (`make test` runs them last). Without a built book they
are skipped, unless D2LBN_REQUIRE_SITE=1 (set by `make test`), which turns a missing build into an error.
"""
import os
from pathlib import Path

import pytest
from book_site import HTML, serve


def pytest_collection_modifyitems(config, items):
    """Skip (or, under D2LBN_REQUIRE_SITE=1, fail) the site tests when the book has not been built."""
    if (HTML / "index.html").exists():
        return
    if os.environ.get("D2LBN_REQUIRE_SITE") == "1":
        raise pytest.UsageError(f"D2LBN_REQUIRE_SITE=1 but {HTML / 'index.html'} is missing: run `make book` first")
    skip = pytest.mark.skip(reason="the book is not built (_build/html missing); run `make book` first")
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def server():
    """_build/html served by http.server on 127.0.0.1, in a thread, for the whole session."""
    httpd, site = serve(HTML)
    try:
        yield site
    finally:
        httpd.shutdown()
        httpd.server_close()
