"""ch13's studies: batch norm in test-time adaptation, federated, per-example, GAN, few-shot
and contrastive setups.

Every study runs a small conv net (:func:`convnet`) on Fashion-MNIST images ``X: (N, 1, 28,
28)`` in [0, 1] with labels ``y: (N,)``; training is chapter 9's ``practice.fit``. The library
pieces live in ``d2lbn.adapt`` (TENT), ``d2lbn.federated`` (FedAvg/FedBN) and
``d2lbn.cond_norm`` (conditional batch norm, coupling); the shifts and AdaBN are chapter 9's
(``d2lbn.practice``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from . import practice as P
from .adapt import tent
from .checks import check_int, check_real
from .cond_norm import ConditionalBatchNorm
from .federated import aggregate
from .moving_stats import batch_norm_layers, frozen_moving_statistics, statistic_params
from .norm import BatchNorm, LayerNorm
from .repro import set_seed

__all__ = ["NORMS", "convnet", "train_convnet", "copy_net", "SHIFTS", "accuracy_of",
           "batch_stats_scores", "noisy", "majority_share", "local_statistics_accuracy", "adabn_accuracy", "tent_accuracy", "class_sorted",
           "federated_run", "intensity_from_first_bn", "mlp", "per_example_loss",
           "critic_penalty_spread", "Generator", "Critic", "train_cgan", "standing_statistics",
           "sample", "train_with_ema", "ema_teacher", "features", "episode", "nearest_centroid_accuracy",
           "info_nce", "shuffle_permutation", "encode_in_groups", "augment_views",
           "contrastive_encoder", "train_contrastive", "contrastive_accuracy", "knn_accuracy"]

#: The normalisation choices of :func:`convnet` and :func:`mlp`.
NORMS = ("batch", "layer", "none")


# ---- the net ------------------------------------------------------------------------------------

def convnet(norm: str = "batch", num_classes: int = 10) -> nn.HybridSequential:
    """Conv(16, 3x3, no padding) -> [BN] -> ReLU -> MaxPool(2) -> Conv(32, 3x3) ->
    [BN] -> ReLU -> MaxPool(2) -> Dense(64) -> [BN] -> ReLU -> Dense(num_classes),
    Gluon layers, hybridizable; X: (N, 1, 28, 28) -> (N, num_classes). ``norm``:
    ``'batch'`` (``nn.BatchNorm``) or ``'none'``. The first conv has no padding, so
    its output's mean over a batch is (up to the border) ``sum(w_c) * mean pixel +
    b_c``, which :func:`intensity_from_first_bn` inverts."""
    if norm not in ("batch", "none"):
        raise ValueError(f"convnet's norm must be 'batch' or 'none'; got {norm!r}")
    num_classes = check_int("num_classes", num_classes)
    net = nn.HybridSequential()
    for layer in (nn.Conv2D(16, 3), nn.Conv2D(32, 3), nn.Dense(64)):
        net.add(layer)
        if norm == "batch":
            net.add(nn.BatchNorm())
        net.add(nn.Activation("relu"))
        if not isinstance(layer, nn.Dense):
            net.add(nn.MaxPool2D(2))
    net.add(nn.Dense(num_classes))
    return net


def train_convnet(data, seed: int, epochs: int, lr: float = 0.05, batch_size: int = 128,
                  num_classes: int = 10, norm: str = "batch") -> Tuple[nn.HybridSequential,
                                                                        P.FitResult]:
    """A fresh :func:`convnet` trained with ``practice.fit`` (SGD momentum 0.9, half-cosine
    learning rate) on ``data = (train_X, train_y, test_X, test_y)``; returns (net, result)."""
    net = convnet(norm, num_classes)
    net.hybridize(static_alloc=True)
    result = P.fit(net, data, epochs, lr, seed=seed, batch_size=batch_size)
    return net, result


def copy_net(net: nn.HybridSequential, num_classes: int = 10) -> nn.HybridSequential:
    """A :func:`convnet` holding a copy of every parameter of ``net`` (moving statistics too)."""
    norm = "batch" if batch_norm_layers(net) else "none"
    new = convnet(norm, num_classes)
    P.copy_params(net, new)
    new.hybridize(static_alloc=True)
    return new


# ---- test-time adaptation -------------------------------------------------------------------------

def noisy(X: nd.NDArray, sigma: float = 0.4, seed: int = 0) -> nd.NDArray:
    """``clip(X + sigma * noise, 0, 1)`` with Gaussian noise drawn from NumPy's generator
    ``seed`` (the same noise for the same X shape and seed). X: any shape, values in [0, 1]."""
    sigma = check_real("sigma", sigma, positive=True)
    noise = np.random.default_rng(seed).normal(0.0, sigma, X.shape).astype(np.float32)
    return nd.clip(X + nd.array(noise, ctx=X.context), 0, 1)


#: Chapter 9's shifts (same parameters) and Gaussian pixel noise (not an affine change of the
#: input, so batch statistics alone cannot undo it).
SHIFTS: Dict[str, Callable[[nd.NDArray], nd.NDArray]] = {
    "low contrast": lambda X: P.brightness_contrast(X, 0.4, 0.5),
    "dark": lambda X: P.brightness_contrast(X, -0.2, 0.6),
    "inverted": P.invert,
    "noisy": noisy,
}


def majority_share(scores: nd.NDArray) -> float:
    """The share of rows of scores (N, K) predicted as the most frequent class (1/K for
    balanced predictions, 1 when every prediction is one class: a collapse)."""
    counts = np.bincount(scores.argmax(axis=1).asnumpy().astype(int), minlength=scores.shape[1])
    return float(counts.max() / counts.sum())


def _batches(X: nd.NDArray, batch_size: int):
    batch_size = check_int("batch_size", batch_size, minimum=2)
    n = X.shape[0] - X.shape[0] % batch_size        # whole batches only (no batch of one)
    if n == 0:
        raise ValueError(f"X holds {X.shape[0]} examples, fewer than one batch of {batch_size}")
    return [X[i:i + batch_size] for i in range(0, n, batch_size)], n


def accuracy_of(scores: nd.NDArray, y: nd.NDArray) -> float:
    """Share of rows of scores (N, K) whose argmax equals y (first N labels)."""
    n = scores.shape[0]
    return float((scores.argmax(axis=1) == y[:n].astype(scores.dtype)).mean().asscalar())


def batch_stats_scores(net: gluon.Block, X: nd.NDArray, batch_size: int) -> nd.NDArray:
    """Scores with every batch-norm layer normalising with the test batch's own statistics
    (training-mode forward, no update of anything: TENT with zero steps). Whole batches only."""
    batches, _ = _batches(X, batch_size)
    with frozen_moving_statistics(net), autograd.train_mode():
        return nd.concat(*[net(b) for b in batches], dim=0)


def adabn_accuracy(net: nn.HybridSequential, X: nd.NDArray, y: nd.NDArray,
                   unlabelled: nd.NDArray) -> float:
    """AdaBN (``practice.recalibrate_bn``) on a copy of net with the unlabelled shifted images,
    then inference-mode accuracy on (X, y)."""
    new = copy_net(net)
    P.recalibrate_bn(new, unlabelled)
    return P.evaluate(new, X, y)


def tent_accuracy(net: nn.HybridSequential, X: nd.NDArray, y: nd.NDArray, batch_size: int,
                  lr: float, steps: int = 1, passes: int = 1, optimizer: str = "sgd",
                  seed: int = 0) -> Tuple[List[float], List[float]]:
    """TENT (``d2lbn.adapt.tent``) on a copy of net, online over the stream X in batches of
    ``batch_size`` (in the given order), ``passes`` times; returns, for each pass, the accuracy
    of the stream's predictions (made batch by batch while adapting) and their
    :func:`majority_share`."""
    passes = check_int("passes", passes)
    new = copy_net(net)
    set_seed(seed)
    batches, n = _batches(X, batch_size)
    out, shares = [], []
    for _ in range(passes):
        scores = tent(new, batches, lr, steps=steps, optimizer=optimizer)
        out.append(accuracy_of(scores, y[:n]))
        shares.append(majority_share(scores))
    return out, shares


def class_sorted(X: nd.NDArray, y: nd.NDArray) -> Tuple[nd.NDArray, nd.NDArray]:
    """X and y reordered by label (a stable sort): a label-imbalanced stream, each batch from
    one class or two."""
    order = np.argsort(y.asnumpy(), kind="stable")
    idx = nd.array(order, ctx=X.context)
    return X.take(idx), y.take(idx)


# ---- federated learning ---------------------------------------------------------------------------

def federated_run(clients: Sequence[Tuple[nd.NDArray, nd.NDArray, nd.NDArray, nd.NDArray]],
                  keep_norm_local: bool, rounds: int, local_epochs: int, lr: float,
                  seed: int, batch_size: int = 64):
    """Simulated federated training in one process: every client starts from the same
    :func:`convnet`, trains ``local_epochs`` on its data ``(train_X, train_y, test_X, test_y)``
    each round, then ``d2lbn.federated.aggregate`` averages (weights: the clients' numbers of
    training images) all parameters (FedAvg) or all but batch norm's (FedBN,
    ``keep_norm_local=True``). Returns ``(accuracy per client after the last round on its own
    test images, the client nets, the uploads of the last round)``; an upload is what the
    server receives from a client before averaging: ``{name: array}`` by structural name."""
    rounds, local_epochs = check_int("rounds", rounds), check_int("local_epochs", local_epochs)
    lr = check_real("lr", lr, positive=True)
    set_seed(seed)
    first = convnet()
    first.initialize(mx.init.Xavier())
    first(clients[0][0][:2])
    nets = [copy_net(first) for _ in clients]
    weights = [c[0].shape[0] for c in clients]
    uploads = []
    for r in range(rounds):
        for net, data in zip(nets, clients):
            P.fit(net, data, local_epochs, lr, seed=None, init=False, batch_size=batch_size,
                  cosine=False)
        if r == rounds - 1:
            uploads = [{k: p.data().asnumpy().copy()
                        for k, p in net._collect_params_with_prefix().items()} for net in nets]
        aggregate(nets, weights, keep_norm_local=keep_norm_local)
    accs = [P.evaluate(net, data[2], data[3]) for net, data in zip(nets, clients)]
    return accs, nets, uploads


def local_statistics_accuracy(nets, clients) -> List[float]:
    """Each client's accuracy on its own test images after recomputing its net's moving
    statistics on its own training images (``practice.recalibrate_bn``, on a copy): the same
    weights, gamma and beta, only statistics that describe those weights on that client's data."""
    out = []
    for net, (train_X, _, test_X, test_y) in zip(nets, clients):
        new = copy_net(net)
        P.recalibrate_bn(new, train_X)
        out.append(P.evaluate(new, test_X, test_y))
    return out


def intensity_from_first_bn(upload: Dict[str, np.ndarray]) -> float:
    """Estimate a client's mean pixel intensity from what it uploads under FedAvg: the first
    conv's weight ``w`` (C, 1, 3, 3) and bias ``b`` (C,), and the first batch-norm layer's
    moving mean ``m`` (C,). Without padding, a channel's mean output is ``s_c t + b_c`` with
    ``s_c = sum(w_c)`` and ``t`` the mean pixel (away from the border), so least squares over
    channels gives ``t = sum_c s_c (m_c - b_c) / sum_c s_c^2``."""
    w, b, m = upload["0.weight"], upload["0.bias"], upload["1.running_mean"]
    s = w.reshape(w.shape[0], -1).sum(axis=1).astype(np.float64)
    return float((s * (m - b)).sum() / (s * s).sum())


# ---- per-example gradients ------------------------------------------------------------------------

def mlp(norm: str, hidden: int = 64, in_units: int = 784, out_units: int = 10) -> nn.Sequential:
    """Dense(hidden) -> norm -> ReLU -> Dense(out_units) on flattened X (N, in_units); ``norm``
    in :data:`NORMS`: ``d2lbn.norm.BatchNorm``, ``d2lbn.norm.LayerNorm`` or none. Initialised
    (Xavier)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    net = nn.Sequential()
    net.add(nn.Dense(hidden, in_units=in_units))
    if norm == "batch":
        net.add(BatchNorm(hidden, 2))
    elif norm == "layer":
        net.add(LayerNorm(hidden, 2))
    net.add(nn.Activation("relu"), nn.Dense(out_units, in_units=hidden))
    net.initialize(mx.init.Xavier())
    return net


def per_example_loss(net: gluon.Block, y: nd.NDArray) -> Callable[[nd.NDArray], nd.NDArray]:
    """``X -> (N,)``: softmax cross-entropy of each example of X (flattened) with labels y."""
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    return lambda X: loss(net(X.reshape((X.shape[0], -1))), y)


def critic_penalty_spread(critic: Callable[[nd.NDArray], nd.NDArray], x: nd.NDArray,
                          pool: nd.NDArray, batch_size: int, trials: int,
                          seed: int = 0) -> np.ndarray:
    """The WGAN-GP penalty of the one example ``x`` (1, ...) in ``trials`` batches that differ
    only in its ``batch_size - 1`` companions, drawn from ``pool``: returns (trials,) penalties
    (all equal when the critic maps examples alone)."""
    from .cond_norm import gradient_penalty
    trials = check_int("trials", trials)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        idx = rng.choice(pool.shape[0], batch_size - 1, replace=False)
        batch = nd.concat(x, pool.take(nd.array(idx, ctx=pool.context)), dim=0)
        out.append(gradient_penalty(critic, batch)[0])
    return np.array(out)


# ---- a small class-conditional GAN ----------------------------------------------------------------

class Generator(nn.Block):
    """z (N, latent) and labels y (N,) -> images (N, 784) in [0, 1]:
    Dense(hidden) -> CBN -> ReLU -> Dense(2 hidden) -> CBN -> ReLU -> Dense(784) -> sigmoid,
    with ``d2lbn.cond_norm.ConditionalBatchNorm`` (class-conditional gamma, beta)."""

    def __init__(self, latent: int = 32, hidden: int = 128, num_classes: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.latent = check_int("latent", latent)
        with self.name_scope():
            self.d1 = nn.Dense(hidden, in_units=latent)
            self.n1 = ConditionalBatchNorm(hidden, num_classes)
            self.d2 = nn.Dense(2 * hidden, in_units=hidden)
            self.n2 = ConditionalBatchNorm(2 * hidden, num_classes)
            self.out = nn.Dense(784, in_units=2 * hidden)

    def forward(self, z: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        h = nd.relu(self.n1(self.d1(z), y))
        h = nd.relu(self.n2(self.d2(h), y))
        return nd.sigmoid(self.out(h))


class Critic(nn.HybridBlock):
    """A projection discriminator without normalization (Miyato & Koyama, 2018):
    x (N, 784), y (N,) -> scores (N,): ``psi(phi(x)) + embed(y) . phi(x)``."""

    def __init__(self, hidden: int = 256, num_classes: int = 10, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.phi = nn.HybridSequential()
            self.phi.add(nn.Dense(hidden, in_units=784), nn.LeakyReLU(0.2),
                         nn.Dense(hidden, in_units=hidden), nn.LeakyReLU(0.2))
            self.psi = nn.Dense(1, in_units=hidden)
            self.embed = nn.Embedding(num_classes, hidden)

    def hybrid_forward(self, F, x, y):
        h = self.phi(x)
        return self.psi(h).reshape((-1,)) + (self.embed(y) * h).sum(axis=1)


def train_cgan(X: nd.NDArray, y: nd.NDArray, steps: int, seed: int, batch_size: int = 64,
               lr: float = 1e-3) -> Generator:
    """Train a :class:`Generator` against a :class:`Critic` with the non-saturating GAN loss
    (Adam, beta1 = 0.5) for ``steps`` steps on images X (N, 1, 28, 28) or (N, 784) with labels y;
    the generator's batch-norm layers see batches of generated images of mixed classes."""
    steps = check_int("steps", steps)
    set_seed(seed)
    X = X.reshape((X.shape[0], -1))
    G, D = Generator(), Critic()
    G.initialize(mx.init.Xavier())
    D.initialize(mx.init.Xavier())
    D.hybridize()
    opts = {"learning_rate": lr, "beta1": 0.5}
    g_tr, d_tr = (gluon.Trainer(G.collect_params(), "adam", opts),
                  gluon.Trainer(D.collect_params(), "adam", opts))
    bce = gluon.loss.SigmoidBinaryCrossEntropyLoss()
    ones, zeros = nd.ones(batch_size), nd.zeros(batch_size)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = nd.array(rng.choice(X.shape[0], batch_size, replace=False))
        real, labels = X.take(idx), y.take(idx)
        z = nd.random.normal(shape=(batch_size, G.latent))
        fake_labels = nd.array(rng.integers(0, 10, batch_size))
        with autograd.record():
            fake = G(z, fake_labels)
            d_loss = (bce(D(real, labels), ones) + bce(D(fake.detach(), fake_labels), zeros))
        d_loss.backward()
        d_tr.step(batch_size)
        with autograd.record():
            g_loss = bce(D(G(z, fake_labels), fake_labels), ones)
        g_loss.backward()
        g_tr.step(batch_size)
    return G


def standing_statistics(G: Generator, num_batches: int, batch_size: int, seed: int) -> None:
    """BigGAN's "standing statistics": replace each batch-norm layer's moving statistics by the
    average of the batch means and variances over ``num_batches`` generated batches (mixed
    classes), in training mode."""
    num_batches = check_int("num_batches", num_batches)
    layers = [G.n1, G.n2]
    sums = [[0.0, 0.0] for _ in layers]
    hooks = []
    for k, layer in enumerate(layers):
        def hook(block, inputs, k=k):
            h = inputs[0].asnumpy().astype(np.float64)
            sums[k][0] = sums[k][0] + h.mean(axis=0)
            sums[k][1] = sums[k][1] + h.var(axis=0)
        hooks.append(layer.register_forward_pre_hook(hook))
    rng = np.random.default_rng(seed)
    try:
        with frozen_moving_statistics(G), autograd.train_mode():
            for _ in range(num_batches):
                G(nd.random.normal(shape=(batch_size, G.latent)),
                  nd.array(rng.integers(0, 10, batch_size)))
    finally:
        for h in hooks:
            h.detach()
    for layer, (s, v) in zip(layers, sums):
        layer.moving_mean.set_data(nd.array(s / num_batches))
        layer.moving_var.set_data(nd.array(v / num_batches))


def sample(G: Generator, labels: nd.NDArray, mode: str, seed: int, batch_size: int = 100
           ) -> nd.NDArray:
    """Images (N, 1, 28, 28) for labels (N,): ``mode='inference'`` uses the stored statistics,
    ``'batch'`` normalises each batch of ``batch_size`` with its own statistics."""
    if mode not in ("inference", "batch"):
        raise ValueError(f"mode must be 'inference' or 'batch'; got {mode!r}")
    mx.random.seed(seed)
    z = nd.random.normal(shape=(labels.shape[0], G.latent))
    out = []
    with frozen_moving_statistics(G):
        for i in range(0, labels.shape[0], batch_size):
            if mode == "batch":
                with autograd.train_mode():
                    out.append(G(z[i:i + batch_size], labels[i:i + batch_size]))
            else:
                out.append(G(z[i:i + batch_size], labels[i:i + batch_size]))
    return nd.concat(*out, dim=0).reshape((-1, 1, 28, 28))


# ---- few-shot episodes ----------------------------------------------------------------------------

def features(net: nn.HybridSequential, X: nd.NDArray, transductive: bool) -> nd.NDArray:
    """The penultimate features (N, 64) of a :func:`convnet`: every layer but the last. With
    ``transductive=True`` every batch-norm layer normalises with the statistics of X itself
    (all of it as one batch); otherwise with the stored ones (each example alone)."""
    body = net[:-1]
    if transductive:
        with frozen_moving_statistics(net), autograd.train_mode():
            return body(X)
    return body(X)


def episode(X: nd.NDArray, y: nd.NDArray, classes: Sequence[int], shots: int,
            queries: Sequence[int], rng: np.random.Generator):
    """Draw a few-shot episode from images X with labels y: ``shots`` support images of each of
    ``classes`` and ``queries[k]`` query images of ``classes[k]`` (disjoint from the support).
    Returns (support_X, support_labels, query_X, query_labels) with labels 0..len(classes)-1."""
    shots = check_int("shots", shots)
    if len(queries) != len(classes):
        raise ValueError("queries must give one count per class")
    labels = y.asnumpy()
    s_idx, q_idx, s_lab, q_lab = [], [], [], []
    for k, (c, q) in enumerate(zip(classes, queries)):
        q = check_int("queries[k]", q, minimum=0)
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots + q:
            raise ValueError(f"class {c} has {len(pool)} images, fewer than {shots + q}")
        pick = rng.choice(pool, shots + q, replace=False)
        s_idx += list(pick[:shots])
        q_idx += list(pick[shots:])
        s_lab += [k] * shots
        q_lab += [k] * q
    take = lambda idx: X.take(nd.array(idx, ctx=X.context))
    return take(s_idx), np.array(s_lab), take(q_idx), np.array(q_lab)


def nearest_centroid_accuracy(support: nd.NDArray, s_lab: np.ndarray, query: nd.NDArray,
                              q_lab: np.ndarray) -> float:
    """Classify each query feature (Q, F) by the nearest class centroid of the support features
    (S, F) (Euclidean); return the *balanced* accuracy: the mean over the query's classes of
    the share of that class's queries classified correctly (so a query set's class balance does
    not change the score of a classifier that treats each query alone, only its noise)."""
    S, Q = support.asnumpy().astype(np.float64), query.asnumpy().astype(np.float64)
    s_lab, q_lab = np.asarray(s_lab), np.asarray(q_lab)
    if S.shape[0] != len(s_lab) or Q.shape[0] != len(q_lab):
        raise ValueError("support and query must have one label per row")
    centroids = np.stack([S[s_lab == k].mean(axis=0) for k in range(s_lab.max() + 1)])
    d = ((Q[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    right = d.argmin(axis=1) == q_lab
    return float(np.mean([right[q_lab == k].mean() for k in np.unique(q_lab)]))


# ---- EMA (mean) teachers --------------------------------------------------------------------------

def train_with_ema(data, seed: int, epochs: int, decay: float = 0.99, lr: float = 0.05,
                   batch_size: int = 128):
    """Train a :func:`convnet` (the student) with SGD (momentum 0.9, constant ``lr``) on
    ``data = (train_X, train_y, test_X, test_y)`` and keep an exponential moving average of
    *every* one of its parameters, moving statistics included, after each step:
    ``avg = decay * avg + (1 - decay) * student`` (a mean teacher). Returns
    ``(student, avg)`` with ``avg`` a dict of NDArrays by structural name."""
    from .data import ArrayLoader
    epochs = check_int("epochs", epochs)
    decay = check_real("decay", decay)
    if not 0 < decay < 1:
        raise ValueError(f"decay must be in (0, 1); got {decay!r}")
    train_X, train_y = data[0], data[1]
    set_seed(seed)
    student = convnet()
    student.initialize(mx.init.Xavier())
    student.hybridize(static_alloc=True)
    student(train_X[:2])
    params = student._collect_params_with_prefix()
    avg = {k: p.data().copy() for k, p in params.items()}
    trainer = gluon.Trainer(student.collect_params(), "sgd",
                            {"learning_rate": check_real("lr", lr, positive=True),
                             "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(epochs):
        for X, y in ArrayLoader(train_X, train_y, batch_size, shuffle=True):
            with autograd.record():
                loss = loss_fn(student(X), y)
            loss.backward()
            trainer.step(X.shape[0])
            for k, p in params.items():
                avg[k][:] = decay * avg[k] + (1 - decay) * p.data()
    return student, avg


def ema_teacher(student: nn.HybridSequential, avg, statistics: str,
                X: Optional[nd.NDArray] = None) -> nn.HybridSequential:
    """A teacher net with the averaged weights, gamma and beta of ``avg`` and batch-norm
    statistics ``'copied'`` from the student, ``'averaged'`` (from ``avg``, like every
    other parameter) or ``'recomputed'`` over images X (``practice.recalibrate_bn`` on
    the averaged net)."""
    if statistics not in ("copied", "averaged", "recomputed"):
        raise ValueError("statistics must be 'copied', 'averaged' or 'recomputed'; "
                         f"got {statistics!r}")
    teacher = copy_net(student)
    for k, p in teacher._collect_params_with_prefix().items():
        is_stat = k.endswith(("running_mean", "running_var"))
        if not is_stat or statistics != "copied":
            p.set_data(avg[k])
    if statistics == "recomputed":
        if X is None:
            raise ValueError("statistics='recomputed' needs the images X")
        P.recalibrate_bn(teacher, X)
    return teacher


# ---- contrastive learning: the intra-batch leak and shuffling batch norm -------------

def info_nce(q: nd.NDArray, k: nd.NDArray, tau: float = 0.2
             ) -> Tuple[nd.NDArray, nd.NDArray]:
    """InfoNCE over the batch: queries ``q: (N, D)`` and keys ``k: (N, D)``, row ``i``
    of ``k`` the positive of row ``i`` of ``q``, every other row a negative. Both are
    scaled to unit length; ``logits = q k^T / tau`` (N, N); the loss of query ``i`` is
    ``-log softmax(logits_i)[i]``. Returns ``(losses (N,), logits (N, N))``."""
    tau = check_real("tau", tau, positive=True)
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError("q and k must be (N, D) of one shape; "
                         f"got {q.shape} and {k.shape}")
    q = q / nd.sqrt((q * q).sum(axis=1, keepdims=True) + 1e-12)
    k = k / nd.sqrt((k * k).sum(axis=1, keepdims=True) + 1e-12)
    logits = nd.dot(q, k, transpose_b=True) / tau
    n = q.shape[0]
    idx = nd.arange(n, dtype=logits.dtype)
    return -nd.log_softmax(logits, axis=1).pick(idx, axis=1), logits


def shuffle_permutation(n: int, rng: np.random.Generator
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """A random order of ``n`` rows and its inverse: ``X[perm][inverse] == X``."""
    n = check_int("n", n)
    perm = rng.permutation(n)
    return perm, np.argsort(perm)


def encode_in_groups(net: gluon.Block, X: nd.NDArray, groups: int,
                     perm: Optional[np.ndarray] = None) -> nd.NDArray:
    """Encode ``X: (N, ...)`` in ``groups`` equal sub-batches, one call of ``net``
    each, so that in training mode every batch-norm layer normalises each sub-batch
    with its own statistics (chapter 7's per-device statistics, on one device). With
    ``perm`` the rows are put in that order first and the outputs put back (MoCo's
    shuffling batch norm): row ``i`` of the result is the encoding of ``X[i]``."""
    groups = check_int("groups", groups)
    n = X.shape[0]
    if n % groups:
        raise ValueError(f"{n} rows do not split into {groups} equal sub-batches")
    if perm is not None:
        perm = np.asarray(perm)
        if sorted(perm.tolist()) != list(range(n)):
            raise ValueError(f"perm must be a permutation of range({n})")
        X = X.take(nd.array(perm, dtype="int64"))
    Z = nd.concat(*[net(p) for p in nd.split(X, groups, axis=0)], dim=0) \
        if groups > 1 else net(X)
    if perm is not None:
        Z = Z.take(nd.array(np.argsort(perm), dtype="int64"))
    return Z


def augment_views(X: nd.NDArray, rng: np.random.Generator, shift: int = 3,
                  noise: float = 0.1) -> nd.NDArray:
    """One random view of each image of ``X: (N, 1, 28, 28)``: a circular shift of up to
    ``shift`` pixels each way, a brightness factor in [0.6, 1.4] and Gaussian noise of
    standard deviation ``noise``. Returns ``(N, 784)``."""
    Xn = X.asnumpy()
    n = Xn.shape[0]
    out = np.empty_like(Xn)
    shifts = rng.integers(-shift, shift + 1, (n, 2))
    for i in range(n):
        out[i] = np.roll(Xn[i], tuple(shifts[i]), axis=(1, 2))
    out = out * rng.uniform(0.6, 1.4, (n, 1, 1, 1)) + rng.normal(0, noise, out.shape)
    return nd.array(out.reshape(n, -1), dtype=X.dtype)


def contrastive_encoder(hidden: int = 256, dim: int = 64) -> nn.Sequential:
    """Dense(hidden) -> BN -> ReLU -> Dense(hidden) -> BN -> ReLU -> Dense(dim), Gluon's
    batch norm; input ``(N, 784)``, output ``(N, dim)``."""
    net = nn.Sequential()
    net.add(nn.Dense(hidden), nn.BatchNorm(), nn.Activation("relu"),
            nn.Dense(hidden), nn.BatchNorm(), nn.Activation("relu"), nn.Dense(dim))
    return net


def train_contrastive(X: nd.NDArray, seed: int, steps: int, batch_size: int = 256,
                      groups: int = 16, shuffle: bool = False, tau: float = 0.2,
                      lr: float = 1e-3) -> Tuple[nn.Sequential, List[float]]:
    """Train :func:`contrastive_encoder` with InfoNCE on two views of each of
    ``batch_size`` images drawn from ``X: (N, 1, 28, 28)``: queries and keys are
    encoded in ``groups`` sub-batches each (:func:`encode_in_groups`), keys in the
    queries' order (``shuffle=False``: a query and its positive key share sub-batch
    statistics) or in a fresh random order each step (``shuffle=True``: shuffling batch
    norm). Adam, ``lr``.
    Returns the net and the contrastive accuracy of each step (share of queries whose
    largest logit is their positive key)."""
    steps = check_int("steps", steps)
    set_seed(seed)
    rng = np.random.default_rng(seed)
    net = contrastive_encoder()
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "adam",
                            {"learning_rate": check_real("lr", lr, positive=True)})
    accs = []
    target = nd.arange(batch_size)
    for _ in range(steps):
        Xb = X.take(nd.array(rng.choice(X.shape[0], batch_size, replace=False)))
        q_in, k_in = augment_views(Xb, rng), augment_views(Xb, rng)
        perm = shuffle_permutation(batch_size, rng)[0] if shuffle else None
        with autograd.record():
            loss, logits = info_nce(encode_in_groups(net, q_in, groups),
                                    encode_in_groups(net, k_in, groups, perm), tau)
            loss = loss.mean()
        loss.backward()
        trainer.step(1)
        accs.append(float((logits.argmax(axis=1) == target).mean().asscalar()))
    return net, accs


def contrastive_accuracy(net: gluon.Block, X: nd.NDArray, groups: int, keys: str,
                         seed: int = 0) -> float:
    """Share of images of ``X: (N, 1, 28, 28)`` (one batch) whose query view finds its
    key view among the N keys. ``keys='same'``: training-mode statistics, keys in the
    queries' sub-batches; ``'shuffled'``: training-mode statistics, keys in shuffled
    sub-batches; ``'inference'``: the stored statistics, no batch dependence. Moving
    statistics are left unchanged."""
    if keys not in ("same", "shuffled", "inference"):
        raise ValueError("keys must be 'same', 'shuffled' or 'inference'; "
                         f"got {keys!r}")
    rng = np.random.default_rng(seed)
    q_in, k_in = augment_views(X, rng), augment_views(X, rng)
    n = X.shape[0]
    if keys == "inference":
        q, k = net(q_in), net(k_in)
    else:
        perm = shuffle_permutation(n, rng)[0] if keys == "shuffled" else None
        with frozen_moving_statistics(net), autograd.train_mode():
            q = encode_in_groups(net, q_in, groups)
            k = encode_in_groups(net, k_in, groups, perm)
    _, logits = info_nce(q, k)
    return float((logits.argmax(axis=1) == nd.arange(n)).mean().asscalar())


def knn_accuracy(net: gluon.Block, Xa: nd.NDArray, ya: nd.NDArray, Xb: nd.NDArray,
                 yb: nd.NDArray) -> float:
    """1-nearest-neighbour accuracy (cosine similarity) of the frozen features in
    inference mode: each image of ``Xb`` takes the label of its nearest image of
    ``Xa``."""
    fa = net(Xa.reshape((Xa.shape[0], -1)))
    fb = net(Xb.reshape((Xb.shape[0], -1)))
    fa = fa / nd.norm(fa, axis=1, keepdims=True)
    fb = fb / nd.norm(fb, axis=1, keepdims=True)
    pred = ya.take(nd.dot(fb, fa, transpose_b=True).argmax(axis=1))
    return float((pred == yb.astype(pred.dtype)).mean().asscalar())
