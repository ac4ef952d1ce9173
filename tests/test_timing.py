"""d2lbn.timing (the helpers behind chapter 3's tables and benchmarks/bench_norm.py), and the graph figure."""
import importlib.util
import pathlib

import matplotlib
import pytest
import mxnet as mx
from mxnet import gluon, nd

matplotlib.use("Agg")

from d2lbn.backward import GRAPH_EDGES, GRAPH_NODES, draw_graph
from d2lbn.timing import (KernelRow, Row, compare_layers, extra_kernel_ms, format_kernel_table,
                          format_table, interleaved_ms, kernel_ms, kernel_rows, layer_step, on_path,
                          operator_profile, train_epoch_seconds)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_row_and_table():
    rows = [Row("a", 30.0, 10.0), Row("longer case", 1.5, 0.5)]
    assert rows[0].ratio == 3.0
    table = format_table(rows).splitlines()
    assert table[0].split() == ["case", "ours", "ms", "MXNet", "ms", "ratio"]
    assert table[2].split() == ["a", "30.00", "10.00", "3.00x"]
    assert table[3].endswith("3.00x") and len({len(line) for line in table}) == 1


def test_interleaved_ms_calls_each_function_and_checks_arguments():
    calls = {"a": 0, "b": 0}

    def count(name):
        def fn():
            calls[name] += 1
        return fn
    times = interleaved_ms({"a": count("a"), "b": count("b")}, reps=3, inner=2, warmup=1)
    assert calls == {"a": 7, "b": 7} and all(len(t) == 3 and min(t) >= 0 for t in times.values())
    with pytest.raises(ValueError, match="reps and inner must be >= 1"):
        interleaved_ms({"a": count("a")}, reps=0)


def test_layer_step_computes_the_input_gradient():
    layer = gluon.nn.BatchNorm(in_channels=3)
    layer.initialize()
    step = layer_step(layer, nd.random.normal(shape=(8, 3)), nd.ones((8, 3)))
    step()
    assert layer.gamma.grad().shape == (3,)


def test_compare_layers_rows():
    rows = compare_layers([(16, 4), (4, 3, 5, 5)], impls=("fast", "naive"), reps=1)
    assert [r.case for r in rows] == ["fast layer fwd+bwd (16, 4)", "naive layer fwd+bwd (16, 4)",
                                      "fast layer fwd+bwd (4, 3, 5, 5)", "naive layer fwd+bwd (4, 3, 5, 5)"]
    assert all(r.ours_ms > 0 and r.mxnet_ms > 0 for r in rows)


def test_operator_profile_names_the_operators():
    X = nd.random.normal(shape=(64, 32))
    stats = operator_profile(lambda: nd.dot(X, X.T).sum(), reps=2)
    names = [name for name, _, _ in stats]
    assert "dot" in names and "sum" in names
    assert all(calls == 1 and ms >= 0 for _, calls, ms in stats)


def test_train_epoch_seconds_stops_after_max_batches():
    seen = []

    def batches():
        for i in range(10):
            seen.append(i)
            yield nd.random.uniform(shape=(4, 1, 28, 28)), nd.array([0, 1, 2, 3])
    net = gluon.nn.Dense(10)
    net.initialize()
    seconds = train_epoch_seconds(net, batches(), max_batches=3, ctx=mx.cpu())
    assert seconds > 0 and seen == [0, 1, 2, 3]      # the 4th batch is fetched, then the loop stops


def test_draw_graph():
    ax = draw_graph()
    labels = [t.get_text() for t in ax.texts if t.get_bbox_patch() is not None]   # boxed nodes
    assert labels == [label for _, label, _, _ in GRAPH_NODES]
    names = {name for name, *_ in GRAPH_NODES}
    assert all(a in names and b in names for a, b in GRAPH_EDGES)


def test_benchmark_script_runs(capsys):
    spec = importlib.util.spec_from_file_location("bench_norm", ROOT / "benchmarks" / "bench_norm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.LAYER_SHAPES = [(16, 4), (4, 3, 5, 5)]
    bench.LENET_SHAPES = [(8, 3, 4, 4), (8, 5)]
    assert bench.main(["--quick", "--no-lenet", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "fast layer fwd+bwd (4, 3, 5, 5)" in out and "ratio" in out
    assert "fast:graph layer fwd+bwd (8, 5)" in out and "fast:function layer fwd+bwd (8, 5)" in out
    assert "layer fwd+bwd, dense (16, 4)" not in out          # the targets name the book's shapes only


def test_on_path_forces_a_path_and_restores_the_limit(monkeypatch):
    from d2lbn import fast_norm, graph_norm
    calls = []
    monkeypatch.setattr(graph_norm, "graph_train", lambda *a, **k: calls.append("graph") or
                        (nd.zeros((4, 3)), nd.zeros(3), nd.zeros(3)))
    monkeypatch.setattr(fast_norm, "BatchNormTrain", lambda eps: calls.append("function") or
                        (_ for _ in ()).throw(RuntimeError("stop")))
    X, v = nd.ones((4, 3)), nd.ones(3)
    limit = graph_norm.GRAPH_MAX_SIZE
    on_path(lambda: fast_norm.fast_batch_norm(X, v, v, v, v, training=True), "graph")()
    with pytest.raises(RuntimeError, match="stop"):
        on_path(lambda: fast_norm.fast_batch_norm(X, v, v, v, v, training=True), "function")()
    assert calls == ["graph", "function"] and graph_norm.GRAPH_MAX_SIZE == limit
    with pytest.raises(ValueError, match="path must be 'graph' or 'function'"):
        on_path(lambda: None, "fast")


def test_kernel_ms_sums_every_operator():
    X = nd.random.normal(shape=(128, 128))
    one = kernel_ms(lambda: nd.dot(X, X), reps=3)
    two = kernel_ms(lambda: (nd.dot(X, X), nd.dot(X.T, X)), reps=3)
    assert 0 < one < two


def test_kernel_rows_and_the_extra_kernel_time():
    rows = kernel_rows([(16, 4), (4, 3, 5, 5)], reps=1)
    assert [r.shape for r in rows] == [(16, 4), (4, 3, 5, 5)]
    assert all(min(r.ours_ms, r.mxnet_ms, r.ours_kernel_ms, r.mxnet_kernel_ms) > 0 for r in rows)
    assert extra_kernel_ms(rows) == pytest.approx(sum(r.ours_kernel_ms - r.mxnet_kernel_ms for r in rows))
    made_up = [KernelRow((2, 3), 5.0, 2.0, 3.0, 1.0), KernelRow((2, 4), 1.0, 1.0, 0.5, 1.0)]
    assert extra_kernel_ms(made_up) == pytest.approx(1.5) and made_up[0].kernel_ratio == 3.0
    table = format_kernel_table(made_up).splitlines()
    assert table[2].startswith("(2, 3)") and table[2].endswith("3.00x")


def test_compare_layers_rows_carry_their_shape_and_mxnet_range_spans_them():
    from d2lbn.timing import mxnet_range
    rows = compare_layers([(16, 4), (4, 3, 5, 5)], impls=("fast", "naive"), reps=1)
    assert [r.shape for r in rows] == [(16, 4), (16, 4), (4, 3, 5, 5), (4, 3, 5, 5)]
    lo, hi = mxnet_range(rows, (4, 3, 5, 5))
    assert (lo, hi) == (min(rows[2].mxnet_ms, rows[3].mxnet_ms), max(rows[2].mxnet_ms, rows[3].mxnet_ms))
    made_up = [Row("a", 9.0, 3.0, (2, 3)), Row("b", 9.0, 4.5, (2, 3)), Row("c", 1.0, 0.5, (5, 5)),
               Row("table row without a shape", 1.0, 99.0)]
    assert mxnet_range(made_up, [2, 3]) == (3.0, 4.5) and mxnet_range(made_up, (5, 5)) == (0.5, 0.5)
    with pytest.raises(ValueError, match=r"no row times a layer on shape \(7, 7\)"):
        mxnet_range(made_up, (7, 7))


def test_training_step_updates_the_weights_as_sgd_does():
    # oracle: one plain SGD step (no momentum) computed by hand from the gradient autograd gives
    from mxnet import autograd
    from d2lbn.timing import training_step
    mx.random.seed(0)
    X, y = nd.random.normal(shape=(8, 5)), nd.array([0, 1, 2, 0, 1, 2, 0, 1])
    net = gluon.nn.Dense(3, in_units=5)
    net.initialize()
    w0 = net.weight.data().copy()
    with autograd.record():
        l = gluon.loss.SoftmaxCrossEntropyLoss()(net(X), y)
    l.backward()
    expected = w0 - 0.5 * net.weight.grad() / 8
    step = training_step(net, X, y, lr=0.5, momentum=0.0)
    step()
    assert (net.weight.data() - expected).abs().max().asscalar() < 1e-6
    assert interleaved_ms({"step": step}, reps=1, warmup=0)["step"][0] > 0


def test_paired_rounds_pairs_rounds_and_orders_by_time():
    # oracle: time.sleep of known lengths; every round times both in one rotation
    import time
    from d2lbn.timing import paired_rounds
    from d2lbn.seeds import compare_seeds
    calls = {"short": 0, "long": 0}

    def sleeper(name, seconds):
        def fn():
            calls[name] += 1
            time.sleep(seconds)
        return fn
    rounds = paired_rounds({"short": sleeper("short", 0.001), "long": sleeper("long", 0.006)},
                           rounds=3, reps=2, inner=2, warmup=1)
    # warm-up before the first round only: 1 + 3 rounds x 2 reps x 2 calls
    assert calls == {"short": 13, "long": 13}
    assert all(len(t) == 3 for t in rounds.values())
    assert all(1.0 <= t < 6.0 for t in rounds["short"]) and min(rounds["long"]) >= 6.0
    v = compare_seeds(rounds["short"], rounds["long"], "short", "long", higher_is_better=False)
    assert v.kind == "ahead", v
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        paired_rounds({"short": sleeper("short", 0)}, rounds=0)
    with pytest.raises(ValueError, match="at least one function"):
        paired_rounds({})


def test_layer_rounds_times_every_layer_in_one_rotation_on_its_forced_path():
    from d2lbn.paths import record_paths
    from d2lbn.timing import layer_rounds
    with record_paths() as taken:
        rounds = layer_rounds((16, 4), impls=("fast:graph", "fast:function"), rounds=2, reps=1)
    assert set(rounds) == {"mxnet", "fast:graph", "fast:function"}
    assert all(len(t) == 2 and min(t) > 0 for t in rounds.values())
    assert taken.get("graph", 0) > 0 and taken.get("closed-form", 0) > 0, dict(taken)
    with pytest.raises(ValueError, match="at least one implementation"):
        layer_rounds((16, 4), impls=())
