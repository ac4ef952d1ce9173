"""Tests of d2lbn.landscape against cases with a known answer (closed forms in float64 NumPy).

* centering: outside the gradient the bias moves by lr * mean(target) per step, loss unchanged;
  inside, the gradient is zero (sum dX = 0).
* gradient predictiveness on a quadratic loss: for L(w) = mean((Xw - y)^2) / 2 the gradient at
  w - eta g is g - eta H g with H = X^T X / N, so every quantity of the probe is exact.
* internal covariate shift: for f(x) = w2 * w1 * x the gradient of w2 before and after w1's step
  is a closed form; with nothing below (or nothing changing) it is 0 with cosine 1.
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

import d2lbn
from d2lbn import landscape as L
from d2lbn import models


# ---- 1. centering inside / outside the gradient ---------------------------------------------------

def test_centering_outside_the_gradient_lets_the_bias_grow_with_the_loss_unchanged(rng):
    u, t = rng.normal(size=20), rng.normal(loc=0.7, size=20)
    lr, steps = 0.5, 30
    run = L.centering_run(u, t, lr, steps, stats_in_gradient=False, b0=0.25)
    expected_b = 0.25 + lr * t.mean() * np.arange(steps + 1)
    np.testing.assert_allclose(run.b, expected_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run.grad, -t.mean(), rtol=1e-10)
    xhat = u - u.mean()
    np.testing.assert_allclose(run.loss, ((xhat - t) ** 2).mean() / 2, rtol=1e-12)


def test_centering_inside_the_gradient_gives_the_bias_a_zero_gradient(rng):
    u, t = rng.normal(size=20), rng.normal(loc=0.7, size=20)
    run = L.centering_run(u, t, 0.5, 30, stats_in_gradient=True, b0=0.25)
    assert max(abs(g) for g in run.grad) < 1e-12
    np.testing.assert_allclose(run.b, 0.25, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(num_steps=-1), "num_steps"),
    (dict(target=np.zeros(3)), "target"),
])
def test_centering_rejects_bad_input(kwargs, match):
    args = dict(u=np.zeros(4), target=np.ones(4), lr=0.1, num_steps=2, stats_in_gradient=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        L.centering_run(**args)


# ---- 2. noisy batch norm ----------------------------------------------------------------------------

def test_noise_is_one_scale_and_shift_per_channel_within_bounds_and_new_every_step(rng):
    noise = L.ShiftScaleNoise(max_shift=2.0, max_scale=3.0)
    X = nd.array(rng.normal(size=(8, 5, 3, 3)))
    d2lbn.set_seed(0)
    with autograd.train_mode():
        Y1, Y2 = noise(X).asnumpy(), noise(X).asnumpy()
    x = X.asnumpy()
    for Y in (Y1, Y2):
        for c in range(5):   # y = s x + m for one (s, m) per channel: recover them by least squares
            s, m = np.polyfit(x[:, c].ravel(), Y[:, c].ravel(), 1)
            np.testing.assert_allclose(Y[:, c], s * x[:, c] + m, rtol=1e-4, atol=1e-4)
            assert 1 <= s <= 3 and -2 <= m <= 2
    assert not np.allclose(Y1, Y2)                               # drawn afresh every pass
    np.testing.assert_allclose(noise(X).asnumpy(), 2.0 * x, rtol=1e-6)   # inference: mean scale


def test_add_noise_puts_noise_after_each_batch_norm_and_needs_one():
    noisy = L.add_noise(models.lenet_bn())
    kinds = [type(c).__name__ for c in noisy._children.values()]
    assert kinds.count("ShiftScaleNoise") == 4
    for i, k in enumerate(kinds):
        if k == "ShiftScaleNoise":
            assert kinds[i - 1] == "BatchNorm"
    with pytest.raises(ValueError, match="no batch-norm layer"):
        L.add_noise(models.lenet())
    with pytest.raises(ValueError, match="max_scale"):
        L.ShiftScaleNoise(max_scale=0.5)
    with pytest.raises(ValueError, match="max_shift"):
        L.ShiftScaleNoise(max_shift=-1)
    with pytest.raises(ValueError, match="kind"):
        L.make_net("dropout")


def _noise_parts(noise, shape, seed):
    """The per-activation scale s and shift m one training pass of ``noise`` draws at
    ``seed``: the same draws applied to zeros give m, to ones s + m."""
    with autograd.train_mode():
        d2lbn.set_seed(seed)
        m = noise(nd.zeros(shape)).asnumpy().astype(np.float64)
        d2lbn.set_seed(seed)
        s = noise(nd.ones(shape)).asnumpy().astype(np.float64) - m
    return s, m


def test_per_sample_noise_matches_the_oracle_of_its_statistics(rng):
    d, max_shift, max_scale = 0.8, 2.0, 3.0
    noise = L.PerSampleNoise(max_shift=max_shift, max_scale=max_scale, spread=d)
    shape = (2000, 3, 2, 2)                              # 8,000 activations per channel
    s, m = _noise_parts(noise, shape, seed=7)
    x = rng.normal(size=shape)
    d2lbn.set_seed(7)
    with autograd.train_mode():
        y = noise(nd.array(x)).asnumpy()
    np.testing.assert_allclose(y, s * x + m, rtol=1e-5, atol=1e-5)      # y = s x + m
    n = s.shape[0] * 4
    for c in range(3):
        sc, mc, xc, yc = (v[:, c].ravel() for v in (s, m, x, y))
        for v, low, high in ((sc, 1, max_scale), (mc, -max_shift, max_shift)):
            centre = (v.min() + v.max()) / 2            # this step's a_c (or b_c)
            assert low - 1e-3 <= centre <= high + 1e-3
            # U(centre - d, centre + d), i.i.d.: support, mean, variance d^2/3 (float64
            # NumPy oracle; tolerances about 4 standard errors at n = 8,000)
            assert v.max() - v.min() == pytest.approx(2 * d, abs=0.01)
            assert v.mean() == pytest.approx(centre, abs=4 * d / np.sqrt(3 * n))
            assert v.var() == pytest.approx(d ** 2 / 3, rel=0.05)
            lag1 = np.corrcoef(v[:-1], v[1:])[0, 1]      # neighbouring activations
            assert abs(lag1) < 4 / np.sqrt(n)
        assert abs(np.corrcoef(sc, mc)[0, 1]) < 4 / np.sqrt(n)   # scale and shift independent
        # the examples move relative to each other: for x ~ N(0, 1),
        # corr(x, y) = a / sqrt(a^2 + 2 d^2 / 3) < 1 (ShiftScaleNoise: exactly 1)
        a = (sc.min() + sc.max()) / 2
        assert np.corrcoef(xc, yc)[0, 1] == pytest.approx(a / np.sqrt(a * a + 2 * d * d / 3),
                                                          abs=0.01)
    s2, _ = _noise_parts(noise, shape, seed=8)           # a new step: a new distribution
    assert np.abs(s2.mean(axis=(0, 2, 3)) - s.mean(axis=(0, 2, 3))).max() > 0.05
    xs = rng.normal(size=(6, 4))
    np.testing.assert_allclose(noise(nd.array(xs)).asnumpy(), 2.0 * xs, rtol=1e-6)  # inference


def test_per_sample_noise_moves_examples_that_shared_noise_leaves_in_place(rng):
    x = np.broadcast_to(rng.normal(size=(1, 5)), (64, 5)).copy()     # 64 identical examples
    d2lbn.set_seed(0)
    with autograd.train_mode():
        shared = L.ShiftScaleNoise()(nd.array(x)).asnumpy()
        per_sample = L.PerSampleNoise()(nd.array(x)).asnumpy()
    np.testing.assert_array_equal(shared, np.broadcast_to(shared[:1], shared.shape))
    assert per_sample.std(axis=0).min() > 0.1            # every channel: examples now differ
    d2lbn.set_seed(0)
    with autograd.train_mode():                          # spread 0: the shared noise exactly
        zero = L.PerSampleNoise(spread=0.0)(nd.array(x)).asnumpy()
    np.testing.assert_allclose(zero, np.broadcast_to(zero[:1], zero.shape), atol=1e-6)


def test_add_per_sample_noise_and_its_bad_input():
    base = models.lenet_bn()
    noisy = L.add_per_sample_noise(base, spread=0.5)
    layers = list(noisy._children.values())
    kinds = [type(c).__name__ for c in layers]
    assert kinds.count("PerSampleNoise") == 4 and "ShiftScaleNoise" not in kinds
    for i, k in enumerate(kinds):
        if k == "PerSampleNoise":
            assert kinds[i - 1] == "BatchNorm" and layers[i].spread == 0.5
    assert all(any(c is b for c in layers) for b in base._children.values())   # shared
    assert type(L.make_net("noisy-bn-sample")[2]).__name__ == "PerSampleNoise"
    for kwargs, match in ((dict(spread=1.5), "spread"), (dict(spread=-0.1), "spread"),
                          (dict(spread=float("nan")), "spread"),
                          (dict(max_scale=0.5), "max_scale"),
                          (dict(max_shift=float("inf")), "max_shift")):
        with pytest.raises(ValueError, match=match):
            L.PerSampleNoise(**kwargs)
    with pytest.raises(ValueError, match="no batch-norm layer"):
        L.add_per_sample_noise(models.lenet())
    with pytest.raises(ValueError, match="shape"):
        with autograd.train_mode():
            L.PerSampleNoise()(nd.ones((2, 3, 4)))


def test_activation_inputs_are_what_the_activation_receives(rng):
    d2lbn.set_seed(0)
    net = models.lenet_bn()
    net.initialize(mx.init.Xavier())
    X = nd.array(rng.uniform(size=(16, 1, 28, 28)))
    children = list(net._children.values())
    bn = models.batch_norm_layers(net)[2]
    before = bn.moving_mean.data().asnumpy().copy()
    Z = L.activation_inputs(net, X, 2)
    assert Z.shape == (16, 120)
    with autograd.train_mode():
        H = X
        for layer in children[:children.index(bn) + 1]:
            H = layer(H)
    np.testing.assert_allclose(Z.asnumpy(), H.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Z.asnumpy().mean(axis=0), 0, atol=1e-4)   # batch statistics used
    # the moving statistics changed only in the hand-made pass above, not in activation_inputs
    bn.moving_mean.set_data(nd.array(before))
    L.activation_inputs(net, X, 2)
    np.testing.assert_array_equal(bn.moving_mean.data().asnumpy(), before)
    with pytest.raises(ValueError, match="index"):
        L.activation_inputs(net, X, 4)


# ---- 3. internal covariate shift -------------------------------------------------------------------

def _chain(w1, w2):
    net = nn.Sequential()
    net.add(nn.Dense(1, use_bias=False, in_units=1), nn.Dense(1, use_bias=False, in_units=1))
    net.initialize()
    net[0].weight.set_data(nd.array([[w1]]))
    net[1].weight.set_data(nd.array([[w2]]))
    return net


def test_gradient_shift_of_a_two_layer_chain_matches_the_closed_form(rng):
    x, y = rng.normal(size=32), rng.normal(size=32)
    w1, w2, lr = 0.8, -1.3, 0.2
    net = _chain(w1, w2)
    loss_fn = gluon.loss.L2Loss()                     # (f - y)^2 / 2 per example
    X, Y = nd.array(x.reshape(-1, 1)), nd.array(y.reshape(-1, 1))
    r = w2 * w1 * x - y
    g1 = np.mean(r * w2 * x)                          # dL/dw1
    G = np.mean(r * w1 * x)                           # dL/dw2 before
    w1_new = w1 - lr * g1
    G2 = np.mean((w2 * w1_new * x - y) * w1_new * x)  # dL/dw2 after w1's step
    l2, cos = L.internal_covariate_shift(net, loss_fn, X, Y, 1, lr)
    assert l2 == pytest.approx(abs(G - G2), rel=1e-4)
    assert cos == pytest.approx(np.sign(G * G2), abs=1e-6)   # scalars: cosine is their sign
    assert net[0].weight.data().asscalar() == pytest.approx(w1)   # parameters restored


def test_gradient_shift_is_zero_when_nothing_below_changes(rng):
    X = nd.array(rng.normal(size=(16, 4)))
    Y = nd.array(rng.normal(size=(16, 2)))
    net = nn.Sequential()
    net.add(nn.Dense(3, in_units=4), nn.Dense(2, in_units=3))
    net.initialize()
    loss_fn = gluon.loss.L2Loss()
    top = [net[1].weight]
    assert L.gradient_shift(net, loss_fn, X, Y, top, [], 0.1) == (0.0, 1.0)
    frozen = nn.Sequential()                      # the same layers, no gradient reaches the first
    frozen.add(net[0], nn.Lambda(lambda H: H.detach()), net[1])
    l2, cos = L.gradient_shift(frozen, loss_fn, X, Y, top, [net[0].weight, net[0].bias], 0.1)
    assert l2 == 0.0 and cos == 1.0


def test_internal_covariate_shift_is_positive_for_lenet_and_rejects_bad_layers(rng):
    d2lbn.set_seed(0)
    net = models.lenet_bn()
    net.initialize(mx.init.Xavier())
    X = nd.array(rng.uniform(size=(16, 1, 28, 28)))
    y = nd.array(rng.integers(0, 10, size=16))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    net(X)                                            # shapes of the deferred parameters
    w = [p.data().asnumpy().copy() for p in L.trainable_params(net)]
    l2, cos = L.internal_covariate_shift(net, loss_fn, X, y, 3, 0.1)
    assert l2 > 0 and -1 <= cos <= 1
    for p, v in zip(L.trainable_params(net), w):
        np.testing.assert_array_equal(p.data().asnumpy(), v)
    for bad in (0, 5, 1.0):
        with pytest.raises(ValueError, match="layer"):
            L.internal_covariate_shift(net, loss_fn, X, y, bad, 0.1)
    with pytest.raises(ValueError, match="lr"):
        L.internal_covariate_shift(net, loss_fn, X, y, 1, 0.0)


# ---- 4. along the gradient: quadratic loss ---------------------------------------------------------

def test_probe_on_a_quadratic_loss_matches_the_closed_form(rng):
    N, D = 64, 5
    x = rng.normal(size=(N, D)) * np.array([3.0, 1.0, 0.5, 0.2, 2.0])
    y = rng.normal(size=N)
    w = rng.normal(size=D)
    net = nn.Sequential()
    net.add(nn.Dense(1, use_bias=False, in_units=D, dtype="float64"))
    net.initialize()
    net[0].weight.set_data(nd.array(w.reshape(1, D), dtype="float64"))
    loss_fn = gluon.loss.L2Loss()
    X, Y = nd.array(x, dtype="float64"), nd.array(y.reshape(-1, 1), dtype="float64")
    H = x.T @ x / N
    g = x.T @ (x @ w - y) / N
    etas = np.array([0.01, 0.05, 0.1, 0.3])
    probe = L.probe_gradient_direction(net, loss_fn, X, Y, etas)
    loss0 = np.mean((x @ w - y) ** 2) / 2
    expected_losses = loss0 - etas * (g @ g) + 0.5 * etas ** 2 * (g @ H @ g)
    np.testing.assert_allclose(probe.loss0, loss0, rtol=1e-10)
    np.testing.assert_allclose(probe.losses, expected_losses, rtol=1e-10)
    np.testing.assert_allclose(probe.grad_changes, etas * np.linalg.norm(H @ g), rtol=1e-8)
    assert probe.beta == pytest.approx(np.linalg.norm(H @ g) / np.linalg.norm(g), rel=1e-8)
    values = np.append(expected_losses, loss0)
    assert probe.loss_range == pytest.approx(values.max() - values.min(), rel=1e-8)
    np.testing.assert_array_equal(net[0].weight.data().asnumpy(), w.reshape(1, D))   # restored


def test_loss_spread_measures_variation_not_agreement_with_the_first_order_prediction(rng):
    """For a linear loss L(w) = a.w every step lands exactly where the gradient predicts,
    L(w - eta g) = L(w) - eta |a|^2, and the gradient never changes; yet the loss spread
    is max(eta) |a|^2, as large as |a| makes it (ch08: the spread is the Lipschitzness of
    the loss along the gradient, not the quality of the prediction)."""
    N, D = 32, 4
    x = rng.normal(size=(N, D)) + np.array([3.0, -4.0, 1.0, 0.5])
    w = rng.normal(size=D)
    net = nn.Dense(1, use_bias=False, in_units=D, dtype="float64")
    net.initialize()
    net.weight.set_data(nd.array(w.reshape(1, D), dtype="float64"))
    X, Y = nd.array(x, dtype="float64"), nd.zeros((N, 1), dtype="float64")
    a = x.mean(axis=0)                                   # L(w) = mean(x @ w) = a . w
    etas = np.array([0.05, 0.1, 0.2, 0.4])
    probe = L.probe_gradient_direction(net, lambda out, y: out, X, Y, etas)
    np.testing.assert_allclose(probe.loss0, a @ w, rtol=1e-10)
    predicted = a @ w - etas * (a @ a)                  # first-order prediction
    np.testing.assert_allclose(probe.losses, predicted, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(probe.grad_changes, 0.0, atol=1e-12)
    assert probe.loss_range == pytest.approx(etas.max() * (a @ a), rel=1e-10)
    assert probe.loss_range > 1.0                       # large, with no prediction error


@pytest.mark.parametrize("steps, match", [([], "non-empty"), ([0.1, 0.0], "positive"),
                                          ([-0.1], "positive"), ([float("nan")], "positive")])
def test_probe_rejects_bad_step_sizes(steps, match):
    net = nn.Dense(1, in_units=2)
    net.initialize()
    X, Y = nd.ones((4, 2)), nd.ones((4, 1))
    with pytest.raises(ValueError, match=match):
        L.probe_gradient_direction(net, gluon.loss.L2Loss(), X, Y, steps)


# ---- 5. the training run -----------------------------------------------------------------------------

def _tiny_data(rng, n=256):
    X = nd.array(rng.uniform(size=(n, 1, 28, 28)))
    y = nd.array(rng.integers(0, 10, size=n))
    return X, y, X[:64], y[:64]


def test_why_run_records_every_measurement_and_is_deterministic(rng):
    data = _tiny_data(rng)
    kw = dict(num_steps=4, lr=0.05, batch_size=16, measure_every=2, step_sizes=(0.05, 0.1),
              probe_size=32, test_limit=64)
    a = L.why_run("bn", data, seed=3, **kw)
    b = L.why_run("bn", data, seed=3, **kw)
    assert a.steps == [0, 2, 4] and a.train_loss.shape == (4,)
    assert a.percentiles.shape == (3, 3, 120) and a.ics_l2.shape == (3, 4)
    assert a.loss_range.shape == a.beta.shape == (3,)
    assert np.all(a.percentiles[:, 0] <= a.percentiles[:, 2])
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    np.testing.assert_array_equal(a.beta, b.beta)
    noisy = L.why_run("noisy-bn", data, seed=3, measure=False, **kw)
    assert noisy.ics_l2.size == 0 and noisy.percentiles.shape == (3, 3, 120)
    assert L.percentile_drift(noisy) > L.percentile_drift(a)   # noise moves the distribution
    sample = L.why_run("noisy-bn-sample", data, seed=3, measure=False, **kw)
    assert L.percentile_drift(sample) > L.percentile_drift(a)


@pytest.mark.parametrize("kwargs, match", [(dict(kind="nope"), "kind"), (dict(num_steps=0), "num_steps"),
                                           (dict(lr=-0.1), "lr"), (dict(measure_every=0), "measure_every")])
def test_why_run_rejects_bad_input(rng, kwargs, match):
    args = dict(kind="plain", data=_tiny_data(rng, 32), num_steps=2, lr=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        L.why_run(**args)


@pytest.mark.parametrize("measure", [False, True])
def test_why_run_raises_when_the_loss_diverges(rng, measure):
    """lr=1e4 on plain LeNet: the loss overflows within a few steps. why_run must stop with a
    FloatingPointError naming the step and the learning rate (as d2lbn.training does), not return NaN."""
    with pytest.raises(FloatingPointError, match=r"step \d+ of 6 .*lr=10000"):
        L.why_run("plain", _tiny_data(rng, 64), num_steps=6, lr=1e4, batch_size=16,
                  measure_every=3, probe_size=16, test_limit=32, measure=measure)


def test_why_run_without_divergence_returns_finite_measurements(rng):
    run = L.why_run("bn", _tiny_data(rng, 64), num_steps=4, lr=0.05, batch_size=16,
                    measure_every=2, probe_size=16, test_limit=32)
    for values in (run.train_loss, run.percentiles, run.ics_l2, run.ics_cos, run.loss_range,
                   run.beta, run.grad_norm):
        assert values.size and np.isfinite(values).all()


def test_drift_and_jumps_of_known_percentiles():
    steps = [0, 10, 20, 30, 40]
    t = np.arange(5.0)[:, None, None]
    slow = L.WhyRun("plain", 0, 0.1, steps=steps, percentiles=np.broadcast_to(0.5 * t, (5, 3, 4)))
    # a linear drift of 0.5 per checkpoint: drift (max - min) 2.0, jumps 0.5
    assert L.percentile_drift(slow) == pytest.approx(2.0)
    assert L.percentile_jumps(slow) == pytest.approx(0.5)
    assert L.percentile_jumps(slow, start_step=20) == pytest.approx(0.5)
    flip = np.broadcast_to(np.array([0.0, 1, 0, 1, 0])[:, None, None], (5, 3, 4))
    jumpy = L.WhyRun("noisy-bn", 0, 0.1, steps=steps, percentiles=flip)
    # back and forth by 1: drift only 1.0, but jumps of 1.0 every time
    assert L.percentile_drift(jumpy) == pytest.approx(1.0)
    assert L.percentile_jumps(jumpy) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two checkpoints"):
        L.percentile_jumps(slow, start_step=40)
