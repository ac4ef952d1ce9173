"""Property-based tests (hypothesis) of the batch-norm functions against a float64 NumPy reference."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from mxnet import nd

from d2lbn.norm import pure_batch_norm
from conftest import numpy_batch_norm

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

shapes = st.one_of(
    st.tuples(st.integers(2, 16), st.integers(1, 6)),                                   # (N, D)
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),  # (N, C, H, W)
).filter(lambda s: (s[0] if len(s) == 2 else s[0] * s[2] * s[3]) >= 2)                # >= 2 values per feature


@st.composite
def batches(draw, low=-100.0, high=100.0):
    """(x, gamma, beta): x float64 of a random rank-2/4 shape with a well-spread spread of values."""
    shape = draw(shapes)
    x = draw(arrays(np.float64, shape, elements=st.floats(low, high, allow_nan=False, width=32)))
    # keep every feature's spread well above float32 rounding, so relative comparisons are meaningful
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    noise = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=shape)
    x = x + noise * (1.0 + np.abs(x).max())
    C = shape[1]
    gamma = draw(arrays(np.float64, C, elements=st.floats(-3, 3, width=32)))
    beta = draw(arrays(np.float64, C, elements=st.floats(-3, 3, width=32)))
    return x, gamma, beta, axes


def run(x, gamma, beta, eps=1e-5):
    return pure_batch_norm(nd.array(x), nd.array(gamma), nd.array(beta), eps=eps).asnumpy().astype(np.float64)


@SETTINGS
@given(batches())
def test_matches_reference(batch):
    x, gamma, beta, _ = batch
    expected, _, _ = numpy_batch_norm(x, gamma, beta)
    np.testing.assert_allclose(run(x, gamma, beta), expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(gamma).max()))


@SETTINGS
@given(batches())
def test_output_mean_is_beta_and_std_is_predicted(batch):
    x, gamma, beta, axes = batch
    eps = 1e-5
    y = run(x, gamma, beta, eps)
    var = x.var(axis=axes)
    np.testing.assert_allclose(y.mean(axis=axes), beta, atol=1e-4 * (1 + np.abs(gamma).max()))
    np.testing.assert_allclose(y.std(axis=axes), np.abs(gamma) * np.sqrt(var / (var + eps)),
                               rtol=1e-3, atol=1e-5)


@SETTINGS
@given(batches(), st.data())
def test_invariant_to_positive_scale_and_shift(batch, data):
    """BN(a*x + b) = BN(x) per feature, exactly when eps is scaled by a**2 too."""
    x, gamma, beta, axes = batch
    C = x.shape[1]
    bshape = (1, C) if x.ndim == 2 else (1, C, 1, 1)
    a = np.array(data.draw(st.lists(st.floats(0.01, 100), min_size=C, max_size=C))).reshape(bshape)
    b = np.array(data.draw(st.lists(st.floats(-1000, 1000), min_size=C, max_size=C))).reshape(bshape)
    eps = 1e-3
    # a single scalar eps cannot follow per-channel scales, so compare per channel
    for c in range(C):
        sl = (slice(None), slice(c, c + 1))
        xc, gc, bc = x[sl], gamma[c:c + 1], beta[c:c + 1]
        ac, bb = float(a.reshape(-1)[c]), float(b.reshape(-1)[c])
        base = run(xc, gc, bc, eps=eps)
        moved = run(ac * xc + bb, gc, bc, eps=eps * ac ** 2)
        np.testing.assert_allclose(moved, base, rtol=1e-3, atol=1e-3 * (1 + abs(gc[0])))


@pytest.mark.parametrize("shape", [(8, 3), (2, 3, 4, 4)])
def test_constant_feature_gives_beta(shape):
    """A constant channel has variance 0: x_hat = 0 / sqrt(eps) = 0, so the output is beta, finite."""
    x = np.full(shape, 7.0)
    beta = np.array([0.5, -1.0, 2.0])
    y = run(x, np.array([1.0, 2.0, 3.0]), beta)
    assert np.isfinite(y).all()
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    np.testing.assert_allclose(y.mean(axis=axes), beta, atol=1e-6)
    np.testing.assert_allclose(y.std(axis=axes), 0.0, atol=1e-6)


@SETTINGS
@given(batches(low=-1.0, high=1.0), st.sampled_from([1e4, -1e4]))
def test_finite_for_large_magnitudes(batch, offset):
    """Inputs around 1e4 with unit spread: finite, and still standardised to float32 accuracy."""
    x, gamma, beta, axes = batch
    x = offset + x / (np.abs(x).max() + 1e-12)
    y = run(x, np.ones_like(gamma), np.zeros_like(beta))
    assert np.isfinite(y).all()
    expected, _, _ = numpy_batch_norm(x, np.ones_like(gamma), np.zeros_like(beta))
    np.testing.assert_allclose(y, expected, atol=5e-2)


# ---- batch_norm: training and inference against the float64 reference ------------------------------

from d2lbn.norm import batch_norm  # noqa: E402


@SETTINGS
@given(batches(), st.floats(0.0, 0.984375, width=32, allow_subnormal=False), st.data())
def test_batch_norm_training_matches_reference(batch, momentum, data):
    x, gamma, beta, _ = batch
    C = x.shape[1]
    moving_mean = np.array(data.draw(st.lists(st.floats(-5, 5, width=32, allow_subnormal=False), min_size=C, max_size=C)))
    moving_var = np.array(data.draw(st.lists(st.floats(0.015625, 5, width=32), min_size=C, max_size=C)))
    Y, new_mean, new_var = batch_norm(nd.array(x), nd.array(gamma), nd.array(beta), nd.array(moving_mean),
                                      nd.array(moving_var), training=True, momentum=momentum)
    expected, mean, var = numpy_batch_norm(x, gamma, beta)
    scale = 1 + np.abs(x).max()
    np.testing.assert_allclose(Y.asnumpy(), expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(gamma).max()))
    np.testing.assert_allclose(new_mean.asnumpy(), momentum * moving_mean + (1 - momentum) * mean,
                               rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(new_var.asnumpy(), momentum * moving_var + (1 - momentum) * var,
                               rtol=1e-4, atol=1e-5 * scale ** 2)


@SETTINGS
@given(batches(), st.data())
def test_batch_norm_inference_matches_reference(batch, data):
    x, gamma, beta, _ = batch
    C = x.shape[1]
    moving_mean = np.array(data.draw(st.lists(st.floats(-5, 5, width=32, allow_subnormal=False), min_size=C, max_size=C)))
    moving_var = np.array(data.draw(st.lists(st.floats(0.015625, 5, width=32), min_size=C, max_size=C)))
    shape = (1, C) if x.ndim == 2 else (1, C, 1, 1)
    expected = (gamma.reshape(shape) * (x - moving_mean.reshape(shape))
                / np.sqrt(moving_var.reshape(shape) + 1e-5) + beta.reshape(shape))
    Y, new_mean, new_var = batch_norm(nd.array(x), nd.array(gamma), nd.array(beta), nd.array(moving_mean),
                                      nd.array(moving_var), training=False)
    np.testing.assert_allclose(Y.asnumpy(), expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max()))
    np.testing.assert_allclose(new_mean.asnumpy(), moving_mean, rtol=1e-6)   # unchanged
    np.testing.assert_allclose(new_var.asnumpy(), moving_var, rtol=1e-6)
