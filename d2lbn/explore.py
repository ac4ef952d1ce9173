"""Interactive explorers for the rendered book: numbers from d2lbn, drawn by Plotly (ch01, ch02, ch06, ch08).

An explorer is a Plotly figure, a few controls (sliders, a choice) and, for *every* setting of the
controls, the data its traces show and a line of text (the readout). All of it is computed here, in
the notebook, by the same d2lbn functions as the chapter's static figure, and stored in the
notebook's output as HTML with the data inlined as JSON. In the rendered book,
``_static/d2lbn_explorers.js`` draws it with Plotly (``_static/plotly.min.js``, copied from the
installed ``plotly`` package by ``book/_ext/d2lbn_explore.py``): no kernel and no server, offline.

The computations (each unit-tested against a float64 NumPy oracle in ``tests/test_explore.py``):

* :func:`formula_grid` -- chapter "The Formula": ``pure_batch_norm`` of one channel of a real batch,
  for a grid of batch sizes, gamma, beta and epsilon: histograms before and after, with the batch
  mean and standard deviation. X: (N, H, W).
* :func:`moving_average_traces` -- chapter "Training and Inference": the moving mean and variance
  ``batch_norm`` stores after each step, for several momenta. Each batch: (m, D).
* :func:`ema_summary` -- the noise and the lag (steps to 95% of a jump) of those traces.
* :func:`histograms` -- counts of many samples on one set of bins (chapter "Beyond", Figure 1).

:func:`explorer` turns a figure, the controls and the per-setting data into the HTML output.
"""
from __future__ import annotations

import html
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from mxnet import nd

from .norm import batch_norm, pure_batch_norm

__all__ = ["Control", "Explorer", "explorer", "histograms", "bin_edges", "formula_grid",
           "formula_explorer", "momentum_explorer", "figure1_explorer",
           "FormulaGrid", "moving_average_traces", "ema_summary", "compact"]


# ---- the computations ----------------------------------------------------------------------------

def bin_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """``bins + 1`` equally spaced edges from ``lo`` to ``hi`` (widened a little so that values
    equal to ``lo`` or ``hi`` after float32 rounding still fall inside)."""
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int; got {bins!r}")
    if not (np.isfinite(lo) and np.isfinite(hi)) or not hi > lo:
        raise ValueError(f"need finite lo < hi; got lo={lo!r}, hi={hi!r}")
    pad = 1e-6 * max(1.0, abs(lo), abs(hi))
    return np.linspace(lo - pad, hi + pad, bins + 1)


def histograms(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of each row of ``values`` (T, n) on the bins ``edges`` (B + 1,): (T, B) ints.
    A value outside the edges is an error (the caller chose the edges to cover every value)."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (T, n); got shape {values.shape}")
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be increasing, at least two of them")
    if values.size and (values.min() < edges[0] or values.max() > edges[-1]):
        raise ValueError(f"values span [{values.min()}, {values.max()}], outside the edges "
                         f"[{edges[0]}, {edges[-1]}]")
    return np.stack([np.histogram(row, bins=edges)[0] for row in values])


@dataclass
class FormulaGrid:
    """:func:`formula_grid`'s results. Axes of the 5-D arrays: batch size, gamma, beta, eps, bin.

    ``before``: (len(batch_sizes), B) counts of the raw values; ``batch_mean``/``batch_std``:
    (len(batch_sizes),), the batch statistics (float64, biased std); ``after``: (S, G, Be, E, B)
    counts of ``pure_batch_norm``'s output; ``mean_after``/``std_after``: (S, G, Be, E)."""
    batch_sizes: Tuple[int, ...]
    gammas: Tuple[float, ...]
    betas: Tuple[float, ...]
    epsilons: Tuple[float, ...]
    edges_before: np.ndarray
    edges_after: np.ndarray
    before: np.ndarray
    batch_mean: np.ndarray
    batch_std: np.ndarray
    after: np.ndarray
    mean_after: np.ndarray
    std_after: np.ndarray


def formula_grid(X: np.ndarray, batch_sizes: Sequence[int], gammas: Sequence[float],
                 betas: Sequence[float], epsilons: Sequence[float],
                 bins: int = 40) -> FormulaGrid:
    """``pure_batch_norm`` of one channel over a grid of settings.

    X: (N, H, W), one channel of N images (a convolution's output). For each batch size b the
    batch is the first b images, normalised as an (b, 1, H, W) input (so over b * H * W values),
    with every gamma, beta and eps of the grid. Bins are shared by all settings (one set before,
    one after), so that moving a slider moves the histogram, not the axis.
    """
    X = np.asarray(X.asnumpy() if isinstance(X, nd.NDArray) else X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"X must be one channel of N images, (N, H, W); got shape {X.shape}")
    bad = int((~np.isfinite(X)).sum())
    if bad:
        raise ValueError(f"X holds {bad} NaN or infinite value(s): every statistic of a batch "
                         f"holding one would be NaN")
    sizes = tuple(int(b) for b in batch_sizes)
    if not sizes or any(b < 1 or b > X.shape[0] for b in sizes) or \
            any(b * X.shape[1] * X.shape[2] < 2 for b in sizes):
        raise ValueError(f"batch_sizes must be in 1 .. {X.shape[0]} (the images in X) with at "
                         f"least two values each; got {list(batch_sizes)}")
    gammas, betas = tuple(float(g) for g in gammas), tuple(float(b) for b in betas)
    epsilons = tuple(float(e) for e in epsilons)
    for name, values, positive in (("gammas", gammas, True), ("betas", betas, False),
                                   ("epsilons", epsilons, True)):
        if not values or not all(math.isfinite(v) and (v > 0 or not positive)
                                 for v in values):
            what = "positive and finite" if positive else "finite"
            raise ValueError(f"{name} must be {what}, at least one; got {list(values)}")
    batches = [nd.array(X[:b, None]) for b in sizes]
    one, zero = nd.ones(1), nd.zeros(1)
    # the normalised values x_hat (gamma 1, beta 0) bound every output: y = gamma x_hat + beta
    lo = hi = 0.0
    for batch in batches:
        for eps in epsilons:
            x_hat = pure_batch_norm(batch, one, zero, eps=eps).asnumpy()
            lo = min(lo, min(g * x_hat.min() for g in gammas) + min(betas))
            hi = max(hi, max(g * x_hat.max() for g in gammas) + max(betas))
    edges_after = bin_edges(lo, hi, bins)
    edges_before = bin_edges(float(X[:max(sizes)].min()), float(X[:max(sizes)].max()), bins)
    shape = (len(sizes), len(gammas), len(betas), len(epsilons))
    after = np.zeros(shape + (bins,), dtype=np.int64)
    mean_after, std_after = np.zeros(shape), np.zeros(shape)
    before = np.zeros((len(sizes), bins), dtype=np.int64)
    batch_mean, batch_std = np.zeros(len(sizes)), np.zeros(len(sizes))
    for i, batch in enumerate(batches):
        raw = X[:sizes[i]].astype(np.float64).ravel()
        before[i] = histograms(raw[None], edges_before)[0]
        batch_mean[i], batch_std[i] = raw.mean(), raw.std()
        for j, k, e in itertools.product(*(range(n) for n in shape[1:])):
            Y = pure_batch_norm(batch, nd.array([gammas[j]]), nd.array([betas[k]]),
                                eps=epsilons[e]).asnumpy().astype(np.float64).ravel()
            after[i, j, k, e] = histograms(Y[None], edges_after)[0]
            mean_after[i, j, k, e], std_after[i, j, k, e] = Y.mean(), Y.std()
    return FormulaGrid(sizes, gammas, betas, epsilons, edges_before, edges_after, before,
                       batch_mean, batch_std, after, mean_after, std_after)


def moving_average_traces(batches: Sequence[nd.NDArray], momenta: Sequence[float],
                          eps: float = 1e-5
                          ) -> Dict[float, Tuple[np.ndarray, np.ndarray]]:
    """The moving mean and variance that ``d2lbn.norm.batch_norm`` stores after
    every step.

    batches: T training batches, each (m, D). Starts from MXNet's initial values
    (mean 0, variance 1). Returns {momentum: (means (T, D), variances (T, D))}.
    """
    if not batches:
        raise ValueError("batches must hold at least one (m, D) batch")
    momenta = [float(mo) for mo in momenta]
    if not momenta or any(not 0 <= mo < 1 for mo in momenta):
        raise ValueError(f"momenta must be in [0, 1); got {momenta}")
    D = batches[0].shape[1]
    traces = {}
    for momentum in momenta:
        mean, var, trace_mean, trace_var = nd.zeros(D), nd.ones(D), [], []
        for x in batches:
            _, mean, var = batch_norm(x, nd.ones(D), nd.zeros(D), mean, var,
                                      training=True, momentum=momentum, eps=eps)
            trace_mean.append(mean.asnumpy())
            trace_var.append(var.asnumpy())
        traces[momentum] = (np.array(trace_mean), np.array(trace_var))
    return traces


def ema_summary(means: np.ndarray, shift: int, new_value: float,
                fraction: float = 0.95) -> Tuple[float, Optional[int]]:
    """(noise, lag) of moving means (T, D) whose data jumps to ``new_value`` at step ``shift``.

    noise: the spread (std across the D features) of the moving mean just before the jump,
    after ``shift`` steps; lag: the steps after the jump until the feature-averaged moving mean
    first closes ``fraction`` of the gap (within ``(1 - fraction) * |new_value|``), None if never.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or not 0 < shift < means.shape[0]:
        raise ValueError(f"means must be (T, D) with 0 < shift < T; got {means.shape}, "
                         f"shift={shift}")
    noise = float(means[shift - 1].std())
    average = means[shift:].mean(axis=1)
    within = np.nonzero(np.abs(average - new_value) <= (1 - fraction) * abs(new_value))[0]
    return noise, (int(within[0]) + 1 if len(within) else None)


# ---- the explorer: HTML with the data inlined ----------------------------------------------------

@dataclass(frozen=True)
class Control:
    """One control of an explorer: a slider (``kind='range'``) or a drop-down (``'select'``) over
    ``labels`` (the text shown for each position), starting at position ``initial``."""
    name: str
    label: str
    labels: Tuple[str, ...]
    initial: int = 0
    kind: str = "range"

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"Control name must be an identifier; got {self.name!r}")
        if not self.labels:
            raise ValueError(f"Control {self.name!r}: labels must not be empty")
        if not 0 <= self.initial < len(self.labels):
            raise ValueError(f"Control {self.name!r}: initial must be in 0 .. "
                             f"{len(self.labels) - 1}; got {self.initial}")
        if self.kind not in ("range", "select"):
            raise ValueError(f"Control {self.name!r}: kind must be 'range' or 'select'; "
                             f"got {self.kind!r}")


def compact(values, digits: int = 5) -> list:
    """A list of floats rounded to ``digits`` significant digits (ints stay ints): smaller JSON."""
    out = []
    for v in np.asarray(values).tolist():
        if isinstance(v, float):
            out.append(float(f"{v:.{digits}g}") if math.isfinite(v) else None)
        else:
            out.append(v)
    return out


class Explorer:
    """An explorer ready to show: ``spec`` is the JSON the page's script reads; displaying it in a
    notebook gives the HTML (``text/html``) that MyST-NB puts into the page."""

    def __init__(self, spec: Dict[str, Any]):
        self.spec = spec

    def key(self, **positions: int) -> str:
        """The frame key of a setting given by control positions (missing ones: their initial)."""
        unknown = set(positions) - {c["name"] for c in self.spec["controls"]}
        if unknown:
            raise ValueError(f"no control named {sorted(unknown)}")
        return "-".join(str(positions.get(c["name"], c["initial"]))
                        for c in self.spec["controls"])

    def frame(self, **positions: int) -> Dict[str, Any]:
        return self.spec["frames"][self.key(**positions)]

    def to_html(self) -> str:
        spec = self.spec
        data = json.dumps(spec, separators=(",", ":"), allow_nan=False)
        data = data.replace("</", "<\\/")           # cannot close the <script> element
        initial = spec["frames"][self.key()]["readout"]
        name = html.escape(spec["id"])
        return (
            f'<div class="d2lbn-explorer" id="explorer-{name}" data-explorer="{name}" '
            f'role="figure" aria-label="{html.escape(spec["caption"])}">\n'
            f'<div class="d2lbn-explorer-controls"></div>\n'
            f'<div class="d2lbn-explorer-readout" aria-live="polite">'
            f'{html.escape(initial)}</div>\n'
            f'<div class="d2lbn-explorer-plot" style="height:{int(spec["height"])}px"></div>\n'
            f'<p class="d2lbn-explorer-caption"><strong>Interactive.</strong> '
            f'{html.escape(spec["caption"])}</p>\n'
            f'<p class="d2lbn-explorer-fallback">(The controls work in the rendered book, which '
            f'draws this explorer with Plotly from its own <code>_static</code> folder.)</p>\n'
            f'<script type="application/json" class="d2lbn-explorer-data">{data}</script>\n'
            f'</div>')

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return (f"<d2lbn explorer {self.spec['id']!r}: {len(self.spec['controls'])} controls, "
                f"{len(self.spec['frames'])} settings>")


def explorer(name: str, figure, controls: Sequence[Control],
             frames: Mapping[Tuple[int, ...], Mapping[str, Any]], caption: str,
             height: int = 420) -> Explorer:
    """An explorer of ``figure`` (a ``plotly.graph_objects.Figure``: its traces and layout as
    they look at the initial setting) whose ``controls`` pick one of ``frames``.

    frames: {(position of each control, ...): {"traces": {trace index: {"x": [...], "y":
    [...]}}, "readout": "text"}} for *every* combination of positions. On the page, moving a
    control replaces the listed properties of the listed traces and the readout text.
    """
    import plotly.io as pio                           # only the notebooks need plotly

    if not name or not all(ch.isalnum() or ch == "-" for ch in name):
        raise ValueError(f"name must be letters, digits and '-'; got {name!r}")
    controls = list(controls)
    if not controls:
        raise ValueError("an explorer needs at least one control")
    if len({c.name for c in controls}) != len(controls):
        raise ValueError("control names must be unique")
    figure_json = json.loads(pio.to_json(figure, validate=True))
    n_traces = len(figure_json.get("data", []))
    expected = set(itertools.product(*(range(len(c.labels)) for c in controls)))
    got = {tuple(int(i) for i in k) for k in frames}
    if got != expected:
        missing, extra = sorted(expected - got)[:3], sorted(got - expected)[:3]
        raise ValueError(f"frames must have one entry per setting of the controls; missing "
                         f"{missing}, unexpected {extra}")
    out_frames = {}
    for key, frame in frames.items():
        traces = {}
        for index, update in frame.get("traces", {}).items():
            if not 0 <= int(index) < n_traces:
                raise ValueError(f"frame {key}: trace {index} is not in the figure "
                                 f"({n_traces} traces)")
            traces[str(int(index))] = {prop: compact(v) if not isinstance(v, str) else v
                                       for prop, v in update.items()}
        readout = frame.get("readout", "")
        if not isinstance(readout, str):
            raise TypeError(f"frame {key}: readout must be a str")
        out_frames["-".join(str(int(i)) for i in key)] = {"traces": traces, "readout": readout}
    spec = {"id": name, "caption": caption, "height": int(height), "figure": figure_json,
            "controls": [{"name": c.name, "label": c.label, "labels": list(c.labels),
                          "initial": c.initial, "kind": c.kind} for c in controls],
            "frames": out_frames}
    return Explorer(spec)


# ---- the book's three explorers ------------------------------------------------------------------

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
_AXIS_FONT = {"size": 11}


def _layout(fig, height: int) -> None:
    fig.update_layout(height=height, margin={"l": 48, "r": 12, "t": 36, "b": 40},
                      dragmode=False, bargap=0.05, hovermode="closest",
                      legend={"orientation": "h", "y": -0.16, "x": 0, "font": _AXIS_FONT})
    fig.update_annotations(font_size=12)


def formula_explorer(grid: FormulaGrid, initial: Tuple[int, int, int, int] = (3, 1, 2, 0),
                     caption: str = "", height: int = 430) -> Explorer:
    """Chapter "The Formula": histograms of one channel before and after ``pure_batch_norm``
    (from :func:`formula_grid`), with controls for the batch size, gamma, beta and eps;
    ``initial``: the starting position of each control, in that order."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    centers = [(e[1:] + e[:-1]) / 2 for e in (grid.edges_before, grid.edges_after)]
    widths = [float(e[1] - e[0]) for e in (grid.edges_before, grid.edges_after)]
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.2,
                        subplot_titles=("before: the channel's raw values",
                                        "after: pure_batch_norm(X, γ, β, ε)"))
    i, j, k, e = initial
    fig.add_trace(go.Bar(x=compact(centers[0]), y=grid.before[i].tolist(), width=widths[0],
                         marker_color="#7f7f7f", name="before"), row=1, col=1)
    fig.add_trace(go.Bar(x=compact(centers[1]), y=grid.after[i, j, k, e].tolist(),
                         width=widths[1], marker_color=COLORS[0], name="after"), row=2, col=1)
    fig.update_yaxes(title_text="count", title_font=_AXIS_FONT)
    fig.update_xaxes(title_text="value", title_font=_AXIS_FONT, row=2, col=1)
    _layout(fig, height)
    fig.update_layout(showlegend=False)
    frames = {}
    shape = grid.after.shape[:4]
    for i, j, k, e in itertools.product(*(range(n) for n in shape)):
        b, m = grid.batch_sizes[i], int(grid.before[i].sum())
        sigma2 = grid.batch_std[i] ** 2
        predicted = grid.gammas[j] * math.sqrt(sigma2 / (sigma2 + grid.epsilons[e]))
        readout = (f"{b} images, m = {m} values.  Before: batch mean μ = "
                   f"{grid.batch_mean[i]:.4f}, std σ = {grid.batch_std[i]:.4f}.  After: mean "
                   f"{round(grid.mean_after[i, j, k, e], 4) + 0.0:+.4f} (β = {grid.betas[k]:g}), std "
                   f"{grid.std_after[i, j, k, e]:.4f} (γσ/√(σ²+ε) = {predicted:.4f}).")
        frames[(i, j, k, e)] = {"traces": {0: {"y": grid.before[i]},
                                           1: {"y": grid.after[i, j, k, e]}},
                                "readout": readout}
    controls = [
        Control("batch", "batch size", tuple(f"{b} images" for b in grid.batch_sizes),
                initial[0], "select"),
        Control("gamma", "γ (scale)", tuple(f"{g:g}" for g in grid.gammas), initial[1]),
        Control("beta", "β (shift)", tuple(f"{b:g}" for b in grid.betas), initial[2]),
        Control("eps", "ε", tuple(f"{x:g}" for x in grid.epsilons), initial[3]),
    ]
    return explorer("ch01-formula", fig, controls, frames, caption, height)


def momentum_explorer(traces: Mapping[float, Tuple[np.ndarray, np.ndarray]],
                      true_mean: np.ndarray, true_var: np.ndarray, shift: int, m: int,
                      initial: float = 0.9, caption: str = "",
                      height: int = 470) -> Explorer:
    """Chapter "Training and Inference": the moving mean and variance of feature 0 over the steps
    (from :func:`moving_average_traces`), a band of one standard deviation across all features
    around their average, and the data's value; a slider picks the momentum. The readout gives
    the noise and the lag (:func:`ema_summary`) next to the chapter's formulas for them (data of
    variance one before ``shift``, batches of ``m``)."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    momenta = sorted(traces)
    if initial not in traces:
        raise ValueError(f"initial momentum {initial} is not one of {momenta}")
    steps = list(range(1, len(true_mean) + 1))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("moving mean", "moving variance"))

    def per_row(stats):
        center, spread = stats.mean(axis=1), stats.std(axis=1)
        return {0: {"y": center - spread}, 1: {"y": center + spread}, 2: {"y": stats[:, 0]}}

    for row, truth in ((1, true_mean), (2, true_var)):
        first = row == 1
        fig.add_trace(go.Scatter(x=steps, y=[0] * len(steps), mode="lines", line_width=0,
                                 hoverinfo="skip", showlegend=False), row=row, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[0] * len(steps), mode="lines", line_width=0,
                                 fill="tonexty", fillcolor="rgba(90,150,210,0.32)",
                                 name="all features: average ± std", showlegend=first,
                                 hoverinfo="skip"), row=row, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[0] * len(steps), mode="lines",
                                 line={"color": COLORS[1], "width": 1.5}, name="feature 0",
                                 showlegend=first), row=row, col=1)
        fig.add_trace(go.Scatter(x=steps, y=compact(truth), mode="lines",
                                 line={"color": "#7f7f7f", "dash": "dash", "width": 1.2},
                                 name="the data's value", showlegend=first), row=row, col=1)
    fig.update_xaxes(title_text="training step", title_font=_AXIS_FONT, row=2, col=1)
    _layout(fig, height)
    frames = {}
    for index, momentum in enumerate(momenta):
        means, variances = traces[momentum]
        update = per_row(means)
        update.update({4 + t: v for t, v in per_row(variances).items()})
        noise, lag = ema_summary(means, shift, float(true_mean[shift]))
        theory_noise = math.sqrt((1 - momentum) / (1 + momentum)
                                 * (1 - momentum ** (2 * shift)) / m)
        theory_lag = math.log(0.05) / math.log(momentum)
        lag_text = f"{lag} steps" if lag is not None else f"not within {len(steps) - shift}"
        readout = (f"momentum λ = {momentum:g}: remembers about 1/(1−λ) = "
                   f"{1 / (1 - momentum):.0f} batches.  Noise of the moving mean before the "
                   f"shift: {noise:.3f} (formula {theory_noise:.3f}).  95% of the jump: "
                   f"{lag_text} (formula {theory_lag:.1f}).")
        frames[(index,)] = {"traces": update, "readout": readout}
        if momentum == initial:                   # the figure itself shows the initial momentum
            for trace, values in update.items():
                fig.data[trace].y = compact(values["y"])
    controls = [Control("momentum", "momentum λ", tuple(f"{mo:g}" for mo in momenta),
                        momenta.index(initial))]
    return explorer("ch02-momentum", fig, controls, frames, caption, height)


def figure1_explorer(plain, with_bn, bins: int = 30, caption: str = "",
                     height: int = 520) -> Explorer:
    """Chapter "Beyond": Figure 1's percentiles of one sigmoid's input over the steps, without
    and with batch norm (two ``experiments.Figure1Result`` of one seed, recorded for the same
    unit), with a step slider that marks the step and shows the histogram of that input there."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    if list(plain.steps) != list(with_bn.steps) or plain.record_unit != with_bn.record_unit:
        raise ValueError("plain and with_bn must be measured at the same steps, same unit")
    if plain.batch_norm or not with_bn.batch_norm:
        raise ValueError("plain must be the run without batch norm, with_bn the one with it")
    unit, steps = plain.record_unit, list(plain.steps)
    every = np.concatenate([plain.inputs.ravel(), with_bn.inputs.ravel()])
    edges = bin_edges(float(every.min()), float(every.max()), bins)
    centers, width = compact((edges[1:] + edges[:-1]) / 2), float(edges[1] - edges[0])
    counts = {False: histograms(plain.inputs, edges), True: histograms(with_bn.inputs, edges)}
    pct = {False: plain.percentiles[:, :, unit], True: with_bn.percentiles[:, :, unit]}
    lo = float(min(p.min() for p in pct.values()))
    hi = float(max(p.max() for p in pct.values()))
    fig = make_subplots(rows=2, cols=2, shared_yaxes=False, vertical_spacing=0.2,
                        horizontal_spacing=0.1,
                        subplot_titles=("without batch norm", "with batch norm",
                                        "histogram at the step", "histogram at the step"))
    for col, bn in ((1, False), (2, True)):
        for q, name in enumerate(("15th", "50th", "85th")):
            fig.add_trace(go.Scatter(x=steps, y=compact(pct[bn][:, q]), mode="lines",
                                     line={"color": COLORS[q], "width": 1.5},
                                     name=f"{name} percentile", showlegend=not bn,
                                     legendgroup=name), row=1, col=col)
        fig.add_trace(go.Scatter(x=[steps[-1]] * 2, y=[lo, hi], mode="lines",
                                 line={"color": "#7f7f7f", "width": 1, "dash": "dot"},
                                 showlegend=False, hoverinfo="skip"), row=1, col=col)
    for col, bn in ((1, False), (2, True)):
        fig.add_trace(go.Bar(x=centers, y=counts[bn][-1].tolist(), width=width,
                             marker_color=COLORS[3] if not bn else COLORS[0],
                             showlegend=False, name="count"), row=2, col=col)
    fig.update_yaxes(range=[lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)], row=1)
    fig.update_yaxes(title_text=f"input, unit {unit}", title_font=_AXIS_FONT, row=1, col=1)
    fig.update_yaxes(title_text="count", title_font=_AXIS_FONT, row=2, col=1)
    fig.update_yaxes(range=[0, int(max(c.max() for c in counts.values())) * 1.05], row=2)
    fig.update_xaxes(title_text="training step", title_font=_AXIS_FONT, row=1)
    fig.update_xaxes(title_text="input of the sigmoid", title_font=_AXIS_FONT, row=2)
    _layout(fig, height)
    fig.update_layout(legend={"y": -0.14})
    frames = {}
    for t, step in enumerate(steps):
        p0, p1 = pct[False][t], pct[True][t]
        readout = (f"step {step}: test accuracy {plain.test_acc[t]:.3f} without batch norm, "
                   f"{with_bn.test_acc[t]:.3f} with.  Unit {unit}'s input, 15th / 50th / 85th "
                   f"percentile: {p0[0]:.2f} / {p0[1]:.2f} / {p0[2]:.2f} without, "
                   f"{p1[0]:.2f} / {p1[1]:.2f} / {p1[2]:.2f} with.")
        frames[(t,)] = {"traces": {3: {"x": [step, step]}, 7: {"x": [step, step]},
                                   8: {"y": counts[False][t]}, 9: {"y": counts[True][t]}},
                        "readout": readout}
    controls = [Control("step", "training step", tuple(str(s) for s in steps),
                        len(steps) - 1)]
    return explorer("ch06-figure1", fig, controls, frames, caption, height)
