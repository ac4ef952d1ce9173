"""ch12: the book's exported nets run in ONNX Runtime and agree with MXNet in inference mode.

ONNX Runtime cannot be installed beside MXNet 1.9.1 in the book's environment (its wheels for
Python 3.11 need NumPy >= 1.24.2, MXNet 1.9.1 needs NumPy < 1.24), so this file skips there and
runs in the NumPy 1.26 tier (``make test-numpy126``, ``.venv-numpy126`` with onnxruntime 1.16.3).
The oracle is MXNet's own inference output for the same batch; the tolerance is float32 rounding
of two different kernels (1e-4 relative, 1e-5 absolute).
"""
import numpy as np
import pytest
from mxnet import autograd

ort = pytest.importorskip("onnxruntime")

from d2lbn import compress as C, export as E  # noqa: E402
from d2lbn.models import lenet_bn_gluon  # noqa: E402
from d2lbn.resnet import small_resnet  # noqa: E402
from test_export import TOL, trained as _trained  # noqa: E402  (same nets as test_export)


def trained(net):
    return _trained(net, steps=3, shape=(8, 1, 28, 28))


def run_ort(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: X.asnumpy()})[0]


def test_lenet_in_onnx_runtime(tmp_path):
    net, X = trained(lenet_bn_gluon())
    out = run_ort(E.export_onnx(net, X, tmp_path / "lenet"), X)
    np.testing.assert_allclose(out, net(X).asnumpy(), **TOL)
    with autograd.train_mode():               # inference semantics, not the batch statistics
        assert np.abs(out - net(X).asnumpy()).max() > 1e-2


def test_folded_lenet_in_onnx_runtime(tmp_path):
    net, X = trained(lenet_bn_gluon())
    folded = C.fold_sequential(net)
    folded.hybridize()
    folded(X)
    path = E.export_onnx(folded, X, tmp_path / "folded")
    np.testing.assert_allclose(run_ort(path, X), net(X).asnumpy(), **TOL)
    unfolded = run_ort(E.export_onnx(net, X, tmp_path / "lenet"), X)
    np.testing.assert_allclose(run_ort(path, X), unfolded, **TOL)


def test_small_resnet_in_onnx_runtime(tmp_path):
    net, X = trained(small_resnet())
    out = run_ort(E.export_onnx(net, X, tmp_path / "resnet"), X)
    np.testing.assert_allclose(out, net(X).asnumpy(), **TOL)
