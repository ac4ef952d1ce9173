"""Quick checks of d2lbn.experiments: loaders, training-mode evaluation, Figure 1's net and measures,
the sweep bookkeeping, and the batch-mean noise against its formula (small data, seconds each)."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

import d2lbn
from d2lbn import experiments as E
from d2lbn import data as DATA, moving_stats as MS, seeds as S
from d2lbn.training import evaluate_accuracy


def test_array_loader_visits_every_example_once_per_pass():
    X = nd.arange(10).reshape((10, 1))
    y = nd.arange(10)
    d2lbn.set_seed(0)
    loader = DATA.ArrayLoader(X, y, 4, shuffle=True)
    assert len(loader) == 3
    seen = np.concatenate([yb.asnumpy() for _, yb in loader])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for Xb, yb in loader:
        np.testing.assert_array_equal(Xb.asnumpy()[:, 0], yb.asnumpy())   # rows stay paired
    with pytest.raises(ValueError, match="batch_size"):
        DATA.ArrayLoader(X, y, 0)


def _bn_mlp(rng):
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(8, in_units=5), d2lbn.norm.BatchNorm(8, 2, impl="naive"), gluon.nn.Dense(3, in_units=8))
    net.initialize(mx.init.Xavier())
    return net


def test_frozen_moving_statistics_restores(rng):
    net = _bn_mlp(rng)
    bn = net[1]
    before = bn.moving_mean.data().asnumpy().copy()
    with MS.frozen_moving_statistics(net), autograd.train_mode():
        net(nd.array(rng.normal(5, 1, size=(16, 5))))
        assert not np.allclose(bn.moving_mean.data().asnumpy(), before)   # it did move inside
    np.testing.assert_array_equal(bn.moving_mean.data().asnumpy(), before)


def test_train_mode_accuracy_uses_batch_statistics(rng):
    """With moving statistics far from the data, inference and training mode disagree; for a net
    without batch norm they agree exactly."""
    X = nd.array(rng.normal(3, 2, size=(64, 5)))
    y = nd.array(rng.integers(0, 3, size=64))
    net = _bn_mlp(rng)
    loader = DATA.ArrayLoader(X, y, 16)
    train_scores = []
    with MS.frozen_moving_statistics(net), autograd.train_mode():
        for Xb, _ in loader:
            train_scores.append(net(Xb).argmax(axis=1).asnumpy())
    expected = float((np.concatenate(train_scores) == y.asnumpy()).mean())
    assert MS.train_mode_accuracy(net, loader, mx.cpu()) == pytest.approx(expected)
    plain = gluon.nn.Dense(3, in_units=5)
    plain.initialize()
    assert MS.train_mode_accuracy(plain, loader, mx.cpu()) == evaluate_accuracy(plain, loader, mx.cpu())


def test_sigmoid_mlp_shapes_and_sigmoid_inputs(rng):
    X = nd.array(rng.uniform(size=(50, 784)))
    for batch_norm in (False, True):
        d2lbn.set_seed(0)
        net = E.SigmoidMLP(batch_norm)
        net.initialize()
        assert net(X).shape == (50, 10)
        Z = net.sigmoid_inputs(X).asnumpy()
        assert Z.shape == (50, 100)
        if batch_norm:       # gamma = 1, beta = 0 at the start: every unit's input is standardised
            np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-4)
            np.testing.assert_allclose(Z.std(axis=0), 1, atol=1e-2)
            np.testing.assert_array_equal(net.norms[-1].moving_mean.data().asnumpy(), 0)   # untouched
        else:                # by hand: three dense layers, sigmoids between
            H = X
            for layer in net.dense[:-1]:
                H = nd.sigmoid(layer(H))
            np.testing.assert_allclose(Z, net.dense[-1](H).asnumpy(), rtol=1e-5, atol=1e-6)


def _result(accs, percentiles):
    r = E.Figure1Result(True, steps=[0, 10, 20, 30], test_acc=accs)
    r.percentiles = np.asarray(percentiles, dtype=float)
    return r


def test_steps_to_accuracy_and_drift():
    p = np.zeros((4, 3, 2))
    p[:, 1, 0] = [0.0, 1.0, 3.0, 2.0]                 # one curve moves by 3 over training
    r = _result([0.1, 0.5, 0.8, 0.7], p)
    assert E.steps_to_accuracy(r, 0.8) == 20
    assert E.steps_to_accuracy(r, 0.5) == 10
    assert E.steps_to_accuracy(r, 0.9) is None
    assert E.percentile_drift(r) == pytest.approx(3.0 / 6)    # mean over 3 percentiles x 2 units
    assert E.percentile_drift(r, start_step=20) == pytest.approx(1.0 / 6)


def test_batch_mean_noise_follows_one_over_sqrt_batch(rng):
    X = nd.array(rng.normal(0, 2, size=(5000, 3)))
    d2lbn.set_seed(0)
    for b in (4, 64):
        measured, predicted = E.batch_mean_noise(X, b, num_batches=400)
        assert predicted == pytest.approx(2 / np.sqrt(b), rel=0.05)
        assert measured == pytest.approx(predicted, rel=0.15)


def test_lenet_with_norm_variants():
    X = nd.random.uniform(shape=(2, 1, 28, 28))
    for norm in (None, "batch", "layer"):
        net = E.lenet_with_norm(norm)
        net.initialize()
        assert net(X).shape == (2, 10)
    assert any(isinstance(b, d2lbn.norm.LayerNorm) for b in E.lenet_with_norm("layer")._children.values())
    with pytest.raises(ValueError, match="norm"):
        E.lenet_with_norm("group")


def test_short_run_reports_divergence_and_failures():
    d2lbn.set_seed(0)
    X = nd.random.uniform(shape=(128, 1, 28, 28))
    y = nd.array(np.arange(128) % 10)
    data = (X, y, X[:64], y[:64])
    blown = E.short_run(None, 1e4, data, sigma=10.0)           # huge weights, huge steps
    ok = E.short_run(None, 0.05, data)
    assert blown.diverged and blown.final_acc == 0.1 and blown.seed == 0
    assert not ok.diverged and len(ok.test_acc) == 1
    assert E.failures([blown, ok], below=0.0) == [blown]


def test_settle_moving_statistics_reaches_the_current_statistics(rng):
    """After 50 training-mode passes (momentum 0.9) the moving mean is within 1% of the data's
    batch statistics, starting from 0; the weights do not change."""
    net = gluon.nn.Sequential()
    net.add(d2lbn.norm.BatchNorm(3, 2, impl="naive"))
    net.initialize()
    X = nd.array(rng.normal([5.0, -2.0, 10.0], 1.0, size=(640, 3)))
    MS.settle_moving_statistics(net, DATA.ArrayLoader(X, nd.zeros(640), 64), 50, mx.cpu())
    np.testing.assert_allclose(net[0].moving_mean.data().asnumpy(), X.asnumpy().mean(axis=0), rtol=0.01, atol=0.05)
    np.testing.assert_array_equal(net[0].gamma.data().asnumpy(), 1)


# ---- precise statistics, relative updates, seeds (issue 11) ----------------------------------------

def _dense_bn(rng, units=4, in_units=3):
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(units, in_units=in_units), d2lbn.norm.BatchNorm(units, 2, impl="naive"),
            gluon.nn.Dense(3, in_units=units))
    net.initialize(mx.init.Normal(1.0))
    return net


def test_precise_statistics_is_the_equal_weight_average_of_batch_statistics(rng):
    """NumPy oracle in float64: per-batch mean and biased variance of the dense layer's output,
    combined as E[mu], E[var + mu^2] - E[mu]^2; with 7 batches from a loader of 5 the pass wraps."""
    net = _dense_bn(rng)
    X = nd.array(rng.normal(2.0, 3.0, size=(40, 3)))
    loader = DATA.ArrayLoader(X, nd.zeros(40), 8)
    W = net[0].weight.data().asnumpy().astype(np.float64)
    b = net[0].bias.data().asnumpy().astype(np.float64)
    Z = X.asnumpy().astype(np.float64) @ W.T + b
    batches = [Z[i * 8:(i + 1) * 8] for i in list(range(5)) + [0, 1]]
    mu = np.stack([z.mean(axis=0) for z in batches])
    var = np.stack([z.var(axis=0) for z in batches])
    want_mean = mu.mean(axis=0)
    want_var = (var + mu ** 2).mean(axis=0) - want_mean ** 2
    before = MS.moving_statistics(net)
    (mean, v), = MS.precise_statistics(net, loader, 7, mx.cpu())
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v, want_var, rtol=1e-4, atol=1e-5)
    # five equal batches, once each: the pooled mean and variance of all 40 rows
    (mean5, v5), = MS.precise_statistics(net, loader, 5, mx.cpu())
    np.testing.assert_allclose(mean5, Z.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v5, Z.var(axis=0), rtol=1e-4, atol=1e-5)
    # the net is unchanged: moving statistics and momentum
    for (m0, v0), (m1, v1) in zip(before, MS.moving_statistics(net)):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(v0, v1)
    assert net[1].momentum == 0.9
    with pytest.raises(ValueError, match="num_batches"):
        MS.precise_statistics(net, loader, 0, mx.cpu())
    plain = gluon.nn.Dense(3, in_units=3)
    plain.initialize()
    with pytest.raises(ValueError, match="BatchNorm"):
        MS.precise_statistics(plain, loader, 1, mx.cpu())


def test_precise_statistics_differ_from_a_moving_average(rng):
    """A moving average after training-mode passes weighs the last batches most; with a drifting
    input the two estimates differ, and set_moving_statistics stores the precise one."""
    net = _dense_bn(rng)
    X = nd.array(np.concatenate([rng.normal(0, 1, size=(32, 3)), rng.normal(5, 1, size=(32, 3))]))
    loader = DATA.ArrayLoader(X, nd.zeros(64), 8)
    precise = MS.precise_statistics(net, loader, 8, mx.cpu())
    MS.settle_moving_statistics(net, loader, 8, mx.cpu())
    moving = MS.moving_statistics(net)
    assert np.abs(moving[0][0] - precise[0][0]).max() > 0.1
    MS.set_moving_statistics(net, precise)
    np.testing.assert_allclose(MS.moving_statistics(net)[0][0], precise[0][0], rtol=1e-6)
    with pytest.raises(ValueError, match="one .mean, var. pair"):
        MS.set_moving_statistics(net, [])
    with pytest.raises(ValueError, match="shape"):
        MS.set_moving_statistics(net, [(np.zeros(2), np.ones(2))])


def test_relative_update_of_a_batch_normed_layer_falls_as_one_over_a_squared(rng):
    net = _dense_bn(rng)
    X = nd.array(rng.normal(size=(32, 3)))
    y = nd.array(rng.integers(0, 3, size=32))
    before = [p.data().asnumpy().copy() for p in net.collect_params().values()]
    r1 = E.relative_updates(net, X, y, 0.1)
    for p, value in zip(net.collect_params().values(), before):
        np.testing.assert_array_equal(p.data().asnumpy(), value)        # nothing changed
    net[0].weight.set_data(net[0].weight.data() * 10)
    r10 = E.relative_updates(net, X, y, 0.1)
    assert len(r1) == 2
    assert r10[0] == pytest.approx(r1[0] / 100, rel=1e-3)   # the layer before batch norm
    assert r10[1] == pytest.approx(r1[1], rel=1e-3)         # the layer after it: unchanged
    with pytest.raises(ValueError, match="lr"):
        E.relative_updates(net, X, y, 0)


def test_seed_summary_and_table():
    s = S.seed_summary([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["min"] == 0.5 and s["max"] == 0.7
    assert s["std"] == pytest.approx(np.sqrt(2 / 300))
    assert S.seed_summary([0.3])["std"] == 0
    table = S.seed_table({"a": [0.5, 0.7, 0.6], "b": [1, 2, 3]}, [0, 1, 2], fmt=".2f")
    lines = table.splitlines()
    assert lines[0].split() == ["seed", "a", "b"]
    assert lines[2].split() == ["1", "0.70", "2.00"]
    assert lines[4].split() == ["mean", "0.60", "2.00"]
    assert lines[-1].split() == ["max", "0.70", "3.00"]
    with pytest.raises(ValueError, match="finite"):
        S.seed_summary([0.1, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        S.seed_summary([])
    with pytest.raises(ValueError, match="2 values for 3 seeds"):
        S.seed_table({"a": [1, 2]}, [0, 1, 2])


def test_study_seeds_and_settings():
    assert len(S.study_seeds(quick=False)) >= 3 and len(set(S.study_seeds(quick=False))) >= 3
    assert len(S.study_seeds(quick=True)) >= 1
    quick, full = S.lenet_study_settings(True), S.lenet_study_settings(False)
    assert quick == d2lbn.training.lenet_settings(True)
    base = d2lbn.training.lenet_settings(False)
    assert (full.lr, full.batch_size, full.momentum, full.lr_schedule, full.train_limit) == \
        (base.lr, base.batch_size, base.momentum, base.lr_schedule, base.train_limit)
    assert quick.num_epochs <= full.num_epochs and 0.1 < quick.min_test_acc <= full.min_test_acc


def test_batch_size_run_reports_steps_and_three_accuracies():
    d2lbn.set_seed(0)
    X = nd.random.uniform(shape=(48, 1, 28, 28))
    y = nd.array(np.arange(48) % 10)
    data = (X, y, X[:16], y[:16])
    bn = E.batch_size_run("batch", 8, data, num_epochs=2, precise_batches=3)
    assert bn.steps == 2 * 6 and bn.lr == pytest.approx(0.1 * 8 / 64)
    assert len(bn.var_ratio) == 4 and all(r > 0 for r in bn.var_ratio)
    assert bn.gap == bn.precise_acc - bn.train_mode_acc
    ln = E.batch_size_run("layer", 8, data, num_epochs=1)
    assert ln.var_ratio == [] and ln.steps == 6
    assert ln.moving_acc == ln.precise_acc == ln.train_mode_acc


def test_plot_seeds_draws_the_mean_and_a_min_max_band():
    from matplotlib import pyplot as plt
    from d2lbn.plot import plot_seeds
    fig, ax = plt.subplots()
    line = plot_seeds(ax, [1, 2, 3], [[0.1, 0.5, 0.9], [0.3, 0.7, 0.5]], "runs")
    np.testing.assert_allclose(line.get_ydata(), [0.2, 0.6, 0.7])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.1) and band.max() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="one sequence of 3 values"):
        plot_seeds(ax, [1, 2, 3], [[0.1, 0.2]], "bad")
    plt.close(fig)


# ---- what the moving averages miss: one factor at a time (issue 24) --------------------------------

def _two_bn_mlp():
    """Dense(4) -> BN -> ReLU -> Dense(3) -> BN: the second BN's input depends, in training
    mode, on the first BN's batch statistics."""
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(4, in_units=3), d2lbn.norm.BatchNorm(4, 2, impl="naive"),
            gluon.nn.Activation("relu"), gluon.nn.Dense(3, in_units=4),
            d2lbn.norm.BatchNorm(3, 2, impl="naive"))
    net.initialize(mx.init.Normal(1.0))
    return net


def _numpy_forward_to_second_bn(net, X, first_stats=None):
    """float64 oracle: the input of the second BN for the rows of X, the first BN normalising
    with the batch's own statistics (first_stats None) or with the given (mean, var)."""
    from conftest import numpy_batch_norm
    W1, b1 = net[0].weight.data().asnumpy().astype(np.float64), net[0].bias.data().asnumpy()
    W2, b2 = net[3].weight.data().asnumpy().astype(np.float64), net[3].bias.data().asnumpy()
    g1 = net[1].gamma.data().asnumpy().astype(np.float64)
    be1 = net[1].beta.data().asnumpy().astype(np.float64)
    Z1 = X @ W1.T + b1
    if first_stats is None:
        Y1 = numpy_batch_norm(Z1, g1, be1)[0]
    else:
        mean, var = first_stats
        Y1 = g1 * (Z1 - mean) / np.sqrt(var + 1e-5) + be1
    return Z1, np.maximum(Y1, 0) @ W2.T + b2


def test_layer_batch_moments_against_a_numpy_forward_pass(rng):
    """Per-batch mean and biased variance of each BN layer's input, in float64: training mode
    couples the rows of a batch through the first BN, inference mode does not."""
    net = _two_bn_mlp()
    X = rng.normal(1.0, 2.0, size=(24, 3))
    loader = DATA.ArrayLoader(nd.array(X), nd.zeros(24), 6)
    stored = [(np.array([0.5, -0.2, 0.1, 0.3]), np.array([2.0, 1.0, 3.0, 0.5])),
              (np.zeros(3), np.ones(3))]
    MS.set_moving_statistics(net, stored)
    for training in (True, False):
        got = MS.layer_batch_moments(net, loader, 4, mx.cpu(), training=training)
        firsts, seconds = [], []
        for i in range(4):
            xb = X[i * 6:(i + 1) * 6]
            z1, z2 = _numpy_forward_to_second_bn(net, xb, None if training else stored[0])
            firsts.append(z1)
            seconds.append(z2)
        for k, zs in zip(got, (firsts, seconds)):
            mu = np.stack([z.mean(axis=0) for z in zs])
            var = np.stack([z.var(axis=0) for z in zs])
            np.testing.assert_allclose(k.mean, mu.mean(axis=0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(k.batch_var, var.mean(axis=0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(k.pooled_var, np.concatenate(zs).var(axis=0),
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(k.within_share, k.batch_var / k.pooled_var)
            assert k.values == 6
    for (m0, v0), (m1, v1) in zip(stored, MS.moving_statistics(net)):     # untouched
        np.testing.assert_allclose(m1, m0, rtol=1e-6)
        np.testing.assert_allclose(v1, v0, rtol=1e-6)
    assert not net[1]._forward_pre_hooks                                   # hooks removed
    with pytest.raises(ValueError, match="num_batches"):
        MS.layer_batch_moments(net, loader, 0, mx.cpu())


def test_within_batch_share_of_independent_values_is_n_minus_one_over_n(rng):
    """For independent examples the batch variance averages (m - 1) / m of the pooled one."""
    net = gluon.nn.Sequential()
    net.add(d2lbn.norm.BatchNorm(50, 2, impl="naive"))
    net.initialize()
    X = nd.array(rng.normal(3.0, 2.0, size=(4000, 50)))
    (k,) = MS.layer_batch_moments(net, DATA.ArrayLoader(X, nd.zeros(4000), 4), 1000, mx.cpu())
    assert k.values == 4
    assert k.within_share.mean() == pytest.approx(0.75, abs=0.01)


def test_remove_initial_values_recovers_the_weighted_batch_average(rng):
    """t training-mode passes from (0, 1): the result equals the batches' own statistics with
    weights (1 - mom) mom^(t - k), normalised to sum to one (NumPy oracle)."""
    layer = d2lbn.norm.BatchNorm(3, 2, impl="naive")
    layer.initialize()
    batches = [rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 2), size=(5, 3)) for _ in range(7)]
    with autograd.train_mode():
        for xb in batches:
            layer(nd.array(xb))
    (mean, var), = MS.remove_initial_values(MS.moving_statistics(layer), 7, 0.9)
    w = 0.1 * 0.9 ** np.arange(6, -1, -1)
    w /= w.sum()
    np.testing.assert_allclose(mean, sum(wk * b.mean(axis=0) for wk, b in zip(w, batches)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, sum(wk * b.var(axis=0) for wk, b in zip(w, batches)),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="momentum"):
        MS.remove_initial_values([(mean, var)], 3, 1.0)
    with pytest.raises(ValueError, match="num_updates"):
        MS.remove_initial_values([(mean, var)], 0)


def test_statistics_arms_each_against_numpy(rng):
    """One BN layer on the loader's batches, unshuffled: every arm by hand in float64."""
    net = gluon.nn.Sequential()
    net.add(d2lbn.norm.BatchNorm(3, 2, impl="naive"))
    net.initialize()
    X = rng.normal([1.0, -2.0, 0.5], [1.0, 2.0, 0.5], size=(40, 3))
    loader = DATA.ArrayLoader(nd.array(X), nd.zeros(40), 8)          # 5 batches, in order
    moving = [(np.array([0.9, -1.5, 0.4]), np.array([0.6, 3.0, 0.2]))]
    MS.set_moving_statistics(net, moving)
    moments = MS.layer_batch_moments(net, loader, 5, mx.cpu())
    arms = E.statistics_arms(net, moving, moments, loader, 12, mx.cpu(), max_batches=7)
    assert tuple(arms) == E.ARMS
    batches = [X[i * 8:(i + 1) * 8] for i in range(5)]
    mu = np.stack([b.mean(axis=0) for b in batches])
    var = np.stack([b.var(axis=0) for b in batches])
    np.testing.assert_allclose(arms["moving"][0][1], moving[0][1])
    np.testing.assert_allclose(arms["moving, unbiased"][0][1], moving[0][1] * 8 / 7)
    left = 0.9 ** 12
    np.testing.assert_allclose(arms["initial values removed"][0][1],
                               (moving[0][1] - left) / (1 - left))
    seen = [0, 1, 2, 3, 4, 0, 1]                                  # 7 fresh batches, wrapping
    w = 0.1 * 0.9 ** np.arange(6, -1, -1)
    w /= w.sum()
    np.testing.assert_allclose(arms["average at final weights"][0][0],
                               sum(wk * mu[i] for wk, i in zip(w, seen)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(arms["average at final weights"][0][1],
                               sum(wk * var[i] for wk, i in zip(w, seen)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(arms["equal weights"][0][1], var.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(arms["precise"][0][1], X.var(axis=0), rtol=1e-5)
    np.testing.assert_allclose(arms["precise"][0][0], X.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(MS.moving_statistics(net)[0][1], moving[0][1], rtol=1e-6)
    with pytest.raises(ValueError, match="one entry per batch-norm layer"):
        E.statistics_arms(net, moving * 2, moments, loader, 3, mx.cpu())


def test_arm_accuracies_evaluates_each_arm_and_restores(rng):
    net = _bn_mlp(rng)
    X = nd.array(rng.normal(2.0, 1.0, size=(64, 5)))
    y = nd.array(rng.integers(0, 3, size=64))
    loader = DATA.ArrayLoader(X, y, 16)
    own = MS.moving_statistics(net)
    far = [(m + 50.0, v) for m, v in own]
    got = E.arm_accuracies(net, {"own": own, "far": far}, loader, mx.cpu())
    assert got["own"] == evaluate_accuracy(net, loader, mx.cpu())
    MS.set_moving_statistics(net, far)
    far_acc = evaluate_accuracy(net, loader, mx.cpu())
    MS.set_moving_statistics(net, own)
    assert got["far"] == far_acc
    np.testing.assert_array_equal(MS.moving_statistics(net)[0][0], own[0][0])


def test_lenet_with_batch_norm_on_the_output_standardises_the_scores():
    d2lbn.set_seed(0)
    net = E.lenet_with_norm("batch+output")
    net.initialize(mx.init.Xavier())
    X = nd.random.uniform(shape=(32, 1, 28, 28))
    with MS.frozen_moving_statistics(net), autograd.train_mode():
        scores = net(X).asnumpy().astype(np.float64)
    assert len(MS.scratch_norm_layers(net)) == 5 and scores.shape == (32, 10)
    np.testing.assert_allclose(scores.mean(axis=0), 0, atol=1e-4)   # gamma 1, beta 0
    np.testing.assert_allclose(scores.var(axis=0), 1, atol=1e-3)


def test_runs_keep_their_nets_and_moving_statistics():
    d2lbn.set_seed(0)
    X = nd.random.uniform(shape=(48, 1, 28, 28))
    y = nd.array(np.arange(48) % 10)
    bn = E.batch_size_run("batch", 8, (X, y, X[:16], y[:16]), num_epochs=1)
    stored = MS.moving_statistics(bn.net)                  # the precise statistics
    assert len(bn.moving_stats) == 4
    for ratio, (m, v), (_, pv) in zip(bn.var_ratio, bn.moving_stats, stored):
        assert ratio == pytest.approx(float((v / pv).mean()), rel=1e-5)
    flat = nd.random.uniform(shape=(40, 784))
    fig = E.figure1_run(True, 3, batch_size=8, eval_every=3, test_limit=10, probe_size=10,
                        data=(flat, nd.array(np.arange(40) % 10), flat, nd.zeros(40)))
    assert isinstance(fig.net, E.SigmoidMLP)
    assert not np.allclose(MS.moving_statistics(fig.net)[0][0], 0)   # trained, not fresh
