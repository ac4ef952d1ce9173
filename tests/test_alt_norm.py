"""ch11: d2lbn.alt_norm against independent oracles: float64 NumPy written from the papers'
formulas, MXNet 1.9.1's own GroupNorm / InstanceNorm / LayerNorm / BatchNorm, numerical
gradients; the identities of the chapter; clear errors on bad input."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from conftest import numpy_batch_norm
from d2lbn import alt_norm as A
from d2lbn.backward import numerical_gradient
from d2lbn.norm import batch_norm


def f64(*arrays):
    return [nd.array(a, dtype="float64") for a in arrays]


def np_group_norm(x, gamma, beta, G, eps=1e-5):
    """Wu & He (2018), eq. (1)-(3) and their Figure 3 code, in float64."""
    N, C = x.shape[:2]
    xg = x.reshape(N, G, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    xh = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    shape = (1, C) + (1,) * (x.ndim - 2)
    return gamma.reshape(shape) * xh + beta.reshape(shape)


def np_bn_stats(x):
    """(mean, biased var) per channel over every axis but 1, float64."""
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)


def np_renorm_train(x, gamma, beta, mu, var_run, r_max, d_max, eps):
    """Ioffe (2017), Algorithm 1, float64."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mb, vb = np_bn_stats(x)
    sb, s = np.sqrt(vb + eps), np.sqrt(var_run + eps)
    r = np.clip(sb / s, 1 / r_max, r_max)
    d = np.clip((mb - mu) / s, -d_max, d_max)
    xh = (x - mb.reshape(shape)) / sb.reshape(shape) * r.reshape(shape) + d.reshape(shape)
    return gamma.reshape(shape) * xh + beta.reshape(shape), r, d


# ---- group, instance, layer norm -----------------------------------------------------------

@pytest.mark.parametrize("shape,G", [((3, 6, 4, 5), 1), ((3, 6, 4, 5), 2), ((3, 6, 4, 5), 3),
                                     ((3, 6, 4, 5), 6), ((4, 8, 7), 4), ((5, 12), 3)])
def test_group_norm_matches_float64_formula(shape, G, rng):
    x = rng.normal(2, 3, size=shape)
    C = shape[1]
    gamma, beta = rng.uniform(0.5, 2, C), rng.normal(size=C)
    ours = A.group_norm(*f64(x, gamma, beta), num_groups=G).asnumpy()
    np.testing.assert_allclose(ours, np_group_norm(x, gamma, beta, G), rtol=1e-10, atol=1e-10)


def test_group_norm_matches_mxnet_group_norm(rng):
    # MXNet 1.9.1's GroupNorm takes gamma, beta of shape (num_groups,): one scale per GROUP.
    # With a per-channel gamma constant within each group, ours must equal it.
    x = rng.normal(size=(2, 6, 3, 4)).astype(np.float32)
    g_group, b_group = np.array([0.5, 2.0], np.float32), np.array([1.0, -1.0], np.float32)
    gamma, beta = np.repeat(g_group, 3), np.repeat(b_group, 3)
    ours = A.group_norm(nd.array(x), nd.array(gamma), nd.array(beta), 2).asnumpy()
    theirs = nd.GroupNorm(nd.array(x), nd.array(g_group), nd.array(b_group), num_groups=2,
                          eps=1e-5).asnumpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    with pytest.raises(mx.base.MXNetError):      # MXNet refuses a per-channel gamma
        nd.GroupNorm(nd.array(x), nd.array(gamma), nd.array(beta), num_groups=2).wait_to_read()


def test_instance_norm_matches_mxnet_instance_norm(rng):
    # nd.InstanceNorm's default eps is 1e-3; its docs write sqrt(var) + eps but 1.9.1 computes
    # sqrt(var + eps), which the large eps below tells apart.
    x = rng.normal(size=(3, 5, 4, 4)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    for eps in (1e-5, 0.5):
        ours = A.instance_norm(nd.array(x), nd.array(gamma), nd.array(beta), eps).asnumpy()
        theirs = nd.InstanceNorm(nd.array(x), nd.array(gamma), nd.array(beta),
                                 eps=eps).asnumpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_group_of_one_is_layer_norm_with_per_channel_affine(rng):
    x = rng.normal(size=(3, 4, 5, 5)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    ours = A.group_norm(nd.array(x), nd.array(gamma), nd.array(beta), 1).asnumpy()
    # MXNet's LayerNorm over the flattened example, then the per-channel affine by hand
    flat = nd.LayerNorm(nd.array(x.reshape(3, -1)), nd.ones(100), nd.zeros(100), axis=-1,
                        eps=1e-5).asnumpy().reshape(x.shape)
    expected = gamma.reshape(1, 4, 1, 1) * flat + beta.reshape(1, 4, 1, 1)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_group_norm_gradient_matches_numerical(rng):
    x, gamma, beta = rng.normal(size=(2, 4, 3)), rng.uniform(0.5, 2, 4), rng.normal(size=4)
    w = rng.normal(size=x.shape)
    X, g, b = f64(x, gamma, beta)
    X.attach_grad()
    with autograd.record():
        loss = (A.group_norm(X, g, b, 2) * nd.array(w, dtype="float64")).sum()
    loss.backward()
    num = numerical_gradient(lambda a: float((np_group_norm(a, gamma, beta, 2) * w).sum()), x)
    np.testing.assert_allclose(X.grad.asnumpy(), num, rtol=1e-5, atol=1e-7)


def test_group_norm_layer_is_independent_of_the_batch(rng):
    layer = A.GroupNorm(6, 3)
    layer.initialize()
    x = nd.array(rng.normal(size=(4, 6, 5, 5)))
    with autograd.train_mode():
        whole = layer(x).asnumpy()
    alone = layer(x[1:2]).asnumpy()                      # inference mode, batch of one
    np.testing.assert_allclose(whole[1:2], alone, rtol=1e-6, atol=1e-6)


# ---- batch renormalization ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 5), (6, 4, 9)])
def test_renorm_matches_float64_algorithm(shape, rng):
    x = rng.normal(1, 2, size=shape)
    C = shape[1]
    gamma, beta = rng.uniform(0.5, 2, C), rng.normal(size=C)
    mu, var = rng.normal(size=C), rng.uniform(0.2, 8, C)   # far enough for some clipping
    Y, new_mu, new_var = A.batch_renorm(*f64(x, gamma, beta, mu, var), training=True,
                                        r_max=1.5, d_max=0.5, eps=1e-5, momentum=0.9)
    y_ref, r, d = np_renorm_train(x, gamma, beta, mu, var, 1.5, 0.5, 1e-5)
    assert (r == 1.5).any() or (r == 1 / 1.5).any() or (np.abs(d) == 0.5).any()  # clipping ran
    np.testing.assert_allclose(Y.asnumpy(), y_ref, rtol=1e-10, atol=1e-10)
    mb, vb = np_bn_stats(x)
    np.testing.assert_allclose(new_mu.asnumpy(), 0.9 * mu + 0.1 * mb, rtol=1e-12)
    np.testing.assert_allclose(new_var.asnumpy(), 0.9 * var + 0.1 * vb, rtol=1e-12)


def test_renorm_at_r1_d0_is_batch_norm(rng):
    x = rng.normal(3, 2, size=(5, 4, 3, 3))
    gamma, beta, mu, var = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), \
        rng.uniform(0.5, 3, 4)
    Y, m1, v1 = A.batch_renorm(*f64(x, gamma, beta, mu, var), training=True, r_max=1.0,
                               d_max=0.0)
    y_ref, _, _ = numpy_batch_norm(x, gamma, beta)
    np.testing.assert_allclose(Y.asnumpy(), y_ref, rtol=1e-10, atol=1e-10)
    Yb, m2, v2 = batch_norm(*f64(x, gamma, beta, mu, var), training=True)
    np.testing.assert_allclose(m1.asnumpy(), m2.asnumpy(), rtol=1e-12)
    np.testing.assert_allclose(v1.asnumpy(), v2.asnumpy(), rtol=1e-12)
    # and MXNet's own BatchNorm (eps passed explicitly: nd.BatchNorm's default is 1e-3)
    with autograd.train_mode():
        theirs = nd.BatchNorm(*f64(x, gamma, beta, mu, var), eps=1e-5, fix_gamma=False)
    np.testing.assert_allclose(Y.asnumpy(), theirs.asnumpy(), rtol=1e-6, atol=1e-6)


def test_renorm_training_equals_inference_with_exact_moving_statistics(rng):
    x = rng.normal(3, 2, size=(6, 3, 4, 4))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    mb, vb = np_bn_stats(x)
    args = f64(x, gamma, beta, mb, vb)
    train, _, _ = A.batch_renorm(*args, training=True, r_max=3, d_max=5)
    infer, _, _ = A.batch_renorm(*args, training=False, r_max=3, d_max=5)
    np.testing.assert_allclose(train.asnumpy(), infer.asnumpy(), rtol=1e-10, atol=1e-10)


def test_renorm_no_gradient_through_r_and_d(rng):
    x = rng.normal(1, 2, size=(5, 3))
    gamma, beta, mu, var = rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), \
        rng.uniform(0.2, 8, 3)
    w = rng.normal(size=x.shape)
    X, g, b, m, v = f64(x, gamma, beta, mu, var)
    X.attach_grad()
    with autograd.record():
        loss = (A.batch_renorm(X, g, b, m, v, training=True, r_max=1.5, d_max=0.5)[0]
                * nd.array(w, dtype="float64")).sum()
    loss.backward()
    _, r0, d0 = np_renorm_train(x, gamma, beta, mu, var, 1.5, 0.5, 1e-5)

    def frozen(a):      # r and d held at their values at x: constants
        mb, vb = a.mean(axis=0), a.var(axis=0)
        y = gamma * ((a - mb) / np.sqrt(vb + 1e-5) * r0 + d0) + beta
        return float((y * w).sum())
    np.testing.assert_allclose(X.grad.asnumpy(), numerical_gradient(frozen, x),
                               rtol=1e-5, atol=1e-7)

    def through(a):     # r and d differentiated: must NOT match
        return float((np_renorm_train(a, gamma, beta, mu, var, 1.5, 0.5, 1e-5)[0] * w).sum())
    assert not np.allclose(X.grad.asnumpy(), numerical_gradient(through, x), atol=1e-4)


def test_renorm_schedule():
    assert A.renorm_limits(0, 10, 20, 10) == (1.0, 0.0)
    assert A.renorm_limits(10, 10, 20, 10) == (1.0, 0.0)
    assert A.renorm_limits(20, 10, 20, 10) == pytest.approx((2.0, 5.0))
    assert A.renorm_limits(1000, 10, 20, 10) == (3.0, 5.0)


def test_renorm_layer_follows_schedule_and_updates_statistics(rng):
    layer = A.BatchRenorm(3, hold=1, r_steps=2, d_steps=2)
    layer.initialize()
    x = nd.array(rng.normal(4, 2, size=(8, 3)))
    with autograd.record():
        y0 = layer(x)                  # step 0: batch norm
    ref, mb, vb = numpy_batch_norm(x.asnumpy(), np.ones(3), np.zeros(3))
    np.testing.assert_allclose(y0.asnumpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.data().asnumpy(), 0.1 * mb, rtol=1e-5)
    assert layer.step == 1 and layer.limits() == (1.0, 0.0)
    with autograd.record():
        layer(x)
    assert layer.limits() == pytest.approx((2.0, 2.5))


def test_renorm_bad_limits(rng):
    args = [nd.array(rng.normal(size=(4, 3)))] + [nd.ones(3)] * 4
    with pytest.raises(ValueError, match="r_max must be >= 1"):
        A.batch_renorm(*args, training=True, r_max=0.5, d_max=0)
    with pytest.raises(ValueError, match="d_max must be >= 0"):
        A.batch_renorm(*args, training=True, r_max=2, d_max=-1)
    with pytest.raises(ValueError, match="r_max"):
        A.BatchRenorm(3, r_max=0.9)


# ---- ghost batch norm -----------------------------------------------------------------------

def test_ghost_with_one_ghost_is_batch_norm(rng):
    x = rng.normal(2, 3, size=(6, 4, 3, 3))
    gamma, beta, mu, var = rng.uniform(0.5, 2, 4), rng.normal(size=4), np.zeros(4), np.ones(4)
    Y, m1, v1 = A.ghost_batch_norm(*f64(x, gamma, beta, mu, var), training=True,
                                   virtual_batch_size=6)
    Yb, m2, v2 = batch_norm(*f64(x, gamma, beta, mu, var), training=True)
    np.testing.assert_allclose(Y.asnumpy(), numpy_batch_norm(x, gamma, beta)[0], rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(m1.asnumpy(), m2.asnumpy(), rtol=1e-12)
    np.testing.assert_allclose(v1.asnumpy(), v2.asnumpy(), rtol=1e-12)


@pytest.mark.parametrize("shape,V", [((12, 5), 4), ((8, 3, 4, 4), 2), ((6, 3, 7), 3)])
def test_ghost_is_per_slice_batch_norm(shape, V, rng):
    x = rng.normal(1, 2, size=shape)
    C = shape[1]
    gamma, beta, mu, var = rng.uniform(0.5, 2, C), rng.normal(size=C), np.zeros(C), np.ones(C)
    Y, m, v = A.ghost_batch_norm(*f64(x, gamma, beta, mu, var), training=True,
                                 virtual_batch_size=V, momentum=0.9)
    ys, means, varis = [], [], []
    for k in range(shape[0] // V):
        xs = x[k * V:(k + 1) * V]
        mb, vb = np_bn_stats(xs)
        shp = (1, C) + (1,) * (x.ndim - 2)
        ys.append(gamma.reshape(shp) * (xs - mb.reshape(shp)) / np.sqrt(vb.reshape(shp) + 1e-5)
                  + beta.reshape(shp))
        means.append(mb)
        varis.append(vb)
    np.testing.assert_allclose(Y.asnumpy(), np.concatenate(ys), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.asnumpy(), 0.1 * np.mean(means, axis=0), rtol=1e-10)
    np.testing.assert_allclose(v.asnumpy(), 0.9 + 0.1 * np.mean(varis, axis=0), rtol=1e-10)


def test_ghost_equals_per_device_statistics_of_d2lbn_parallel(rng):
    """k ghosts on one device = d2lbn.parallel's per-device ('local') LeNet on k CPU contexts."""
    from d2lbn import models, parallel
    ctxs = [mx.cpu(0), mx.cpu(1)]
    X = nd.array(rng.uniform(size=(8, 1, 28, 28)))
    _, many = parallel.reference_and_data_parallel("local", ctxs, X, seed=3)
    ghost = models._build(lambda c, d: A.GhostBatchNorm(c, virtual_batch_size=4), "relu")
    ghost.initialize(ctx=mx.cpu(0))
    with autograd.predict_mode():
        ghost(X)
    for src, dst in zip(many.collect_params().values(), ghost.collect_params().values()):
        dst.set_data(src.data(ctxs[0]))
    Xs, _ = parallel.split_batch(X, nd.zeros(8), ctxs)
    with autograd.train_mode():
        per_device = np.concatenate([many(Xk).asnumpy() for Xk in Xs])
        ours = ghost(X).asnumpy()
    np.testing.assert_allclose(ours, per_device, rtol=1e-4, atol=1e-5)


def test_ghost_bad_virtual_batch(rng):
    args = [nd.array(rng.normal(size=(10, 3)))] + [nd.ones(3)] * 4
    with pytest.raises(ValueError, match="must divide the batch size N=10"):
        A.ghost_batch_norm(*args, training=True, virtual_batch_size=4)
    with pytest.raises(ValueError, match="one value per channel"):
        A.ghost_batch_norm(*args, training=True, virtual_batch_size=1)


# ---- masked batch norm ----------------------------------------------------------------------

def test_masked_full_mask_is_batch_norm(rng):
    x = rng.normal(2, 3, size=(4, 3, 7))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    Y, m, v = A.masked_batch_norm(*f64(x, np.ones((4, 7)), gamma, beta, np.zeros(3), np.ones(3)),
                                  training=True)
    ref, mb, vb = numpy_batch_norm(x[..., None], gamma, beta)      # (N, C, L, 1)
    np.testing.assert_allclose(Y.asnumpy(), ref[..., 0], rtol=1e-10, atol=1e-10)
    with autograd.train_mode():      # MXNet's BatchNorm on the 3-D input
        theirs = nd.BatchNorm(*f64(x, gamma, beta, np.zeros(3), np.ones(3)), eps=1e-5,
                              fix_gamma=False)
    np.testing.assert_allclose(Y.asnumpy(), theirs.asnumpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v.asnumpy(), 0.9 + 0.1 * vb, rtol=1e-10)


def test_masked_uses_valid_positions_only(rng):
    x = rng.normal(2, 3, size=(3, 2, 6))
    lengths = [6, 2, 4]
    mask = np.zeros((3, 6))
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    x_pad = x * mask[:, None, :] + 50.0 * (1 - mask[:, None, :])     # garbage in the padding
    gamma, beta = rng.uniform(0.5, 2, 2), rng.normal(size=2)
    Y, m, v = A.masked_batch_norm(*f64(x_pad, mask, gamma, beta, np.zeros(2), np.ones(2)),
                                  training=True)
    valid = np.concatenate([x[i, :, :n] for i, n in enumerate(lengths)], axis=1)   # (C, M)
    mb, vb = valid.mean(axis=1), valid.var(axis=1)
    expected = (gamma[None, :, None] * (x - mb[None, :, None]) / np.sqrt(vb[None, :, None] + 1e-5)
                + beta[None, :, None]) * mask[:, None, :]
    np.testing.assert_allclose(Y.asnumpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.asnumpy(), 0.1 * mb, rtol=1e-10)
    # more padding changes nothing at the valid positions
    x_more = np.concatenate([x_pad, np.zeros((3, 2, 5))], axis=2)
    mask_more = np.concatenate([mask, np.zeros((3, 5))], axis=1)
    Y2, _, _ = A.masked_batch_norm(*f64(x_more, mask_more, gamma, beta, np.zeros(2), np.ones(2)),
                                   training=True)
    np.testing.assert_allclose(Y2.asnumpy()[..., :6], Y.asnumpy(), rtol=1e-12, atol=1e-12)


def test_masked_gradient_matches_numerical(rng):
    x = rng.normal(size=(2, 2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=float)
    gamma, beta = rng.uniform(0.5, 2, 2), rng.normal(size=2)
    w = rng.normal(size=x.shape)
    X, M, g, b, m0, v0 = f64(x, mask, gamma, beta, np.zeros(2), np.ones(2))
    X.attach_grad()
    with autograd.record():
        loss = (A.masked_batch_norm(X, M, g, b, m0, v0, training=True)[0]
                * nd.array(w, dtype="float64")).sum()
    loss.backward()

    def f(a):
        valid = np.concatenate([a[0], a[1, :, :2]], axis=1)
        mb, vb = valid.mean(axis=1)[None, :, None], valid.var(axis=1)[None, :, None]
        y = (gamma[None, :, None] * (a - mb) / np.sqrt(vb + 1e-5) + beta[None, :, None]) * mask[:, None]
        return float((y * w).sum())
    np.testing.assert_allclose(X.grad.asnumpy(), numerical_gradient(f, x), rtol=1e-5, atol=1e-7)


def test_masked_bad_masks(rng):
    X = nd.array(rng.normal(size=(2, 3, 4)))
    vecs = [nd.ones(3)] * 4
    with pytest.raises(ValueError, match=r"mask must have shape \(N, L\) = \(2, 4\)"):
        A.masked_batch_norm(X, nd.ones((2, 5)), *vecs, training=True)
    with pytest.raises(ValueError, match="all padding"):
        A.masked_batch_norm(X, nd.array([[1, 1, 0, 0], [0, 0, 0, 0]]), *vecs, training=True)
    with pytest.raises(ValueError, match="only 0"):
        A.masked_batch_norm(X, nd.array([[1, 0.5, 0, 0], [1, 0, 0, 0]]), *vecs, training=True)
    with pytest.raises(TypeError, match="mask must be an mxnet NDArray"):
        A.masked_batch_norm(X, np.ones((2, 4)), *vecs, training=True)


# ---- bad input to group norm ----------------------------------------------------------------

def test_group_norm_bad_groups(rng):
    X = nd.array(rng.normal(size=(2, 6, 3, 3)))
    with pytest.raises(ValueError, match="num_groups=4 must divide the number of channels C=6"):
        A.group_norm(X, nd.ones(6), nd.zeros(6), 4)
    with pytest.raises(ValueError, match="must divide"):
        A.GroupNorm(6, 4)
    with pytest.raises(ValueError, match="shape \\(6,\\)"):
        A.group_norm(X, nd.ones(3), nd.zeros(3), 3)
    with pytest.raises(TypeError, match="astype"):
        A.group_norm(X.astype("int32"), nd.ones(6), nd.zeros(6), 3)
    with pytest.raises(ValueError, match="rank >= 3"):
        A.instance_norm(nd.ones((2, 3)), nd.ones(3), nd.zeros(3))


# ---- adaptive gradient clipping -------------------------------------------------------------

def test_adaptive_grad_clip_matches_formula(rng):
    dense = gluon.nn.Dense(4, in_units=3)
    dense.initialize()
    w = rng.normal(size=(4, 3)).astype(np.float32)
    w[0] *= 1e-5                          # a unit whose norm is below eps
    dense.weight.set_data(nd.array(w))
    g = rng.normal(size=(4, 3)).astype(np.float32) * np.array([[1], [0.001], [10], [1]], np.float32)
    dense.weight.grad()[:] = nd.array(g)
    gb = rng.normal(size=4).astype(np.float32)
    dense.bias.grad()[:] = nd.array(gb)
    b = dense.bias.data().asnumpy()
    A.adaptive_grad_clip(dense.collect_params().values(), clipping=0.05, eps=1e-3)
    expected = []
    for W, G in ((w, g), (b[:, None], gb[:, None])):
        wn = np.maximum(np.linalg.norm(W.astype(np.float64), axis=1, keepdims=True), 1e-3)
        gn = np.linalg.norm(G.astype(np.float64), axis=1, keepdims=True)
        expected.append(np.where(gn / wn > 0.05, 0.05 * wn / gn * G, G))
    np.testing.assert_allclose(dense.weight.grad().asnumpy(), expected[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dense.bias.grad().asnumpy(), expected[1][:, 0], rtol=1e-5,
                               atol=1e-7)
    assert np.abs(expected[0][1] - g[1]).max() == 0        # the small gradient is untouched
    with pytest.raises(ValueError, match="clipping"):
        A.adaptive_grad_clip(dense.collect_params().values(), clipping=0)


def test_group_norm_refuses_groups_of_one_value():
    with pytest.raises(ValueError, match="holds one value"):
        A.group_norm(nd.ones((2, 3)), nd.ones(3), nd.zeros(3), 3)
