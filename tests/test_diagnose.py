"""d2lbn.diagnose against independent oracles: float64 NumPy statistics of nets with known weights,
MXNet's documented freezing semantics, and gradient accumulation without batch norm (where it must
equal the large batch)."""
import math

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

import d2lbn
from d2lbn import diagnose as D
from d2lbn import moving_stats as MS
from d2lbn.norm import BatchNorm


def _identity_dense(units):
    layer = nn.Dense(units, in_units=units)
    layer.initialize()
    layer.weight.set_data(nd.eye(units))
    layer.bias.set_data(nd.zeros(units))
    return layer


def _two_bn_net(kind):
    """identity Dense -> BN -> identity Dense -> BN, 3 features; kind 'gluon' or 'd2lbn'."""
    def bn():
        layer = nn.BatchNorm(in_channels=3) if kind == "gluon" else BatchNorm(3, 2, impl="naive")
        layer.initialize()
        return layer
    net = nn.Sequential()
    net.add(_identity_dense(3), bn(), _identity_dense(3), bn())
    return net


def _data(rng, n=4000):
    return rng.normal([1.0, 2.0, 3.0], [1.0, 2.0, 0.5], size=(n, 3))


@pytest.mark.parametrize("kind", ["gluon", "d2lbn"])
def test_compare_statistics_finds_the_wrong_layer_and_measures_it(rng, kind):
    x = _data(rng)
    net = _two_bn_net(kind)
    bn1, bn2 = MS.batch_norm_layers(net)
    m1, v1 = x.mean(axis=0), x.var(axis=0)
    MS.set_layer_statistics(bn1, m1, v1)                 # right: the data's own statistics
    MS.set_layer_statistics(bn2, [0.5, 0.0, -1.0], [4.0, 1.0, 1.0])   # wrong on purpose
    checks = D.compare_statistics(net, nd.array(x), batch_size=500)
    # oracle: bn2 sees bn1's inference-mode output (gamma 1, beta 0), computed in float64
    h = (x - m1) / np.sqrt(v1 + 1e-5)
    shift = np.abs(h.mean(axis=0) - [0.5, 0.0, -1.0]) / np.sqrt(np.array([4.0, 1.0, 1.0]) + 1e-5)
    ratio = (h.var(axis=0) + 1e-5) / (np.array([4.0, 1.0, 1.0]) + 1e-5)
    assert checks[0].mean_shift < 1e-4 and abs(checks[0].var_ratio - 1) < 1e-4
    assert checks[1].mean_shift == pytest.approx(shift.max(), rel=1e-4)
    assert checks[1].var_ratio == pytest.approx(np.maximum(ratio, 1 / ratio).max(), rel=1e-4)
    assert D.disagreeing_layers(checks) == [bn2.name]
    assert "DISAGREES" in D.format_checks(checks)


def test_compare_statistics_flags_non_finite_statistics(rng):
    net = _two_bn_net("gluon")
    bn1, _ = MS.batch_norm_layers(net)
    MS.set_layer_statistics(bn1, [np.nan, 0, 0], [1, 1, 1])
    checks = D.compare_statistics(net, nd.array(_data(rng, 100)))
    assert not checks[0].finite and checks[0].disagrees


def test_compare_statistics_rejects_bad_arguments(rng):
    net = _two_bn_net("gluon")
    with pytest.raises(ValueError, match="batch_size"):
        D.compare_statistics(net, nd.array(_data(rng, 10)), batch_size=0)
    with pytest.raises(TypeError, match="X must be"):
        D.compare_statistics(net, _data(rng, 10))
    with pytest.raises(ValueError, match="no batch-norm layer"):
        D.compare_statistics(_identity_dense(3), nd.array(_data(rng, 10)))


@pytest.mark.parametrize("kind", ["gluon", "d2lbn"])
def test_recompute_statistics_matches_a_numpy_training_mode_pass(rng, kind):
    net = _two_bn_net(kind)
    bn1, bn2 = MS.batch_norm_layers(net)
    bn1.gamma.set_data(nd.array([2.0, 0.5, 1.0]))
    bn1.beta.set_data(nd.array([1.0, -1.0, 0.0]))
    x = _data(rng, 300)
    batches = [(nd.array(x[i:i + 64]), nd.zeros(len(x[i:i + 64]))) for i in range(0, 300, 64)]
    used = D.recompute_statistics(net, batches, mx.cpu(), num_batches=4)
    assert used == 4
    stats1, stats2 = [], []
    for i in range(0, 4 * 64, 64):                # oracle: Algorithm 2 with the biased variance
        b = x[i:i + 64]
        stats1.append((b.mean(axis=0), b.var(axis=0)))
        h = np.array([2.0, 0.5, 1.0]) * (b - b.mean(axis=0)) / np.sqrt(b.var(axis=0) + 1e-5) + [1.0, -1.0, 0.0]
        stats2.append((h.mean(axis=0), h.var(axis=0)))
    for layer, stats in ((bn1, stats1), (bn2, stats2)):
        mean, var = MS.layer_statistics(layer)
        np.testing.assert_allclose(mean, np.mean([s[0] for s in stats], axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, np.mean([s[1] for s in stats], axis=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["gluon", "d2lbn"])
def test_recompute_statistics_refuses_nan_naming_the_batch(rng, kind):
    """A batch with one NaN would make every moving statistic NaN: refused, the batch (0-based
    index in ``batches``) named, the moving statistics unchanged; the same for the diagnostic."""
    net = _two_bn_net(kind)
    x = _data(rng, 256)
    x[200, 2] = np.nan
    batches = [(nd.array(x[i:i + 64]), nd.zeros(64)) for i in range(0, 256, 64)]
    before = [MS.layer_statistics(layer) for layer in MS.batch_norm_layers(net)]
    with pytest.raises(ValueError, match=r"batch 3 of batches .*NaN or infinit"):
        D.recompute_statistics(net, batches, mx.cpu())
    with pytest.raises(ValueError, match=r"batch 3 of batches"):
        D.compare_statistics(net, nd.array(x), batch_size=64)
    assert D.recompute_statistics(net, batches, mx.cpu(), num_batches=3) == 3   # NaN not reached
    MS.set_layer_statistics(MS.batch_norm_layers(net)[0], *before[0])
    MS.set_layer_statistics(MS.batch_norm_layers(net)[1], *before[1])
    net[2].weight.set_data(nd.full((3, 3), 3e38))      # finite data, infinite inside the net
    with pytest.raises(ValueError, match=r"input of batch-norm layer 1 .*batch 0 of batches"):
        D.recompute_statistics(net, batches[:1], mx.cpu())
    after = [MS.layer_statistics(layer) for layer in MS.batch_norm_layers(net)]
    for (m0, v0), (m1, v1) in zip(before, after):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(v0, v1)


def test_input_statistics_leaves_the_moving_statistics_alone(rng):
    net = _two_bn_net("d2lbn")           # this layer updates its statistics in the forward pass
    before = [MS.layer_statistics(layer) for layer in MS.batch_norm_layers(net)]
    D.input_statistics(net, [(nd.array(_data(rng, 64)), None)], mx.cpu(), training=True)
    after = [MS.layer_statistics(layer) for layer in MS.batch_norm_layers(net)]
    for (m0, v0), (m1, v1) in zip(before, after):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(v0, v1)


def test_check_moving_statistics_names_each_problem():
    net = _two_bn_net("gluon")
    bn1, bn2 = MS.batch_norm_layers(net)
    assert D.check_moving_statistics(net) == []
    MS.set_layer_statistics(bn1, [0, 0, 0], [1, np.inf, 1])
    MS.set_layer_statistics(bn2, [0, 0, 0], [1, 1e9, -1])
    problems = D.check_moving_statistics(net)
    assert len(problems) == 3
    assert problems[0].startswith(bn1.name) and "1 moving variances" in problems[0]
    assert all(p.startswith(bn2.name) for p in problems[1:])
    with pytest.raises(ValueError, match="max_var"):
        D.check_moving_statistics(net, max_var=0)


def test_freeze_table_matches_mxnets_semantics():
    rows = {r.setting: r for r in D.freeze_table()}
    expected = {   # (gamma/beta change, moving statistics change, normalised with)
        "nothing frozen": (True, True, "batch"),
        "grad_req='null' on gamma, beta": (False, True, "batch"),
        "use_global_stats=True": (True, False, "moving"),
        "grad_req='null' and use_global_stats=True": (False, False, "moving"),
        "whole net in inference mode": (True, False, "moving"),
    }
    assert set(rows) == set(expected) == set(D.FREEZE_SETTINGS)
    for setting, (gb, moving, used) in expected.items():
        row = rows[setting]
        assert (row.gamma_beta_change, row.moving_stats_change, row.normalised_with) == (gb, moving, used), row


def test_set_use_global_stats_takes_effect_in_a_hybridized_net(rng):
    net = D.lenet_gluon_bn()
    net.initialize()
    net.hybridize()
    X = nd.array(rng.uniform(size=(8, 1, 28, 28)))
    inference = net(X).asnumpy()
    with autograd.train_mode():
        assert not np.allclose(net(X).asnumpy(), inference, atol=1e-4)
    assert D.set_use_global_stats(net, True) == 4
    with autograd.train_mode():
        np.testing.assert_allclose(net(X).asnumpy(), inference, rtol=1e-5, atol=1e-6)
    D.set_use_global_stats(net, False)
    with autograd.train_mode():
        assert not np.allclose(net(X).asnumpy(), inference, atol=1e-4)
    with pytest.raises(TypeError, match="flag"):
        D.set_use_global_stats(net, 1)


def test_lenet_gluon_bn_uses_the_momentum():
    net = D.lenet_gluon_bn(momentum=0.99)
    layers = MS.batch_norm_layers(net)
    assert len(layers) == 4 and all(layer._kwargs["momentum"] == 0.99 for layer in layers)
    with pytest.raises(ValueError, match="momentum"):
        D.lenet_gluon_bn(momentum=1.5)


def test_interleaved_loader_alternates_sources_until_all_are_exhausted():
    a = [(nd.array([i]), nd.array([0])) for i in range(3)]
    b = [(nd.array([10 + i]), nd.array([1])) for i in range(1)]
    loader = D.InterleavedLoader([a, b])
    assert len(loader) == 4
    assert [float(x.asscalar()) for x, _ in loader] == [0.0, 10.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="loaders"):
        D.InterleavedLoader([])


def test_with_input_batch_norm_normalises_the_raw_input(rng):
    net = D.with_input_batch_norm(d2lbn.models.lenet())
    net.initialize()
    assert isinstance(net[0], nn.BatchNorm) and len(net) == len(d2lbn.models.lenet()) + 1
    X = nd.array(rng.uniform(0, 255, size=(16, 1, 28, 28)))
    with autograd.train_mode():
        first = net[0](X).asnumpy()
    np.testing.assert_allclose(first.mean(), 0, atol=1e-4)
    np.testing.assert_allclose(first.std(), 1, rtol=1e-3)
    with pytest.raises(TypeError, match="HybridSequential"):
        D.with_input_batch_norm(nn.Sequential())


def _mlp(bn):
    net = nn.HybridSequential()
    net.add(nn.Dense(8, in_units=5))
    if bn:
        net.add(nn.BatchNorm(in_channels=8))
    net.add(nn.Activation("relu"), nn.Dense(3, in_units=8))
    d2lbn.set_seed(0)
    net.initialize(mx.init.Xavier())
    return net


def test_accumulated_gradient_equals_the_batch_gradient_only_without_batch_norm(rng):
    X = nd.array(rng.normal(size=(32, 5)))
    y = nd.array(rng.integers(0, 3, size=32))
    plain, with_bn = _mlp(False), _mlp(True)
    for net in (plain, with_bn):       # oracle for micro_batch=N: one ordinary backward pass
        with autograd.record():
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(X), y).sum()
        loss.backward()
        direct = np.concatenate([p.grad().asnumpy().ravel() for p in net.collect_params().values()
                                 if p.grad_req != "null"])
        np.testing.assert_allclose(D.accumulated_gradient(net, X, y, 32), direct, rtol=1e-5, atol=1e-6)
    full = D.accumulated_gradient(plain, X, y, 32)
    assert D.relative_difference(D.accumulated_gradient(plain, X, y, 4), full) < 1e-5
    full_bn = D.accumulated_gradient(with_bn, X, y, 32)
    assert D.relative_difference(D.accumulated_gradient(with_bn, X, y, 4), full_bn) > 1e-2
    before = MS.layer_statistics(MS.batch_norm_layers(with_bn)[0])
    D.accumulated_gradient(with_bn, X, y, 8)
    np.testing.assert_array_equal(MS.layer_statistics(MS.batch_norm_layers(with_bn)[0])[0], before[0])
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        D.accumulated_gradient(plain, X, y, 5)


def test_synchronised_micro_batches_give_the_large_batch_gradient(rng):
    from d2lbn.parallel import reference_and_data_parallel
    X = nd.array(rng.uniform(size=(16, 1, 28, 28)))
    y = nd.array(rng.integers(0, 10, size=16))
    ctxs = [mx.cpu(i) for i in range(4)]
    one, many = reference_and_data_parallel("sync", ctxs, X)
    full = D.accumulated_gradient(one, X, y, 16)        # oracle: one device, the whole batch
    assert D.relative_difference(D.synchronised_gradient(many, X, y, ctxs), full) < 1e-4
    assert D.relative_difference(D.accumulated_gradient(one, X, y, 4), full) > 1e-2
    with pytest.raises(TypeError, match="ListSequential"):
        D.synchronised_gradient(one, X, y, ctxs)


def test_train_accumulated_without_batch_norm_equals_large_batch_training(rng):
    X = nd.array(rng.normal(size=(64, 5)))
    y = nd.array(rng.integers(0, 3, size=64))
    batches = [(X[i:i + 32], y[i:i + 32]) for i in (0, 32)]
    small, large = _mlp(False), _mlp(False)
    D.train_accumulated(small, batches, 4, 2, 0.1, mx.cpu(), seed=3)
    D.train_accumulated(large, batches, 32, 2, 0.1, mx.cpu(), seed=3)
    for a, b in zip(small.collect_params().values(), large.collect_params().values()):
        np.testing.assert_allclose(a.data().asnumpy(), b.data().asnumpy(), rtol=1e-4, atol=1e-6)
        assert a.grad_req == "write"
    untrained = _mlp(False)
    d2lbn.set_seed(3)
    untrained.initialize(mx.init.Xavier(), force_reinit=True)
    assert not np.allclose(untrained[0].weight.data().asnumpy(), small[0].weight.data().asnumpy())


def test_prune_by_magnitude_zeroes_the_smallest_weights():
    net = _mlp(True)
    before = [net[0].weight.data().asnumpy().copy(), net[3].weight.data().asnumpy().copy()]
    zeroed = D.prune_by_magnitude(net, 0.5)
    assert zeroed == 20 + 12
    for w0, layer in zip(before, (net[0], net[3])):
        w = layer.weight.data().asnumpy()
        kept = np.abs(w0) > np.sort(np.abs(w0).ravel())[w0.size // 2 - 1]
        np.testing.assert_array_equal(w, w0 * kept)
    with pytest.raises(ValueError, match="fraction"):
        D.prune_by_magnitude(net, 1.0)


def test_snapshots_average_and_load():
    net = _mlp(True)
    a = D.snapshot(net)
    b = {name: value + 2.0 for name, value in a.items()}
    mean = D.average_snapshots([a, b])
    for name in a:
        np.testing.assert_allclose(mean[name], a[name] + 1.0, rtol=1e-6)
    D.load_snapshot(net, mean)
    np.testing.assert_allclose(net[0].weight.data().asnumpy(), a[net[0].weight.name] + 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="same net"):
        D.average_snapshots([a, {"x": np.zeros(1)}])
    with pytest.raises(ValueError, match="does not match"):
        D.load_snapshot(net, {"x": np.zeros(1)})


def test_channel_moments_and_relative_difference():
    X = nd.array(np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
    mean, var = D.channel_moments(X)
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)))
    assert D.relative_difference([3.0, 4.0], [0.0, 0.0] if False else [3.0, 0.0]) == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="shape"):
        D.channel_moments(nd.zeros((2, 3, 4)))
    assert math.isclose(D.relative_difference([1.0, 1.0], [1.0, 1.0]), 0.0)


def test_bad_arguments_name_the_argument():
    net = _two_bn_net("gluon")
    with pytest.raises(ValueError, match="num_batches"):
        D.recompute_statistics(net, [], mx.cpu(), num_batches=0)
    with pytest.raises(ValueError, match="batches yielded no batch"):
        D.recompute_statistics(net, [], mx.cpu())
    with pytest.raises(ValueError, match="micro_batch"):
        D.train_accumulated(_mlp(False), [], 0, 1, 0.1, mx.cpu())
    with pytest.raises(TypeError, match="net must be a gluon Block"):
        D.leaf_layers("not a net")
    with pytest.raises(TypeError, match="not a batch-norm layer"):
        MS.layer_statistics(nn.Dense(3))
    with pytest.raises(ValueError, match="mean must have shape"):
        MS.set_layer_statistics(MS.batch_norm_layers(net)[0], [0.0, 0.0], [1.0, 1.0, 1.0])


# ---- nested blocks: the package's own ResNet (issue 25) -----------------------------------------------

def _resnet(hybridize=False):
    from d2lbn.resnet import small_resnet
    d2lbn.set_seed(0)
    net = small_resnet(widths=(4, 8, 8))
    net.initialize(mx.init.Xavier())
    if hybridize:
        net.hybridize(static_alloc=True)
    net(nd.random.uniform(shape=(2, 1, 28, 28)))
    return net


def _every_gluon_bn(net):
    """Every gluon.nn.BatchNorm of net, by a walk of its own (not D's)."""
    found = []
    for child in net._children.values():
        found += [child] if isinstance(child, nn.BatchNorm) else _every_gluon_bn(child)
    return found


def _running_means_by_name(net):
    """An independent walk: the parameter table, not the block tree."""
    return sorted(name for name in net.collect_params() if name.endswith("running_mean"))


def test_batch_norm_layers_finds_every_layer_of_the_resnet():
    net = _resnet()
    names = _running_means_by_name(net)
    assert len(names) == 9                      # stem + 2 per block + 2 projection shortcuts
    found = MS.batch_norm_layers(net)
    assert sorted(layer.running_mean.name for layer in found) == names
    block = net.blocks()[1]
    assert [b.name for b in found[3:6]] == [block.bn1.name, block.bn2.name, block.short_bn.name]


def test_check_moving_statistics_sees_a_nan_inside_a_block():
    net = _resnet()
    assert D.check_moving_statistics(net) == []
    bad = net.blocks()[2].bn2
    mean, var = MS.layer_statistics(bad)
    mean[3] = np.nan
    MS.set_layer_statistics(bad, mean, var)
    problems = D.check_moving_statistics(net)
    assert len(problems) == 1 and problems[0].startswith(bad.name + ": 1 moving means")


@pytest.mark.parametrize("hybridize", [False, True])
def test_recompute_statistics_on_the_resnet_matches_mxnets_own_update(rng, hybridize):
    """Oracle: MXNet's BatchNorm itself. With momentum 0, one training step (forward and backward, the
    CPU kernel updates its moving statistics in backward) stores each layer's batch mean and biased
    variance; recompute_statistics over that one batch must store the same, in all 9 layers."""
    X = nd.array(rng.uniform(size=(16, 1, 28, 28)))
    net = _resnet(hybridize)
    layers = _every_gluon_bn(net)
    assert len(layers) == 9
    for layer in layers:
        layer._kwargs["momentum"] = 0.0
    net._clear_cached_op()                              # momentum is baked into a graph
    with autograd.record():
        out = net(X)
    out.backward()
    expected = [MS.layer_statistics(layer) for layer in layers]
    for layer in layers:
        MS.set_layer_statistics(layer, np.zeros(layer.running_mean.shape), np.ones(layer.running_mean.shape))
    assert D.recompute_statistics(net, [(X, None)], mx.cpu()) == 1
    for layer, (m, v) in zip(layers, expected):
        got_m, got_v = MS.layer_statistics(layer)
        np.testing.assert_allclose(got_m, m, rtol=1e-4, atol=1e-5, err_msg=layer.name)
        np.testing.assert_allclose(got_v, v, rtol=1e-4, atol=1e-5, err_msg=layer.name)
    assert net._active == hybridize                      # hybridized as before
    if hybridize:
        assert dict(net._flags).get("static_alloc") is True


def test_compare_statistics_on_the_resnet_names_the_layer_inside_a_block(rng):
    """Every layer's statistics set to those of one batch X (MXNet's momentum-0 update, as above):
    in inference mode on X each layer then meets exactly its stored statistics, so all 9 agree; shift
    one moving mean inside a block and that layer is named."""
    X = nd.array(rng.uniform(size=(16, 1, 28, 28)))
    net = _resnet()
    assert D.recompute_statistics(net, [(X, None)], mx.cpu()) == 1
    checks = D.compare_statistics(net, X, batch_size=16)
    assert len(checks) == 9 and D.disagreeing_layers(checks) == []
    assert max(c.mean_shift for c in checks) < 1e-3 and max(c.var_ratio for c in checks) < 1.001
    bad = net.blocks()[1].bn1
    mean, var = MS.layer_statistics(bad)
    MS.set_layer_statistics(bad, mean + 5 * np.sqrt(var), var)
    named = D.disagreeing_layers(D.compare_statistics(net, X, batch_size=16))
    assert named[0] == bad.name
