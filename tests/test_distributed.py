"""Data-parallel training over MXNet's parameter server (d2lbn.distributed).

Oracles: a float64 NumPy batch norm and d2lbn's own per-device BatchNorm (naive autograd) for the
layer run through a single-process kvstore; for two real worker processes, the same SGD steps taken
by one process on the union of the workers' batches. Jobs run on 127.0.0.1 with free ports, under a
timeout, through d2lbn.launch (which stops every process it started)."""
import io
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, nd

from d2lbn import distributed as D
from d2lbn.launch import launch
from d2lbn.norm import BatchNorm

from conftest import numpy_batch_norm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- sharding ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, batch, workers", [(60000, 128, 2), (1000, 64, 3), (10, 4, 3), (7, 7, 7),
                                               (129, 128, 2), (130, 128, 3), (5, 100, 2)])
def test_every_example_in_exactly_one_shard_per_epoch(n, batch, workers):
    orders = []
    for epoch in range(3):
        batches = D.global_batches(n, batch, epoch, seed=7, num_workers=workers)
        seen = []
        for b in batches:
            parts = [D.shard(b, r, workers) for r in range(workers)]
            assert all(len(p) >= 1 for p in parts), "every worker needs an example every step"
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            assert np.array_equal(np.concatenate(parts), b)
            seen.append(np.concatenate(parts))
        seen = np.concatenate(seen)
        assert len(seen) == n and np.array_equal(np.sort(seen), np.arange(n))
        orders.append(seen)
    if n > 10:
        assert not np.array_equal(orders[0], orders[1]), "the order must change per epoch"


def test_the_order_depends_on_seed_and_epoch_only():
    a = D.global_batches(500, 32, epoch=3, seed=1, num_workers=2)
    b = D.global_batches(500, 32, epoch=3, seed=1, num_workers=2)
    c = D.global_batches(500, 32, epoch=3, seed=2, num_workers=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    sizes = [len(x) for x in D.global_batches(130, 64, 0, 0, num_workers=3)]
    assert sizes == [64, 66], "a last batch smaller than the number of workers joins the one before"


def test_sharding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least num_workers"):
        D.global_batches(100, 2, 0, 0, num_workers=3)
    with pytest.raises(ValueError, match="num_examples"):
        D.global_batches(2, 8, 0, 0, num_workers=3)
    with pytest.raises(ValueError, match="batch_size"):
        D.global_batches(100, 0, 0, 0)
    with pytest.raises(ValueError, match="rank"):
        D.shard(np.arange(8), 2, 2)
    with pytest.raises(ValueError, match="cannot give"):
        D.shard(np.arange(1), 0, 2)


# ---- the layer in one process (a 'local' kvstore: the sum over one worker) -----------------------

@pytest.mark.parametrize("shape", [(8, 6, 5, 5), (16, 7)])
def test_kvstore_layer_in_one_process_is_batch_norm(shape, rng):
    kv = mx.kv.create("local")
    C, ndim = shape[1], len(shape)
    X = rng.normal(3.0, 2.0, size=shape)
    gamma, beta = rng.uniform(0.5, 2, C), rng.normal(size=C)
    W = rng.normal(size=shape)                                     # the loss is sum(W * Y)
    layers = [D.KVStoreSyncBatchNorm(C, ndim, kv), BatchNorm(C, ndim, impl="naive")]
    results = []
    for layer in layers:
        layer.initialize()
        layer.gamma.set_data(nd.array(gamma))
        layer.beta.set_data(nd.array(beta))
        Xn = nd.array(X)
        Xn.attach_grad()
        with autograd.record():
            Y = layer(Xn)
            (Y * nd.array(W)).sum().backward()
        results.append([Y.asnumpy(), Xn.grad.asnumpy(), layer.gamma.grad().asnumpy(),
                        layer.beta.grad().asnumpy(), layer.moving_mean.data().asnumpy(),
                        layer.moving_var.data().asnumpy()])
    Y_ref, mean, var = numpy_batch_norm(X, gamma, beta)
    np.testing.assert_allclose(results[0][0], Y_ref, atol=1e-5)
    np.testing.assert_allclose(layers[0].batch_mean.asnumpy(), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layers[0].batch_var.asnumpy(), var, rtol=1e-5)
    for ours, theirs in zip(results[0], results[1]):             # gradients and moving statistics
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    with autograd.predict_mode():                                 # inference: the moving statistics
        Y_inf = layers[0](nd.array(X)).asnumpy()
    m, v = results[0][4], results[0][5]
    axes = (1, -1) if ndim == 2 else (1, -1, 1, 1)
    np.testing.assert_allclose(Y_inf, gamma.reshape(axes) * (X - m.reshape(axes))
                               / np.sqrt(v.reshape(axes) + 1e-5) + beta.reshape(axes), atol=1e-4)


def test_kvstore_layer_checks_its_arguments():
    with pytest.raises(TypeError, match="kvstore"):
        D.KVStoreSyncBatchNorm(4, 2, kvstore="dist_sync")
    with pytest.raises(ValueError, match="num_features"):
        D.KVStoreSyncBatchNorm(0, 2)
    with pytest.raises(ValueError, match="norm must be"):
        D.dist_lenet("sync")
    layer = D.KVStoreSyncBatchNorm(4, 2, mx.kv.create("local"))
    layer.initialize()
    with pytest.raises(ValueError, match="expects X"):
        layer(nd.zeros((3, 5)))


# ---- without the launcher ------------------------------------------------------------------------

def test_dist_sync_without_the_launcher_says_how_to_start_it(monkeypatch):
    for name in D.LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(D, "_KVSTORES", {})
    assert not D.in_launcher()
    with pytest.raises(RuntimeError, match="python -m d2lbn launch"):
        D.dist_kvstore()


def test_cli_dist_sync_without_the_launcher_is_a_one_line_error(monkeypatch, capsys):
    from d2lbn.__main__ import main
    for name in D.LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(D, "_KVSTORES", {})
    assert main(["train", "--kvstore", "dist_sync", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m d2lbn train: error:") and "python -m d2lbn launch" in err
    assert main(["train", "--sync-bn"]) == 2
    assert "--kvstore dist_sync" in capsys.readouterr().err


# ---- two worker processes ------------------------------------------------------------------------

STEPS, BATCH = 3, 16


@pytest.fixture(scope="module")
def lockstep_results(tmp_path_factory):
    """2 workers + 1 server: 3 SGD steps of both layers on random images (8 per worker per step)."""
    out = tmp_path_factory.mktemp("lockstep") / "run"
    log = io.StringIO()
    env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = launch([sys.executable, "-m", "d2lbn.distributed", "--out", str(out), "--data", "random",
                   "--steps", str(STEPS), "--batch-size", str(BATCH)], 2, 1, out=log, env=env,
                  timeout=240)
    assert code == 0, log.getvalue()
    ranks = [dict(np.load(f"{out}-rank{r}.npz")) for r in range(2)]
    X, y = D.lockstep_data("random", STEPS * BATCH)
    return ranks, X, y, log.getvalue()


def _params(result, name, which):
    n = sum(k.startswith(f"{name}/0/{which}_") for k in result)
    return [result[f"{name}/0/{which}_{i}"] for i in range(n)]


def test_synchronised_workers_equal_one_process_on_the_union(lockstep_results):
    ranks, X, y, log = lockstep_results
    assert "[worker 0] rank 0:" in log and "[worker 1] rank 1:" in log
    assert [int(r["rank"]) for r in ranks] == [0, 1]
    one = D.lockstep_reference(_params(ranks[0], "kvstore", "initial"), X, y, BATCH, STEPS)
    for r in range(2):
        final = _params(ranks[r], "kvstore", "final")
        assert len(final) == len(one) == 26              # weights, gamma/beta and moving statistics
        worst = max(float(np.abs(a - b).max()) for a, b in zip(final, one))
        assert worst < 1e-5, f"worker {r} is {worst:.2e} from one process"
    # the statistics the first layer used are those of the union of the two workers' inputs
    Z = np.concatenate([ranks[r]["kvstore/0/bn_input"] for r in range(2)])
    for r in range(2):
        np.testing.assert_allclose(ranks[r]["kvstore/0/bn_mean"], Z.mean(axis=(0, 2, 3)), atol=1e-6)
        np.testing.assert_allclose(ranks[r]["kvstore/0/bn_var"], Z.var(axis=(0, 2, 3)), rtol=1e-5)


def test_per_worker_statistics_differ_from_one_process(lockstep_results):
    ranks, X, y, _ = lockstep_results
    one = D.lockstep_reference(_params(ranks[0], "local", "initial"), X, y, BATCH, STEPS)
    final = _params(ranks[0], "local", "final")
    assert max(float(np.abs(a - b).max()) for a, b in zip(final, one)) > 1e-3
    Z = np.concatenate([ranks[r]["local/0/bn_input"] for r in range(2)])
    assert np.abs(ranks[0]["local/0/bn_var"] / Z.var(axis=(0, 2, 3)) - 1).max() > 1e-3


def test_workers_start_equal_and_sum_their_gradients(lockstep_results):
    ranks, _, _, _ = lockstep_results
    for name in D.NORMS:
        first = [_params(ranks[r], name, "initial") for r in range(2)]
        assert all(np.array_equal(a, b) for a, b in zip(*first))
    # per-worker layers: the trained parameters agree (summed gradients), the moving statistics do not
    final = [_params(ranks[r], "local", "final") for r in range(2)]
    gaps = [float(np.abs(a - b).max()) for a, b in zip(*final)]
    moving = [i for i in range(26) if i % 6 in (4, 5) and i < 24]
    assert max(g for i, g in enumerate(gaps) if i not in moving) == 0
    assert min(gaps[i] for i in moving) > 0


def test_one_worker_equals_one_process(tmp_path):
    """One worker alone (its pulls answered at once): the synchronised layer is plain batch norm."""
    out = tmp_path / "one"
    log = io.StringIO()
    env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = launch([sys.executable, "-m", "d2lbn.distributed", "--out", str(out), "--data", "random",
                   "--steps", "2", "--batch-size", str(BATCH), "--norms", "kvstore"], 1, 1, out=log,
                  env=env, timeout=240)
    assert code == 0, log.getvalue()
    result = dict(np.load(f"{out}-rank0.npz"))
    X, y = D.lockstep_data("random", 2 * BATCH)
    one = D.lockstep_reference(_params(result, "kvstore", "initial"), X, y, BATCH, 2)
    assert max(float(np.abs(a - b).max()) for a, b in zip(_params(result, "kvstore", "final"), one)) < 1e-5


def test_train_dist_sync_under_the_launcher(tmp_path):
    """python -m d2lbn launch -n 2 -- python -m d2lbn train --kvstore dist_sync --sync-bn: rank 0
    alone prints the epoch lines and writes --json; the job ends with status 0."""
    out = tmp_path / "history.json"
    run = subprocess.run([sys.executable, "-m", "d2lbn", "launch", "-n", "2", "--", sys.executable, "-m",
                          "d2lbn", "train", "--kvstore", "dist_sync", "--sync-bn", "--epochs", "1",
                          "--batch-size", "64", "--train-limit", "256", "--test-limit", "64",
                          "--no-progress", "--json", str(out)],
                         capture_output=True, text=True, timeout=240, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert run.returncode == 0, run.stdout + run.stderr
    epoch_lines = [line for line in run.stdout.splitlines() if "] epoch 1:" in line]
    assert len(epoch_lines) == 1 and epoch_lines[0].startswith("[worker 0]")
    import json
    saved = json.loads(out.read_text())
    assert saved["status"] == "finished" and len(saved["history"]["test_acc"]) == 1
    assert 0.0 <= saved["history"]["test_acc"][0] <= 1.0


def test_dist_trainer_checks_its_arguments():
    net = D.dist_lenet("local")
    kv = mx.kv.create("local")
    with pytest.raises(ValueError, match="lr must be"):
        D.dist_trainer(net, kv, 0.0)
    with pytest.raises(TypeError, match="kv must be"):
        D.dist_trainer(net, "dist_sync", 0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        D.dist_trainer(net, kv, 0.1, lr_schedule="step")
    other = D.dist_lenet("local")
    net.initialize()
    other.initialize()
    trainer = D.dist_trainer([net, other], kv, 0.1)
    assert len(trainer._params) == 2 * len(list(net.collect_params().values()))


def _token_processes(token):
    """Pids of live (not zombie) processes whose environment holds D2LBN_TEST_TOKEN=token."""
    found, needle = [], f"D2LBN_TEST_TOKEN={token}".encode()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat") as s:
                        if s.read().split(")")[-1].split()[0] != "Z":
                            found.append(int(entry))
        except OSError:
            continue
    return found


def test_ctrl_c_of_a_launched_training_saves_the_finished_epochs(tmp_path):
    """Ctrl-C (SIGINT) to `launch ... train --kvstore dist_sync --json F` after an epoch: rank 0 writes
    the finished epochs to F (status 'interrupted'), as `train`'s own Ctrl-C does; before the fix
    the workers were killed and F was never written."""
    import json
    import signal
    import time
    import uuid
    out, token = tmp_path / "history.json", uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}
    env.update(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), D2LBN_TEST_TOKEN=token)
    proc = subprocess.Popen([sys.executable, "-m", "d2lbn", "launch", "-n", "2", "--", sys.executable,
                             "-m", "d2lbn", "train", "--kvstore", "dist_sync", "--epochs", "500",
                             "--batch-size", "64", "--train-limit", "256", "--test-limit", "64",
                             "--no-progress", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            if line.startswith("[worker 0] epoch 1:") or time.monotonic() > deadline:
                break
        assert line.startswith("[worker 0] epoch 1:"), line
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "interrupted by SIGINT" in stderr, stderr
        saved = json.loads(out.read_text())
        assert saved["status"] == "interrupted", saved
        epochs = len(saved["history"]["loss"])
        assert 1 <= epochs < 500
        assert all(len(saved["history"][k]) == epochs for k in ("train_acc", "test_acc", "seconds"))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]     # no temporary file
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = _token_processes(token)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert left == [], "processes of the job were left behind"


def test_dist_sync_with_launcher_variables_but_no_scheduler_fails_within_seconds():
    """DMLC_* left in the environment, nothing listening at the scheduler's address: before the fix
    mx.kv.create('dist_sync') waited for ever. Now one line names the address and what is missing."""
    import re
    import socket
    import time
    import uuid
    with socket.socket() as s:                    # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}
    env.update(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), D2LBN_TEST_TOKEN=token,
               DMLC_ROLE="worker", DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(port),
               DMLC_NUM_WORKER="1", DMLC_NUM_SERVER="1")
    start = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-m", "d2lbn", "train", "--kvstore", "dist_sync",
                              "--epochs", "1", "--train-limit", "64", "--no-progress"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("train --kvstore dist_sync without a scheduler hung (60 s)")
    finally:
        for pid in _token_processes(token):
            os.kill(pid, 9)
    elapsed = time.monotonic() - start
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert re.search(rf"no scheduler .*127\.0\.0\.1:{port}", lines[0]), lines[0]
    assert "DMLC_PS_ROOT_URI" in lines[0] and "python -m d2lbn launch" in lines[0], lines[0]
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert "training examples" not in run.stdout               # stopped before any data loaded


def test_wait_for_scheduler_names_bad_variables(monkeypatch):
    import socket
    monkeypatch.setenv("DMLC_PS_ROOT_URI", "127.0.0.1")
    monkeypatch.setenv("DMLC_PS_ROOT_PORT", "http")
    with pytest.raises(D.SchedulerUnreachableError, match="DMLC_PS_ROOT_PORT must be a port number"):
        D.wait_for_scheduler(timeout=0.1)
    with socket.socket() as listening:            # a scheduler stand-in: it accepts, so no wait
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setenv("DMLC_PS_ROOT_PORT", str(listening.getsockname()[1]))
        D.wait_for_scheduler(timeout=0.1)
    monkeypatch.setenv("D2LBN_SCHEDULER_WAIT", "soon")
    with pytest.raises(D.SchedulerUnreachableError, match="D2LBN_SCHEDULER_WAIT must be"):
        D.wait_for_scheduler()


@pytest.mark.parametrize("n, batch, workers", [(130, 128, 2), (131, 128, 2), (67, 64, 3), (10, 4, 2)])
def test_with_per_worker_statistics_every_shard_has_two_examples(n, batch, workers):
    """A last global batch of 2 on 2 workers gave each a shard of one, which training-mode batch norm
    refuses (the variance of one example is 0): it joins the batch before instead."""
    need = D.min_global_batch(workers, "local")
    assert need == 2 * workers and D.min_global_batch(workers, "kvstore") == max(2, workers)
    batches = D.global_batches(n, batch, 1, seed=0, num_workers=workers, min_size=need)
    assert sorted(np.concatenate(batches)) == list(range(n))
    assert min(len(D.shard(b, r, workers)) for b in batches for r in range(workers)) >= 2
