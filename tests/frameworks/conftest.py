"""The frameworks tier (``make test-frameworks``): tests that run the real PyTorch and TensorFlow/Keras.

They need both frameworks, which only ``.venv-frameworks`` has (requirements-frameworks.txt). In any
other environment (the book's ``.venv``, where ``make test`` runs ``pytest tests``) this whole directory
is skipped at once, with the reason below: the check only looks the packages up (importlib's
``find_spec``), it imports neither.
"""
import importlib.util
import os

import pytest

MISSING = [name for name in ("torch", "tensorflow") if importlib.util.find_spec(name) is None]
REASON = (f"{' and '.join(MISSING)} not installed here: tests/frameworks runs in .venv-frameworks "
          "(make test-frameworks)")

if MISSING:
    class _SkippedModule(pytest.Module):
        """A test file of this directory, reported as skipped instead of being imported."""

        def collect(self):
            pytest.skip(REASON)

    def pytest_pycollect_makemodule(module_path, parent):
        return _SkippedModule.from_parent(parent, path=module_path)

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) off; set before tensorflow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
