"""d2lbn.practice: the LeNet variants, AdaBN recalibration against statistics computed in float64
NumPy, the variance-shift measure, the effective learning rate (known answers and the norm growth
that scale invariance implies), the shift transforms (exact pixel values) and bad input."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

import d2lbn
from d2lbn import practice as P
from d2lbn import moving_stats as MS, seeds as S
from d2lbn.norm import BatchNorm as ScratchBatchNorm


def kinds(net):
    return [type(child).__name__ for child in net._children.values()]


def test_lenet_variant_layer_order():
    assert kinds(P.lenet_variant("before"))[:3] == ["Conv2D", "BatchNorm", "Activation"]
    assert kinds(P.lenet_variant("after"))[:3] == ["Conv2D", "Activation", "BatchNorm"]
    before = kinds(P.lenet_variant(dropout=0.5, dropout_site="before_bn"))
    after = kinds(P.lenet_variant(dropout=0.5, dropout_site="after_bn"))
    i = before.index("Dropout")
    assert before[i + 1:i + 3] == ["Dense", "BatchNorm"]           # a batch-norm layer follows it
    j = after.index("Dropout")
    assert "BatchNorm" not in after[j:] and after[j + 1] == "Dense"  # none follows it
    assert "Dropout" not in kinds(P.lenet_variant())
    net = P.lenet_variant("after", 0.3, "before_bn")
    net.initialize()
    assert net(nd.ones((2, 1, 28, 28))).shape == (2, 10)
    assert len(MS.batch_norm_layers(net)) == 4


def test_lenet_variant_bad_input():
    with pytest.raises(ValueError, match="placement"):
        P.lenet_variant("middle")
    with pytest.raises(ValueError, match="dropout"):
        P.lenet_variant(dropout=1.0, dropout_site="after_bn")
    with pytest.raises(ValueError, match="dropout"):
        P.lenet_variant(dropout=-0.1, dropout_site="after_bn")
    with pytest.raises(TypeError, match="dropout"):
        P.lenet_variant(dropout="0.5", dropout_site="after_bn")
    with pytest.raises(ValueError, match="dropout_site"):
        P.lenet_variant(dropout=0.5, dropout_site="everywhere")
    with pytest.raises(ValueError, match="disagree"):
        P.lenet_variant(dropout=0.5)


def test_use_global_stats_normalises_with_moving_statistics_in_training():
    net = P.lenet_variant(use_global_stats=True)
    net.initialize()
    X = nd.random.uniform(shape=(8, 1, 28, 28))
    with autograd.record():
        train_out = net(X)
    np.testing.assert_allclose(train_out.asnumpy(), net(X).asnumpy(), rtol=1e-5, atol=1e-6)


# ---- AdaBN ---------------------------------------------------------------------------------------------

def _mlp(rng, scratch=False):
    """Dense(3) -> BN -> ReLU -> Dense(2) -> BN, weights known."""
    net = nn.HybridSequential() if not scratch else nn.Sequential()
    bn = (lambda d: ScratchBatchNorm(d, 2)) if scratch else (lambda d: nn.BatchNorm(in_channels=d))
    net.add(nn.Dense(3, in_units=2), bn(3), nn.Activation("relu"), nn.Dense(2, in_units=3), bn(2))
    net.initialize(mx.init.Xavier())
    W1, b1 = rng.normal(size=(3, 2)), rng.normal(size=3)
    W2, b2 = rng.normal(size=(2, 3)), rng.normal(size=2)
    for p, v in zip([net[0].weight, net[0].bias, net[3].weight, net[3].bias], [W1, b1, W2, b2]):
        p.set_data(nd.array(v))
    g = rng.uniform(0.5, 2, size=3)
    net[1].gamma.set_data(nd.array(g))
    return net, (W1, b1, W2, b2, g)


@pytest.mark.parametrize("scratch", [False, True])
def test_recalibrate_matches_float64_statistics_layer_by_layer(rng, scratch):
    net, (W1, b1, W2, b2, g) = _mlp(rng, scratch)
    X = rng.normal(loc=3.0, scale=2.0, size=(1000, 2))
    assert P.recalibrate_bn(net, nd.array(X), batch_size=300) == 2
    # the oracle: the same forward pass in float64, with the recalibrated first layer
    Z1 = X @ W1.T + b1
    m1, v1 = Z1.mean(axis=0), Z1.var(axis=0)
    H = np.maximum(g * (Z1 - m1) / np.sqrt(v1 + 1e-5), 0)
    Z2 = H @ W2.T + b2
    m2, v2 = Z2.mean(axis=0), Z2.var(axis=0)
    for layer, (m, v) in zip(MS.batch_norm_layers(net), [(m1, v1), (m2, v2)]):
        mean, var = MS.statistic_params(layer)
        np.testing.assert_allclose(mean.data().asnumpy(), m, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(var.data().asnumpy(), v, rtol=1e-4, atol=1e-4)
    # in inference mode the last layer's output now has mean 0 and variance 1 on X
    out = net(nd.array(X)).asnumpy()
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(out.var(axis=0), 1, atol=1e-3)


def test_recalibrate_convolutional_statistics_and_hybridized_net(rng):
    net = nn.HybridSequential()
    net.add(nn.BatchNorm(in_channels=3), nn.Flatten(), nn.Dense(2))
    net.initialize()
    net.hybridize()
    X = rng.normal(loc=[[[[1.0]], [[-2.0]], [[5.0]]]], scale=[[[[1.0]], [[3.0]], [[0.5]]]],
                   size=(20, 3, 4, 4))
    net(nd.array(X))
    P.recalibrate_bn(net, nd.array(X), batch_size=7)
    np.testing.assert_allclose(net[0].running_mean.data().asnumpy(), X.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(net[0].running_var.data().asnumpy(), X.var(axis=(0, 2, 3)), rtol=1e-4)
    assert net._active                           # still hybridized afterwards


def test_recalibrate_finds_the_layers_inside_resnet_blocks_and_keeps_hybridize_flags(rng):
    """The package's own ResNet (batch norm nested in basic blocks), hybridized with static_alloc:
    every one of its 9 layers (counted in the parameter table) is recalibrated to the float64
    statistics of its input, read by an independent forward pass with hooks (inference mode, the
    recalibrated statistics), and the net stays hybridized with its flags."""
    from d2lbn.resnet import small_resnet
    net = small_resnet(widths=(4, 8, 8))
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True)
    X = nd.array(rng.uniform(size=(24, 1, 28, 28)))
    net(X)
    assert P.recalibrate_bn(net, X, batch_size=10) == 9
    assert sum(n.endswith("running_mean") for n in net.collect_params()) == 9
    assert net._active and dict(net._flags).get("static_alloc") is True
    seen = {}
    net.hybridize(active=False)
    hooks = [layer.register_forward_pre_hook(
        lambda block, inputs: seen.setdefault(block.name, inputs[0].asnumpy().astype(np.float64)))
        for layer in MS.batch_norm_layers(net)]
    net(X)
    for h in hooks:
        h.detach()
    assert len(seen) == 9
    for layer in MS.batch_norm_layers(net):
        z = seen[layer.name]
        np.testing.assert_allclose(layer.running_mean.data().asnumpy(), z.mean(axis=(0, 2, 3)),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.running_var.data().asnumpy(), z.var(axis=(0, 2, 3)),
                                   rtol=1e-3, atol=1e-5)


def test_recalibrate_refuses_a_net_without_batch_norm():
    net = nn.HybridSequential()
    net.add(nn.Dense(2, in_units=3))
    net.initialize()
    with pytest.raises(ValueError, match="batch-norm"):
        P.recalibrate_bn(net, nd.ones((4, 3)))


def _moving_copies(net):
    return [MS.statistic_params(layer)[i].data().asnumpy().copy() for layer in MS.batch_norm_layers(net) for i in (0, 1)]


@pytest.mark.parametrize("scratch", [False, True])
def test_recalibrate_refuses_nan_naming_the_batch_and_changes_nothing(rng, scratch):
    """One NaN pixel in the unlabelled images: AdaBN would store NaN statistics (after which the
    net gives every image the same scores). It must refuse, name the batch that holds the NaN and
    leave every moving statistic as it was."""
    net, _ = _mlp(rng, scratch)
    X = rng.normal(size=(20, 2))
    X[13, 1] = np.nan                                # batch 2 of batches of 5 (examples 10-14)
    before = _moving_copies(net)
    with pytest.raises(ValueError, match=r"batch 2 \(examples 10-14\).* NaN or infinit"):
        P.recalibrate_bn(net, nd.array(X), batch_size=5)
    for a, b in zip(before, _moving_copies(net)):
        np.testing.assert_array_equal(a, b)
    X[13, 1] = np.inf
    with pytest.raises(ValueError, match=r"batch 1 \(examples 7-13\)"):
        P.recalibrate_bn(net, nd.array(X), batch_size=7)
    with pytest.raises(ValueError, match=r"batch 2 \(examples 10-14\)"):
        P.variance_shift(net, nd.array(X), MS.batch_norm_layers(net)[0], batch_size=5)
    for a, b in zip(before, _moving_copies(net)):
        np.testing.assert_array_equal(a, b)


def test_recalibrate_refuses_nan_that_appears_inside_the_net(rng):
    """Finite images whose activations overflow to infinity inside the net: the layer whose input is
    not finite is named, and no layer keeps statistics from the aborted pass."""
    net, _ = _mlp(rng)
    net[3].weight.set_data(nd.full((2, 3), 3e38))        # Dense(2) overflows: BN 2 sees inf
    before = _moving_copies(net)
    with pytest.raises(ValueError, match=r"input of batch-norm layer 1 .*batch 0"):
        P.recalibrate_bn(net, nd.array(rng.normal(size=(8, 2))), batch_size=4)
    for a, b in zip(before, _moving_copies(net)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [0, -1])
def test_recalibrate_names_a_bad_batch_size(rng, bad):
    net, _ = _mlp(rng)
    with pytest.raises(ValueError, match=rf"batch_size must be a positive int; got {bad}"):
        P.recalibrate_bn(net, nd.array(rng.normal(size=(8, 2))), batch_size=bad)


def test_variance_shift_is_stored_over_measured_variance(rng):
    net = nn.HybridSequential()
    net.add(nn.Dropout(0.5), nn.BatchNorm(in_channels=2))
    net.initialize()
    X = rng.normal(scale=[1.0, 2.0], size=(4000, 2))
    net[1].running_var.set_data(nd.array([3.0, 3.0]))
    shift = P.variance_shift(net, nd.array(X), net[1])      # inference: dropout is off
    np.testing.assert_allclose(shift, 3.0 / X.var(axis=0), rtol=1e-4)


# ---- effective learning rate and weight decay ----------------------------------------------------------

def test_effective_lr_known_answers():
    assert P.effective_lr(0.5, np.array([[3.0, 4.0]])) == pytest.approx(0.02)
    assert P.effective_lr(0.5, nd.array([[3.0, 4.0]])) == pytest.approx(0.02)
    p = gluon.Parameter("w", shape=(2, 2), init=mx.init.Constant(2.0))
    p.initialize()
    assert P.effective_lr(1.0, p) == pytest.approx(1 / 16)
    assert P.effective_lr(1.0, 10 * np.ones((2, 2))) == pytest.approx(P.effective_lr(1.0, p) / 25)
    with pytest.raises(ValueError, match="lr"):
        P.effective_lr(0.0, np.ones(2))
    with pytest.raises(ValueError, match="weight"):
        P.effective_lr(0.1, np.zeros(2))


def _tiny_data(rng, n=256):
    X = nd.array(rng.uniform(size=(n, 1, 28, 28)))
    y = nd.array(rng.integers(0, 10, size=n))
    return X, y, X[:64], y[:64]


def test_weight_norm_never_shrinks_under_plain_sgd_without_decay(rng):
    """Scale invariance: the gradient of a weight followed by batch norm is orthogonal to it, so a
    plain SGD step can only lengthen it: ||W + dW||^2 = ||W||^2 + ||dW||^2."""
    net = P.lenet_variant()
    net.initialize(mx.init.Xavier())
    net(nd.ones((2, 1, 28, 28)))
    trace = {"conv2": net[4].weight, "dense1": net[8].weight}
    r = P.fit(net, _tiny_data(rng), 2, 0.5, momentum=0.0, batch_size=32, cosine=False, trace=trace,
              trace_every=1)
    for name in trace:
        norms = np.array(r.norms[name])
        assert len(norms) == 1 + 2 * 8
        assert (np.diff(norms) >= -1e-4 * norms[:-1]).all(), (name, norms)
        assert norms[-1] > norms[0] * 1.01


def test_spare_norm_params_and_weight_decay(rng):
    net = P.lenet_variant()
    net.initialize()
    net(nd.ones((2, 1, 28, 28)))
    P.spare_norm_params(net, decay=False)
    assert all(l.gamma.wd_mult == 0 and l.beta.wd_mult == 0 for l in MS.batch_norm_layers(net))
    assert net[0].weight.wd_mult == 1
    P.spare_norm_params(net, decay=True)
    assert all(l.gamma.wd_mult == 1 for l in MS.batch_norm_layers(net))
    # with a huge decay on gamma alone (lr tiny for the data term), gamma shrinks; spared, it does not
    for decay in (False, True):
        r = P.fit(net, _tiny_data(rng, 64), 1, 1e-3, momentum=0.0, wd=100.0, batch_size=64,
                  decay_norm_params=decay, cosine=False)
        gamma = MS.batch_norm_layers(net)[0].gamma.data().asnumpy()
        assert (gamma < 0.95).all() if decay else np.allclose(gamma, 1.0, atol=0.01), gamma
    with pytest.raises(ValueError, match="wd"):
        P.fit(net, _tiny_data(rng, 64), 1, 0.1, wd=-1.0)
    with pytest.raises(ValueError, match="num_epochs"):
        P.fit(net, _tiny_data(rng, 64), 0, 0.1)


def test_fit_learns_and_is_reproducible(rng):
    data = _tiny_data(rng, 128)
    X, y = data[0], data[1]
    y = nd.array((X.asnumpy().reshape(128, -1)[:, :392].mean(axis=1) > 0.5).astype(np.float32))
    data = (X, y, X, y)
    results = []
    for _ in range(2):
        net = P.lenet_variant()
        results.append(P.fit(net, data, 3, 0.05, seed=3, batch_size=32))
    assert results[0].test_acc == results[1].test_acc
    assert results[0].loss[-1] < results[0].loss[0]
    assert len(results[0].batch_loss) == 3 * 4
    assert results[0].loss[0] == pytest.approx(np.mean(results[0].batch_loss[:4]), rel=1e-5)


@pytest.mark.parametrize("momentum", [1.5, -0.5, 1.0, float("nan")])
def test_fit_refuses_a_momentum_outside_zero_to_one(rng, momentum):
    """SGD's momentum keeps that fraction of the previous update: 1.5 makes every step larger than
    the last (divergence), a negative one flips it. Refused before any training, naming it."""
    net = P.lenet_variant()
    net.initialize()
    net(nd.ones((2, 1, 28, 28)))
    before = net[0].weight.data().asnumpy().copy()
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\).*got " + str(momentum)):
        P.fit(net, _tiny_data(rng, 64), 1, 0.1, momentum=momentum, init=False)
    np.testing.assert_array_equal(net[0].weight.data().asnumpy(), before)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        from d2lbn.diagnose import lenet_gluon_bn, train_accumulated
        train_accumulated(lenet_gluon_bn(), [], 4, 1, 0.1, mx.cpu(), momentum=momentum)


def test_fit_refuses_a_non_finite_learning_rate_naming_it(rng):
    net = P.lenet_variant()
    for lr in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"lr must be .*; got (nan|inf)"):
            P.fit(net, _tiny_data(rng, 64), 1, lr)


def test_copy_params(rng):
    src = P.lenet_variant()
    src.initialize(mx.init.Xavier())
    X = nd.array(rng.uniform(size=(4, 1, 28, 28)))
    src(X)
    MS.batch_norm_layers(src)[0].running_mean.set_data(nd.array(rng.normal(size=6)))
    dst = P.lenet_variant(use_global_stats=True)
    P.copy_params(src, dst)
    np.testing.assert_allclose(dst(X).asnumpy(), src(X).asnumpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="structure"):
        P.copy_params(src, P.lenet_variant(dropout=0.5, dropout_site="after_bn"))


# ---- shift transforms -----------------------------------------------------------------------------------

def test_shift_transforms_exact_pixels():
    X = nd.array([[[[0.0, 0.25], [0.5, 1.0]]]])
    np.testing.assert_array_equal(P.invert(X).asnumpy(), [[[[1.0, 0.75], [0.5, 0.0]]]])
    np.testing.assert_allclose(P.brightness_contrast(X, 0.1, 2.0).asnumpy(),
                               [[[[0.1, 0.6], [1.0, 1.0]]]], rtol=1e-6)
    np.testing.assert_allclose(P.brightness_contrast(X, -0.2, 0.5).asnumpy(),
                               [[[[0.0, 0.0], [0.05, 0.3]]]], atol=1e-7)
    np.testing.assert_array_equal(P.brightness_contrast(X).asnumpy(), X.asnumpy())


def test_shift_transforms_bad_input():
    X = nd.ones((1, 1, 2, 2))
    with pytest.raises(ValueError, match="brightness"):
        P.brightness_contrast(X, brightness=1.5)
    with pytest.raises(ValueError, match="contrast"):
        P.brightness_contrast(X, contrast=0.0)
    with pytest.raises(ValueError, match="contrast"):
        P.brightness_contrast(X, contrast=-1.0)
    with pytest.raises(TypeError, match="contrast"):
        P.brightness_contrast(X, contrast=None)
    with pytest.raises(TypeError, match="X"):
        P.invert(np.ones((1, 1, 2, 2)))


def test_seed_summary():
    table = S.settings_table({"a": [0.5, 0.7, 0.6], "bb": [0.1, 0.2, 0.3]})
    lines = table.splitlines()
    assert len(lines) == 3 and "mean" in lines[0]
    assert "0.6000" in lines[1] and "0.5000-0.7000" in lines[1]
    with pytest.raises(ValueError):
        S.settings_table({})


def test_plot_band_draws_mean_and_range():
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots()
    line = P.plot_band(ax, [1, 2], [[0.0, 1.0], [2.0, 3.0], [1.0, 2.0]], "x")
    np.testing.assert_allclose(line.get_ydata(), [1.0, 2.0])
    with pytest.raises(ValueError, match="runs"):
        P.plot_band(ax, [1, 2, 3], [[0.0, 1.0]], "x")
    plt.close(fig)
