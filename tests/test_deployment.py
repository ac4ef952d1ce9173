"""ch12: the study functions of d2lbn.deployment against independent oracles (a brute-force loop,
float64 NumPy statistics of a layer's input, the momentum formula) and their errors."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

from d2lbn import deployment as D
from d2lbn.moving_stats import batch_norm_layers, layer_statistics


@pytest.mark.parametrize("momentum", [0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("fraction", [0.01, 0.1])
def test_steps_to_forget_brute_force(momentum, fraction):
    t, weight = 0, 1.0
    while weight >= fraction:
        weight *= momentum
        t += 1
    assert D.steps_to_forget(momentum, fraction) == t


def test_steps_to_forget_errors():
    with pytest.raises(ValueError, match="fraction"):
        D.steps_to_forget(0.9, 1.5)
    with pytest.raises(ValueError):
        D.steps_to_forget(1.0)


def test_gluon_precise_statistics_first_layer():
    """The first layer's input does not depend on the other layers: its precise statistics are the
    pooled mean and biased variance of conv0's output over all the batches (equal sizes)."""
    mx.random.seed(0)
    net = D.make_lenet()
    net.initialize(mx.init.Xavier())
    X = nd.random.uniform(shape=(40, 1, 28, 28))
    net(X)
    before = layer_statistics(batch_norm_layers(net)[0])
    stats = D.gluon_precise_statistics(net, X, batch_size=10)
    with autograd.predict_mode():
        z = net[0](X).asnumpy().astype(np.float64)
    np.testing.assert_allclose(stats[0][0], z.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats[0][1], z.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-7)
    after = layer_statistics(batch_norm_layers(net)[0])
    np.testing.assert_array_equal(before[0], after[0])         # left unchanged
    assert len(stats) == 4
    with pytest.raises(ValueError, match="fewer than one batch"):
        D.gluon_precise_statistics(net, X[:5], batch_size=10)


@pytest.mark.parametrize("scratch, fix, want", [(True, False, 0.19), (True, True, 0.1),
                                                (False, False, 0.1), (False, True, 0.1)])
def test_double_update_ratio(scratch, fix, want):
    np.testing.assert_allclose(D.double_update_ratio(scratch, fix), want, rtol=1e-4)


def test_fit_lenet_l1_shrinks_gamma():
    rng = np.random.default_rng(0)
    X = nd.array(rng.uniform(size=(256, 1, 28, 28)))
    y = nd.array(rng.integers(0, 10, 256))
    data = (X, y, X[:64], y[:64])
    norms = []
    for l1 in (0.0, 0.05):
        net = D.make_lenet()
        D.fit_lenet(net, data, 2, 0.05, seed=0, l1=l1)
        norms.append(sum(float(np.abs(bn.gamma.data().asnumpy()).sum())
                         for bn in batch_norm_layers(net)))
    assert norms[1] < norms[0]


def test_permutation_difference_zero_when_sums_are_exact():
    """Small integers (and their squares) sum exactly in float32 in any order: no difference."""
    rng = np.random.default_rng(0)
    X = nd.array(rng.integers(-4, 5, size=(16, 3, 4, 4)).astype(np.float32))
    assert D.permutation_difference(X)[0] == 0.0
    with pytest.raises(ValueError, match="N, C, H, W"):
        D.permutation_difference(nd.ones((4, 3)))


def test_permutation_difference_explained_by_the_statistics():
    """Oracle: float64 normalisation with each run's stored mean and variance. On an integer
    batch the means agree exactly, the variances do not, and the float64 prediction from the
    variances alone matches MXNet's output difference to about one float32 rounding of x-hat."""
    rng = np.random.default_rng(0)
    X = nd.array(rng.integers(-4, 5, size=(128, 8, 8, 8)).astype(np.float32))
    d = D.permutation_difference(X)
    assert d.mean == 0.0 and d.var > 0.0
    assert abs(d.out - d.predicted) <= 0.1 * d.predicted + 1e-6
    assert d.equal_spread == 0.0


def test_thread_probe_repeats_in_fresh_processes(tmp_path):
    """Same thread count, fresh processes: bit-identical arrays (the probe itself is deterministic,
    so a difference between thread counts is the thread count's)."""
    a = D.thread_probe(1, str(tmp_path / "a.npz"))
    b = D.thread_probe(1, str(tmp_path / "b.npz"))
    ops = {f"{name}: {what}" for name, (_, _, w) in D.PROBE_OPERATORS.items()
           for what in ("output", "input gradient") + (("weight gradient",) if w else ())}
    assert set(a) == {"output", "gradients", "weights after 10 steps"} | ops
    for name, (_, shape, _) in D.PROBE_OPERATORS.items():
        assert a[f"{name}: input gradient"].shape == shape
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(ValueError):
        D.thread_probe(0, str(tmp_path / "c.npz"))
