"""The training loop: device placement (on cpu(1), so anything left on the default context shows),
accuracy against hand counts, the non-finite-loss stop, reproducibility, and the command line."""
import json
import subprocess
import sys

import numpy as np
import pytest
import mxnet as mx
from mxnet import gluon, nd

import d2lbn
from d2lbn import models, training as T
from d2lbn import __main__ as cli

OTHER = mx.cpu(1)   # a context that is not the default one: an array left on cpu(0) is caught


def fake_batches(n, batch_size, seed=0, ctx=mx.cpu()):
    """Random images (N, 1, 28, 28) with labels 0..9, as a list of (X, y) batches on ``ctx``."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    return [(nd.array(X[i:i + batch_size], ctx=ctx), nd.array(y[i:i + batch_size], ctx=ctx, dtype="int32"))
            for i in range(0, n, batch_size)]


# ---- every array on the chosen context --------------------------------------------------------------

def moving_statistics(net):
    """The non-trained running statistics of every batch-norm layer (scratch: moving_*, Gluon: running_*)."""
    return [p for name, p in net.collect_params().items()
            if name.endswith(("moving_mean", "moving_var", "running_mean", "running_var"))]


def misplaced(net, ctx):
    """Names of parameters (data or gradient) that live anywhere but on ``ctx``."""
    wrong = []
    for name, p in net.collect_params().items():
        if p.list_ctx() != [ctx] or p.data(ctx).context != ctx:
            wrong.append(name)
        elif p.grad_req != "null" and p.grad(ctx).context != ctx:
            wrong.append(name + " (grad)")
    return wrong


def record_output_contexts(net):
    """Forward hooks on every layer: returns the list that collects (layer name, output context)."""
    seen = []
    for layer in net._children.values():
        layer.register_forward_hook(lambda block, inputs, out: seen.append((block.name, out.context)))
    return seen


@pytest.mark.parametrize("name", ["lenet-bn", "lenet-bn-gluon", "lenet"])
def test_everything_lives_on_the_chosen_context(name):
    net = models.get_model(name)
    outputs = record_output_contexts(net)
    batches = fake_batches(96, 32)                           # the data arrive on the default cpu(0)
    history = T.train(net, batches, batches[:1], 1, 0.1, OTHER, progress=False, plot=False, log=lambda s: None)
    assert history.device == "cpu(1)"
    assert misplaced(net, OTHER) == []
    stats = moving_statistics(net)
    assert len(stats) == (0 if name == "lenet" else 8)
    for p in stats:
        assert p.list_ctx() == [OTHER] and p.data().context == OTHER
    if stats:   # trained: the statistics moved away from their initial 0 / 1, on cpu(1)
        assert not np.allclose(stats[0].data(OTHER).asnumpy(), 0)
    # every layer's output, in training (3 batches) and evaluation (1 batch), was on cpu(1)
    assert len(outputs) == 4 * len(net._children)
    assert {ctx for _, ctx in outputs} == {OTHER}
    assert net(batches[0][0].as_in_context(OTHER)).context == OTHER


def test_hybridized_net_lives_on_the_chosen_context():
    """The compiled Gluon net: its parameters and running statistics on cpu(1), its output too."""
    net = models.get_model("lenet-bn-gluon")
    net.hybridize()
    batches = fake_batches(96, 32)
    T.train(net, batches, batches[:1], 1, 0.1, OTHER, progress=False, plot=False, log=lambda s: None)
    assert misplaced(net, OTHER) == []
    stats = moving_statistics(net)
    assert len(stats) == 8 and not np.allclose(stats[0].data(OTHER).asnumpy(), 0)
    assert net(batches[0][0].as_in_context(OTHER)).context == OTHER


def test_checker_catches_a_parameter_on_the_default_context():
    """The check above can fail: a net initialised without ``ctx`` (left on cpu(0)) is reported."""
    net = models.get_model("lenet-bn")
    net.initialize()
    net(nd.zeros((2, 1, 28, 28)))
    assert len(misplaced(net, OTHER)) == len(net.collect_params().keys()) == 26


def test_evaluate_accuracy_on_other_context():
    net = models.get_model("lenet")
    net.initialize(ctx=OTHER)
    acc = T.evaluate_accuracy(net, fake_batches(20, 8), OTHER)     # batches on cpu(0) are moved
    assert 0 <= acc <= 1


# ---- device choice with a faked GPU count ---------------------------------------------------------------

@pytest.mark.parametrize("count, expected", [(0, mx.cpu()), (1, mx.gpu(0)), (2, mx.gpu(0))])
def test_auto_device(monkeypatch, count, expected):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: count)
    assert cli.parse_device("auto") == expected


@pytest.mark.parametrize("spec, expected", [("cpu", mx.cpu()), ("cpu:1", mx.cpu(1)), ("gpu:2", mx.gpu(2))])
def test_explicit_device(spec, expected):
    assert cli.parse_device(spec) == expected


@pytest.mark.parametrize("bad", ["tpu", "gpu:x", "cuda:0"])
def test_bad_device(bad):
    with pytest.raises(ValueError, match="device must be 'auto'"):
        cli.parse_device(bad)


def test_cli_trains_on_the_gpu_when_one_is_found(monkeypatch):
    """With one GPU faked, `python -m d2lbn train` hands gpu(0) to the training loop."""
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)
    calls = {}

    def fake_train(net, train_iter, test_iter, num_epochs, lr, ctx, **kwargs):
        calls.update(ctx=ctx, num_epochs=num_epochs, lr=lr, momentum=kwargs["momentum"],
                     lr_schedule=kwargs["lr_schedule"])
        return T.History(device=str(ctx))

    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.setattr(T, "fashion_mnist_iters", lambda *a, **k: (fake_loader(8), fake_loader(8)))
    assert cli.main(["train", "--epochs", "3", "--lr", "0.2"]) == 0
    assert calls == {"ctx": mx.gpu(0), "num_epochs": 3, "lr": 0.2, "momentum": 0.9, "lr_schedule": "cosine"}
    assert cli.main(["train", "--momentum", "0", "--lr-schedule", "none"]) == 0
    assert (calls["momentum"], calls["lr_schedule"]) == (0.0, None)


def fake_loader(n):
    X, y = fake_batches(n, n)[0]
    return gluon.data.DataLoader(gluon.data.ArrayDataset(X, y), batch_size=4)


# ---- accuracy against hand counts ----------------------------------------------------------------------

class FixedScores(gluon.Block):
    """A 'net' that ignores X's pixels: example k (its index is stored in pixel [0, 0, 0]) gets the score
    row SCORES[k]."""

    def __init__(self, scores):
        super().__init__()
        self.scores = nd.array(scores)

    def forward(self, X):
        index = X[:, 0, 0, 0].astype("int32")
        return nd.take(self.scores.as_in_context(X.context), index)


def test_evaluate_accuracy_by_hand():
    # 10 examples; argmax of each score row, written out: 0 1 2 3 0 1 2 3 9 9
    scores = np.zeros((10, 10))
    for k, c in enumerate([0, 1, 2, 3, 0, 1, 2, 3, 9, 9]):
        scores[k, c] = 1.0
    labels = [0, 1, 2, 0, 0, 5, 2, 3, 1, 9]
    # matches:  Y Y Y N Y N Y Y N Y -> 7 of 10
    X = np.zeros((10, 1, 28, 28), dtype=np.float32)
    X[:, 0, 0, 0] = np.arange(10)
    data = gluon.data.DataLoader(gluon.data.ArrayDataset(nd.array(X), nd.array(labels, dtype="int32")),
                                 batch_size=4)   # batches of 4, 4, 2: a mean of batch means would give 2/3
    assert T.evaluate_accuracy(FixedScores(scores), data, mx.cpu()) == pytest.approx(0.7)
    assert T.evaluate_accuracy(FixedScores(scores), data, OTHER) == pytest.approx(0.7)


def test_accuracy_count_ties_and_shapes():
    assert T.accuracy_count(nd.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), nd.array([1, 1, 1])) == 2
    with pytest.raises(ValueError, match=r"scores must be \(N, num_classes\) and y \(N,\)"):
        T.accuracy_count(nd.zeros((3, 2)), nd.zeros(4))


def test_empty_iterator():
    with pytest.raises(ValueError, match="data_iter yielded no examples"):
        T.evaluate_accuracy(models.get_model("lenet"), [], mx.cpu())


# ---- the training loop ---------------------------------------------------------------------------------

def test_non_finite_input_names_epoch_and_batch():
    """A NaN pixel is caught in the input, before the forward pass (tests/test_reliability.py trains
    LeNets through it)."""
    batches = fake_batches(128, 32)                      # 4 batches
    bad = batches[2][0].copy()
    bad[0, 0, 5, 5] = np.nan
    poisoned = [batches[0], batches[1], (bad, batches[2][1]), batches[3]]
    net = gluon.nn.Dense(10)
    with pytest.raises(T.NonFiniteError, match=r"the input X holds NaN or infinite values at epoch 1 of 2, batch 3 of 4") as info:
        T.train(net, poisoned, batches, 2, 0.1, mx.cpu(), progress=False, plot=False, log=lambda s: None)
    assert info.value.history.epochs == 0 and (info.value.epoch, info.value.batch) == (1, 3)
    assert all(np.isfinite(p.data().asnumpy()).all() for p in net.collect_params().values())
    # the step with the NaN gradient was not taken: every weight is still finite
    assert all(np.isfinite(p.data().asnumpy()).all() for p in net.collect_params().values())


def test_non_finite_loss_in_a_later_epoch():
    """A divergent learning rate: the error names the epoch and batch where the loss blew up."""
    batches = fake_batches(64, 32)
    with pytest.raises(T.NonFiniteLossError, match=r"loss became (nan|inf) at epoch \d+ of 50, batch [12] of 2") as info:
        T.train(models.get_model("lenet"), batches, batches, 50, 1e4, mx.cpu(), progress=False, plot=False,
                log=lambda s: None)
    assert isinstance(info.value, FloatingPointError)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_epochs=0), "num_epochs must be a positive int"),
    (dict(lr=-0.1), "lr must be a positive finite number"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(momentum=1.0), r"momentum must be a number in \[0, 1\); got 1.0"),
])
def test_bad_arguments(kwargs, message):
    args = dict(num_epochs=1, lr=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        T.train(models.get_model("lenet"), [], [], args.pop("num_epochs"), args.pop("lr"), mx.cpu(), plot=False,
                **args)


def test_bad_context_type():
    with pytest.raises(TypeError, match="ctx must be an mxnet Context"):
        T.train(models.get_model("lenet"), [], [], 1, 0.1, "cpu", plot=False)


@pytest.fixture(scope="module")
def small_real_data():
    """2,048 real training and 1,000 real test images of Fashion-MNIST."""
    return T.fashion_mnist_iters(128, train_limit=2048, test_limit=1000)


def test_learns_real_data_and_history_is_consistent(small_real_data):
    train_iter, test_iter = small_real_data
    lines = []
    history = T.train(models.get_model("lenet-bn-gluon"), train_iter, test_iter, 2, 0.1, mx.cpu(),
                      progress=False, plot=False, log=lines.append)
    assert history.epochs == 2
    for key in ("loss", "train_acc", "test_acc", "seconds", "examples_per_sec"):
        assert len(getattr(history, key)) == 2
    assert history.loss[1] < history.loss[0]
    assert history.test_acc[-1] > 0.6          # chance is 0.1
    assert lines[:2] == ["training on cpu(0): 2 epochs of 16 batches", "sgd, lr 0.1"]
    assert lines[3] == history.line(2)
    assert lines[3].startswith(f"epoch 2: loss {history.loss[1]:.4f}, train acc {history.train_acc[1]:.4f}, "
                               f"test acc {history.test_acc[1]:.4f}, ") and lines[3].endswith(" examples/s")
    assert history.table().splitlines()[0].split() == ["epoch", "loss", "train", "acc", "test", "acc",
                                                        "seconds", "examples/s"]


def test_seeded_runs_repeat(small_real_data):
    train_iter, test_iter = small_real_data
    runs = [T.train(models.get_model("lenet-bn"), train_iter, test_iter, 1, 0.1, mx.cpu(), seed=7,
                    progress=False, plot=False, log=lambda s: None) for _ in range(2)]
    assert runs[0].loss == runs[1].loss and runs[0].test_acc == runs[1].test_acc


def test_notebook_report_outside_a_notebook(capsys):
    """plot=True draws the live figure (here without a kernel): one test point per epoch, the final
    lines printed, and the figure closed so that it is not shown twice."""
    from matplotlib import pyplot as plt
    batches = fake_batches(64, 32)
    before = plt.get_fignums()
    history = T.train(models.get_model("lenet"), batches, batches, 2, 0.1, mx.cpu(), plot=True, refresh_seconds=0)
    out = capsys.readouterr().out
    assert "epoch 1: loss" in out and "epoch 2: loss" in out
    assert plt.get_fignums() == before and history.epochs == 2


def test_subset_sizes(small_real_data):
    train_iter, test_iter = small_real_data
    assert len(train_iter._dataset) == 2048 and len(test_iter._dataset) == 1000
    assert sum(X.shape[0] for X, _ in test_iter) == 1000
    with pytest.raises(ValueError, match="subset size must be a positive int"):
        T.subset(test_iter, 0, shuffle=False)


# ---- the command line ----------------------------------------------------------------------------------

def test_cli_smoke(tmp_path):
    out_file = tmp_path / "history.json"
    result = subprocess.run(
        [sys.executable, "-m", "d2lbn", "train", "--model", "lenet-bn", "--epochs", "1", "--lr", "0.1",
         "--batch-size", "64", "--train-limit", "256", "--test-limit", "128", "--device", "cpu",
         "--no-progress", "--json", str(out_file)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "256 training / 128 test examples" in result.stdout
    assert "training on cpu(0): 1 epoch of 4 batches\nsgd, lr 0.1 (cosine schedule), momentum 0.9" in result.stdout
    assert "epoch 1: loss" in result.stdout and " examples/s" in result.stdout
    saved = json.loads(out_file.read_text())
    assert saved["args"]["model"] == "lenet-bn" and saved["history"]["device"] == "cpu(0)"
    assert len(saved["history"]["test_acc"]) == 1 and 0 <= saved["history"]["test_acc"][0] <= 1


def test_cli_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--model", "resnet"])
    assert info.value.code == 2
    assert "invalid choice: 'resnet'" in capsys.readouterr().err


def test_cli_rejects_bad_device(capsys):
    assert cli.main(["train", "--device", "tpu:0"]) == 2
    assert "device must be 'auto'" in capsys.readouterr().err


# ---- the schedule and the quick switch -------------------------------------------------------------------

def test_cosine_schedule_is_used(monkeypatch):
    """lr_schedule='cosine' gives the optimizer a cosine scheduler over every step of the run (2 epochs x
    2 batches), from lr to 0, and the optimizer consults it on every step."""
    created, asked = [], []
    real = mx.lr_scheduler.CosineScheduler

    class Spy:    # a wrapper, not a subclass: MXNet's class calls super() by its global name
        def __init__(self, **kwargs):
            created.append(kwargs)
            object.__setattr__(self, "inner", real(**kwargs))

        def __call__(self, num_update):
            asked.append(num_update)
            return self.inner(num_update)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __setattr__(self, name, value):
            setattr(self.inner, name, value)

    monkeypatch.setattr(T, "CosineScheduler", Spy)
    batches = fake_batches(64, 32)
    T.train(models.get_model("lenet"), batches, batches, 2, 0.5, mx.cpu(), lr_schedule="cosine",
            progress=False, plot=False, log=lambda s: None)
    assert created == [dict(max_update=4, base_lr=0.5, final_lr=0.0)]
    assert max(asked) == 4
    assert real(max_update=4, base_lr=0.5, final_lr=0.0)(4) == pytest.approx(0.0)


def test_bad_schedule():
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \(None, 'cosine'\); got 'step'"):
        T.train(models.get_model("lenet"), [], [], 1, 0.1, mx.cpu(), lr_schedule="step", plot=False)


@pytest.mark.parametrize("value, quick", [("1", True), ("yes", True), ("0", False), ("", False), (None, False)])
def test_quick_switch(monkeypatch, value, quick):
    if value is None:
        monkeypatch.delenv("D2LBN_QUICK", raising=False)
    else:
        monkeypatch.setenv("D2LBN_QUICK", value)
    settings = T.lenet_settings()
    assert T.quick_mode() is quick and settings.quick is quick
    full = T.lenet_settings(quick=False)
    assert (settings.num_epochs, settings.train_limit) == ((2, 10_000) if quick else (10, None))
    # the quick run changes only the amount of training, not the recipe
    assert (settings.lr, settings.momentum, settings.lr_schedule, settings.batch_size) == \
        (full.lr, full.momentum, full.lr_schedule, full.batch_size)
    assert full.min_test_acc == 0.90 and 0.1 < settings.min_test_acc <= full.min_test_acc
    assert full.acc_tolerance == 0.01 and full.acc_tolerance <= settings.acc_tolerance <= 0.05


def test_training_plot_records_points():
    from d2lbn.plot import TrainingPlot, plot_curves
    from matplotlib import pyplot as plt
    plot = TrainingPlot(2)
    plot.add_train(0.5, 1.2, 0.6)
    plot.add_test(1, 0.7)
    assert list(plot._loss_line.get_xdata()) == [0.5] and list(plot._test_line.get_ydata()) == [0.7]
    plt.close(plot.fig)
    ax = plot_curves({"a": [0.1, 0.2], "b": [0.3]}, ylabel="test accuracy")
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1, 2], [1]]
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="curves must name at least one curve"):
        plot_curves({}, ylabel="x")


def test_momentum_reaches_the_optimizer():
    """Same seed, data and lr: with momentum the second step differs from plain SGD's (the first
    step is the same, momentum has nothing to remember yet)."""
    batches = fake_batches(64, 32)
    weights = {}
    for momentum in (0.0, 0.9):
        for n in (1, 2):
            net = gluon.nn.Dense(10)
            T.train(net, batches[:n], batches, 1, 0.1, mx.cpu(), momentum=momentum, progress=False,
                    plot=False, log=lambda s: None)
            weights[momentum, n] = net.weight.data().asnumpy()
    np.testing.assert_allclose(weights[0.0, 1], weights[0.9, 1], rtol=1e-6)
    assert not np.allclose(weights[0.0, 2], weights[0.9, 2], rtol=1e-4)


def test_comparison_table():
    a = T.History(loss=[1, 1], train_acc=[0.5, 0.6], test_acc=[0.7, 0.8125], seconds=[20.0, 24.0],
                  examples_per_sec=[1, 1])
    b = T.History(loss=[1], train_acc=[0.5], test_acc=[0.65], seconds=[2.5], examples_per_sec=[1])
    lines = T.comparison_table({"with batch norm": a, "without": b}).splitlines()
    assert lines[2].split() == ["1", "0.7000", "20.0", "0.6500", "2.5"]
    assert lines[3].split() == ["2", "0.8125", "24.0"]          # the shorter run leaves a gap
    assert lines[-1] == "median seconds per epoch: with batch norm 22.0, without 2.5"
    with pytest.raises(ValueError, match="histories must name at least one run"):
        T.comparison_table({})
