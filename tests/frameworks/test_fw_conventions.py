"""Batch-norm conventions, with the real PyTorch (torch.nn.BatchNorm1d/2d) and Keras
(tf.keras.layers.BatchNormalization, Keras 2.15 in TensorFlow 2.15) as the oracles for d2lbn's layers
(d2lbn.norm.BatchNorm with each implementation, d2lbn.norm.batch_norm) and MXNet's gluon.nn.BatchNorm,
all on the CPU, on the same Fashion-MNIST-derived batches and the same weights.

What these tests found when run (each asserted below):
* forward outputs (training and inference mode) and the gradients w.r.t. X, gamma and beta agree
  across all of them once eps is the same (d2lbn's three training paths: graph, closed-form, naive),
  with one exception, isolated one factor at a time: gluon.nn.BatchNorm (CPU) recorded in inference
  mode returns the training-mode formula's input gradient (on the moving statistics) when backward()
  runs with its default train_mode=True, and the affine map's gradient with
  backward(train_mode=False) or with use_global_stats=True: the backward call's mode decides;
* momentum: MXNet/d2lbn 0.9 == PyTorch 0.1 == Keras 0.9 (Keras: moving = moving * m + batch * (1 - m));
* stored variance: d2lbn and MXNet (CPU) average the biased batch variance; PyTorch the unbiased one
  (x m/(m-1)); Keras 2.15 the biased one for 2-D input BUT the unbiased one for 4-D input, where it
  uses the fused kernel (tf.compat.v1.nn.fused_batch_norm) -- the same holds for TF1's layer;
* default eps: PyTorch 1e-5, Keras 1e-3, Gluon 1e-5, nd.BatchNorm 1e-3, d2lbn 1e-5, TF1's layer 1e-3;
* PyTorch momentum=None is the plain average of the batch statistics (the first batch replaces the
  initial values); track_running_stats=False normalises with the batch statistics in eval() too;
* Keras: trainable=False runs the layer in inference mode even when called with training=True;
* torch.nn.SyncBatchNorm.convert_sync_batchnorm swaps the modules, keeping the values; on the CPU
  without a process group, the SyncBatchNorm computes what BatchNorm2d computes, in both modes;
* d2lbn.fold.fold_batch_norm gives the weights of torch.nn.utils.fusion.fuse_conv_bn_eval /
  fuse_linear_bn_eval.
Tolerances: fw_helpers (float32, RTOL = ATOL = 1e-4).
"""
import inspect

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
import torch
import tensorflow as tf

from d2lbn import fold, norm
from d2lbn.graph_norm import graph_path
from d2lbn.paths import record_paths
from .fw_helpers import (assert_close, assert_differ, bn_inputs, keras_step, loss_weights,
                        mxnet_moving, mxnet_step, numpy_batch_stats, param_init, torch_step)

KINDS = ["2d", "4d"]
MX_LAYERS = ["d2lbn-fast", "d2lbn-naive", "gluon"]


def make_mxnet(which: str, C: int, ndim: int, eps=1e-5, momentum=0.9, params=None):
    if which == "gluon":
        layer = gluon.nn.BatchNorm(momentum=momentum, epsilon=eps, in_channels=C)
    else:
        layer = norm.BatchNorm(C, ndim, eps=eps, momentum=momentum, impl=which.split("-")[1])
    layer.initialize(ctx=mx.cpu())
    if params is not None:
        gamma, beta, mean, var = params
        moving = (layer.running_mean, layer.running_var) if which == "gluon" else \
            (layer.moving_mean, layer.moving_var)
        for p, v in zip((layer.gamma, layer.beta) + moving, (gamma, beta, mean, var)):
            p.set_data(nd.array(v))
    return layer


def make_torch(C: int, ndim: int, params=None, **kwargs):
    module = (torch.nn.BatchNorm1d if ndim == 2 else torch.nn.BatchNorm2d)(C, **kwargs)
    if params is not None:
        with torch.no_grad():
            for t, v in zip((module.weight, module.bias, module.running_mean, module.running_var),
                            params):
                t.copy_(torch.from_numpy(v))
    return module


def make_keras(C: int, ndim: int, params=None, **kwargs):
    layer = tf.keras.layers.BatchNormalization(**kwargs)     # axis -1: channels last (NHWC)
    layer.build((None,) * (ndim - 1) + (C,))
    if params is not None:
        for var, v in zip((layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
                          params):
            var.assign(v)
    return layer


# ---- defaults ----------------------------------------------------------------------------------------

def test_default_eps_and_momentum():
    bn1, bn2 = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm2d(3)
    assert (bn1.eps, bn1.momentum) == (1e-5, 0.1) and (bn2.eps, bn2.momentum) == (1e-5, 0.1)
    k = tf.keras.layers.BatchNormalization()
    assert (k.epsilon, k.momentum) == (1e-3, 0.99)
    g = gluon.nn.BatchNorm()
    assert (g._kwargs["eps"], g._kwargs["momentum"]) == (1e-5, 0.9)
    d = norm.BatchNorm(3, 2)
    assert (d.eps, d.momentum) == (1e-5, 0.9)
    tf1 = inspect.signature(tf.compat.v1.layers.batch_normalization).parameters
    assert (tf1["epsilon"].default, tf1["momentum"].default) == (1e-3, 0.99)


def test_nd_batch_norm_default_eps_is_1e_3_measured():
    """nd.BatchNorm's eps default, read from its output (not its docstring): with a moving variance
    of 1e-3 the two candidate eps values give outputs that differ by a factor sqrt(2e-3 / 1.01e-3)."""
    x = nd.array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))
    one, zero = nd.ones(3), nd.zeros(3)
    var = nd.full(3, 1e-3)
    y = nd.BatchNorm(x, one, zero, zero, var, use_global_stats=True, fix_gamma=False)
    xn = x.asnumpy().astype(np.float64)
    assert_close(y, xn / np.sqrt(1e-3 + 1e-3), "nd.BatchNorm default eps = 1e-3")
    assert_differ(y, xn / np.sqrt(1e-3 + 1e-5), "nd.BatchNorm default eps is not 1e-5")


# ---- forward and gradients, training and inference mode ------------------------------------------------

# which d2lbn code ran (d2lbn.paths): the fast layer's compiled graph, its closed-form Function
# (forced with graph_path(False)), the naive formula; Gluon's layer is none of them.
TRAIN_PATHS = {"d2lbn-fast": {"graph": 1}, "d2lbn-closed-form": {"closed-form": 1},
               "d2lbn-naive": {"naive": 1}, "gluon": {}}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", list(TRAIN_PATHS))
def test_training_forward_and_gradients_agree(kind, which):
    x = bn_inputs(kind)[0]
    C, ndim = x.shape[1], x.ndim
    w = loss_weights(x.shape)
    params = param_init(C)
    layer = make_mxnet("d2lbn-fast" if which == "d2lbn-closed-form" else which, C, ndim,
                       params=params)
    with record_paths() as taken, graph_path(which != "d2lbn-closed-form"):
        mine = mxnet_step(layer, x, w, training=True)
    assert dict(taken) == TRAIN_PATHS[which], f"{which} took {dict(taken)}"
    theirs = torch_step(make_torch(C, ndim, params=params).train(), x, w)
    keras = keras_step(make_keras(C, ndim, params=params, epsilon=1e-5), x, w, training=True)
    for key in ("y", "dx", "dgamma", "dbeta"):
        assert_close(mine[key], theirs[key], f"{which} vs PyTorch, {key}")
        assert_close(mine[key], keras[key], f"{which} vs Keras, {key}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", MX_LAYERS)
def test_inference_forward_and_gradients_agree(kind, which):
    """Inference mode (PyTorch eval(), Keras training=False, MXNet recorded with train_mode=False)
    normalises with the moving statistics: a fixed affine map of X, whose gradient is
    w * gamma / sqrt(moving_var + eps) (float64 NumPy). d2lbn's layers give that gradient with
    MXNet's default backward(), as PyTorch and Keras do. Gluon's layer is compared here in its output
    and its gamma and beta gradients; its input gradient depends on the backward call's mode, which
    test_gluon_inference_input_gradient_follows_the_backward_mode isolates."""
    x = bn_inputs(kind)[1]
    C, ndim = x.shape[1], x.ndim
    w = loss_weights(x.shape)
    params = param_init(C)
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    shape = (1, C) + (1,) * (ndim - 2)
    mine = mxnet_step(make_mxnet(which, C, ndim, params=params), x, w, training=False)
    theirs = torch_step(make_torch(C, ndim, params=params).eval(), x, w)
    keras = keras_step(make_keras(C, ndim, params=params, epsilon=1e-5), x, w, training=False)
    affine_dx = w * gamma.reshape(shape) / np.sqrt(var.reshape(shape) + 1e-5)
    assert_close(theirs["dx"], affine_dx, "PyTorch eval(): dx of the affine map")
    assert_close(keras["dx"], affine_dx, "Keras training=False: dx of the affine map")
    keys = ("y", "dgamma", "dbeta") if which == "gluon" else ("y", "dx", "dgamma", "dbeta")
    for key in keys:
        assert_close(mine[key], theirs[key], f"{which} vs PyTorch eval(), {key}")
        assert_close(mine[key], keras[key], f"{which} vs Keras training=False, {key}")
    if which != "gluon":
        assert_close(mine["dx"], affine_dx, f"{which}: dx of the affine map")
    expected = gamma.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) \
        + beta.reshape(shape)
    assert_close(mine["y"], expected, "inference output = the moving-statistics formula")


def gluon_inference_dx(x, w, params, backward_train_mode, use_global_stats=False):
    """A gluon.nn.BatchNorm (CPU, eps 1e-5) with these gamma, beta and moving statistics, recorded
    in inference mode (autograd.record(train_mode=False)), then loss.backward(train_mode=...):
    the gradient of sum(w * y) w.r.t. x, and the layer."""
    layer = gluon.nn.BatchNorm(epsilon=1e-5, in_channels=x.shape[1],
                               use_global_stats=use_global_stats)
    layer.initialize(ctx=mx.cpu())
    for p, v in zip((layer.gamma, layer.beta, layer.running_mean, layer.running_var), params):
        p.set_data(nd.array(v))
    X = nd.array(x)
    X.attach_grad()
    with autograd.record(train_mode=False):
        loss = (layer(X) * nd.array(w)).sum()
    loss.backward(train_mode=backward_train_mode)
    assert X.context == mx.cpu()
    return X.grad.asnumpy(), layer


@pytest.mark.parametrize("kind", KINDS)
def test_gluon_inference_input_gradient_follows_the_backward_mode(kind):
    """The cause, one factor at a time (MXNet 1.9.1, CPU). The same Gluon layer, recorded in
    inference mode with the same data and statistics:
    * loss.backward() (its default train_mode=True) returns the TRAINING-mode formula's input
      gradient, with the moving statistics standing in for the batch's -- not the derivative of
      the affine map the forward pass computed;
    * loss.backward(train_mode=False) returns the affine map's gradient, w * gamma / sqrt(var + eps);
    * use_global_stats=True with the default backward() returns the affine map's gradient too.
    MXNet's CPU BatchNorm backward picks its formula by the backward pass's is_train (and
    use_global_stats), not by the mode the forward pass was recorded in. Oracles: float64 NumPy."""
    x = bn_inputs(kind)[1]
    C, ndim = x.shape[1], x.ndim
    w = loss_weights(x.shape)
    params = param_init(C)
    shape = (1, C) + (1,) * (ndim - 2)
    axes = (0,) if ndim == 2 else (0, 2, 3)
    gamma, _, mean, var = (p.astype(np.float64).reshape(shape) for p in params)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + 1e-5)
    affine_dx = w64 * gamma * inv_std
    xhat, dy = (x64 - mean) * inv_std, w64 * gamma
    train_formula_dx = (dy - dy.mean(axes, keepdims=True)
                        - xhat * (dy * xhat).mean(axes, keepdims=True)) * inv_std

    default_dx, g = gluon_inference_dx(x, w, params, backward_train_mode=True)
    assert_close(default_dx, train_formula_dx,
                 "backward() (train_mode=True): the training formula on the moving statistics")
    assert_differ(default_dx, affine_dx, "backward() (train_mode=True) is not the affine map's dx")
    assert_close(mxnet_moving(g)[0], params[2], "that backward() leaves the moving mean",
                 rtol=1e-6, atol=1e-6)

    eval_dx, g = gluon_inference_dx(x, w, params, backward_train_mode=False)
    assert_close(eval_dx, affine_dx, "backward(train_mode=False): the affine map's dx")
    assert_differ(eval_dx, train_formula_dx, "backward(train_mode=False) is not the training one")
    for got, want, what in zip(mxnet_moving(g), params[2:], ("mean", "variance")):
        np.testing.assert_array_equal(got, want, err_msg=f"train_mode=False: moving {what} kept")

    global_dx, _ = gluon_inference_dx(x, w, params, backward_train_mode=True,
                                      use_global_stats=True)
    assert_close(global_dx, affine_dx, "use_global_stats=True, backward(): the affine map's dx")


def test_naive_batch_norm_function_agrees_with_torch():
    """The function d2lbn.norm.batch_norm (training=True) against BatchNorm1d: output and the
    returned moving statistics (MXNet convention, momentum 0.9, biased variance)."""
    x = bn_inputs("2d")[2]
    gamma, beta, mean, var = param_init(x.shape[1])
    Y, new_mean, new_var = norm.batch_norm(nd.array(x), nd.array(gamma), nd.array(beta),
                                           nd.array(mean), nd.array(var), training=True)
    module = make_torch(x.shape[1], 2, params=(gamma, beta, mean, var)).train()
    y = module(torch.from_numpy(x))
    m = x.shape[0]
    assert_close(Y, y, "batch_norm output vs BatchNorm1d")
    assert_close(new_mean, module.running_mean, "moving mean, 0.9 (MXNet) == 0.1 (PyTorch)")
    # PyTorch's running_var took the unbiased batch variance: undo the factor on the batch part.
    _, biased, _ = numpy_batch_stats(x)
    torch_batch_part = module.running_var.numpy() - 0.9 * var
    assert_close(torch_batch_part, 0.1 * biased * m / (m - 1), "PyTorch: unbiased batch variance")
    assert_close(new_var.asnumpy() - 0.9 * var, 0.1 * biased, "d2lbn: biased batch variance")


# ---- moving statistics after N steps ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_moving_statistics_after_n_steps(kind):
    """N = 4 training steps (forward + backward + SGD on gamma, beta) on the same batches: the
    moving means agree under MXNet 0.9 == PyTorch 0.1 == Keras 0.9; the moving variances agree once
    each batch's variance is taken the framework's way (biased or unbiased x m/(m-1))."""
    batches = bn_inputs(kind)
    C, ndim, m_per_channel = batches[0].shape[1], batches[0].ndim, None
    mx_layers = {w: make_mxnet(w, C, ndim, momentum=0.9) for w in MX_LAYERS}
    tmod = make_torch(C, ndim, momentum=0.1).train()
    klayer = make_keras(C, ndim, momentum=0.9, epsilon=1e-5)
    mean_ref, var_biased, var_unbiased = np.zeros(C), np.ones(C), np.ones(C)
    for x in batches:
        w = loss_weights(x.shape)
        outs = {name: mxnet_step(layer, x, w, training=True, lr=0.1)
                for name, layer in mx_layers.items()}
        t = torch_step(tmod, x, w, lr=0.1)
        k = keras_step(klayer, x, w, training=True, lr=0.1)
        for name, out in outs.items():   # same outputs step by step (gamma, beta trained alike)
            assert_close(out["y"], t["y"], f"{name} vs PyTorch output during training")
            assert_close(out["y"], k["y"], f"{name} vs Keras output during training")
        bm, bv, bu = numpy_batch_stats(x)
        mean_ref = 0.9 * mean_ref + 0.1 * bm
        var_biased = 0.9 * var_biased + 0.1 * bv
        var_unbiased = 0.9 * var_unbiased + 0.1 * bu
        m_per_channel = x.size // C
    for name, layer in mx_layers.items():
        mean, var = mxnet_moving(layer)
        assert_close(mean, tmod.running_mean, f"{name} moving mean vs PyTorch (momentum 0.1)")
        assert_close(mean, klayer.moving_mean, f"{name} moving mean vs Keras (momentum 0.9)")
        assert_close(var, var_biased, f"{name} stores the biased variance")
        assert_differ(var, tmod.running_var, f"{name} vs PyTorch's moving variance")
    assert_close(tmod.running_var, var_unbiased, "PyTorch stores the unbiased variance")
    # The mapping, stated on the stored values: the batches' part differs by m/(m-1).
    initial = 0.9 ** len(batches)
    d2_var = mxnet_moving(mx_layers["d2lbn-fast"])[1]
    factor = m_per_channel / (m_per_channel - 1)
    assert_close(tmod.running_var.numpy() - initial, factor * (d2_var - initial),
                 "PyTorch's batch part = d2lbn's x m/(m-1)")
    assert_close(tmod.weight.detach(), mx_layers["d2lbn-fast"].gamma.data(),
                 "gamma after 4 SGD steps")
    keras_var = klayer.moving_variance.numpy()
    if ndim == 2:
        assert_close(keras_var, var_biased, "Keras 2-D input: biased variance")
    else:
        # Measured: for 4-D input Keras 2.15 uses the fused kernel, whose variance output carries
        # Bessel's correction, and stores that: the UNBIASED variance, as PyTorch does.
        assert klayer.fused, "Keras 2.15 takes the fused path for 4-D input"
        assert_close(keras_var, var_unbiased, "Keras 4-D (fused): unbiased variance")
        assert_differ(keras_var, var_biased, "Keras 4-D is not the biased variance")


def test_gluon_updates_moving_statistics_in_backward_on_cpu():
    """MXNet's gluon.nn.BatchNorm on the CPU: the forward pass in training mode leaves the moving
    statistics alone, backward() writes them (d2lbn's layer writes them in the forward pass)."""
    x = bn_inputs("2d")[0]
    g = make_mxnet("gluon", x.shape[1], 2)
    d = make_mxnet("d2lbn-fast", x.shape[1], 2)
    X = nd.array(x)
    with autograd.record():
        yg, yd = g(X), d(X)
        total = (yg + yd).sum()
    assert_close(mxnet_moving(g)[0], np.zeros(x.shape[1]), "gluon: not yet after forward")
    bm, bv, _ = numpy_batch_stats(x)
    assert_close(mxnet_moving(d)[0], 0.1 * bm, "d2lbn: already after forward")
    total.backward()
    assert_close(mxnet_moving(g)[0], 0.1 * bm, "gluon: after backward")
    assert_close(mxnet_moving(g)[1], 0.9 + 0.1 * bv, "gluon: biased variance")


# ---- PyTorch: momentum=None, track_running_stats=False ---------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_torch_momentum_none_is_the_plain_average(kind):
    """momentum=None: after k batches running = the mean of the k batch statistics (the initial 0
    and 1 are forgotten at the first batch). In MXNet's convention that is momentum (k-1)/k at step
    k, which d2lbn.norm.batch_norm reproduces (momentum 0 at the first step)."""
    batches = bn_inputs(kind)
    C, ndim = batches[0].shape[1], batches[0].ndim
    module = make_torch(C, ndim, momentum=None).train()
    mean, var = nd.zeros(C), nd.ones(C)
    gamma, beta = nd.ones(C), nd.zeros(C)
    for k, x in enumerate(batches, start=1):
        module(torch.from_numpy(x))
        _, mean, var = norm.batch_norm(nd.array(x), gamma, beta, mean, var, training=True,
                                       momentum=(k - 1) / k)
    stats = [numpy_batch_stats(x) for x in batches]
    assert int(module.num_batches_tracked) == len(batches)
    assert_close(module.running_mean, np.mean([s[0] for s in stats], axis=0), "plain average of means")
    assert_close(module.running_var, np.mean([s[2] for s in stats], axis=0),
                 "plain average of the unbiased variances")
    assert_close(mean, module.running_mean, "d2lbn with momentum (k-1)/k")
    assert_close(var, np.mean([s[1] for s in stats], axis=0), "d2lbn: biased, averaged alike")


@pytest.mark.parametrize("kind", KINDS)
def test_torch_track_running_stats_false_uses_batch_statistics_in_eval(kind):
    x = bn_inputs(kind)[3]
    C, ndim = x.shape[1], x.ndim
    module = make_torch(C, ndim, track_running_stats=False)
    assert module.running_mean is None and module.running_var is None
    y_eval = module.eval()(torch.from_numpy(x)).detach()
    y_train = module.train()(torch.from_numpy(x)).detach()
    ours = make_mxnet("d2lbn-fast", C, ndim)
    with autograd.train_mode():
        Y = ours(nd.array(x))
    assert_close(y_eval, Y, "eval() with track_running_stats=False = d2lbn in training mode")
    assert_close(y_eval, y_train, "the same in train() and eval()")


# ---- Keras: trainable=False ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_keras_trainable_false_runs_in_inference_mode(kind):
    """Since TF 2.0 a Keras BatchNormalization with trainable=False normalises with its moving
    statistics and does not update them, even when called with training=True."""
    x = bn_inputs(kind)[0]
    C, ndim = x.shape[1], x.ndim
    params = param_init(C)
    w = loss_weights(x.shape)
    frozen = make_keras(C, ndim, params=params)          # Keras's default eps 1e-3
    frozen.trainable = False
    out = keras_step(frozen, x, w, training=True)
    assert_close(frozen.moving_mean, params[2], "moving mean not updated")
    assert_close(frozen.moving_variance, params[3], "moving variance not updated")
    assert frozen.trainable_weights == [], "an optimizer gets nothing to train"
    ours = mxnet_step(make_mxnet("d2lbn-fast", C, ndim, eps=1e-3, params=params), x, w,
                      training=False)
    assert_close(out["y"], ours["y"], "trainable=False + training=True == d2lbn inference mode")
    assert_close(out["dx"], ours["dx"], "and its input gradient")
    live = make_keras(C, ndim, params=params)
    live_out = keras_step(live, x, w, training=True)
    assert_differ(live_out["y"], out["y"], "trainable=True uses the batch statistics")
    assert_differ(live.moving_mean, params[2], "trainable=True updates the moving mean")


# ---- TF1: tf.compat.v1.layers.batch_normalization and UPDATE_OPS -----------------------------------------

def _tf1_run(batches, with_update_ops: bool, lr=0.1):
    """TF1 graph mode: the layer (momentum 0.9, eps 1e-5) on a placeholder, N SGD steps on
    sum(w * y). Returns (moving_mean, moving_var, gamma, beta, outputs)."""
    tf1 = tf.compat.v1
    x0 = batches[0]
    C = x0.shape[1]
    graph = tf.Graph()
    with graph.as_default():
        X = tf1.placeholder(tf.float32, (None,) + tuple(np.moveaxis(x0, 1, -1).shape[1:]))
        Wt = tf1.placeholder(tf.float32, X.shape)
        training = tf1.placeholder(tf.bool, [])
        Y = tf1.layers.batch_normalization(X, training=training, momentum=0.9, epsilon=1e-5)
        loss = tf.reduce_sum(Y * Wt)
        opt = tf1.train.GradientDescentOptimizer(lr)
        update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        assert len(update_ops) == 2, update_ops      # moving mean and moving variance
        if with_update_ops:
            with tf1.control_dependencies(update_ops):
                train_op = opt.minimize(loss)
        else:
            train_op = opt.minimize(loss)
        names = ["moving_mean", "moving_variance", "gamma", "beta"]
        variables = {v.name.split("/")[-1].split(":")[0]: v for v in tf1.global_variables()}
        outputs = []
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            for x in batches:
                feed = {X: np.moveaxis(x, 1, -1), Wt: np.moveaxis(loss_weights(x.shape), 1, -1),
                        training: True}
                y, _ = sess.run([Y, train_op], feed)
                outputs.append(np.moveaxis(y, -1, 1))
            values = sess.run([variables[n] for n in names])
    assert values[0].shape == (C,)
    return values + [outputs]


@pytest.mark.filterwarnings("ignore:`tf.layers.batch_normalization` is deprecated")
@pytest.mark.parametrize("kind", KINDS)
def test_tf1_layer_updates_moving_statistics_only_through_update_ops(kind):
    batches = bn_inputs(kind)
    C, ndim = batches[0].shape[1], batches[0].ndim
    mean0, var0, *_ = _tf1_run(batches, with_update_ops=False)
    assert_close(mean0, np.zeros(C), "without UPDATE_OPS the moving mean stays at 0")
    assert_close(var0, np.ones(C), "without UPDATE_OPS the moving variance stays at 1")
    mean, var, gamma, beta, outputs = _tf1_run(batches, with_update_ops=True)
    ours = make_mxnet("d2lbn-fast", C, ndim)
    for x, y in zip(batches, outputs):
        out = mxnet_step(ours, x, loss_weights(x.shape), training=True, lr=0.1)
        assert_close(out["y"], y, "TF1 layer output vs d2lbn, step by step")
    d_mean, d_var = mxnet_moving(ours)
    assert_close(mean, d_mean, "TF1 moving mean (momentum 0.9) vs d2lbn")
    assert_close(gamma, ours.gamma.data(), "gamma after the same SGD steps")
    assert_close(beta, ours.beta.data(), "beta after the same SGD steps")
    _, var_unbiased, var_biased = None, None, None
    stats = [numpy_batch_stats(x) for x in batches]
    var_biased, var_unbiased = np.ones(C), np.ones(C)
    for _, bv, bu in stats:
        var_biased, var_unbiased = 0.9 * var_biased + 0.1 * bv, 0.9 * var_unbiased + 0.1 * bu
    if ndim == 2:
        assert_close(var, d_var, "TF1 2-D: biased variance, as d2lbn")
    else:   # measured: 4-D input takes the fused kernel, which stores the unbiased variance
        assert_close(var, var_unbiased, "TF1 4-D (fused): unbiased variance")
        assert_differ(var, d_var, "TF1 4-D differs from d2lbn's biased variance")


# ---- SyncBatchNorm -------------------------------------------------------------------------------------

def test_convert_sync_batchnorm_swaps_modules_and_keeps_values():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    x = torch.from_numpy(bn_inputs("4d")[0])
    net.train()(x)                                 # non-trivial running statistics
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ref_eval = net.eval()(x).detach()
    ref_train = net.train()(x).detach()
    net.load_state_dict(before)                    # undo the statistics update of that call
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    for k, v in synced.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert_close(synced.eval()(x), ref_eval, "eval(): the same output")
    # Measured: on the CPU with no process group, training mode falls back to plain batch norm.
    assert not torch.distributed.is_initialized()
    assert_close(synced.train()(x), ref_train, "train() on the CPU, no process group")


# ---- folding -----------------------------------------------------------------------------------------

def test_fold_matches_torch_fusion():
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
    torch.manual_seed(1)
    conv, bn2 = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4).eval()
    lin, bn1 = torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6).eval()
    for bn in (bn2, bn1):
        with torch.no_grad():
            n = bn.num_features
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_(2, 0.5)
            bn.running_var.uniform_(2, 10)
    x4 = torch.from_numpy(bn_inputs("4d")[0])
    x2 = torch.from_numpy(bn_inputs("2d")[0])
    for layer, bn, x in ((conv, bn2, x4), (lin, bn1, x2)):
        fused = (fuse_conv_bn_eval if isinstance(layer, torch.nn.Conv2d) else fuse_linear_bn_eval)(
            layer.eval(), bn)
        w, b = fold.fold_batch_norm(*(nd.array(t.detach().numpy()) for t in (
            layer.weight, layer.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)),
            eps=bn.eps)
        assert_close(w, fused.weight, f"{type(layer).__name__}: folded weight")
        assert_close(b, fused.bias, f"{type(layer).__name__}: folded bias")
        assert_close(fused(x), bn(layer(x)), "torch: fused layer == layer then BN (eval)")
