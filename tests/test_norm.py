"""pure_batch_norm against the source tutorials' worked examples and a float64 NumPy reference."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import nd

from d2lbn.norm import pure_batch_norm, reduction_axes
from conftest import numpy_batch_norm


def test_worked_example_fully_connected():
    Y = pure_batch_norm(nd.arange(6).reshape((3, 2)), nd.array([1, 11]), nd.array([0, 0]))
    expected = [[-1.2247427, -13.472169], [0, 0], [1.2247427, 13.472169]]
    np.testing.assert_allclose(Y.asnumpy(), expected, rtol=1e-6, atol=1e-6)


def test_worked_example_convolutional():
    Y = pure_batch_norm(nd.arange(18).reshape((1, 2, 3, 3)), nd.array([1, 11]), nd.array([0, 0])).asnumpy()
    assert Y[0, 0].min() == pytest.approx(-1.5491922, rel=1e-6)
    assert Y[0, 0].max() == pytest.approx(1.5491922, rel=1e-6)
    assert Y[0, 1].min() == pytest.approx(-17.041115, rel=1e-6)
    assert Y[0, 1].max() == pytest.approx(17.041115, rel=1e-6)


@pytest.mark.parametrize("shape", [(7, 5), (64, 3), (4, 3, 5, 6), (2, 8, 1, 9)])
def test_matches_float64_reference(shape, rng):
    x = rng.normal(3.0, 5.0, size=shape)
    C = shape[1]
    gamma, beta = rng.uniform(0.5, 2, C), rng.normal(size=C)
    ours = pure_batch_norm(nd.array(x), nd.array(gamma), nd.array(beta)).asnumpy()
    expected, _, _ = numpy_batch_norm(x, gamma, beta)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(50, 4), (6, 4, 7, 7)])
def test_output_statistics(shape, rng):
    """Each feature/channel ends with mean beta and std |gamma| sqrt(var / (var + eps))."""
    x = rng.exponential(2.0, size=shape) * rng.uniform(0.001, 10, size=(1, shape[1]) + (1,) * (len(shape) - 2))
    C, eps = shape[1], 1e-5
    gamma, beta = rng.uniform(-2, 2, C), rng.normal(size=C)
    y = pure_batch_norm(nd.array(x), nd.array(gamma), nd.array(beta), eps=eps).asnumpy().astype(np.float64)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    var = x.var(axis=axes)
    np.testing.assert_allclose(y.mean(axis=axes), beta, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=axes), np.abs(gamma) * np.sqrt(var / (var + eps)), rtol=1e-4)


def test_eps_is_used():
    """A constant-plus-tiny-noise feature: without eps the std would be 1, with eps it is sqrt(1/2)."""
    x = np.array([[-1.0], [1.0]]) * np.sqrt(1e-5)
    y = pure_batch_norm(nd.array(x), nd.ones(1), nd.zeros(1), eps=1e-5).asnumpy()
    np.testing.assert_allclose(np.abs(y), np.sqrt(0.5), rtol=1e-4)


def test_reduction_axes():
    assert reduction_axes(nd.zeros((3, 4))) == ((0,), (1, 4))
    assert reduction_axes(nd.zeros((3, 4, 5, 6))) == ((0, 2, 3), (1, 4, 1, 1))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 2, 3, 4, 5)])
def test_wrong_rank_is_a_value_error(shape):
    with pytest.raises(ValueError, match=r"rank 2 .* rank 4 .*got rank %d" % len(shape)):
        pure_batch_norm(nd.ones(shape), nd.ones(shape[-1]), nd.zeros(shape[-1]))


@pytest.mark.parametrize("name", ["gamma", "beta"])
def test_wrong_parameter_length_names_shapes(name):
    args = {"gamma": nd.ones(3), "beta": nd.zeros(3)}
    args[name] = nd.ones(4)
    with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\).*got shape \(4,\)"):
        pure_batch_norm(nd.ones((2, 3, 4, 4)), **args)


def test_parameters_on_another_context():
    with pytest.raises(ValueError, match="gamma lives on cpu\\(1\\)"):
        pure_batch_norm(nd.ones((2, 3)), nd.ones(3, ctx=mx.cpu(1)), nd.zeros(3))


def test_non_ndarray_input():
    with pytest.raises(TypeError, match="X must be an mxnet NDArray"):
        pure_batch_norm(np.ones((2, 3)), nd.ones(3), nd.zeros(3))


@pytest.mark.parametrize("eps", [0, -1e-5])
def test_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        pure_batch_norm(nd.ones((2, 3)), nd.ones(3), nd.zeros(3), eps=eps)
