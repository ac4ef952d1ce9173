"""ch12: d2lbn.compress against independent oracles (float64 NumPy from the formulas, MXNet's own
inference output, autograd without checkpointing) and its errors on bad input."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from d2lbn import compress as C
from d2lbn.models import lenet, lenet_bn, lenet_bn_gluon
from d2lbn.moving_stats import batch_norm_layers


def trained_lenet(seed=0, steps=3):
    """A LeNet with gluon BatchNorm after a few training-mode steps (moving statistics updated)."""
    mx.random.seed(seed)
    np.random.seed(seed)
    net = lenet_bn_gluon()
    net.initialize(mx.init.Xavier())
    X = nd.random.uniform(shape=(16, 1, 28, 28))
    for _ in range(steps):
        with autograd.record():
            y = net(X)
        y.backward()
    for bn in batch_norm_layers(net):          # gammas and betas away from 1 and 0
        bn.gamma.set_data(nd.random.uniform(0.2, 2.0, shape=bn.gamma.shape))
        bn.beta.set_data(nd.random.normal(shape=bn.beta.shape))
    return net, X


def numpy_fake_quantize(W, bits, per_channel):
    """The formula, float64, written out channel by channel."""
    W = np.asarray(W, np.float64)
    q = 2 ** (bits - 1) - 1
    out = np.empty_like(W)
    groups = range(W.shape[0]) if per_channel else [slice(None)]
    for g in groups:
        peak = np.abs(W[g]).max()
        scale = peak / q if peak > 0 else 1.0
        out[g] = scale * np.clip(np.round(W[g] / scale), -q, q)
    return out


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_matches_numpy(bits, per_channel):
    rng = np.random.default_rng(bits)
    W = rng.normal(size=(5, 3, 2, 2)) * rng.uniform(0.01, 10, size=(5, 1, 1, 1))
    got = C.fake_quantize(W, bits, per_channel)
    np.testing.assert_allclose(got, numpy_fake_quantize(W, bits, per_channel), rtol=1e-12, atol=1e-12)
    # at most 2**bits - 1 levels per group, and the error within half a step
    q = 2 ** (bits - 1) - 1
    peaks = np.abs(W).reshape(5, -1).max(1)[:, None, None, None] if per_channel else np.abs(W).max()
    assert np.all(np.abs(got - W) <= peaks / q / 2 + 1e-12)


def test_fake_quantize_float32_ndarray_and_zero_channel():
    W = nd.array([[0.0, 0.0], [1.0, -0.3]])
    got = C.fake_quantize(W, 8, per_channel=True)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got[0], [0.0, 0.0])
    np.testing.assert_allclose(got[1], numpy_fake_quantize(W.asnumpy(), 8, True)[1], rtol=1e-6)


@pytest.mark.parametrize("bits", [1, 17, 0, -8])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=r"bits must be an int in \[2, 16\]"):
        C.fake_quantize(np.ones((2, 2)), bits)


def test_bits_not_int_and_bad_arrays():
    with pytest.raises(TypeError, match="bits"):
        C.fake_quantize(np.ones((2, 2)), 8.0)
    with pytest.raises(TypeError, match="floats"):
        C.fake_quantize(np.ones((2, 2), dtype=np.int32), 8)
    with pytest.raises(ValueError, match="NaN"):
        C.fake_quantize(np.array([[np.nan, 1.0]]), 8)


def test_channel_ranges():
    W = np.array([[[1.0, -3.0]], [[0.5, 0.25]]])
    np.testing.assert_array_equal(C.channel_ranges(W), [3.0, 0.5])


def test_fold_sequential_equals_mxnet_inference():
    net, X = trained_lenet()
    folded = C.fold_sequential(net)
    assert not batch_norm_layers(folded)
    np.testing.assert_allclose(folded(X).asnumpy(), net(X).asnumpy(), rtol=1e-4, atol=1e-5)


def test_fold_sequential_errors():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4), gluon.nn.Activation("relu"), gluon.nn.BatchNorm())
    net.initialize()
    net(nd.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot be folded"):
        C.fold_sequential(net)
    with pytest.raises(TypeError, match="HybridSequential"):
        C.fold_sequential(lenet_bn())
    fresh = lenet_bn_gluon()
    fresh.initialize()
    with pytest.raises(ValueError, match="uninitialised"):
        C.fold_sequential(fresh)


def test_quantize_weights_matches_numpy_per_layer():
    net, X = trained_lenet()
    folded = C.fold_sequential(net)
    for per_channel in (False, True):
        q = C.quantize_weights(folded, 4, per_channel)
        for a, b in zip(C.affine_layers(folded), C.affine_layers(q)):
            want = numpy_fake_quantize(a.weight.data().asnumpy(), 4, per_channel)
            np.testing.assert_allclose(b.weight.data().asnumpy(), want, rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(b.bias.data().asnumpy(), a.bias.data().asnumpy())
    with pytest.raises(ValueError, match="fold them first"):
        C.quantize_weights(net, 8)
    kept = C.quantize_weights(net, 16, keep_batch_norm=True)       # 16 bits: nearly the float net
    np.testing.assert_allclose(kept(X).asnumpy(), net(X).asnumpy(), rtol=1e-3, atol=1e-3)


def numpy_masks(gammas, ratio):
    flat = np.abs(np.concatenate(gammas))
    k = int(np.floor(ratio * flat.size))
    threshold_order = sorted(range(flat.size), key=lambda i: (flat[i], i))[:k]
    keep = np.ones(flat.size, bool)
    keep[threshold_order] = False
    return np.split(keep, np.cumsum([g.size for g in gammas])[:-1])


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_slimming_masks_global_threshold(ratio):
    net, _ = trained_lenet()
    gammas = [bn.gamma.data().asnumpy() for bn in batch_norm_layers(net)]
    masks = C.slimming_masks(net, ratio)
    for got, want in zip(masks, numpy_masks(gammas, ratio)):
        if want.any():
            np.testing.assert_array_equal(got, want)
        else:                                      # a layer keeps its largest gamma
            assert got.sum() == 1
    # every kept |gamma| >= every pruned one, within a layer and across layers
    flat_g = np.abs(np.concatenate(gammas))
    flat_m = np.concatenate(masks)
    if (~flat_m).any() and ratio < 0.9:
        assert flat_g[flat_m].min() >= flat_g[~flat_m].max()


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, float("nan")])
def test_slimming_ratio_outside_open_interval(ratio):
    net, _ = trained_lenet(steps=1)
    with pytest.raises(ValueError, match=r"ratio"):
        C.slimming_masks(net, ratio)


def test_slimming_no_batch_norm():
    net = lenet()
    net.initialize()
    net(nd.ones((2, 1, 28, 28)))
    with pytest.raises(ValueError, match="no batch-norm layer"):
        C.slimming_masks(net, 0.5)
    with pytest.raises(ValueError, match="no batch-norm layer"):
        C.prune_sequential(net, [])
    with pytest.raises(ValueError, match="no batch-norm layer"):
        C.add_gamma_l1_grad(net, 1e-4, 8)


def test_pruned_net_equals_masked_original():
    """Oracle: the original net, in inference mode, with the pruned channels' gamma and beta set
    to 0 (their output is then 0 after batch norm, ReLU and pooling)."""
    net, X = trained_lenet()
    masks = C.slimming_masks(net, 0.5)
    small = C.prune_sequential(net, masks)
    for bn, m in zip(batch_norm_layers(net), masks):
        for p in (bn.gamma, bn.beta):
            v = p.data().asnumpy()
            v[~m] = 0
            p.set_data(nd.array(v))
    np.testing.assert_allclose(small(X).asnumpy(), net(X).asnumpy(), rtol=1e-4, atol=1e-5)
    assert [bn.gamma.shape[0] for bn in batch_norm_layers(small)] == [int(m.sum()) for m in masks]
    with pytest.raises(ValueError, match="one array per batch-norm layer"):
        C.prune_sequential(net, masks[:2])
    bad = [m.copy() for m in masks]
    bad[0][:] = False
    with pytest.raises(ValueError, match="keeps no channel"):
        C.prune_sequential(net, bad)


def test_add_gamma_l1_grad_is_the_subgradient():
    net, X = trained_lenet(steps=1)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    y = nd.array(np.arange(16) % 10)
    with autograd.record():
        loss = loss_fn(net(X), y)
    loss.backward()
    before = [bn.gamma.grad().asnumpy().copy() for bn in batch_norm_layers(net)]
    C.add_gamma_l1_grad(net, 1e-3, 16)
    for bn, g0 in zip(batch_norm_layers(net), before):
        want = g0 + 1e-3 * 16 * np.sign(bn.gamma.data().asnumpy())
        np.testing.assert_allclose(bn.gamma.grad().asnumpy(), want, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="strength"):
        C.add_gamma_l1_grad(net, -1.0, 16)


def _fresh(make, seed=0):
    mx.random.seed(seed)
    np.random.seed(seed)
    net = make()
    net.initialize(mx.init.Xavier())
    X = nd.random.uniform(shape=(8, 1, 28, 28))
    with autograd.predict_mode():
        net(X)
    return net, X, nd.array(np.arange(8) % 10)


@pytest.mark.parametrize("make", [lenet_bn, lenet_bn_gluon])
def test_checkpointed_gradients_equal_plain_autograd(make):
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    net, X, y = _fresh(make)
    with autograd.record():
        loss = loss_fn(net(X), y)
    loss.backward()
    want = {k: p.grad().asnumpy().copy() for k, p in net.collect_params().items()
            if p.grad_req != "null"}
    net2, X, y = _fresh(make)
    C.checkpointed_step(C.split_sequential(net2, [4, 8]), X, y, loss_fn, fix=True)
    for (k, p), w in zip([(k, p) for k, p in net2.collect_params().items()
                          if p.grad_req != "null"], want.values()):
        np.testing.assert_allclose(p.grad().asnumpy(), w, rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("make, fix, updates", [(lenet_bn, False, 2), (lenet_bn, True, 1),
                                                (lenet_bn_gluon, False, 1),
                                                (lenet_bn_gluon, True, 1)])
def test_checkpointing_statistics_updates(make, fix, updates):
    """From moving mean 0 with momentum 0.9: k updates by the same batch leave
    (1 - 0.9**k) * batch mean. The scratch layer updates in the forward pass (twice without the
    fix); MXNet's CPU kernel in backward() (once either way)."""
    net, X, y = _fresh(make)
    C.checkpointed_step(C.split_sequential(net, [4, 8]), X, y,
                        gluon.loss.SoftmaxCrossEntropyLoss(), fix=fix)
    with autograd.predict_mode():
        z = net[0](X).asnumpy().astype(np.float64)
    bn = batch_norm_layers(net)[0]
    stored = (bn.moving_mean if make is lenet_bn else bn.running_mean).data().asnumpy()
    np.testing.assert_allclose(stored, (1 - 0.9 ** updates) * z.mean(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-7)


def test_split_and_checkpoint_errors():
    net, X, y = _fresh(lenet_bn)
    with pytest.raises(ValueError, match="cuts"):
        C.split_sequential(net, [8, 4])
    with pytest.raises(ValueError, match="at least 2 segments"):
        C.checkpointed_step([net], X, y, gluon.loss.SoftmaxCrossEntropyLoss())


# ---- quantization-aware training -----------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_ste_forward_and_gradient(per_channel):
    rng = np.random.default_rng(1)
    W = nd.array(rng.normal(size=(4, 3, 2, 2)) * rng.uniform(0.1, 3, size=(4, 1, 1, 1)))
    W.attach_grad()
    with autograd.record():
        out = C.fake_quantize_ste(W, 4, per_channel)
        loss = (out * nd.arange(W.size).reshape(W.shape)).sum()
    loss.backward()
    np.testing.assert_allclose(out.asnumpy(), numpy_fake_quantize(W.asnumpy(), 4, per_channel),
                               rtol=1e-5, atol=1e-6)
    # straight-through: the gradient is that of the identity
    np.testing.assert_allclose(W.grad.asnumpy(), np.arange(W.size).reshape(W.shape))


def _qat_conv(frozen=False, bits=16):
    mx.random.seed(0)
    layer = C.QATFolded("conv", 3, 3, bits=bits)
    layer.initialize(mx.init.Xavier())
    X = nd.random.normal(shape=(4, 2, 6, 6))
    with autograd.predict_mode():
        layer(X)
    layer.gamma.set_data(nd.array([0.5, 1.5, 2.0]))
    layer.beta.set_data(nd.array([0.1, -0.2, 0.3]))
    layer.running_mean.set_data(nd.array([0.2, -0.1, 0.0]))
    layer.running_var.set_data(nd.array([0.5, 2.0, 1.0]))
    layer.frozen = frozen
    return layer, X


def test_qat_training_equals_batch_norm_on_batch_statistics():
    """Folding with the batch statistics is batch norm in training mode (up to the 16-bit
    rounding of the folded weights); oracle: MXNet's BatchNorm on conv(X, W)."""
    layer, X = _qat_conv()
    W = layer.weight.data()
    z = nd.Convolution(X, W, kernel=(3, 3), no_bias=True, num_filter=3)
    with autograd.train_mode():
        want = nd.BatchNorm(z, layer.gamma.data(), layer.beta.data(), nd.zeros(3), nd.ones(3),
                            eps=1e-5, fix_gamma=False)
        got = layer(X)
    np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-3, atol=1e-3)
    zn = z.asnumpy().astype(np.float64)                 # one momentum update, in the forward pass
    np.testing.assert_allclose(layer.running_mean.data().asnumpy(),
                               0.9 * np.array([0.2, -0.1, 0.0]) + 0.1 * zn.mean(axis=(0, 2, 3)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frozen", [False, True])
def test_qat_inference_is_the_folded_quantized_layer(frozen):
    """At inference (and in training once frozen) the layer is fold, then fake-quantize, with the
    moving statistics: oracle NumPy fold + numpy_fake_quantize + MXNet's convolution."""
    layer, X = _qat_conv(frozen=frozen, bits=4)
    g, b = layer.gamma.data().asnumpy(), layer.beta.data().asnumpy()
    m, v = layer.running_mean.data().asnumpy(), layer.running_var.data().asnumpy()
    s = g / np.sqrt(v + 1e-5)
    Wq = numpy_fake_quantize(layer.weight.data().asnumpy() * s[:, None, None, None], 4, False)
    want = nd.Convolution(X, nd.array(Wq), kernel=(3, 3), no_bias=True, num_filter=3).asnumpy()
    want = want + (b - m * s)[None, :, None, None]
    mode = autograd.train_mode() if frozen else autograd.predict_mode()
    with mode:
        got = layer(X).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if frozen:                                          # frozen: the statistics do not move
        np.testing.assert_array_equal(layer.running_mean.data().asnumpy(), m)


def test_qat_lenet_and_errors():
    net = C.qat_lenet(8)
    net.initialize(mx.init.Xavier())
    assert net(nd.ones((2, 1, 28, 28))).shape == (2, 10)
    assert C.freeze_qat_statistics(net) == 4
    with pytest.raises(ValueError, match="no QATFolded"):
        C.freeze_qat_statistics(lenet_bn())
    with pytest.raises(ValueError, match="kind"):
        C.QATFolded("pool", 3)
    with pytest.raises(ValueError, match="bits"):
        C.qat_lenet(1)


# ---- in-place activated batch norm ----------------------------------------------------------------

def numpy_bn_leaky(x, gamma, beta, slope=0.1, eps=1e-5):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    y = y * gamma.reshape(shape) + beta.reshape(shape)
    return np.where(y >= 0, y, slope * y)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 2)])
@pytest.mark.parametrize("inplace", [False, True])
def test_bn_leaky_relu_numerical_gradient(shape, inplace):
    """Forward against float64 NumPy; gradients against central differences of the NumPy forward
    for the loss sum(w * z)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape) * 2 + 1
    gamma = np.array([0.7, -1.3, 2.0])
    beta = np.array([0.2, 0.0, -0.5])
    w = rng.normal(size=shape)
    arrays = [nd.array(a, dtype="float64") for a in (x, gamma, beta)]
    for a in arrays:
        a.attach_grad()
    with autograd.record():
        z, saved = C.bn_leaky_relu(*arrays, slope=0.1, inplace=inplace)
        loss = (z * nd.array(w, dtype="float64")).sum()
    loss.backward()
    np.testing.assert_allclose(z.asnumpy(), numpy_bn_leaky(x, gamma, beta), rtol=1e-10, atol=1e-10)
    h = 1e-6
    for k, a in enumerate((x, gamma, beta)):
        num = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            args = [x.copy(), gamma.copy(), beta.copy()]
            args[k][i] += h
            up = (numpy_bn_leaky(*args) * w).sum()
            args[k][i] -= 2 * h
            num[i] = (up - (numpy_bn_leaky(*args) * w).sum()) / (2 * h)
        np.testing.assert_allclose(arrays[k].grad.asnumpy(), num, rtol=1e-5, atol=1e-6)
    n = int(np.prod(shape))
    # bytes kept: z (+ 3 vectors of C) in place; x and y (+ 2 vectors) otherwise, float64
    assert saved == 8 * (n + 9 if inplace else 2 * n + 6)


def test_bn_leaky_relu_errors():
    x = nd.ones((4, 3))
    with pytest.raises(ValueError, match="nonzero"):
        C.bn_leaky_relu(x, nd.array([1.0, 0.0, 1.0]), nd.zeros(3), inplace=True)
    with pytest.raises(ValueError, match="slope"):
        C.bn_leaky_relu(x, nd.ones(3), nd.zeros(3), slope=2.0)
    with pytest.raises(ValueError, match="rank"):
        C.bn_leaky_relu(nd.ones((2, 3, 4)), nd.ones(3), nd.zeros(3))
