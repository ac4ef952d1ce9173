"""batch_norm / BatchNorm (training and inference) against MXNet's own batch norm and a float64 reference.

Oracles: ``gluon.nn.BatchNorm`` and ``nd.BatchNorm(fix_gamma=False)`` (MXNet 1.9.1, CPU), and the
float64 NumPy transcription in conftest.py. Agreement is measured as ``max|ours - theirs| / max|theirs|``
per array (float32 values near zero make an elementwise relative test meaningless), with tolerance 1e-5.

Quirk on the Gluon side: on the CPU (where these tests run) ``gluon.nn.BatchNorm`` and
``nd.BatchNorm`` update their running statistics during ``backward()``, not in the forward pass, so
every built-in training step here is ``record()`` + forward + ``backward()``. (With cuDNN on a GPU
they update in the forward pass and store the unbiased variance: tests/gpu/test_gpu.py.)
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.base import MXNetError

from d2lbn import norm
from d2lbn.classic_bug import CLASSIC_INITIAL_MOVING_VAR, buggy_batch_norm
from d2lbn.fold import fold_batch_norm, fold_layer_and_batch_norm
from d2lbn.norm import DEFAULT_IMPL, IMPLEMENTATIONS, BatchNorm, batch_norm
from conftest import numpy_batch_norm

TOL = 1e-5
SHAPES = [(32, 5), (6, 3, 5, 4)]          # fully connected (m = 32) and convolutional (m = 120)


def rel_err(ours, theirs) -> float:
    ours = ours.asnumpy() if isinstance(ours, nd.NDArray) else np.asarray(ours)
    theirs = theirs.asnumpy() if isinstance(theirs, nd.NDArray) else np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours.astype(np.float64) - theirs).max() / np.abs(theirs).max())


def batches(shape, steps, seed=0):
    """``steps`` batches whose features have different means (about -4..6) and scales (0.5..8)."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    loc = rng.uniform(-4, 6, C).reshape((1, C) + (1,) * (len(shape) - 2))
    scale = rng.uniform(0.5, 8, C).reshape(loc.shape)
    return [nd.array(rng.normal(size=shape) * scale + loc) for _ in range(steps)]


def gluon_bn(C, gamma, beta, momentum=0.9, eps=1e-5):
    bn = gluon.nn.BatchNorm(momentum=momentum, epsilon=eps, in_channels=C)
    bn.initialize()
    bn.gamma.set_data(gamma)
    bn.beta.set_data(beta)
    return bn


def our_bn(C, ndim, gamma, beta, momentum=0.9, eps=1e-5, impl=None):
    bn = BatchNorm(C, ndim, eps=eps, momentum=momentum, impl=impl)
    bn.initialize()
    bn.gamma.set_data(gamma)
    bn.beta.set_data(beta)
    return bn


def compare_with_gluon(shape, steps=5, momentum=0.9, eps=1e-5, impl=None):
    """Run our layer and Gluon's on the same batches; return the largest relative error of each kind."""
    C, rng = shape[1], np.random.default_rng(7)
    gamma, beta = nd.array(rng.uniform(0.5, 2, C)), nd.array(rng.normal(size=C))
    theirs = gluon_bn(C, gamma, beta, momentum, eps)
    ours = our_bn(C, len(shape), gamma, beta, momentum, eps, impl)
    head = nd.array(rng.normal(size=shape))      # a fixed random loss sum(head * Y) gives non-trivial grads
    errors = {"train Y": 0.0, "moving_mean": 0.0, "moving_var": 0.0, "grad X": 0.0, "grad gamma": 0.0,
              "grad beta": 0.0, "inference Y": 0.0}
    for X in batches(shape, steps):
        results = []
        for layer in (ours, theirs):
            Xc = X.copy()
            Xc.attach_grad()
            with autograd.record():
                Y = layer(Xc)
                loss = (Y * head).sum()
            loss.backward()
            results.append((Y, Xc.grad, layer.gamma.grad(), layer.beta.grad()))
        (Y1, gX1, gg1, gb1), (Y2, gX2, gg2, gb2) = results
        for key, a, b in (("train Y", Y1, Y2), ("grad X", gX1, gX2), ("grad gamma", gg1, gg2),
                          ("grad beta", gb1, gb2),
                          ("moving_mean", ours.moving_mean.data(), theirs.running_mean.data()),
                          ("moving_var", ours.moving_var.data(), theirs.running_var.data())):
            errors[key] = max(errors[key], rel_err(a, b))
        test_X = batches(shape, 1, seed=99)[0]
        errors["inference Y"] = max(errors["inference Y"], rel_err(ours(test_X), theirs(test_X)))
    return errors


# ---- agreement with MXNet's built-ins ----------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum, eps", [(0.9, 1e-5), (0.6, 1e-3)])
def test_layer_matches_gluon_batchnorm(shape, momentum, eps):
    errors = compare_with_gluon(shape, steps=5, momentum=momentum, eps=eps)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("shape", SHAPES)
def test_function_matches_nd_batchnorm(shape):
    """Functional batch_norm vs nd.BatchNorm(fix_gamma=False) over 6 training steps, then inference."""
    C, rng, momentum = shape[1], np.random.default_rng(3), 0.8
    gamma, beta = nd.array(rng.uniform(0.5, 2, C)), nd.array(rng.normal(size=C))
    gamma.attach_grad()                      # nd.BatchNorm only updates its statistics in backward,
    beta.attach_grad()                       # which needs something to differentiate
    their_mean, their_var = nd.zeros(C), nd.ones(C)
    our_mean, our_var = nd.zeros(C), nd.ones(C)
    for X in batches(shape, 6, seed=1):
        with autograd.record():
            theirs = nd.BatchNorm(X, gamma, beta, their_mean, their_var, fix_gamma=False,
                                  momentum=momentum, eps=1e-5)
        theirs.backward()
        ours, our_mean, our_var = batch_norm(X, gamma, beta, our_mean, our_var, training=True,
                                             momentum=momentum)
        assert rel_err(ours, theirs) < TOL
        assert rel_err(our_mean, their_mean) < TOL
        assert rel_err(our_var, their_var) < TOL
    X = batches(shape, 1, seed=2)[0]
    theirs = nd.BatchNorm(X, gamma, beta, their_mean, their_var, fix_gamma=False, eps=1e-5)
    ours, _, _ = batch_norm(X, gamma, beta, our_mean, our_var, training=False)
    assert rel_err(ours, theirs) < TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_training_matches_float64_reference(shape):
    """Training output and moving statistics against the float64 transcription of the formulas."""
    C, rng, momentum = shape[1], np.random.default_rng(5), 0.9
    gamma, beta = rng.uniform(0.5, 2, C), rng.normal(size=C)
    mean64, var64 = np.zeros(C), np.ones(C)
    mean32, var32 = nd.zeros(C), nd.ones(C)
    for X in batches(shape, 4, seed=4):
        y64, batch_mean, batch_var = numpy_batch_norm(X.asnumpy(), gamma, beta)
        mean64 = momentum * mean64 + (1 - momentum) * batch_mean
        var64 = momentum * var64 + (1 - momentum) * batch_var
        Y, mean32, var32 = batch_norm(X, nd.array(gamma), nd.array(beta), mean32, var32, training=True)
        assert rel_err(Y, y64) < TOL and rel_err(mean32, mean64) < TOL and rel_err(var32, var64) < TOL


# ---- the agreement tests can fail: mutants of the update rule are caught ----------------------------

def pytorch_momentum(X, gamma, beta, moving_mean, moving_var, *, training, eps=1e-5, momentum=0.9):
    """Mutant: momentum weighs the NEW batch statistic (PyTorch's meaning) instead of the old value."""
    return batch_norm(X, gamma, beta, moving_mean, moving_var, training=training, eps=eps,
                      momentum=1 - momentum)


def unbiased_variance(X, gamma, beta, moving_mean, moving_var, *, training, eps=1e-5, momentum=0.9):
    """Mutant: the moving variance accumulates the unbiased batch variance, m/(m-1) times the biased one."""
    Y, new_mean, new_var = batch_norm(X, gamma, beta, moving_mean, moving_var, training=training,
                                      eps=eps, momentum=momentum)
    m = X.size // X.shape[1]
    new_var = momentum * moving_var + (new_var - momentum * moving_var) * m / (m - 1)
    return Y, new_mean, new_var


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mutant, broken", [(pytorch_momentum, "moving_mean"),
                                            (unbiased_variance, "moving_var")])
def test_agreement_test_catches_mutants(shape, mutant, broken):
    errors = compare_with_gluon(shape, steps=5, impl=mutant)
    assert errors[broken] > 100 * TOL, errors          # far outside the tolerance, so the test would fail
    assert errors["train Y"] < TOL                      # the training output alone cannot tell


# ---- the Gluon quirk, and our layer's behaviour ------------------------------------------------------

def test_gluon_updates_running_stats_in_backward_ours_in_forward():
    X = batches((16, 3), 1)[0]
    theirs = gluon_bn(3, nd.ones(3), nd.zeros(3))
    ours = our_bn(3, 2, nd.ones(3), nd.zeros(3))
    with autograd.record():
        Y_theirs, Y_ours = theirs(X), ours(X)
    assert theirs.running_mean.data().abs().sum().asscalar() == 0     # forward alone: unchanged
    assert ours.moving_mean.data().abs().sum().asscalar() > 0         # ours: updated already
    Y_theirs.backward()
    assert rel_err(ours.moving_mean.data(), theirs.running_mean.data()) < TOL   # backward caught up


def test_mode_follows_autograd():
    X = batches((16, 3), 1)[0]
    bn = our_bn(3, 2, nd.ones(3), nd.zeros(3))
    bn(X)                                                      # predict mode: nothing changes
    assert bn.moving_mean.data().abs().sum().asscalar() == 0
    with autograd.record(train_mode=False):                   # recording, but in predict mode
        Y = bn(X)
    assert bn.moving_mean.data().abs().sum().asscalar() == 0
    np.testing.assert_allclose(Y.asnumpy(), X.asnumpy() / np.sqrt(1 + 1e-5), rtol=1e-6)
    with autograd.train_mode():                                # training mode without recording
        bn(X)
    np.testing.assert_allclose(bn.moving_mean.data().asnumpy(), 0.1 * X.asnumpy().mean(axis=0), rtol=1e-5)


def test_function_does_not_modify_inputs_and_detaches():
    X = batches((16, 3), 1)[0]
    X.attach_grad()
    gamma, beta, mean, var = nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3)
    gamma.attach_grad()
    with autograd.record():
        Y, new_mean, new_var = batch_norm(X, gamma, beta, mean, var, training=True)
    assert mean.abs().sum().asscalar() == 0 and (var == 1).min().asscalar() == 1
    for stat in (new_mean, new_var):
        with pytest.raises(MXNetError, match="not in a computational graph"):
            stat.backward()
    Y.backward()                                              # the output itself is differentiable


def test_layer_on_cpu1():
    """Initialised on cpu(1), the layer computes there and keeps its statistics there."""
    X = batches((16, 3), 1)[0]
    bn = BatchNorm(3, 2)
    bn.initialize(ctx=mx.cpu(1))
    with autograd.record():
        Y = bn(X.as_in_context(mx.cpu(1)))
    assert Y.context == mx.cpu(1)
    for p in bn.collect_params().values():
        assert p.list_ctx() == [mx.cpu(1)]
    np.testing.assert_allclose(bn.moving_mean.data(mx.cpu(1)).asnumpy(), 0.1 * X.asnumpy().mean(axis=0),
                               rtol=1e-5)
    with pytest.raises(RuntimeError, match=r"not initialized on context cpu\(0\)"):
        bn(X)                                                 # X on cpu(0): gluon names the mismatch


def test_layer_parameters():
    bn = BatchNorm(4, 4)
    bn.initialize()
    params = {name.split("_", 1)[1]: p for name, p in bn.collect_params().items()}
    assert sorted(params) == ["beta", "gamma", "moving_mean", "moving_var"]
    expected = {"gamma": (1, "write"), "beta": (0, "write"), "moving_mean": (0, "null"), "moving_var": (1, "null")}
    for name, (value, grad_req) in expected.items():
        assert params[name].shape == (4,)
        assert params[name].grad_req == grad_req
        assert (params[name].data() == value).min().asscalar() == 1


# ---- registry --------------------------------------------------------------------------------------

def test_registry():
    assert IMPLEMENTATIONS["naive"] is batch_norm
    assert DEFAULT_IMPL in IMPLEMENTATIONS
    assert BatchNorm(3, 2).impl == DEFAULT_IMPL
    assert norm.get_impl(None) is IMPLEMENTATIONS[DEFAULT_IMPL]
    assert BatchNorm(3, 2, impl=buggy_batch_norm)._fn is buggy_batch_norm
    with pytest.raises(ValueError, match=r"impl must be one of \[.*'naive'.*\].*got 'nave'"):
        BatchNorm(3, 2, impl="nave")


# ---- inference treats examples alone; training does not --------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_inference_output_independent_of_batch(shape):
    bn = our_bn(shape[1], len(shape), nd.array(np.linspace(0.5, 2, shape[1])), nd.ones(shape[1]))
    for X in batches(shape, 3):
        with autograd.record():
            bn(X)                                           # some training so the statistics are not 0/1
    A, B = batches(shape, 2, seed=11)
    B[0] = A[0]                                             # same first example, different companions
    assert np.array_equal(bn(A)[0].asnumpy(), bn(B)[0].asnumpy())
    alone = bn(A[0:1])                                      # a batch of one is fine at inference
    np.testing.assert_allclose(alone.asnumpy()[0], bn(A)[0].asnumpy(), rtol=1e-6, atol=1e-6)
    with autograd.train_mode():
        train_A, train_B = bn(A)[0].asnumpy(), bn(B)[0].asnumpy()
    assert np.abs(train_A - train_B).max() > 1e-2           # training mode: companions matter


# ---- a batch of one is refused in training mode ----------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 5), (1, 3, 1, 1)])
def test_batch_of_one_refused(shape):
    C = shape[1]
    with pytest.raises(ValueError, match=r"more than one value per feature/channel.*exactly beta"):
        batch_norm(nd.ones(shape), nd.ones(C), nd.zeros(C), nd.zeros(C), nd.ones(C), training=True)
    bn = BatchNorm(C, len(shape))
    bn.initialize()
    with pytest.raises(ValueError, match=r"has one"):
        with autograd.record():
            bn(nd.ones(shape))
    Y, _, _ = batch_norm(nd.ones(shape), nd.ones(C), nd.zeros(C), nd.zeros(C), nd.ones(C), training=False)
    assert Y.shape == shape


def test_one_example_with_several_pixels_is_allowed():
    X = batches((1, 3, 2, 2), 1)[0]                          # N = 1 but m = N*H*W = 4
    Y, _, _ = batch_norm(X, nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3), training=True)
    expected, _, _ = numpy_batch_norm(X.asnumpy(), np.ones(3), np.zeros(3))
    assert rel_err(Y, expected) < TOL


# ---- argument checks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("momentum, error, message", [
    (1.0, ValueError, r"momentum must be in \[0, 1\).*PyTorch's momentum=0.1 means momentum=0.9"),
    (-0.1, ValueError, r"momentum must be in \[0, 1\).*got -0.1"),
    (float("nan"), ValueError, r"momentum must be in \[0, 1\)"),
    (True, TypeError, r"momentum must be a real number .* got bool"),
    ("0.9", TypeError, r"momentum must be a real number .* got str"),
])
def test_bad_momentum(momentum, error, message):
    args = (nd.ones((4, 3)), nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3))
    with pytest.raises(error, match=message):
        batch_norm(*args, training=True, momentum=momentum)
    with pytest.raises(error, match=message):
        BatchNorm(3, 2, momentum=momentum)


def test_momentum_zero_keeps_only_the_last_batch():
    X = batches((8, 3), 1)[0]
    _, mean, var = batch_norm(X, nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3), training=True, momentum=0)
    _, batch_mean, batch_var = numpy_batch_norm(X.asnumpy(), np.ones(3), np.zeros(3))
    assert rel_err(mean, batch_mean) < TOL and rel_err(var, batch_var) < TOL


@pytest.mark.parametrize("call, error, message", [
    (lambda: batch_norm(nd.ones((4, 3)), nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3), training=True, eps=0),
     ValueError, r"eps must be > 0"),
    (lambda: batch_norm(nd.ones((4, 3)), nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3), training=1),
     TypeError, r"training must be True or False, got 1"),
    (lambda: batch_norm(nd.ones((4, 3)), nd.ones(3), nd.zeros(3), nd.zeros(4), nd.ones(3), training=True),
     ValueError, r"moving_mean must have shape \(3,\).*got shape \(4,\)"),
    (lambda: batch_norm(nd.ones((4, 3)), nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3, ctx=mx.cpu(1)),
                        training=False),
     ValueError, r"moving_var lives on cpu\(1\) but X lives on cpu\(0\)"),
    (lambda: batch_norm(nd.ones((4, 3, 2)), nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3), training=True),
     ValueError, r"rank 2 .* rank 4 .*got rank 3"),
    (lambda: BatchNorm(0, 2), ValueError, r"num_features must be a positive int; got 0"),
    (lambda: BatchNorm(3, 3), ValueError, r"num_dims must be 2 .* or 4 .*; got 3"),
    (lambda: BatchNorm(3, 2, eps=0), ValueError, r"eps must be > 0"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("shape, message", [((4, 5), r"expects X of shape \(N, 3\); got shape \(4, 5\)"),
                                            ((4, 3, 2, 2), r"expects X of shape \(N, 3\); got shape \(4, 3, 2, 2\)")])
def test_layer_checks_input_shape(shape, message):
    bn = BatchNorm(3, 2)
    bn.initialize()
    with pytest.raises(ValueError, match=message):
        bn(nd.ones(shape))


# ---- the classic bug: its statistics run away; the correct ones converge --------------------------------

def run_updates(fn, steps=60, initial_var=1.0):
    """Feed ``steps`` batches of 64 values ~ N(2, 3^2) (3 features); return the moving statistics."""
    mean, var = nd.zeros(3), nd.full(3, initial_var)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        X = nd.array(rng.normal(2.0, 3.0, size=(64, 3)))
        _, mean, var = fn(X, nd.ones(3), nd.zeros(3), mean, var, training=True)
    return mean.asnumpy(), var.asnumpy()


def test_correct_update_converges_buggy_update_drifts():
    mean, var = run_updates(batch_norm)
    np.testing.assert_allclose(mean, 2.0, atol=0.5)
    np.testing.assert_allclose(var, 9.0, rtol=0.2)
    bad_mean, bad_var = run_updates(buggy_batch_norm, initial_var=CLASSIC_INITIAL_MOVING_VAR)
    # each step adds momentum * (1 - batch variance) = 0.9 * (1 - ~9): about -7 per step, without bound
    assert np.all(np.abs(bad_mean - 2.0) > 100)
    assert np.all(bad_var == 0)                                # never updated, still at its start


def test_buggy_update_is_exactly_the_classic_formula():
    X = nd.array([[0.0, 1.0], [2.0, 5.0]])                    # batch variances 1 and 4
    _, mean, var = buggy_batch_norm(X, nd.ones(2), nd.zeros(2), nd.array([10.0, 20.0]), nd.zeros(2),
                                    training=True, momentum=0.9)
    np.testing.assert_allclose(mean.asnumpy(), [0.9 + 10 - 0.9 * 1, 0.9 + 20 - 0.9 * 4], rtol=1e-6)
    np.testing.assert_array_equal(var.asnumpy(), [0, 0])


# ---- folding inference batch norm into the previous layer ---------------------------------------------------

def trained_bn(bn, make_input, steps=4):
    for s in range(steps):
        with autograd.record():
            bn(make_input(s))
    return bn


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("gluon_side", [False, True])
def test_fold_dense(use_bias, gluon_side):
    """A large eps (0.5) so that a fold which forgot eps, or took it from the wrong place, fails."""
    rng = np.random.default_rng(21)
    dense = gluon.nn.Dense(6, in_units=4, use_bias=use_bias)
    dense.initialize(mx.init.Normal(1.0))
    if use_bias:
        dense.bias.set_data(nd.array(rng.normal(size=6)))
    if gluon_side:
        bn = gluon_bn(6, nd.array(rng.uniform(0.5, 2, 6)), nd.array(rng.normal(size=6)), eps=0.5)
        for s in range(4):
            X = nd.array(rng.normal(1.0, 2.0, size=(16, 4)))
            with autograd.record():
                y = bn(dense(X))
            y.backward()
    else:
        bn = our_bn(6, 2, nd.array(rng.uniform(0.5, 2, 6)), nd.array(rng.normal(size=6)), eps=0.5)
        trained_bn(bn, lambda s: dense(nd.array(rng.normal(1.0, 2.0, size=(16, 4)))))
    W, b = fold_layer_and_batch_norm(dense, bn)
    folded = gluon.nn.Dense(6, in_units=4)
    folded.initialize()
    folded.weight.set_data(W)
    folded.bias.set_data(b)
    X = nd.array(rng.normal(1.0, 2.0, size=(10, 4)))
    assert rel_err(folded(X), bn(dense(X))) < TOL


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("gluon_side", [False, True])
def test_fold_conv2d(use_bias, gluon_side):
    """A strided (2), padded (1) Conv2D followed by our BatchNorm or Gluon's nn.BatchNorm, trained a
    few steps so the moving statistics are far from 0 and 1, folded into one Conv2D: the same
    inference output as the unfolded pair (eps 0.1, so a fold that drops eps fails)."""
    rng = np.random.default_rng(22)
    conv = gluon.nn.Conv2D(5, kernel_size=3, strides=2, padding=1, in_channels=2, use_bias=use_bias)
    conv.initialize(mx.init.Normal(0.5))
    if use_bias:
        conv.bias.set_data(nd.array(rng.normal(size=5)))
    gamma, beta = nd.array(rng.uniform(0.5, 2, 5)), nd.array(rng.normal(size=5))
    make_input = lambda s: nd.array(rng.normal(0.5, 1.0, size=(4, 2, 9, 9)))   # noqa: E731
    if gluon_side:
        bn = gluon_bn(5, gamma, beta, eps=0.1)
        for s in range(4):
            with autograd.record():
                y = bn(conv(make_input(s)))
            y.backward()                      # Gluon updates its statistics here (on the CPU)
        mean, var = bn.running_mean.data(), bn.running_var.data()
    else:
        bn = trained_bn(our_bn(5, 4, gamma, beta, eps=0.1), lambda s: conv(make_input(s)))
        mean, var = bn.moving_mean.data(), bn.moving_var.data()
    assert mean.abs().min().asscalar() > 1e-3 and (var - 1).abs().min().asscalar() > 1e-3, \
        "the moving statistics never left their initial values: the fold would test nothing"
    W, b = fold_layer_and_batch_norm(conv, bn)
    assert W.shape == conv.weight.shape and b.shape == (5,)
    folded = gluon.nn.Conv2D(5, kernel_size=3, strides=2, padding=1, in_channels=2)
    folded.initialize()
    folded.weight.set_data(W)
    folded.bias.set_data(b)
    X = nd.array(rng.normal(0.5, 1.0, size=(3, 2, 9, 9)))
    unfolded = bn(conv(X))                    # inference mode: outside autograd.record()
    assert unfolded.shape == (3, 5, 5, 5)
    assert rel_err(folded(X), unfolded) < TOL


def test_fold_against_numpy_formula():
    rng = np.random.default_rng(23)
    W, bias = rng.normal(size=(3, 4)), rng.normal(size=3)
    gamma, beta, mean, var = rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 3, 3)
    x = rng.normal(size=(5, 4))
    expected = gamma * (x @ W.T + bias - mean) / np.sqrt(var + 0.1) + beta        # float64, unfolded
    W2, b2 = fold_batch_norm(*(nd.array(a) for a in (W, bias, gamma, beta, mean, var)), eps=0.1)
    assert rel_err(nd.dot(nd.array(x), W2.T) + b2, expected) < TOL


def test_fold_refuses_activation_and_bad_shapes():
    dense = gluon.nn.Dense(3, in_units=2, activation="relu")
    dense.initialize()
    bn = BatchNorm(3, 2)
    bn.initialize()
    with pytest.raises(ValueError, match="has an activation"):
        fold_layer_and_batch_norm(dense, bn)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\).*got shape \(4,\)"):
        fold_batch_norm(nd.ones((3, 2)), None, nd.ones(4), nd.zeros(3), nd.zeros(3), nd.ones(3))
