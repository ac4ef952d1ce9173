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
