"""What MXNet's batch norm does with its moving statistics on a GPU: the behaviour the book states
for cuDNN (chapter 2) and cites (apache/mxnet#14357, #18751, #21111), asserted on ``mx.gpu(0)``.

* **cuDNN (the default on a GPU):** ``gluon.nn.BatchNorm`` under ``autograd.record()`` updates its
  running mean and variance in the *forward* pass: no ``backward()`` is needed, and a
  ``backward()`` afterwards does not update them again. The stored variance is the *unbiased*
  batch variance (divide by m - 1), checked against float64 NumPy (``ddof=1``), with momentum 0
  (the stored value is the batch's) and with a known momentum (0.9, from 0 and 1).
* **MXNet's own GPU kernel (``nd.BatchNorm(..., cudnn_off=True)``):** the CPU's behaviour. A
  forward pass under ``record()`` leaves the moving statistics alone, ``backward()`` updates them,
  and the stored variance is the *biased* one (divide by m), as ``tests/test_batch_norm.py``
  checks on the CPU.

Marked ``gpu`` and skipped, with the reason, when MXNet sees no GPU (``make test`` collects and skips
them; ``make test-gpu`` runs them). Under ``D2LBN_GPU_TESTS_ON_CPU=1`` (a check of the tests' own
logic on ``cpu(1)``) the cuDNN tests skip, since a CPU has no cuDNN and would show the opposite
behaviour, and the ``cudnn_off=True`` tests run: on the CPU that flag is ignored, and the CPU kernel
must behave exactly as they assert for MXNet's own GPU kernel.

Tolerance: float32 statistics against float64 NumPy, rtol 1e-4. With m = 6 to 18 values per channel
the unbiased variance is m / (m - 1), 6 to 20 per cent, above the biased one, so the two conventions
are far apart. These tests have not yet run on a GPU: if one fails there, the book's chapter 2 and
this docstring state the behaviour wrongly, and both must change with it.
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from test_gpu import CTX, ON_CPU, on_ctx, pytestmark  # noqa: F401  (the gpu mark and the skip)

RTOL = 1e-4
SHAPES = [(6, 5), (4, 3, 2, 2), (2, 8, 3, 3)]         # m = 6, 16 and 18 values per channel
NO_CUDNN_ON_CPU = pytest.mark.skipif(
    ON_CPU, reason="D2LBN_GPU_TESTS_ON_CPU: cuDNN exists only on a GPU; the CPU kernel updates in "
                   "backward() and stores the biased variance (the cudnn_off=True tests check that "
                   "in this mode, tests/test_batch_norm.py in make test)")


def expected_moving(x: np.ndarray, momentum: float, convention: str):
    """``(moving_mean, moving_var)`` after one update from 0 and 1 with ``momentum`` (MXNet's
    meaning: the weight of the old value), in float64, with the batch variance divided by m
    (``'biased'``) or by m - 1 (``'unbiased'``). x: (N, C) or (N, C, H, W)."""
    if convention not in ("biased", "unbiased"):
        raise ValueError(f"convention must be 'biased' or 'unbiased'; got {convention!r}")
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes, ddof=1 if convention == "unbiased" else 0)
    return (1 - momentum) * mean, momentum * 1.0 + (1 - momentum) * var


def gluon_layer(C: int, momentum: float) -> gluon.nn.BatchNorm:
    layer = gluon.nn.BatchNorm(momentum=momentum, in_channels=C)
    layer.initialize(ctx=CTX)
    return layer


def statistics(layer):
    """The running mean and variance of a gluon.nn.BatchNorm on CTX, as float64 NumPy."""
    return [p.data(CTX).asnumpy().astype(np.float64) for p in (layer.running_mean, layer.running_var)]


@NO_CUDNN_ON_CPU
@pytest.mark.parametrize("shape", SHAPES)
def test_cudnn_updates_in_the_forward_pass_with_the_unbiased_variance(shape, rng):
    """apache/mxnet#14357: a recorded forward pass alone moves the statistics on gpu(0)."""
    x = rng.normal(1.0, 2.0, size=shape)
    layer = gluon_layer(shape[1], momentum=0.9)
    X = nd.array(x, ctx=CTX)
    with autograd.record():
        Y = layer(X)
    Y.wait_to_read()
    assert on_ctx(Y) == []
    mean, var = statistics(layer)
    assert not np.allclose(mean, 0) and not np.allclose(var, 1), \
        "the forward pass left the moving statistics at 0 and 1 (the CPU's behaviour, not cuDNN's)"
    exp_mean, exp_var = expected_moving(x, 0.9, "unbiased")
    np.testing.assert_allclose(mean, exp_mean, rtol=RTOL, atol=1e-6, err_msg="moving mean")
    np.testing.assert_allclose(var, exp_var, rtol=RTOL,
                               err_msg="moving variance, taken as the UNBIASED batch variance")
    Y.backward()                                          # cuDNN's backward does not update again
    np.testing.assert_allclose(statistics(layer)[1], exp_var, rtol=RTOL,
                               err_msg="backward() changed the moving variance a second time")


@NO_CUDNN_ON_CPU
@pytest.mark.parametrize("shape", SHAPES)
def test_cudnn_stores_the_unbiased_batch_variance(shape, rng):
    """apache/mxnet#18751 and #21111: with momentum 0 the stored variance is the batch's own,
    and with cuDNN that is the sample (unbiased) variance, x.var(ddof=1)."""
    x = rng.normal(-1.0, 3.0, size=shape)
    layer = gluon_layer(shape[1], momentum=0.0)
    with autograd.record():
        layer(nd.array(x, ctx=CTX)).wait_to_read()
    mean, var = statistics(layer)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    np.testing.assert_allclose(mean, x.mean(axis=axes), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(var, x.var(axis=axes, ddof=1), rtol=RTOL,
                               err_msg="the stored variance is not the unbiased batch variance")
    assert not np.allclose(var, x.var(axis=axes), rtol=RTOL)     # and not the biased one


def nd_batch_norm_step(x: np.ndarray, momentum: float, backward: bool):
    """``nd.BatchNorm(..., cudnn_off=True)`` on CTX, one forward pass under ``record()`` from
    moving statistics 0 and 1, then ``backward()`` if asked; the moving statistics it holds
    afterwards, as float64 NumPy."""
    C = x.shape[1]
    X = nd.array(x, ctx=CTX)
    gamma, beta = nd.ones(C, ctx=CTX), nd.zeros(C, ctx=CTX)
    moving_mean, moving_var = nd.zeros(C, ctx=CTX), nd.ones(C, ctx=CTX)
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record():
        Y = nd.BatchNorm(X, gamma, beta, moving_mean, moving_var, eps=1e-5, momentum=momentum,
                         fix_gamma=False, cudnn_off=True)
    if backward:
        Y.backward()
    Y.wait_to_read()
    assert on_ctx(Y, moving_mean, moving_var) == []
    return [a.asnumpy().astype(np.float64) for a in (moving_mean, moving_var)]


@pytest.mark.parametrize("shape", SHAPES)
def test_cudnn_off_updates_in_backward_with_the_biased_variance(shape, rng):
    """MXNet's own kernel (cudnn_off=True) behaves as on the CPU: nothing moves in the forward pass;
    backward() stores momentum * old + (1 - momentum) * the BIASED batch variance."""
    x = rng.normal(1.0, 2.0, size=shape)
    mean, var = nd_batch_norm_step(x, 0.9, backward=False)
    np.testing.assert_array_equal(mean, 0, err_msg="the forward pass moved the moving mean")
    np.testing.assert_array_equal(var, 1, err_msg="the forward pass moved the moving variance")
    mean, var = nd_batch_norm_step(x, 0.9, backward=True)
    exp_mean, exp_var = expected_moving(x, 0.9, "biased")
    np.testing.assert_allclose(mean, exp_mean, rtol=RTOL, atol=1e-6, err_msg="moving mean")
    np.testing.assert_allclose(var, exp_var, rtol=RTOL,
                               err_msg="moving variance, taken as the BIASED batch variance")
    _, var0 = nd_batch_norm_step(x, 0.0, backward=True)           # momentum 0: the batch's own
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    np.testing.assert_allclose(var0, x.var(axis=axes), rtol=RTOL)
    assert not np.allclose(var0, x.var(axis=axes, ddof=1), rtol=RTOL)
