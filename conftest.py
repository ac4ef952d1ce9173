"""Root pytest configuration: notebooks of the frameworks tier are skipped where PyTorch or TensorFlow
is missing.

A notebook whose metadata says ``"d2lbn": {"tier": "frameworks"}`` (book/appendix_frameworks.ipynb)
runs the real PyTorch and TensorFlow/Keras, which only ``.venv-frameworks`` has (``make
test-frameworks``). The main run, ``make test`` (``pytest --nbval-lax book`` in ``.venv``), collects it
like any notebook; this hook marks each of its cells as skipped, with the reason below, before any
kernel starts. The check only looks the packages up (``importlib.util.find_spec``): it imports
neither. Items that are not notebook cells (``pytest tests``) are left alone.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

FRAMEWORKS_TIER = "frameworks"
REASON = "runs in .venv-frameworks (make test-frameworks): needs PyTorch and TensorFlow"


def frameworks_missing() -> list[str]:
    """The frameworks-tier packages that cannot be found here (looked up, not imported)."""
    return [name for name in ("torch", "tensorflow") if importlib.util.find_spec(name) is None]


def notebook_tier(path: Path) -> str | None:
    """The ``d2lbn.tier`` of a notebook's metadata (None if it has none or cannot be read)."""
    try:
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return None
    d2lbn = metadata.get("d2lbn", {})
    return d2lbn.get("tier") if isinstance(d2lbn, dict) else None


def pytest_collection_modifyitems(config, items):
    notebooks = {Path(str(item.path)) for item in items if str(item.path).endswith(".ipynb")}
    tiered = {path for path in notebooks if notebook_tier(path) == FRAMEWORKS_TIER}
    if not tiered:
        return
    missing = frameworks_missing()
    if not missing:
        return
    marker = pytest.mark.skip(reason=REASON)
    for item in items:
        if Path(str(item.path)) in tiered:
            item.add_marker(marker)
