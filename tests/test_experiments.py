"""Quick checks of d2lbn.experiments (chapter 6's studies): Figure 1's net and measures, the sweep
bookkeeping, the batch-size runs, the statistics arms, and the batch-mean noise against its formula
(small data, seconds each). The tools they use have their own tests: test_moving_stats.py,
test_seeds.py, test_data.py."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

import d2lbn
from d2lbn import experiments as E
from d2lbn import data as DATA, moving_stats as MS, seeds as S
from d2lbn.training import evaluate_accuracy
from test_moving_stats import _bn_mlp, _dense_bn


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


# ---- precise statistics, relative updates, seeds (issue 11) ----------------------------------------


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
