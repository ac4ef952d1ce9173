"""Seed 001 (a PyTorch batch-norm tutorial, shared/seeds/001_*.txt), run in PyTorch on Fashion-MNIST.

The seed writes ``batch_norm_1d`` by hand for an MLP (784 -> 100 -> BN -> ReLU -> 10) and uses
``nn.BatchNorm2d`` in a small conv net. Its hand-written layer has three slips, each shown below as it
runs, then removed:

1. the momentum: it updates ``moving = 0.1 * moving + 0.9 * batch`` -- PyTorch's value 0.1 put into
   MXNet's formula -- so the "moving average" keeps 90% of the LAST batch (nn.BatchNorm1d, momentum
   0.1, keeps 10% of it; MXNet's 0.9 does the same);
2. the moving statistics are plain tensors assigned in place from tensors that require grad: they
   pick up autograd history (the seed's own printout ends in ``grad_fn=<SliceBackward>``), which
   keeps each step's graph alive through the next;
3. the mode is a ``forward(x, is_train=True)`` argument, which ``net.eval()`` does not touch: the
   PyTorch idiom ``net.eval(); net(x)`` still normalises with the batch's statistics and updates the
   moving statistics with evaluation data. (The moving variance also starts at 0, not 1.)

The fixed layer registers buffers (mean 0, variance 1), follows ``self.training``, and updates under
``torch.no_grad()`` in PyTorch's convention with momentum 0.1; it keeps the seed's biased variance.
It is checked against d2lbn (MXNet, momentum 0.9) and nn.BatchNorm1d on the same batches and weights:
outputs, gradients, parameters and moving statistics over three SGD steps, and inference predictions.
The seed's conv net (nn.BatchNorm2d) is checked the same way against d2lbn's layer in an MXNet twin.
SGD as in the seed: learning rate 0.1 on the mean cross-entropy. Tolerances: fw_helpers (float32;
RTOL = ATOL = 1e-4).
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
import torch
from torch import nn

from d2lbn import norm, porting
from .fw_helpers import assert_close, assert_differ, fashion, numpy_batch_stats

BATCH, STEPS, LR = 32, 3, 0.1


# ---- the seed's layer, as it wrote it (kept to show its slips) ---------------------------------------

def seed_batch_norm_1d(x, gamma, beta, is_training, moving_mean, moving_var, moving_momentum=0.1):
    eps = 1e-5
    x_mean = torch.mean(x, dim=0, keepdim=True)
    x_var = torch.mean((x - x_mean) ** 2, dim=0, keepdim=True)
    if is_training:
        x_hat = (x - x_mean) / torch.sqrt(x_var + eps)
        moving_mean[:] = moving_momentum * moving_mean + (1. - moving_momentum) * x_mean.cpu()
        moving_var[:] = moving_momentum * moving_var + (1. - moving_momentum) * x_var.cpu()
    else:
        x_hat = (x - moving_mean) / torch.sqrt(moving_var + eps)
    return gamma.view_as(x_mean) * x_hat + beta.view_as(x_mean)


class SeedMLP(nn.Module):
    """The seed's ``multi_network``."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(784, 100)
        self.relu = nn.ReLU(True)
        self.layer2 = nn.Linear(100, 10)
        self.gamma = nn.Parameter(torch.randn(100))
        self.beta = nn.Parameter(torch.randn(100))
        self.moving_mean = torch.zeros(100)
        self.moving_var = torch.zeros(100)

    def forward(self, x, is_train=True):
        x = self.layer1(x)
        x = seed_batch_norm_1d(x, self.gamma, self.beta, is_train, self.moving_mean,
                               self.moving_var)
        return self.layer2(self.relu(x))


# ---- fixed -----------------------------------------------------------------------------------------

class FixedBatchNorm1d(nn.Module):
    """The seed's formula with its slips removed (PyTorch convention, momentum 0.1)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))     # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))      # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        if self.training:
            mean = x.mean(dim=0)
            var = ((x - mean) ** 2).mean(dim=0)          # biased, as the seed (and d2lbn)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
        else:
            mean, var = self.running_mean, self.running_var
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


class FixedMLP(nn.Module):
    def __init__(self, bn):
        super().__init__()
        self.layer1, self.bn, self.relu, self.layer2 = nn.Linear(784, 100), bn, nn.ReLU(), \
            nn.Linear(100, 10)

    def forward(self, x):
        return self.layer2(self.relu(self.bn(self.layer1(x))))


def batches(flat: bool):
    X, y = fashion(BATCH * (STEPS + 1))
    X = (X - 0.5) / 0.5                        # the seed's data_tf
    if flat:
        X = X.reshape(len(X), -1)
    return [(X[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]) for i in range(STEPS + 1)]


def mxnet_mlp():
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(100), norm.BatchNorm(100, 2), gluon.nn.Activation("relu"),
            gluon.nn.Dense(10))
    net.initialize(ctx=mx.cpu())
    net(nd.zeros((2, 784)))
    return net


def copy_mlp(tnet, net):
    """torch MLP (layer1, bn, layer2) -> the MXNet twin (Dense, BatchNorm, Activation, Dense)."""
    net[0].weight.set_data(nd.array(tnet.layer1.weight.detach().numpy()))
    net[0].bias.set_data(nd.array(tnet.layer1.bias.detach().numpy()))
    net[1].gamma.set_data(nd.array(tnet.bn.weight.detach().numpy()))
    net[1].beta.set_data(nd.array(tnet.bn.bias.detach().numpy()))
    net[3].weight.set_data(nd.array(tnet.layer2.weight.detach().numpy()))
    net[3].bias.set_data(nd.array(tnet.layer2.bias.detach().numpy()))


def torch_sgd_step(tnet, x, y):
    tnet.zero_grad(set_to_none=True)
    scores = tnet(torch.from_numpy(x))
    nn.functional.cross_entropy(scores, torch.from_numpy(y)).backward()   # mean, as the seed
    with torch.no_grad():
        for p in tnet.parameters():
            p -= LR * p.grad
    return scores.detach().numpy(), {n: p.grad.numpy().copy() for n, p in tnet.named_parameters()}


def mxnet_sgd_step(net, x, y):
    with autograd.record():
        scores = net(nd.array(x))
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(scores, nd.array(y)).mean()
    loss.backward()
    grads = {}
    for name, p in net.collect_params().items():
        if p.grad_req != "null":
            grads[name] = p.grad().asnumpy()
            p.set_data(p.data() - LR * p.grad())
    return scores.asnumpy(), grads


# ---- the slips, shown as they run ------------------------------------------------------------------

def test_seed_momentum_keeps_ninety_percent_of_the_last_batch():
    torch.manual_seed(0)
    seed = SeedMLP()
    data = batches(flat=True)
    h = []
    for x, _ in data[:STEPS]:
        xt = torch.from_numpy(x)
        seed(xt)
        h.append(seed.layer1(xt).detach().numpy())
    means = [numpy_batch_stats(v)[0] for v in h]
    expected = np.zeros(100)
    for mu in means:
        expected = 0.1 * expected + 0.9 * mu          # what the seed computes
    assert_close(seed.moving_mean.detach(), expected, "seed: 0.1 * moving + 0.9 * batch")
    builtin = nn.BatchNorm1d(100)                      # PyTorch's meaning of momentum 0.1
    for v in h:
        builtin(torch.from_numpy(v))
    assert_differ(seed.moving_mean.detach(), builtin.running_mean, "seed vs nn.BatchNorm1d")
    # the seed's "average" is within 10% of the last batch's mean: it barely averages
    last, first = means[-1], means[0]
    seed_mm = seed.moving_mean.detach().numpy()
    assert np.abs(seed_mm - last).max() < np.abs(seed_mm - first).max()


def test_seed_moving_statistics_carry_autograd_history():
    torch.manual_seed(0)
    seed = SeedMLP()
    x = torch.from_numpy(batches(flat=True)[0][0])
    seed(x)
    assert seed.moving_mean.requires_grad and seed.moving_mean.grad_fn is not None, \
        "the seed's moving mean holds a graph (its printout: grad_fn=<SliceBackward>)"
    assert "moving_mean" not in seed.state_dict(), "nor is it saved with the model"
    fixed = FixedMLP(FixedBatchNorm1d(100))
    fixed(x)
    assert not fixed.bn.running_mean.requires_grad and fixed.bn.running_mean.grad_fn is None
    assert "bn.running_mean" in fixed.state_dict()


def test_seed_eval_does_not_switch_its_layer():
    torch.manual_seed(0)
    seed = SeedMLP()
    data = batches(flat=True)
    for x, _ in data[:2]:
        seed(torch.from_numpy(x))
    seed.eval()                                        # the PyTorch idiom, then net(x)
    before = seed.moving_mean.detach().clone()
    x = torch.from_numpy(data[2][0])
    with torch.no_grad():
        whole = seed(x)
        half = seed(x[:8])
    assert not torch.equal(seed.moving_mean.detach(), before), \
        "seed: evaluation updated the moving statistics"
    assert_differ(whole[:8], half, "seed: in eval() an example's scores depend on its batch")
    fixed = FixedMLP(FixedBatchNorm1d(100))
    for x_, _ in data[:2]:
        fixed(torch.from_numpy(x_))
    fixed.eval()
    before = fixed.bn.running_mean.clone()
    with torch.no_grad():
        assert_close(fixed(x)[:8], fixed(x[:8]), "fixed: eval() scores do not depend on the batch")
    assert torch.equal(fixed.bn.running_mean, before), "fixed: eval() leaves the statistics alone"


# ---- the fixed layer against d2lbn and nn.BatchNorm1d ------------------------------------------------

@pytest.mark.parametrize("torch_bn", ["fixed-seed", "nn.BatchNorm1d"])
def test_mlp_matches_d2lbn_over_sgd_steps(torch_bn):
    torch.manual_seed(1)
    bn = FixedBatchNorm1d(100) if torch_bn == "fixed-seed" else nn.BatchNorm1d(100)
    tnet = FixedMLP(bn)
    with torch.no_grad():                              # the seed's random gamma and beta
        bn.weight.copy_(torch.randn(100))
        bn.bias.copy_(torch.randn(100))
    net = mxnet_mlp()
    copy_mlp(tnet, net)
    data = batches(flat=True)
    hidden_vars = []
    for step, (x, y) in enumerate(data[:STEPS]):
        hidden_vars.append(numpy_batch_stats(tnet.layer1(torch.from_numpy(x)).detach().numpy())[1])
        t_scores, t_grads = torch_sgd_step(tnet, x, y)
        m_scores, m_grads = mxnet_sgd_step(net, x, y)
        assert_close(m_scores, t_scores, f"step {step}: training-mode scores")
        for (tn, tg), (mn, mg) in zip(t_grads.items(), m_grads.items()):
            assert_close(mg, tg, f"step {step}: gradient {tn} vs {mn}")
    assert_close(net[1].gamma.data(), bn.weight, "gamma after the steps")
    assert_close(net[1].moving_mean.data(), bn.running_mean, "moving mean: 0.9 (MXNet) == 0.1")
    d2_var = net[1].moving_var.data().asnumpy()
    if torch_bn == "fixed-seed":
        assert_close(d2_var, bn.running_var, "moving variance, both biased")
    else:
        initial = 0.9 ** STEPS
        assert_close(bn.running_var.numpy() - initial,
                     BATCH / (BATCH - 1) * (d2_var - initial), "x m/(m-1) on the batch part")
        assert_differ(d2_var, bn.running_var, "biased vs unbiased")
    x_test = data[STEPS][0]
    tnet.eval()
    with torch.no_grad():
        t_pred = tnet(torch.from_numpy(x_test)).numpy()
    m_pred = net(nd.array(x_test)).asnumpy()
    if torch_bn == "fixed-seed":
        assert_close(m_pred, t_pred, "inference predictions")
    assert (m_pred.argmax(1) == t_pred.argmax(1)).mean() >= 0.9


# ---- the seed's conv net (nn.BatchNorm2d) against d2lbn -------------------------------------------------

class SeedConvBNNet(nn.Module):
    """The seed's ``conv_bn_net``."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(True), nn.MaxPool2d(2, 2))
        self.classify = nn.Linear(400, 10)

    def forward(self, x):
        x = self.stage1(x)
        return self.classify(x.view(x.shape[0], -1))


def mxnet_conv_twin():
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Conv2D(6, 3, padding=1), norm.BatchNorm(6, 4), gluon.nn.Activation("relu"),
            gluon.nn.MaxPool2D(2, 2), gluon.nn.Conv2D(16, 5), norm.BatchNorm(16, 4),
            gluon.nn.Activation("relu"), gluon.nn.MaxPool2D(2, 2), gluon.nn.Dense(10))
    net.initialize(ctx=mx.cpu())
    net(nd.zeros((2, 1, 28, 28)))
    return net


def test_conv_net_matches_d2lbn_over_sgd_steps():
    torch.manual_seed(2)
    tnet = SeedConvBNNet()
    net = mxnet_conv_twin()
    porting.copy_to_mxnet(tnet, net)
    data = batches(flat=False)
    for step, (x, y) in enumerate(data[:STEPS]):
        t_scores, t_grads = torch_sgd_step(tnet, x, y)
        m_scores, m_grads = mxnet_sgd_step(net, x, y)
        assert_close(m_scores, t_scores, f"step {step}: training-mode scores")
        for (tn, tg), (mn, mg) in zip(t_grads.items(), m_grads.items()):
            assert_close(mg, tg, f"step {step}: gradient {tn} vs {mn}")
    for tbn, dbn, m in ((tnet.stage1[1], net[1], BATCH * 28 * 28),
                        (tnet.stage1[5], net[5], BATCH * 10 * 10)):
        assert_close(dbn.moving_mean.data(), tbn.running_mean, f"{dbn.name}: moving mean")
        initial = 0.9 ** STEPS
        assert_close(tbn.running_var.numpy() - initial,
                     m / (m - 1) * (dbn.moving_var.data().asnumpy() - initial),
                     f"{dbn.name}: x m/(m-1), m = {m} values per channel")
    x_test = data[STEPS][0]
    tnet.eval()
    with torch.no_grad():
        t_pred = tnet(torch.from_numpy(x_test)).numpy()
    # PyTorch's unbiased variance (m/(m-1) = 1 + 3e-4 at most here) is within the tolerance.
    assert_close(net(nd.array(x_test)), t_pred, "inference predictions")
