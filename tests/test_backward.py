"""The hand-derived backward pass (d2lbn.backward) against central differences and MXNet's autograd.

Oracles: float64 central differences of L = sum(dy * y) (relative error < 1e-7), and MXNet's
autograd through the naive ``d2lbn.norm.batch_norm`` run in float64. The mutants at the end drop
one term of the closed form each and must be caught by the same check, so the check can fail.
"""
import numpy as np
import pytest
from mxnet import autograd, nd

from d2lbn.backward import (backward_closed_form, backward_staged, forward_staged, gradient_check,
                            numerical_gradient, relative_error, stat_axes)
from d2lbn.norm import batch_norm
from conftest import numpy_batch_norm

SHAPES = [(6, 4), (16, 3), (3, 2, 3, 4), (2, 3, 1, 5)]     # m = 6, 16, 36, 10 values per feature
TOL = 1e-7


def staged(dy, x, gamma, eps):
    return backward_staged(dy, forward_staged(x, gamma, np.zeros_like(gamma), eps)[1])


def problem(shape, seed=0):
    """x with per-feature means about -4..6 and scales 0.5..8, gamma of both signs, random dy."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    bshape = (1, C) + (1,) * (len(shape) - 2)
    x = rng.normal(size=shape) * rng.uniform(0.5, 8, C).reshape(bshape) + rng.uniform(-4, 6, C).reshape(bshape)
    gamma = rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C)
    beta = rng.normal(size=C)
    dy = rng.normal(size=shape)
    return x, gamma, beta, dy


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backward", [staged, backward_closed_form], ids=["staged", "closed_form"])
def test_gradient_check_central_differences(backward, shape):
    x, gamma, beta, dy = problem(shape)
    errors = gradient_check(backward, x, gamma, beta, dy)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("shape", SHAPES)
def test_staged_equals_closed_form(shape):
    x, gamma, beta, dy = problem(shape, seed=1)
    for a, b in zip(staged(dy, x, gamma, 1e-5), backward_closed_form(dy, x, gamma, 1e-5)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_staged_is_batch_norm(shape):
    x, gamma, beta, _ = problem(shape, seed=2)
    y, cache = forward_staged(x, gamma, beta)
    expected, mean, var = numpy_batch_norm(x, gamma, beta)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache["mu"].reshape(-1), mean, rtol=1e-12)
    np.testing.assert_allclose(cache["var"].reshape(-1), var, rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_closed_form_matches_mxnet_autograd_of_naive_version(shape):
    """MXNet differentiates the naive batch_norm (float64 NDArrays); the closed form must agree."""
    x, gamma, beta, dy = problem(shape, seed=3)
    C = shape[1]
    X, G, B = (nd.array(v, dtype="float64") for v in (x, gamma, beta))
    for v in (X, G, B):
        v.attach_grad()
    with autograd.record():
        Y, _, _ = batch_norm(X, G, B, nd.zeros(C, dtype="float64"), nd.ones(C, dtype="float64"),
                             training=True)
    Y.backward(nd.array(dy, dtype="float64"))
    dx, dgamma, dbeta = backward_closed_form(dy, x, gamma)
    assert relative_error(X.grad.asnumpy(), dx) < 1e-10
    assert relative_error(G.grad.asnumpy(), dgamma) < 1e-10
    assert relative_error(B.grad.asnumpy(), dbeta) < 1e-10


@pytest.mark.parametrize("shape", SHAPES)
def test_dx_sums_to_zero_and_is_nearly_orthogonal_to_x_hat(shape):
    """Per feature, sum(dx) = 0 exactly, and sum(dx * x_hat) = k * dgamma * eps / (var + eps),
    which is 0 when eps = 0 (k = gamma / sqrt(var + eps))."""
    x, gamma, beta, dy = problem(shape, seed=4)
    axes, _ = stat_axes(x)
    eps = 1e-2                                   # large enough for the second identity to be visible
    dx, dgamma, _ = backward_closed_form(dy, x, gamma, eps)
    cache = forward_staged(x, gamma, beta, eps)[1]
    var, x_hat = cache["var"].reshape(-1), cache["x_hat"]
    k = gamma / np.sqrt(var + eps)
    scale = np.abs(k) * np.abs(dy).sum(axis=axes)
    assert np.all(np.abs(dx.sum(axis=axes)) < 1e-12 * scale)
    np.testing.assert_allclose((dx * x_hat).sum(axis=axes), k * dgamma * eps / (var + eps),
                               rtol=1e-9, atol=1e-12 * scale.max())
    dx0, _, _ = backward_closed_form(dy, x, gamma, eps=1e-300)     # eps -> 0: orthogonal
    assert np.all(np.abs((dx0 * forward_staged(x, gamma, beta, 1e-300)[1]["x_hat"]).sum(axis=axes))
                  < 1e-12 * scale)


def test_dy_constant_per_feature_gives_zero_dx():
    """A loss that only moves each feature's mean output cannot be helped by x: beta does that."""
    x, gamma, _, _ = problem((5, 3), seed=5)
    dy = np.ones_like(x) * np.array([1.0, -2.0, 0.5])
    dx, dgamma, dbeta = backward_closed_form(dy, x, gamma)
    np.testing.assert_allclose(dx, 0, atol=1e-12)
    np.testing.assert_allclose(dgamma, 0, atol=1e-12)
    np.testing.assert_allclose(dbeta, 5 * np.array([1.0, -2.0, 0.5]))


def test_numerical_gradient_of_a_known_function():
    a = np.array([[1.0, -2.0], [0.5, 3.0]])
    grad = numerical_gradient(lambda v: float((v ** 3).sum()), a)
    np.testing.assert_allclose(grad, 3 * a ** 2, rtol=1e-9)
    np.testing.assert_array_equal(a, [[1.0, -2.0], [0.5, 3.0]])        # unchanged


def test_relative_error():
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([1.0, 0.0]), np.array([1.0, 1e-3])) == pytest.approx(1e-3, rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        relative_error(np.zeros(2), np.zeros(3))


@pytest.mark.parametrize("bad, error, match", [
    (dict(x=np.zeros((2, 3, 4))), ValueError, r"rank 2 \(N, D\) or rank 4"),
    (dict(x=[[1.0, 2.0]]), TypeError, "x must be a NumPy array"),
    (dict(gamma=np.ones(4)), ValueError, r"gamma must have shape \(3,\).*got shape \(4,\)"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(x=np.ones((1, 3))), ValueError, "one value per feature"),
])
def test_bad_inputs(bad, error, match):
    args = dict(x=np.random.default_rng(0).normal(size=(4, 3)), gamma=np.ones(3), eps=1e-5)
    args.update(bad)
    with pytest.raises(error, match=match):
        backward_closed_form(np.zeros(np.shape(args["x"])), args["x"], args["gamma"], args["eps"])


# --- The check can fail: each mutant drops or alters one term of the closed form. -------------------

def _parts(dy, x, gamma, eps):
    axes, shape = stat_axes(x)
    m = x.size // x.shape[1]
    x_hat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    k = gamma.reshape(shape) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    dbeta, dgamma = dy.sum(axis=axes), (dy * x_hat).sum(axis=axes)
    return shape, m, x_hat, k, dbeta, dgamma


def drop_mean_term(dy, x, gamma, eps):
    shape, m, x_hat, k, dbeta, dgamma = _parts(dy, x, gamma, eps)
    return k * (dy - x_hat * dgamma.reshape(shape) / m), dgamma, dbeta


def drop_variance_term(dy, x, gamma, eps):
    shape, m, x_hat, k, dbeta, dgamma = _parts(dy, x, gamma, eps)
    return k * (dy - dbeta.reshape(shape) / m), dgamma, dbeta


def drop_gamma(dy, x, gamma, eps):
    shape, m, x_hat, k, dbeta, dgamma = _parts(dy, x, gamma, eps)
    k = k / gamma.reshape(shape)
    return k * (dy - dbeta.reshape(shape) / m - x_hat * dgamma.reshape(shape) / m), dgamma, dbeta


def unbiased_variance(dy, x, gamma, eps):
    """m - 1 in place of m in the variance: right for Bessel, wrong for this forward pass."""
    axes, shape = stat_axes(x)
    m = x.size // x.shape[1]
    var = x.var(axis=axes, keepdims=True, ddof=1)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(var + eps)
    dbeta, dgamma = dy.sum(axis=axes), (dy * x_hat).sum(axis=axes)
    dx = gamma.reshape(shape) / np.sqrt(var + eps) * (dy - dbeta.reshape(shape) / m
                                                      - x_hat * dgamma.reshape(shape) / m)
    return dx, dgamma, dbeta


@pytest.mark.parametrize("mutant", [drop_mean_term, drop_variance_term, drop_gamma, unbiased_variance])
@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 3, 4)])
def test_gradient_check_catches_a_dropped_term(mutant, shape):
    x, gamma, beta, dy = problem(shape)
    errors = gradient_check(mutant, x, gamma, beta, dy)
    assert errors["dx"] > 1e-3, errors


# ---- the figure of the graph (chapter 3, Fig. fig-bn-graph) ---------------------------------------

def test_graph_nodes_are_the_steps_of_forward_staged():
    """Nodes 1-8 of the figure are the values forward_staged computes in that order, and each
    label is that value: node 6 is r = 1/s, the reciprocal of node 5 (not 1/sqrt(s))."""
    from d2lbn.backward import GRAPH_NODES, GRAPH_STEPS
    x, gamma, beta, _ = problem((6, 4))
    y, cache = forward_staged(x, gamma, beta)
    assert sorted(GRAPH_STEPS.values()) == list(range(1, 9))
    by_step = sorted(GRAPH_STEPS, key=GRAPH_STEPS.get)
    assert by_step == ["mu", "xmu", "sq", "var", "std", "inv_std", "x_hat", "y"]
    np.testing.assert_allclose(cache["inv_std"], 1 / cache["std"], rtol=1e-15)
    labels = {name: label for name, label, _, _ in GRAPH_NODES}
    assert labels["inv_std"] == r"$1/\cdot$" and "sqrt" in labels["std"]
    assert set(GRAPH_STEPS) | {"x", "gamma", "beta"} == set(labels)


def test_graph_figure_numbers_nodes_and_draws_every_arrowhead():
    """Every edge is an arrow whose tip lies outside the box it points at (a tip inside the box is
    hidden under it: the old figure lost the heads of sigma^2 -> sqrt and sqrt -> 1/.); every
    computed node carries its step number."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from d2lbn.backward import GRAPH_EDGES, GRAPH_NODES, GRAPH_STEPS, draw_graph
    ax = draw_graph()
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): t.get_bbox_patch().get_window_extent(renderer)
             for t in ax.texts if t.get_bbox_patch() is not None}
    label = {name: text for name, text, _, _ in GRAPH_NODES}
    assert set(boxes) == set(label.values())
    arrows = [t.arrow_patch for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == len(GRAPH_EDGES)
    for (a, b), arrow in zip(GRAPH_EDGES, arrows):
        start, tip = arrow.get_path().vertices[[0, 2]]
        assert not boxes[label[b]].contains(*tip), f"{a} -> {b}: arrowhead hidden in {b}'s box"
        assert not boxes[label[a]].contains(*start), f"{a} -> {b}: starts inside {a}'s box"
        assert np.hypot(*(tip - start)) > 10, f"{a} -> {b}: arrow shorter than 10 pixels"
    numbers = sorted(t.get_text() for t in ax.texts
                     if t.get_bbox_patch() is None and t.get_text())
    assert numbers == sorted(str(k) for k in GRAPH_STEPS.values())
    plt.close(fig)
