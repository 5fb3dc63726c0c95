"""Matplotlib figures of nbquant's DataFrames; each function returns a Figure (no pyplot state),
shown inline in notebooks and saved with ``fig.savefig("x.png")`` anywhere else."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .tables import clip_ranges, layer_kinds, rank_correlation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KIND_COLORS = {"conv": "#7f7f7f", "depthwise": "#1f77b4", "pointwise": "#ff7f0e", "grouped": "#17becf",
               "gemm": "#2ca02c", "matmul": "#9467bd", "conv_transpose": "#8c564b"}
METHOD_COLORS = {"minmax": "#d62728", "percentile": "#9467bd", "mse": "#2ca02c", "kl": "#ff7f0e"}


def new_figure(**kwargs) -> Figure:
    """A matplotlib Figure outside pyplot (nothing kept globally); needs the notebooks extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("nbquant.plots needs matplotlib: pip install 'nbquant[notebooks]'") from None
    return Figure(layout="constrained", **kwargs)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for image widgets and files)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def coarse_histogram(counts, edges, bins: int = 256):
    """Merge neighbouring bins so at most ``bins`` remain (for display).

    >>> coarse_histogram(np.ones(8), np.arange(9.0), bins=4)
    (array([2., 2., 2., 2.]), array([0., 2., 4., 6., 8.]))
    """
    factor = -(-len(counts) // bins)
    pad = (-len(counts)) % factor
    merged = np.concatenate([counts, np.zeros(pad)]).reshape(-1, factor).sum(axis=1)
    step = edges[1] - edges[0]
    new_edges = edges[0] + step * factor * np.arange(len(merged) + 1)
    new_edges[-1] = min(new_edges[-1], edges[-1]) if pad == 0 else edges[-1]
    return merged, new_edges


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ConfigError(f"{what} needs columns {missing}; got {list(frame.columns)}")


def _kind_legend(ax, kinds) -> None:
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=KIND_COLORS.get(k, "k"), label=k) for k in kinds if k in set(kinds)],
              loc="best", fontsize=8)


def plot_clip_methods(calibration, layers, methods=None, symmetric: bool = False) -> Figure:
    """Per layer, the input activation's histogram with each clip method's range marked
    (the method the calibration chose drawn solid)."""
    layers = list(layers)
    table = clip_ranges(calibration, layers, methods, symmetric)
    inputs = {layer.name: layer.input for layer in calibration.prepared.layers}
    fig = new_figure(figsize=(6 * min(len(layers), 2), 3.2 * -(-len(layers) // 2)))
    axes = fig.subplots(-(-len(layers) // 2), min(len(layers), 2), squeeze=False).ravel()
    for ax, name in zip(axes, layers):
        counts, edges = coarse_histogram(*calibration.calibrator.observers_[inputs[name]].histogram)
        ax.stairs(counts, edges, fill=True, color="#bbbbbb")
        ax.set_yscale("log")
        for row in table[table["layer"] == name].itertuples():
            style = {"color": METHOD_COLORS.get(row.method, "k"), "lw": 2 if row.chosen else 1,
                     "ls": "-" if row.chosen else "--"}
            ax.axvline(row.clip_min, **style)
            ax.axvline(row.clip_max, label=f"{row.method} {row.sqnr_db:.1f} dB", **style)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("activation value")
        ax.legend(fontsize=7, title="clip range, SQNR", title_fontsize=7)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    axes[0].set_ylabel("count (log)")
    return fig


def plot_weight_scales(calibration, layer_table: pd.DataFrame | None = None) -> Figure:
    """Every output channel's weight scale per layer (graph order, log scale), colored by layer kind."""
    quant = calibration.calibrator.quant_
    table = layer_table if layer_table is not None else calibration.prepared.table
    kinds = dict(zip(table["layer"], layer_kinds(table)))
    fig = new_figure(figsize=(12, 4))
    ax = fig.subplots()
    for i, (name, lq) in enumerate(quant.items()):
        scales = np.atleast_1d(lq.weight.scale)
        color = KIND_COLORS.get(kinds.get(name), "k")
        ax.vlines(i, scales.min(), scales.max(), color=color, lw=1)
        ax.scatter(np.full(scales.size, i), scales, s=3, color=color, alpha=0.4)
    ax.set_yscale("log")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("weight scale per output channel")
    ax.set_title("Per-channel weight scales: the spread one per-tensor scale would have to cover")
    _kind_legend(ax, list(dict.fromkeys(kinds[n] for n in quant if n in kinds)))
    return fig


def sensitivity_values(ranking: pd.DataFrame) -> pd.Series:
    """Higher = more sensitive: ``1 - score`` (both metrics score 1 for a layer that changes nothing;
    for ``output`` it is ``1 - exp(-KL)``, about the KL itself)."""
    _require(ranking, ["score"], "sensitivity_values")
    return 1.0 - ranking["score"]


def _with_kinds(ranking: pd.DataFrame, layer_table: pd.DataFrame | None) -> pd.DataFrame:
    frame = ranking.copy()
    if layer_table is not None:
        extra = [c for c in ("op", "depthwise", "weight_shape") if c in layer_table]
        frame = frame.drop(columns=[c for c in extra if c in frame]).merge(
            layer_table[["layer", *extra]], on="layer", how="left")
        if "graph_index" not in frame:
            order = {name: i for i, name in enumerate(layer_table["layer"])}
            frame["graph_index"] = frame["layer"].map(order)
    frame["kind"] = layer_kinds(frame) if "op" in frame else "conv"
    return frame


def plot_sensitivity(ranking: pd.DataFrame, layer_table: pd.DataFrame | None = None, top: int = 5) -> Figure:
    """Bar chart of sensitivity by layer in graph order, colored by kind; the ``top`` most sensitive named."""
    _require(ranking, ["layer", "score", "rank"], "plot_sensitivity")
    frame = _with_kinds(ranking, layer_table)
    if "graph_index" not in frame:
        raise ConfigError("plot_sensitivity needs graph_index in the ranking, or a layer_table for the graph order")
    frame["sensitivity"] = sensitivity_values(frame)
    frame = frame.sort_values("graph_index")
    method = frame["metric"].iloc[0] if "metric" in frame else "score"
    fig = new_figure(figsize=(12, 4))
    ax = fig.subplots()
    ax.bar(frame["graph_index"], frame["sensitivity"], color=[KIND_COLORS.get(k, "k") for k in frame["kind"]])
    for row in frame[frame["rank"] <= top].itertuples():
        ax.annotate(f"#{row.rank} {row.layer.strip('/').replace('/Conv', '')}", (row.graph_index, row.sensitivity),
                    fontsize=7, rotation=60, ha="left", va="bottom")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("1 - exp(-KL to float output)" if method == "output" else "1 - score")
    ax.set_title(f"Sensitivity by layer ({method} metric)")
    ax.margins(y=0.3)
    _kind_legend(ax, list(dict.fromkeys(frame["kind"])))
    return fig


def plot_ranking_comparison(comparison: pd.DataFrame, a: str, b: str, layer_table=None) -> Figure:
    """Rank under metric ``a`` against rank under ``b`` (from ``compare_rankings``), with Spearman rho."""
    _require(comparison, [f"rank_{a}", f"rank_{b}"], "plot_ranking_comparison")
    frame = _with_kinds(comparison, layer_table) if layer_table is not None or "op" in comparison else comparison
    colors = [KIND_COLORS.get(k, "k") for k in frame.get("kind", pd.Series("conv", index=frame.index))]
    fig = new_figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.scatter(frame[f"rank_{a}"], frame[f"rank_{b}"], c=colors, s=18)
    n = int(max(frame[f"rank_{a}"].max(), frame[f"rank_{b}"].max()))
    ax.plot([1, n], [1, n], color="#bbbbbb", lw=1, zorder=0)
    rho = rank_correlation(frame[f"rank_{a}"], frame[f"rank_{b}"])
    ax.set_title(f"Rank by {a} vs by {b} (Spearman {rho:.2f})")
    ax.set_xlabel(f"rank by {a} (1 = most sensitive)")
    ax.set_ylabel(f"rank by {b}")
    if "kind" in frame:
        _kind_legend(ax, list(dict.fromkeys(frame["kind"])))
    return fig


def target_metric(original: float, max_drop: float, relative: bool = False) -> float:
    """The lowest metric the budget accepts.

    >>> target_metric(0.9, 0.01), target_metric(0.9, 0.1, relative=True)
    (0.89, 0.81)
    """
    return round(original - max_drop * (abs(original) if relative else 1.0), 12)


def plot_search_history(history: pd.DataFrame, original_metric: float, max_drop: float, relative: bool = False,
                        chosen=None, ax=None) -> Figure:
    """Metric versus number of int8 layers for every evaluated configuration, the target line,
    the float model's line and the ``chosen`` float-layer set highlighted."""
    _require(history, ["n_int8", "metric"], "plot_search_history")
    original = history.get("kind", pd.Series("search", index=history.index)) == "original"
    points = history[~original & history["metric"].notna()]
    fig = new_figure(figsize=(7, 4)) if ax is None else ax.figure
    ax = fig.subplots() if ax is None else ax
    target = target_metric(original_metric, max_drop, relative)
    ok = points["metric"] >= target - 1e-12
    ax.scatter(points["n_int8"][ok], points["metric"][ok], color="#2ca02c", s=25, label="evaluated: meets target")
    ax.scatter(points["n_int8"][~ok], points["metric"][~ok], color="#d62728", s=25, marker="x",
               label="evaluated: misses target")
    ax.axhline(original_metric, color="#555555", lw=1, ls=":", label=f"float model {original_metric:.4f}")
    ax.scatter([0], [original_metric], color="#555555", marker="s", s=25)
    ax.axhline(target, color="#1f77b4", lw=1.5, ls="--",
               label=f"target {target:.4f} ({max_drop:g}{' relative' if relative else ''})")
    if chosen is not None and "float_layers" in points:
        hit = points[points["float_layers"].map(lambda f: set(f) == set(chosen))]
        if len(hit):
            ax.scatter(hit["n_int8"], hit["metric"], s=180, facecolors="none", edgecolors="k", lw=2,
                       label=f"chosen: {int(hit['n_int8'].iloc[0])} layers int8")
    n_layers = int((history["n_int8"] + history["n_float"]).max()) if "n_float" in history else None
    ax.set_xlim(-1, (n_layers or int(history["n_int8"].max())) + 1)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layers in int8")
    ax.set_ylabel("metric")
    ax.set_title("Fallback search: every evaluated configuration")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_pareto(pareto: pd.DataFrame, original_metric: float, max_drop: float, relative: bool = False,
                ax=None) -> Figure:
    """Metric versus predicted latency (``AutoCalibrationResult.pareto``) for every evaluated configuration:
    passing ones, the Pareto front (no passing one both faster and smaller), the budget line and the choice."""
    _require(pareto, ["predicted_ms", "metric", "ok", "pareto", "chosen"], "plot_pareto")
    points = pareto[pareto["metric"].notna() & pareto["predicted_ms"].notna()]
    fig = new_figure(figsize=(7, 4)) if ax is None else ax.figure
    ax = fig.subplots() if ax is None else ax
    ok, front = points["ok"].astype(bool), points["pareto"].astype(bool)
    ax.scatter(points["predicted_ms"][ok], points["metric"][ok], color="#2ca02c", s=25, label="meets target")
    ax.scatter(points["predicted_ms"][~ok], points["metric"][~ok], color="#d62728", s=25, marker="x",
               label="misses target")
    if front.any():
        line = points[front].sort_values("predicted_ms")
        ax.plot(line["predicted_ms"], line["metric"], color="#2ca02c", lw=1, label="Pareto front")
    target = target_metric(original_metric, max_drop, relative)
    ax.axhline(target, color="#1f77b4", lw=1.5, ls="--", label=f"target {target:.4f}")
    ax.axhline(original_metric, color="#555555", lw=1, ls=":", label=f"float model {original_metric:.4f}")
    chosen = points[points["chosen"].astype(bool)]
    if len(chosen):
        ax.scatter(chosen["predicted_ms"], chosen["metric"], s=180, facecolors="none", edgecolors="k", lw=2,
                   label=f"chosen: {chosen['predicted_ms'].iloc[0]:.2f} ms predicted")
    ax.set_xlabel("predicted latency on this CPU (ms, batch 1)")
    ax.set_ylabel("metric")
    ax.set_title("Every evaluated configuration: accuracy against latency")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_maps(pixels: np.ndarray, maps: dict[str, np.ndarray], titles=None, threshold: float | None = None
              ) -> Figure:
    """Dense outputs side by side, one row per image: the model input's pixels (uint8 [N, H, W, 3]) and each
    model's map (``{"float": [N, C, h, w], "int8": ...}``; the first channel), on one color scale, with the
    float map's ``threshold`` contour drawn on every map. ``titles``: a line per row (e.g. the file and IoU)."""
    if not maps:
        raise ConfigError("plot_maps needs at least one map, e.g. {'float': float_maps}")
    arrays = {name: np.asarray(m) for name, m in maps.items()}
    n = len(pixels)
    if any(len(m) != n for m in arrays.values()):
        raise ConfigError(f"plot_maps: {n} images but maps of {[len(m) for m in arrays.values()]} samples")
    planes = {name: m.reshape(n, -1, *m.shape[-2:])[:, 0].astype(np.float32) for name, m in arrays.items()}
    lo = min(float(p.min()) for p in planes.values())
    hi = max(float(p.max()) for p in planes.values())
    lo, hi = (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi)
    cols = 1 + len(planes)
    fig = new_figure(figsize=(2.6 * cols, 2.4 * n))
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    reference = planes[next(iter(planes))]
    for row in range(n):
        axes[row, 0].imshow(pixels[row])
        axes[row, 0].set_ylabel(titles[row] if titles is not None else f"image {row}", fontsize=8)
        extent = (0, pixels[row].shape[1], pixels[row].shape[0], 0)  # a stride-s map drawn over the whole input
        for col, (name, plane) in enumerate(planes.items(), start=1):
            ax = axes[row, col]
            image = ax.imshow(plane[row], vmin=lo, vmax=hi, cmap="magma", extent=extent)
            if threshold is not None and (reference[row] > threshold).any() and (reference[row] <= threshold).any():
                ax.contour(reference[row], levels=[threshold], colors="#2ca02c", linewidths=0.8, extent=extent,
                           origin="upper")
            if row == 0:
                ax.set_title(name, fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[:, 1:].ravel().tolist(), shrink=0.6,
                 label="map" + (f" (green: float above {threshold:g})" if threshold is not None else ""))
    return fig
