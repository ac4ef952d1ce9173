"""Reliability by class, not by case (issue 16): no input crashes the interpreter, hangs, or silently
ruins a training run.

* the dtype matrix: every public batch-norm / layer-norm function and layer x float16/32/64, int32,
  uint8, bool, each in a child process (tests/crash_matrix.py) so that a crash is a failure; each
  gives a result equal to a float64 NumPy reference or a clear error;
* the head-gradient matrix: ``Y.backward(out_grad=<another dtype>)`` through the layer;
* the 'mxnet-sync' data-parallel step from a cold start, under a timeout;
* training with a NaN in the data (ReLU and sigmoid) and with a parameter that turns NaN;
* the final training batch of one; the data loader's checks; stale partial downloads;
* the command line as a table of subprocesses: exit status, one line on stderr, no traceback.
"""
import gzip
import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

import d2lbn
from d2lbn import data, device, models, norm
from d2lbn import training as T

sys.path.insert(0, str(Path(__file__).parent))
import crash_matrix as M  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


# ---- the dtype matrix, crash-isolated ---------------------------------------------------------------

@pytest.fixture(scope="module")
def matrix():
    return M.run_isolated(M.matrix_ids() + M.head_ids())


def test_no_worker_died_at_exit(matrix):
    """An error that surfaces only when the interpreter exits (a queued engine error) is a failure."""
    assert "exit" not in matrix, matrix.get("exit")


@pytest.mark.parametrize("case", M.matrix_ids())
def test_dtype_matrix(matrix, case):
    outcome = matrix[case]
    assert "crashed" not in outcome, f"{case} killed the process (exit {outcome.get('crashed')}): {outcome.get('stderr')}"
    function, dtype = case.split("|")
    if dtype in ("float32", "float64") or outcome["result"] and (dtype == "float16" or function in M.NUMPY_FUNCTIONS):
        assert outcome["result"], f"{case} raised {outcome.get('error')}: {outcome.get('message')}"
        assert outcome["error_size"] <= outcome["tol"], f"{case}: off the float64 reference by {outcome['error_size']}"
    elif dtype == "float16":                      # the fast path has no CPU float16 kernel: a clear refusal
        assert outcome["error"] == "TypeError" and re.search(r"float32 or float64 .*impl='naive'",
                                                              outcome["message"]), outcome
    else:                                         # integers and bool: refused, with the fix
        assert function not in M.NUMPY_FUNCTIONS, outcome
        assert outcome["error"] == "TypeError", outcome
        name = "weight" if function == "fold_batch_norm" else "X"
        assert re.search(rf"{name} has dtype {dtype};.* {name}\.astype\('float32'\)", outcome["message"]), outcome


@pytest.mark.parametrize("case", M.head_ids())
def test_head_gradient_of_another_dtype(matrix, case):
    """The fast layer converts a head gradient of another dtype given to ``Y.backward`` (it used to
    corrupt memory). Through ``autograd.backward`` (which skips ``Y.backward``) the naive layer and
    the fast layer's compiled graph (this small input takes it), both differentiated by MXNet,
    refuse it with a catchable MXNetError in the same call."""
    outcome = matrix[case]
    assert "crashed" not in outcome, f"{case} killed the process: {outcome.get('stderr')}"
    if outcome["result"]:
        assert outcome["error_size"] <= outcome["tol"], outcome
    else:
        assert ":naive|" in case or ":fast:autograd.backward|" in case, outcome
        assert outcome["error"] == "MXNetError", outcome


def fast_layer_output():
    layer = norm.BatchNorm(3, 4)
    layer.initialize()
    X = nd.ones((4, 3, 2, 2)) * nd.arange(4).reshape((4, 1, 1, 1))
    X.attach_grad()
    with autograd.record():
        Y = layer(X)
    return X, Y


def test_fast_backward_refuses_a_head_gradient_of_another_shape_in_that_call():
    X, Y = fast_layer_output()
    with pytest.raises(ValueError, match=r"out_grad has shape \(2, 3, 2, 2\) but the array has shape \(4, 3, 2, 2\)"):
        Y.backward(out_grad=nd.ones((2, 3, 2, 2)))
    assert "<NDArray 4x3x2x2 @cpu(0)>" in repr(Y)         # prints as any array
    Y.backward(out_grad=nd.ones((4, 3, 2, 2), dtype="float64"))        # the right shape still works
    assert np.isfinite(X.grad.asnumpy()).all()


def test_fast_backward_through_autograd_backward_fails_cleanly():
    """autograd.backward skips Y.backward: the check inside the engine's callback refuses it, and MXNet
    reports it at the first read of the gradient (its asynchronous model), without a crash."""
    X, Y = fast_layer_output()
    autograd.backward([Y], [nd.ones((2, 3, 2, 2))])
    with pytest.raises(mx.base.MXNetError):
        X.grad.wait_to_read()
    assert float((nd.ones(3) * 2).sum().asscalar()) == 6.0        # the next, unrelated call is clean


# ---- mixed dtypes, numbers, strings: the bad-input table's new rows live in test_bad_inputs.py -----------

def test_numpy_scalars_are_accepted_everywhere():
    d2lbn.set_seed(np.int64(3))
    layer = norm.BatchNorm(np.int64(3), np.int32(2), eps=np.float32(1e-5), momentum=np.float64(0.9))
    assert (layer.num_features, layer.num_dims) == (3, 2) and type(layer.num_features) is int
    assert norm.LayerNorm(np.int16(4), 4).num_features == 4
    assert device.try_gpu(np.int64(0)) in (mx.cpu(), mx.gpu(0))
    X = nd.ones((4, 3)) * nd.arange(4).reshape((4, 1))
    Y = norm.pure_batch_norm(X, nd.ones(3), nd.zeros(3), eps=np.float32(1e-5))
    assert np.isfinite(Y.asnumpy()).all()
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(nd.ones((10, 2)), nd.zeros(10)), 4)
    assert len(T.subset(loader, np.int64(6), shuffle=False)._dataset) == 6


def test_batch_norm_layer_in_float64_needs_a_cast_and_works_after_it():
    layer = norm.BatchNorm(3, 2)
    layer.initialize()
    X = nd.array(np.random.default_rng(0).normal(size=(8, 3)), dtype="float64")
    with pytest.raises(TypeError, match=r"holds float32 parameters but X is float64; cast the net \(net.cast\('float64'\)\)"):
        with autograd.record():
            layer(X)
    layer.cast("float64")
    with autograd.record():
        Y = layer(X)
    assert Y.dtype == np.float64 and layer.moving_mean.data().dtype == np.float64


# ---- moving statistics and non-finite batches --------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 3), (8, 3, 2, 2)])
@pytest.mark.parametrize("impl, path", [("fast", "graph"), ("fast", "function"), ("naive", None)])
def test_batch_norm_layer_keeps_moving_statistics_of_a_non_finite_batch(impl, path, shape,
                                                                        monkeypatch):
    """Both training paths of the fast layer (its compiled graph and its Function) keep them."""
    from d2lbn import graph_norm
    monkeypatch.setattr(graph_norm, "GRAPH_MAX_SIZE", 0 if path == "function" else 10 ** 12)
    layer = norm.BatchNorm(3, len(shape), impl=impl)
    layer.initialize()
    x = np.random.default_rng(1).normal(size=shape)
    with autograd.record():
        layer(nd.array(x))
    before = layer.moving_mean.data().asnumpy(), layer.moving_var.data().asnumpy()
    x[2, 1] = np.nan
    x[3, 2] = np.inf
    with autograd.record():
        layer(nd.array(x))
    after = layer.moving_mean.data().asnumpy(), layer.moving_var.data().asnumpy()
    for old, new in zip(before, after):
        np.testing.assert_array_equal(new[1:], old[1:])     # the poisoned features kept their statistics
        assert new[0] != old[0]                             # the clean feature was updated


def fake_batches(n, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=n)
    return [(nd.array(X[i:i + batch_size]), nd.array(y[i:i + batch_size]))
            for i in range(0, n, batch_size)]


def moving_statistics(net):
    return {name: p.data().asnumpy() for name, p in net.collect_params().items()
            if "moving" in name or "running" in name}


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("model", ["lenet-bn", "lenet-bn-gluon"])
def test_nan_in_the_data_stops_training_before_it_touches_the_net(model, activation):
    """ReLU maps NaN to 0, so the loss stayed finite and train() returned at chance accuracy with NaN
    weights; now the batch is refused before the forward pass, with its number."""
    batches = fake_batches(96, 32)                          # 3 batches
    bad = batches[1][0].copy()
    bad[5, 0, 10, 10] = np.nan
    poisoned = [batches[0], (bad, batches[1][1]), batches[2]]
    net = models.get_model(model, activation=activation)
    with pytest.raises(T.NonFiniteError, match=r"the input X holds NaN or infinite values at epoch 1 of 2, batch 2\b") as info:
        T.train(net, poisoned, batches, 2, 0.1, mx.cpu(), progress=False, plot=False, log=lambda s: None)
    assert (info.value.epoch, info.value.batch) == (1, 2)
    assert all(np.isfinite(p.data().asnumpy()).all() for p in net.collect_params().values())
    assert all(np.isfinite(v).all() for v in moving_statistics(net).values())


class PoisonAt:
    """Batches that set a parameter of ``net`` to NaN just before batch ``at`` (a divergence that the
    loss does not show: ReLU turns the NaN activations into zeros)."""

    def __init__(self, batches, net, param, at):
        self.batches, self.net, self.param, self.at = batches, net, param, at

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches, start=1):
            if i == self.at:
                p = self.net.collect_params()[self.param]
                p.set_data(p.data() * np.nan)
            yield batch


def test_a_parameter_turning_nan_is_found_and_named_with_its_layer():
    d2lbn.set_seed(0)
    net = models.get_model("lenet-bn")
    batches = fake_batches(8 * 16, 16)                       # 8 batches
    conv = [n for n in net.collect_params() if n.endswith("weight")][0]
    poisoned = PoisonAt(batches, net, conv, at=3)
    with pytest.raises(T.NonFiniteError, match=r"of layer conv\d+ .* at epoch 1 of 1, between batch 3 and batch 4") as info:
        T.train(net, poisoned, batches, 1, 0.05, mx.cpu(), seed=None, init=mx.init.Xavier(), progress=False,
                plot=False, log=lambda s: None, check_every=2)
    assert info.value.layer.startswith("conv") and info.value.batch == 4
    # the batch-norm layers saw NaN batches after the poisoning and kept their moving statistics
    assert all(np.isfinite(v).all() for v in moving_statistics(net).values())


def test_parameters_are_checked_at_the_end_of_each_epoch():
    d2lbn.set_seed(0)
    net = models.get_model("lenet-bn")
    batches = fake_batches(3 * 16, 16)
    conv = [n for n in net.collect_params() if n.endswith("weight")][0]
    with pytest.raises(T.NonFiniteError, match=r"between batch 1 and batch 3"):
        T.train(net, PoisonAt(batches, net, conv, at=3), batches, 1, 0.05, mx.cpu(), seed=None,
                init=mx.init.Xavier(), progress=False, plot=False, log=lambda s: None, check_every=1000)


def test_find_non_finite_names_layer_and_parameter():
    net = models.get_model("lenet-bn")
    net.initialize()
    net(nd.ones((2, 1, 28, 28)))
    assert T.find_non_finite(net, mx.cpu()) == []
    bn = [n for n in net.collect_params() if n.endswith("moving_var")][1]
    p = net.collect_params()[bn]
    p.set_data(p.data() * np.inf)
    [(layer, name)] = T.find_non_finite(net, mx.cpu())
    assert name == bn and bn.startswith(layer)


# ---- the final batch of one ----------------------------------------------------------------------------------

@pytest.mark.parametrize("length, batch_size, sizes", [
    (129, 128, [128]), (130, 128, [128, 2]), (5, 2, [2, 2]), (4, 2, [2, 2]), (1, 4, []), (3, 4, [3])])
def test_training_batches_never_end_with_one_example(length, batch_size, sizes):
    sampler = data.TrainBatchSampler(length, batch_size)
    batches = list(sampler)
    assert [len(b) for b in batches] == sizes and len(sampler) == len(sizes)
    assert len(set(sum(batches, []))) == sum(sizes)         # no example twice


@pytest.mark.parametrize("shuffle, sizes", [(True, [4, 4]), (False, [4, 4, 1])])
def test_array_loader_drops_a_last_training_batch_of_one(shuffle, sizes):
    from d2lbn.data import ArrayLoader
    loader = ArrayLoader(nd.arange(9).reshape((9, 1)), nd.arange(9), 4, shuffle=shuffle)
    assert [X.shape[0] for X, _ in loader] == sizes and len(loader) == len(sizes)


def test_lenet_bn_trains_through_129_examples_in_batches_of_128():
    """`--train-limit 129 --batch-size 128` crashed lenet-bn at the epoch's last batch (of one)."""
    X = nd.random.uniform(shape=(129, 1, 28, 28))
    y = nd.array(np.arange(129) % 10)
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(X, y), 128, shuffle=True)
    train_iter = T.subset(loader, 129, shuffle=True)
    history = T.train(models.get_model("lenet-bn"), train_iter, [(X[:8], y[:8])], 1, 0.05, mx.cpu(),
                      progress=False, plot=False, log=lambda s: None)
    assert history.epochs == 1 and len(train_iter) == 1


# ---- the data loader -------------------------------------------------------------------------------------------

def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(f">I{array.ndim}I", {1: 2049, 3: 2051}[array.ndim], *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_set(folder, train_images, train_labels, test_images, test_labels):
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", train_images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_labels)


@pytest.mark.parametrize("what, train_images, train_labels, pattern", [
    ("no images", np.zeros((0, 28, 28)), np.zeros(0), r"holds 0 images"),
    ("label 200", np.zeros((4, 28, 28)), [1, 2, 200, 3], r"holds label 200 \(at index 2\); .* 0..9"),
    ("32x32 beside 28x28", np.zeros((4, 32, 32)), [1, 2, 3, 4], r"training images .* are 32x32 but the test images are 28x28"),
])
def test_loader_rejects_inconsistent_files(tmp_path, what, train_images, train_labels, pattern):
    write_set(tmp_path / what, train_images, train_labels, np.zeros((2, 28, 28)), [0, 1])
    with pytest.raises(data.DataFileError, match=pattern):
        data.load_fashion_mnist(4, root=tmp_path / what)


def test_resize_happens_per_batch(tmp_path):
    write_set(tmp_path, np.full((6, 28, 28), 255), np.arange(6), np.zeros((3, 28, 28)), [0, 1, 2])
    train_iter, test_iter = data.load_fashion_mnist(4, resize=64, root=tmp_path)
    assert train_iter._dataset[0][0].shape == (1, 28, 28)      # stored at 28x28 ...
    X, y = next(iter(train_iter))
    assert X.shape == (4, 1, 64, 64) and y.shape == (4,)      # ... resized batch by batch
    np.testing.assert_allclose(X.asnumpy(), 1.0, rtol=1e-6)
    assert next(iter(test_iter))[0].shape == (3, 1, 64, 64)


def test_a_stale_partial_download_is_removed_on_the_next_run(tmp_path):
    """A download killed by SIGTERM/SIGKILL leaves its temporary `*.part`; the next run deletes it."""
    write_set(tmp_path, np.zeros((2, 28, 28)), [0, 1], np.zeros((2, 28, 28)), [0, 1])
    stale = tmp_path / "train-images-idx3-ubyte.gz.k3j2.part"
    stale.write_bytes(b"half a file")
    unrelated = tmp_path / "notes.part"
    unrelated.write_text("not ours")
    data.download_fashion_mnist(tmp_path, base_url="http://127.0.0.1:9/")   # all present: no request
    assert not stale.exists() and unrelated.exists()


SLOW_DOWNLOAD = """
import sys
from d2lbn import data
data.download_fashion_mnist(sys.argv[1], base_url=sys.argv[2], timeout=30)
"""


def test_sigterm_during_a_download_leaves_no_partial_file(tmp_path):
    """A server that sends a few bytes and then stalls; SIGTERM the downloading process."""
    import http.server
    import threading
    import time

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"x" * 1000)
            self.wfile.flush()
            time.sleep(20)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_DOWNLOAD, str(tmp_path),
                                 f"http://127.0.0.1:{server.server_address[1]}/"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not list(tmp_path.glob("*.part")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list(tmp_path.glob("*.part")), "the download never started"
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        server.shutdown()
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []                  # no *.part left behind


# ---- data parallel: the cold start ----------------------------------------------------------------------------

COLD_START = """
import d2lbn  # first: it aliases numpy.bool for mxnet on NumPy 1.24-1.26
import numpy as np, mxnet as mx
from mxnet import nd, gluon
from d2lbn import parallel as P
ctxs = [mx.cpu(0), mx.cpu(1)]
X, y = nd.random.uniform(shape=(8, 1, 28, 28)), nd.array(np.arange(8) % 10)
net = P.data_parallel_lenet("mxnet-sync", 2)
net.initialize(mx.init.Xavier(), ctx=ctxs)
trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
print("loss", P.data_parallel_step(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(), X, y, ctxs))
one, many = P.reference_and_data_parallel("mxnet-sync", ctxs, X)
trainer = gluon.Trainer(many.collect_params(), "sgd", {"learning_rate": 0.1})
print("loss", P.data_parallel_step(many, trainer, gluon.loss.SoftmaxCrossEntropyLoss(), X, y, ctxs))
"""


def test_mxnet_sync_step_from_a_cold_start_does_not_hang():
    """The first 'mxnet-sync' step of a fresh process hung unless a one-device step ran before."""
    try:
        result = subprocess.run([sys.executable, "-c", COLD_START], capture_output=True, text=True,
                                timeout=120, env=ENV)
    except subprocess.TimeoutExpired:
        pytest.fail("the data-parallel step with gluon.contrib.nn.SyncBatchNorm hung (120 s)")
    assert result.returncode == 0, result.stderr[-2000:]
    losses = [float(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))


# ---- the command line -----------------------------------------------------------------------------------------

def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "d2lbn", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=ROOT)


def one_line_error(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("args, pattern", [
    ([], r"the following arguments are required: COMMAND"),
    (["train", "--lr", "abc"], r"argument --lr: not a number: 'abc'"),
    (["train", "--lr", "-0.1"], r"argument --lr: must be a positive finite number; got -0.1"),
    (["train", "--lr", "nan"], r"argument --lr: must be a positive finite number; got nan"),
    (["train", "--momentum", "1"], r"argument --momentum: must be in \[0, 1\)"),
    (["train", "--seed", "-1"], r"argument --seed: must be an integer in 0\.\.4294967295 .*; got -1"),
    (["train", "--seed", "1.5"], r"argument --seed: not an integer: '1.5'"),
    (["train", "--epochs", "0"], r"argument --epochs: must be a positive integer; got 0"),
    (["train", "--batch-size", "x"], r"argument --batch-size: not an integer: 'x'"),
    (["train", "--device", "gpu:7"], r"--device gpu:7: MXNet sees \d+ GPU"),
    (["train", "--device", "tpu"], r"device must be 'auto', 'cpu'"),
    (["train", "--json", "/"], r"--json / is a directory; name a file"),
    (["train", "--json", "/nonexistent/folder/h.json"], r"--json /nonexistent/folder/h.json: folder /nonexistent/folder does not exist"),
    (["train", "--model", "lenet-bn", "--hybridize"], r"--hybridize needs a model of built-in layers"),
])
def test_cli_errors_are_one_line_with_exit_status_2(args, pattern):
    if args[-1:] == ["gpu:7"] and mx.context.num_gpus() > 7:
        pytest.skip("this machine has a GPU 7")
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    line = one_line_error(result.stderr)
    assert re.search(r"^python -m d2lbn( train)?: error: " + pattern, line), line
    assert "training examples" not in result.stdout            # rejected before any data loaded


def test_cli_non_finite_loss_is_one_line_and_exit_1(tmp_path):
    out = tmp_path / "h.json"
    result = cli("train", "--model", "lenet", "--lr", "1e30", "--momentum", "0", "--train-limit", "256",
                 "--test-limit", "64", "--epochs", "1", "--batch-size", "64", "--no-progress",
                 "--device", "cpu", "--json", str(out))
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert re.search(r"^python -m d2lbn train: error: .*(loss|parameter).* became", line), line
    assert json.loads(out.read_text())["status"] == "diverged"


def test_cli_ctrl_c_saves_the_finished_epochs_and_exits_130(tmp_path):
    out = tmp_path / "h.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "d2lbn", "train", "--model", "lenet", "--epochs", "200", "--train-limit", "256",
         "--test-limit", "64", "--batch-size", "64", "--no-progress", "--device", "cpu", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1:"):
                proc.send_signal(signal.SIGINT)
                break
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert re.fullmatch(r"interrupted: \d+ finished epochs? kept; saved to .*h\.json", one_line_error(stderr))
    saved = json.loads(out.read_text())
    assert saved["status"] == "interrupted" and 1 <= len(saved["history"]["loss"]) < 200


def test_a_ctrl_c_that_lands_in_a_finalizer_is_not_lost():
    """Python ignores exceptions raised in __del__ (tqdm closes its bars there): the CLI's handler
    remembers such a Ctrl-C and raises it after the epoch instead."""
    from d2lbn.__main__ import _CtrlC
    ctrl_c, raised = _CtrlC(), []

    class Finalized:
        def __del__(self):
            try:
                ctrl_c.handler(signal.SIGINT, sys._getframe())
            except KeyboardInterrupt:
                raised.append(True)
    Finalized()                                   # collected at once, running __del__
    assert raised == [] and ctrl_c.pressed
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.check()
    with pytest.raises(KeyboardInterrupt):        # anywhere else it is raised at once
        _CtrlC().handler(signal.SIGINT, sys._getframe())


def test_cli_json_is_written_atomically(tmp_path, monkeypatch):
    """The file appears whole or not at all: it is written beside the target, then renamed."""
    from d2lbn import __main__ as main
    args = main.build_parser().parse_args(["train", "--json", str(tmp_path / "h.json")])
    history = T.History(device="cpu(0)")
    history.append(1.0, 0.5, 0.5, 1.0, 100.0)
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    main._write_json(args.json, args, history, "finished")
    assert len(renames) == 1 and Path(renames[0][0]).parent == tmp_path and renames[0][1] == Path(args.json)
    assert json.loads((tmp_path / "h.json").read_text())["history"]["loss"] == [1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]


# ---- round three (issue 25): --json, argument checks, stdout closed ------------------------------------------

TINY_RUN = ["train", "--model", "lenet", "--epochs", "1", "--train-limit", "256", "--test-limit", "64",
            "--batch-size", "64", "--no-progress", "--device", "cpu"]


def _kind(path: Path) -> str:
    import stat
    mode = os.lstat(path).st_mode
    return next(name for name, test in (("link", stat.S_ISLNK), ("fifo", stat.S_ISFIFO),
                                        ("char", stat.S_ISCHR), ("dir", stat.S_ISDIR),
                                        ("file", stat.S_ISREG)) if test(mode))


def _not_regular_paths(tmp_path: Path):
    """Existing paths that are not regular files, all inside tmp_path (so that a failing run can only
    replace these): a FIFO, a link to /dev/null, a directory, and (as root) a character device."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "null-link"
    link.symlink_to("/dev/null")
    folder = tmp_path / "folder"
    folder.mkdir()
    paths = [fifo, link, folder]
    if os.geteuid() == 0:
        device = tmp_path / "null-device"
        os.mknod(device, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))   # a copy of /dev/null
        paths.append(device)
    return paths


def test_cli_json_refuses_an_existing_path_that_is_not_a_regular_file(tmp_path):
    """--json at a FIFO, a device, a link to /dev/null, a directory: refused before any data loads and
    left as it was. Before the fix the run trained and its atomic rename replaced the node (as root,
    `--json /dev/null` replaced /dev/null itself with a regular file)."""
    for path in _not_regular_paths(tmp_path):
        kind = _kind(path)
        result = cli(*TINY_RUN, "--json", str(path))
        assert result.returncode == 2, (path, result.stderr)
        line = one_line_error(result.stderr)
        assert line.startswith(f"python -m d2lbn train: error: --json {path}"), line
        assert "regular file" in line or "is a directory" in line, line
        assert "training examples" not in result.stdout
        assert _kind(path) == kind, f"{path} was replaced"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("path", ["/dev/null", "/dev/stdout", "/dev/stderr", "/proc/self/fd/1"])
def test_cli_json_refuses_device_paths_without_touching_them(path):
    """The literal device paths are checked in-process only, so that no regression can replace them."""
    from d2lbn.__main__ import _check_writable
    message = _check_writable(path)
    assert message is not None and message.startswith(f"--json {path}") and "regular file" in message


def test_cli_json_follows_a_link_to_a_regular_file(tmp_path):
    """A link to a regular file is allowed; the file it names is written and the link stays a link."""
    from d2lbn import __main__ as main
    real = tmp_path / "runs" / "h.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    assert main._check_writable(str(link)) is None
    args = main.build_parser().parse_args(["train", "--json", str(link)])
    history = T.History(device="cpu(0)")
    history.append(1.0, 0.5, 0.5, 1.0, 100.0)
    main._write_json(args.json, args, history, "finished")
    assert link.is_symlink() and json.loads(real.read_text())["history"]["loss"] == [1.0]
    assert sorted(p.name for p in real.parent.iterdir()) == ["h.json"]


NO_SCHEDULER = {"DMLC_ROLE": "worker", "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9",
                "DMLC_NUM_WORKER": "2", "DMLC_NUM_SERVER": "1"}


@pytest.mark.parametrize("args, env, pattern", [
    (["--train-limit", "1"], {}, r"argument --train-limit: must be at least 2 .*; got 1"),
    (["--train-limit", "1", "--model", "lenet"], {}, r"argument --train-limit: must be at least 2"),
    (["--batch-size", "1"], {}, r"--batch-size 1: lenet-bn has batch norm, .*at least 2 examples"),
    (["--batch-size", "1", "--model", "lenet-bn-gluon"], {}, r"--batch-size 1: lenet-bn-gluon has batch norm"),
    (["--seed", str(2 ** 32)], {}, r"argument --seed: must be an integer in 0\.\.4294967295 .*; got 4294967296"),
    (["--seed", str(-2 ** 40)], {}, r"argument --seed: must be an integer in 0\.\.4294967295"),
    # one worker of two: each worker's shard of the global batch needs two examples for its own
    # batch statistics, one with --sync-bn (and the global batch two)
    (["--kvstore", "dist_sync", "--batch-size", "3"], NO_SCHEDULER,
     r"--batch-size 3 is the global batch of 2 workers.* at least 4"),
    (["--kvstore", "dist_sync", "--train-limit", "3"], NO_SCHEDULER,
     r"--train-limit 3 .* 2 workers.* at least 4"),
    (["--kvstore", "dist_sync", "--sync-bn", "--batch-size", "1"], NO_SCHEDULER,
     r"--batch-size 1 is the global batch of 2 workers.* at least 2"),
])
def test_cli_sizes_and_seed_are_checked_before_any_data_loads(args, env, pattern):
    """Before the fix each of these loaded the data and then failed with a traceback (or, under the
    launcher's variables, waited for a scheduler): one line and exit 2 now, before any data loads."""
    result = subprocess.run([sys.executable, "-m", "d2lbn", "train", "--epochs", "1", "--no-progress",
                             *args], capture_output=True, text=True, timeout=60, env={**ENV, **env},
                            cwd=ROOT)
    assert result.returncode == 2, result.stdout[-500:] + result.stderr[-2000:]
    line = one_line_error(result.stderr)
    assert re.search(r"^python -m d2lbn train: error: " + pattern, line), line
    assert "training examples" not in result.stdout


def test_cli_batch_of_one_is_fine_without_batch_norm():
    """The check is no broader than the problem: LeNet without batch norm trains on batches of one."""
    result = cli("train", "--model", "lenet", "--epochs", "1", "--train-limit", "3", "--test-limit", "2",
                 "--batch-size", "1", "--no-progress", "--device", "cpu", "--seed", str(2 ** 32 - 1))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 training / 2 test examples" in result.stdout


def _piped_to_head(args, lines: int, tmp_path: Path):
    """`python -m d2lbn ARGS 2>err | head -LINES`: (what head printed, the command's exit status, its
    stderr)."""
    import shlex
    err, status = tmp_path / "stderr", tmp_path / "status"
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "d2lbn", *args])
    script = (f"{command} 2>{shlex.quote(str(err))} | head -{lines}; "
              f"echo ${{PIPESTATUS[0]}} >{shlex.quote(str(status))}")
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=ENV,
                         cwd=ROOT)
    return run.stdout, int(status.read_text()), err.read_text()


@pytest.mark.parametrize("lines", [1, 4])
def test_cli_stdout_closed_early_is_a_quiet_exit(tmp_path, lines):
    """`python -m d2lbn train ... | head -1`: before the fix a BrokenPipeError traceback. Now the run
    stops quietly with 141 (as a program killed by SIGPIPE) at its first line after head left, the
    finished epochs in --json (head -4 shows epoch 1's line, so at least that epoch is kept)."""
    out = tmp_path / "h.json"
    shown, status, stderr = _piped_to_head([*TINY_RUN[:4], "5", *TINY_RUN[5:], "--json", str(out)],
                                           lines, tmp_path)
    assert shown.startswith("model lenet") and len(shown.splitlines()) == lines, shown
    assert stderr == "", stderr
    assert status == 128 + signal.SIGPIPE
    saved = json.loads(out.read_text())
    shown_epochs = sum(line.startswith("epoch ") for line in shown.splitlines())
    assert saved["status"] == "interrupted", saved
    assert shown_epochs <= len(saved["history"]["loss"]) < 5


def test_launch_hostfile_piped_to_head_is_a_quiet_exit(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.1\n")   # a numeric address: the scheduler needs one
    # 1000 workers: more lines than a pipe holds, so the printing meets head's exit for certain
    shown, status, stderr = _piped_to_head(["launch", "-n", "1000", "--hostfile", str(hosts), "--",
                                            "python", "train.py"], 1, tmp_path)
    assert shown.startswith("# start these") and stderr == "", stderr
    assert status == 128 + signal.SIGPIPE
