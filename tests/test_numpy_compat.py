"""d2lbn's numpy.bool alias: what lets mxnet 1.9.1 run under NumPy 1.24-1.26 (the Colab route).

mxnet 1.9.1 reads ``numpy.bool`` (the builtin ``bool``) at import; NumPy 1.24 removed that alias.
``import d2lbn`` restores it where it is missing and leaves NumPy 1.23 (the book's pin) untouched.
These run under both: ``make test`` (NumPy 1.23) and ``make test-numpy126``.
"""
import os
import subprocess
import sys

import numpy as np

import d2lbn  # noqa: F401

NEW_NUMPY = np.lib.NumpyVersion(np.__version__) >= "1.24.0"


def python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(os.path.abspath(d2lbn.__file__))), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_alias_only_where_numpy_lacks_it():
    if NEW_NUMPY:
        assert np.bool is bool
    else:                                     # NumPy 1.23: its own deprecated alias, not ours
        assert "bool" not in vars(np)


def test_mxnet_numpy_bool_is_the_builtin():
    import mxnet
    assert mxnet.numpy.bool is bool


def test_mxnet_imports_after_d2lbn_but_not_alone_on_new_numpy():
    after = python("import d2lbn, mxnet; from mxnet import nd; print(nd.ones((2, 3)).sum().asscalar())")
    assert after.returncode == 0 and after.stdout.strip() == "6.0", after.stderr
    alone = python("import mxnet")
    if NEW_NUMPY:                             # the alias is what makes the difference
        assert alone.returncode != 0 and "bool" in alone.stderr, alone.stderr
    else:
        assert alone.returncode == 0, alone.stderr


def colab_cell(path: str) -> str:
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, path), encoding="utf-8") as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if "%pip install" in b]
    assert len(blocks) == 1, f"{path}: expected one Colab cell, found {len(blocks)}"
    return blocks[0]


def test_colab_cell_is_one_cell_in_readme_and_intro():
    """The cell the README and the book's intro tell Colab readers to run: the same text, the NumPy of
    make test-numpy126, the alias, and lines that fit the book's code column."""
    cell = colab_cell("README.md")
    assert colab_cell("book/intro.md") == cell
    assert '"mxnet==1.9.1" "numpy>=1.26,<2"' in cell and "np.bool = bool" in cell
    assert max(map(len, cell.splitlines())) <= 88
