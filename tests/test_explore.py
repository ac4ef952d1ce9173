"""d2lbn.explore: the data behind the book's interactive explorers, against float64 NumPy oracles
(batch norm written out by hand, an exponential moving average in float64, histograms counted with
searchsorted), and the explorer's HTML/JSON (every setting present, nothing that closes the script)."""
import json
import math
import re

import numpy as np
import pytest
from mxnet import nd

import d2lbn
from d2lbn import experiments as E
from d2lbn import explore as X


def oracle_counts(values, edges):
    """Counts per bin by searchsorted (right-closed last bin, as np.histogram)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = len(edges) - 2
    return np.bincount(index, minlength=len(edges) - 1)


def test_histograms_match_an_oracle(rng):
    values = rng.normal(0, 1, size=(3, 500))
    edges = X.bin_edges(values.min(), values.max(), 17)
    counts = X.histograms(values, edges)
    assert counts.shape == (3, 17)
    for row, c in zip(values, counts):
        np.testing.assert_array_equal(c, oracle_counts(row, edges))
        assert c.sum() == 500                                # the extremes are inside
    with pytest.raises(ValueError, match="outside"):
        X.histograms(values + 100, edges)
    with pytest.raises(ValueError, match="values must be"):
        X.histograms(values[0], edges)
    with pytest.raises(ValueError, match="bins"):
        X.bin_edges(0, 1, 0)
    with pytest.raises(ValueError, match="lo < hi"):
        X.bin_edges(1, 1, 3)


def numpy_bn_channel(x, gamma, beta, eps):
    """float64 batch norm of one channel: x (b, H, W), statistics over all its values."""
    x = x.astype(np.float64)
    return gamma * (x - x.mean()) / np.sqrt(x.var() + eps) + beta


def test_formula_grid_matches_float64_batch_norm(rng):
    Z = rng.gamma(2.0, 0.3, size=(8, 6, 6)).astype(np.float32)
    Z[:, :2] = 0                                              # a spike, like the background
    sizes, gammas, betas, epss = (2, 8), (0.5, 2.0), (-1.0, 0.5), (1e-5, 0.5)
    grid = X.formula_grid(Z, sizes, gammas, betas, epss, bins=25)
    assert grid.after.shape == (2, 2, 2, 2, 25) and grid.before.shape == (2, 25)
    for i, b in enumerate(sizes):
        raw = Z[:b]
        assert grid.before[i].sum() == raw.size
        np.testing.assert_array_equal(grid.before[i], oracle_counts(raw, grid.edges_before))
        assert grid.batch_mean[i] == pytest.approx(raw.astype(np.float64).mean(), rel=1e-12)
        assert grid.batch_std[i] == pytest.approx(raw.astype(np.float64).std(), rel=1e-12)
        for j, g in enumerate(gammas):
            for k, be in enumerate(betas):
                for e, eps in enumerate(epss):
                    y = numpy_bn_channel(raw, g, be, eps)
                    assert grid.mean_after[i, j, k, e] == pytest.approx(y.mean(), abs=1e-5)
                    assert grid.std_after[i, j, k, e] == pytest.approx(y.std(), rel=1e-5)
                    counts = grid.after[i, j, k, e]
                    assert counts.sum() == raw.size
                    # float32 rounding may move a value sitting on a bin edge to its neighbour
                    assert np.abs(counts - oracle_counts(y, grid.edges_after)).sum() <= 2
    # eps matters: with eps = 0.5 the spread shrinks as sqrt(var / (var + eps))
    var = Z[:8].astype(np.float64).var()
    assert grid.std_after[1, 0, 0, 1] == pytest.approx(0.5 * math.sqrt(var / (var + 0.5)),
                                                       rel=1e-4)


@pytest.mark.parametrize("where, bad", [("gammas", float("nan")), ("gammas", float("inf")),
                                        ("betas", float("nan")), ("betas", float("-inf")),
                                        ("epsilons", float("nan")), ("epsilons", float("inf"))])
def test_formula_grid_refuses_non_finite_settings(rng, where, bad):
    """A NaN gamma gave NaN statistics and empty histograms; every setting must be finite."""
    Z = rng.normal(size=(4, 3, 3))
    args = dict(batch_sizes=(2,), gammas=(1.0,), betas=(0.0,), epsilons=(1e-5,))
    args[where] = (1.0 if where != "betas" else 0.0, bad)
    with pytest.raises(ValueError, match=rf"{where} must be .*finite.*got \[.*{bad}"):
        X.formula_grid(Z, **args)


def test_formula_grid_refuses_non_finite_data(rng):
    Z = rng.normal(size=(4, 3, 3))
    Z[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"X holds 1 NaN or infinite value"):
        X.formula_grid(Z, (2,), (1.0,), (0.0,), (1e-5,))


def test_formula_grid_rejects_bad_input(rng):
    Z = rng.normal(size=(4, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="X must be"):
        X.formula_grid(Z[0], (2,), (1,), (0,), (1e-5,))
    with pytest.raises(ValueError, match="batch_sizes"):
        X.formula_grid(Z, (5,), (1,), (0,), (1e-5,))
    with pytest.raises(ValueError, match="gammas"):
        X.formula_grid(Z, (2,), (0,), (0,), (1e-5,))
    with pytest.raises(ValueError, match="epsilons"):
        X.formula_grid(Z, (2,), (1,), (0,), (0,))


def test_moving_average_traces_match_a_float64_ema(rng):
    T, m, D = 40, 5, 7
    data = rng.normal(1.5, 2.0, size=(T, m, D))
    batches = [nd.array(x) for x in data]
    traces = X.moving_average_traces(batches, (0.5, 0.9))
    for momentum, (means, variances) in traces.items():
        assert means.shape == variances.shape == (T, D)
        mean, var = np.zeros(D), np.ones(D)
        for t, x in enumerate(data.astype(np.float32).astype(np.float64)):
            mean = momentum * mean + (1 - momentum) * x.mean(axis=0)
            var = momentum * var + (1 - momentum) * x.var(axis=0)      # biased, as MXNet
            np.testing.assert_allclose(means[t], mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(variances[t], var, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="momenta"):
        X.moving_average_traces(batches, (1.0,))
    with pytest.raises(ValueError, match="batches"):
        X.moving_average_traces([], (0.9,))


def test_ema_summary_knows_the_answer():
    # A noiseless EMA of a jump from 0 to 3 at step 10: after k steps it has closed 1 - 0.8^k,
    # so 95% takes ceil(ln 0.05 / ln 0.8) = 14 steps; before the jump every feature is 0.
    momentum, shift, T = 0.8, 10, 40
    k = np.arange(1, T - shift + 1)
    path = np.concatenate([np.zeros(shift), 3 * (1 - momentum ** k)])
    means = np.stack([path, path], axis=1)
    noise, lag = X.ema_summary(means, shift, 3.0)
    assert noise == 0 and lag == math.ceil(math.log(0.05) / math.log(momentum)) == 14
    means[shift - 1] = [1.0, -1.0]                             # spread before the jump: std 1
    assert X.ema_summary(means, shift, 3.0)[0] == pytest.approx(1.0)
    assert X.ema_summary(means[:shift + 3], shift, 3.0)[1] is None   # never gets there
    with pytest.raises(ValueError, match="shift"):
        X.ema_summary(means, 0, 3.0)


def _tiny_explorer():
    import plotly.graph_objects as go
    fig = go.Figure([go.Bar(x=[0, 1], y=[1, 2]), go.Scatter(x=[0, 1], y=[0, 0])])
    controls = [X.Control("a", "a", ("one", "two")), X.Control("b", "b", ("x", "y", "z"), 2,
                                                                   "select")]
    frames = {(i, j): {"traces": {0: {"y": np.array([i, j])}},
                       "readout": f"a={i} b={j} </script>"} for i in range(2) for j in range(3)}
    return X.explorer("tiny-1", fig, controls, frames, "a caption")


def test_explorer_html_holds_every_setting():
    ex = _tiny_explorer()
    html = ex.to_html()
    assert 'class="d2lbn-explorer"' in html and 'id="explorer-tiny-1"' in html
    payload = re.search(r'<script type="application/json" class="d2lbn-explorer-data">(.*?)'
                        r'</script>', html, re.S).group(1)
    assert "</" not in payload                              # cannot end the script early
    spec = json.loads(payload)
    assert set(spec["frames"]) == {f"{i}-{j}" for i in range(2) for j in range(3)}
    assert spec["frames"]["1-2"]["traces"]["0"]["y"] == [1, 2]
    assert ex.key() == "0-2" and ex.key(a=1) == "1-2"
    assert ex.frame(a=1, b=0)["readout"].startswith("a=1 b=0")
    assert spec["figure"]["data"][0]["type"] == "bar"
    assert "a=0 b=2" in html                                 # the initial readout, escaped
    with pytest.raises(ValueError, match="no control"):
        ex.key(c=1)


def test_explorer_rejects_incomplete_or_wrong_frames():
    import plotly.graph_objects as go
    fig = go.Figure([go.Bar(x=[0], y=[1])])
    control = [X.Control("a", "a", ("one", "two"))]
    with pytest.raises(ValueError, match="one entry per setting"):
        X.explorer("t", fig, control, {(0,): {"traces": {}}}, "c")
    with pytest.raises(ValueError, match="trace 3"):
        X.explorer("t", fig, control, {(0,): {"traces": {3: {"y": [1]}}}, (1,): {}}, "c")
    with pytest.raises(ValueError, match="name"):
        X.explorer("bad name", fig, control, {(0,): {}, (1,): {}}, "c")
    with pytest.raises(ValueError, match="initial"):
        X.Control("a", "a", ("one",), initial=1)
    with pytest.raises(ValueError, match="kind"):
        X.Control("a", "a", ("one",), kind="knob")


def _figure1_pair():
    rng = np.random.default_rng(0)
    data = (nd.array(rng.random((120, 784))), nd.array(rng.integers(0, 10, 120)),
            nd.array(rng.random((150, 784))), nd.array(rng.integers(0, 10, 150)))
    return [E.figure1_run(bn, 6, eval_every=3, test_limit=50, probe_size=40, data=data,
                          record_unit=5) for bn in (False, True)]


def test_figure1_records_the_inputs_behind_its_percentiles():
    for result in _figure1_pair():
        assert result.inputs.shape == (3, 40) and result.record_unit == 5
        np.testing.assert_allclose(np.percentile(result.inputs, [15, 50, 85], axis=1).T,
                                   result.percentiles[:, :, 5], rtol=1e-6)
    with pytest.raises(ValueError, match="record_unit"):
        E.figure1_run(False, 1, record_unit=100, data=(None, None, nd.zeros((1, 784)), None))


def test_figure1_explorer_frames_are_the_runs_numbers():
    plain, with_bn = _figure1_pair()
    ex = X.figure1_explorer(plain, with_bn, bins=12)
    assert list(ex.spec["frames"]) == ["0", "1", "2"] and ex.key() == "2"
    edges = None
    for t, step in enumerate(plain.steps):
        frame = ex.frame(step=t)
        assert frame["traces"]["3"]["x"] == [step, step]
        for trace, run in (("8", plain), ("9", with_bn)):
            counts = frame["traces"][trace]["y"]
            assert sum(counts) == 40
            if edges is None:
                every = np.concatenate([plain.inputs.ravel(), with_bn.inputs.ravel()])
                edges = X.bin_edges(every.min(), every.max(), 12)
            assert counts == oracle_counts(run.inputs[t], edges).tolist()
        assert f"step {step}:" in frame["readout"]
    with pytest.raises(ValueError, match="without batch norm"):
        X.figure1_explorer(with_bn, plain)


def test_formula_and_momentum_explorers_cover_their_grids(rng):
    Z = rng.normal(size=(4, 3, 3)).astype(np.float32)
    grid = X.formula_grid(Z, (2, 4), (1, 2), (0, 1), (1e-5, 1.0), bins=8)
    ex = X.formula_explorer(grid, initial=(1, 0, 0, 0))
    assert len(ex.spec["frames"]) == 16
    frame = ex.frame(batch=0, gamma=1, beta=1, eps=1)
    assert frame["traces"]["1"]["y"] == grid.after[0, 1, 1, 1].tolist()
    assert f"{grid.std_after[0, 1, 1, 1]:.4f}" in frame["readout"]
    d2lbn.set_seed(0)
    true_mean, true_var = np.r_[np.zeros(6), np.full(6, 3.0)], np.r_[np.ones(6), np.full(6, 4.0)]
    batches = [nd.array(rng.normal(mu, math.sqrt(v), size=(8, 5)))
               for mu, v in zip(true_mean, true_var)]
    traces = X.moving_average_traces(batches, (0.5, 0.9))
    ex = X.momentum_explorer(traces, true_mean, true_var, shift=6, m=8, initial=0.9)
    assert ex.key() == "1"
    means = traces[0.5][0]
    np.testing.assert_allclose(ex.frame(momentum=0)["traces"]["2"]["y"], means[:, 0], rtol=1e-4)
    upper = ex.frame(momentum=0)["traces"]["1"]["y"]
    np.testing.assert_allclose(upper, means.mean(axis=1) + means.std(axis=1), rtol=1e-4,
                               atol=1e-6)
    assert "λ = 0.5" in ex.frame(momentum=0)["readout"]
