"""Shared helpers of the frameworks tier: data, tolerances, and one training step of a batch-norm
layer in each framework (MXNet/d2lbn, PyTorch, Keras), all on the same float32 arrays.

Tolerances (float32 throughout). Every quantity compared here is O(1) (normalised outputs, gradients
of ``sum(w * y)`` with w ~ N(0, 1), moving statistics of inputs with mean ~2 and variance ~9). Each is a
sum of float32 terms computed in another order by each framework (MXNet, PyTorch and TensorFlow each
reduce in their own order, TensorFlow's oneDNN kernels too). float32 keeps 2^-24 ~ 6e-8 relative per
operation; a reduction of n terms in another order differs typically by about sqrt(n) * 6e-8 (3e-6 for
n = 2048) and at worst by n * 6e-8 (1.2e-4 for n = 2048, 1.5e-3 for the 25,088 values per channel of
the largest inputs here). RTOL = ATOL = 1e-4 is therefore an empirical tolerance, not a worst-case
bound: it sits some thirty times above the typical error and every agreement measured here was
below it (the largest, 6.1e-5, is recorded in the frameworks appendix). A convention error (eps 1e-3
against 1e-5 on unit variances, the momentum 0.1 against 0.9, or the factor m/(m-1) = 1.07 for
m = 16) moves values by 1e-3 to 1e0, at least ten times more, so these tests do tell the
conventions apart: each such test also asserts that the WRONG mapping misses by more than the
tolerance.
"""
from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import d2lbn  # noqa: E402,F401  (first: numpy.bool alias before mxnet, under numpy 1.24-1.26)
import mxnet as mx  # noqa: E402
from mxnet import autograd, nd  # noqa: E402
import torch  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two shared cores: one thread each, and deterministic reductions.
torch.set_num_threads(1)
try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:     # TensorFlow already initialised by an earlier test module: keep its setting
    pass

RTOL = 1e-4
ATOL = 1e-4


def assert_close(actual, expected, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    """``np.testing.assert_allclose`` on NumPy copies, with ``what`` in the message."""
    np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), rtol=rtol, atol=atol,
                               err_msg=what)


def assert_differ(actual, expected, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    """The two arrays are NOT equal within the tolerance (a wrong mapping must be detectable)."""
    a, b = to_numpy(actual), to_numpy(expected)
    assert not np.allclose(a, b, rtol=rtol, atol=atol), \
        f"{what}: expected a visible difference, got max |diff| {np.abs(a - b).max():.3g}"


def to_numpy(value) -> np.ndarray:
    if isinstance(value, nd.NDArray):
        return value.asnumpy()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.numpy()
    return np.asarray(value)


# ---- data: a few real Fashion-MNIST batches ---------------------------------------------------------

@functools.lru_cache(maxsize=None)
def fashion(n: int):
    """The first ``n`` training images (n, 1, 28, 28) float32 in [0, 1] and labels (n,) int64."""
    X, y, _, _ = d2lbn.data.fashion_arrays(train_limit=n, test_limit=1)
    return X.asnumpy(), y.asnumpy().astype(np.int64)


@functools.lru_cache(maxsize=None)
def bn_inputs(kind: str, batches: int = 4, batch_size: int = 16):
    """Inputs to a batch-norm layer, built from real images: a tuple of ``batches`` float32 arrays.

    kind '2d': (batch_size, 5), a fixed random projection of the 784 pixels (pre-activations of a
    dense layer, mean ~2, spread ~3). kind '4d': (batch_size, 3, 6, 6), a fixed random 5x5
    convolution of the 28x28 images (24x24), average-pooled 4x4 to 6x6, scaled by 3 and shifted by 2
    (pre-activations of a conv layer). NCHW, as in MXNet and PyTorch (Keras gets them as NHWC).
    """
    X, _ = fashion(batches * batch_size)
    rng = np.random.default_rng(27)
    if kind == "2d":
        W = rng.normal(0, 0.25, size=(784, 5)).astype(np.float32)
        feats = X.reshape(len(X), -1) @ W + 2.0
    elif kind == "4d":
        W = rng.normal(0, 0.3, size=(3, 1, 5, 5)).astype(np.float32)
        conv = nd.Convolution(nd.array(X), nd.array(W), no_bias=True, kernel=(5, 5), num_filter=3)
        feats = nd.Pooling(conv, kernel=(4, 4), stride=(4, 4), pool_type="avg").asnumpy() * 3 + 2
    else:
        raise ValueError(kind)
    feats = feats.astype(np.float32)
    return tuple(feats[i * batch_size:(i + 1) * batch_size] for i in range(batches))


def num_channels(x: np.ndarray) -> int:
    return x.shape[1]


def param_init(C: int, seed: int = 5):
    """gamma, beta, moving_mean, moving_var (C,) float32 that are not the defaults."""
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.normal(0, 0.5, C).astype(np.float32)
    mean = rng.normal(2, 0.5, C).astype(np.float32)
    var = rng.uniform(2, 10, C).astype(np.float32)
    return gamma, beta, mean, var


def loss_weights(shape, seed: int = 9) -> np.ndarray:
    """w for the loss sum(w * y): a gradient that is not zero (sum(y) alone gives dX = 0)."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


# ---- one step of a batch-norm layer in each framework ------------------------------------------------
# Each returns a dict: y (the output, NCHW), dx, dgamma, dbeta (gradients of sum(w * y)).

def mxnet_step(layer, x: np.ndarray, w: np.ndarray, training: bool = True, lr: float = 0.0):
    """One forward (+ backward) of an MXNet block (d2lbn.norm.BatchNorm or gluon.nn.BatchNorm)
    holding gamma and beta; ``lr`` > 0 then takes one SGD step on gamma and beta."""
    X = nd.array(x)
    X.attach_grad()
    with autograd.record(train_mode=training):
        Y = layer(X)
        loss = (Y * nd.array(w)).sum()
    loss.backward()   # gluon.nn.BatchNorm updates its moving statistics here, on the CPU
    out = {"y": Y.asnumpy(), "dx": X.grad.asnumpy(), "dgamma": layer.gamma.grad().asnumpy(),
           "dbeta": layer.beta.grad().asnumpy()}
    if lr:
        for p in (layer.gamma, layer.beta):
            p.set_data(p.data() - lr * p.grad())
    return out


def mxnet_moving(layer):
    """(moving_mean, moving_var) of a d2lbn or Gluon batch-norm layer, as NumPy."""
    if hasattr(layer, "moving_mean"):
        return layer.moving_mean.data().asnumpy(), layer.moving_var.data().asnumpy()
    return layer.running_mean.data().asnumpy(), layer.running_var.data().asnumpy()


def torch_step(module, x: np.ndarray, w: np.ndarray, lr: float = 0.0):
    """One forward + backward of a torch BatchNorm module (its mode as set by train()/eval())."""
    X = torch.tensor(x, requires_grad=True)
    module.zero_grad(set_to_none=True)
    Y = module(X)
    (Y * torch.from_numpy(w)).sum().backward()
    out = {"y": Y.detach().numpy(), "dx": X.grad.numpy(), "dgamma": module.weight.grad.numpy().copy(),
           "dbeta": module.bias.grad.numpy().copy()}
    if lr:
        with torch.no_grad():
            for p in (module.weight, module.bias):
                p -= lr * p.grad
    return out


def keras_step(layer, x: np.ndarray, w: np.ndarray, training: bool = True, lr: float = 0.0):
    """One forward + backward of a Keras layer normalising the last axis; x and w come NCHW and are
    transposed to NHWC for Keras, the results back to NCHW."""
    X = tf.Variable(nchw_to_nhwc(x))
    with tf.GradientTape() as tape:
        Y = layer(X, training=training)
        loss = tf.reduce_sum(Y * nchw_to_nhwc(w))
    dx, dgamma, dbeta = tape.gradient(loss, [X, layer.gamma, layer.beta])
    out = {"y": nhwc_to_nchw(Y.numpy()), "dx": nhwc_to_nchw(dx.numpy()),
           "dgamma": None if dgamma is None else dgamma.numpy(),
           "dbeta": None if dbeta is None else dbeta.numpy()}
    if lr:
        layer.gamma.assign_sub(lr * dgamma)
        layer.beta.assign_sub(lr * dbeta)
    return out


def numpy_batch_stats(x: np.ndarray):
    """float64 (mean, biased var, unbiased var) per channel of an NCHW or (N, D) batch."""
    flat = x.reshape(-1, x.shape[1]) if x.ndim == 2 else \
        x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    flat = flat.astype(np.float64)
    return flat.mean(0), flat.var(0), flat.var(0, ddof=1)


def mx_ctx():
    return mx.cpu()
