"""Tidy DataFrames for the notebooks and plots: clip methods compared, why layers are
sensitive, rankings side by side, and float vs quantized accuracy and latency."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..calibration.clip_methods import METHODS as CLIP_METHODS
from ..calibration.clip_methods import clip_error
from ..errors import ConfigError
from ..evaluation.accuracy import evaluate
from ..evaluation.session import feed, make_session
from ..quantize.numerics import INT8, UINT8

WHY_COLUMNS = {"act_sqnr_db": "low activation SQNR", "clipped_fraction": "many values clipped",
               "outlier_ratio": "outliers far beyond the clip range",
               "weight_scale_spread": "wide spread of per-channel weight scales"}


def layer_kind(op: str, depthwise: bool = False, weight_shape=None) -> str:
    """The kernel kind (``graph.kernel_kind``'s names) from what a ranking or layer table holds:
    'depthwise', 'pointwise' (1x1 Conv), 'conv', 'gemm', 'matmul', 'conv_transpose'.

    >>> layer_kind("Conv", False, [16, 32, 1, 1]), layer_kind("Conv", True), layer_kind("Gemm")
    ('pointwise', 'depthwise', 'gemm')
    """
    if op != "Conv":
        return {"ConvTranspose": "conv_transpose"}.get(op, op.lower())
    if depthwise:
        return "depthwise"
    if isinstance(weight_shape, (list, tuple)) and len(weight_shape) > 2 and all(k == 1 for k in weight_shape[2:]):
        return "pointwise"
    return "conv"


def layer_kinds(frame: pd.DataFrame) -> pd.Series:
    """The ``kind`` column of a layer table, else ``layer_kind`` of every row (op and, when
    present, depthwise and weight_shape)."""
    if "kind" in frame:
        return frame["kind"].rename("kind")
    depthwise = frame["depthwise"] if "depthwise" in frame else pd.Series(False, index=frame.index)
    shapes = frame["weight_shape"] if "weight_shape" in frame else pd.Series(None, index=frame.index)
    return pd.Series([layer_kind(op, bool(d), s) for op, d, s in zip(frame["op"], depthwise.fillna(False), shapes)],
                     index=frame.index, name="kind")


def _layer_inputs(calibration) -> dict[str, str]:
    return {layer.name: layer.input for layer in calibration.prepared.layers}


def _check_layers(calibration, layers) -> list[str]:
    known = _layer_inputs(calibration)
    for name in layers:
        if name not in known:
            raise ConfigError(f"layer {name!r} is not a layer of {calibration.prepared.name}; "
                              f"see calibration.layers['layer'] for the names")
    return list(layers)


def clip_ranges(calibration, layers, methods=None, symmetric: bool = False) -> pd.DataFrame:
    """Each clip method's range on each layer's input histogram, with its error.

    Columns: layer, method, clip_min, clip_max, clipped_fraction, mse, sqnr_db, chosen
    (the method the calibration used for that layer).
    """
    methods = list(methods or CLIP_METHODS)
    unknown = [m for m in methods if m not in CLIP_METHODS]
    if unknown:
        raise ConfigError(f"clip methods must be among {', '.join(CLIP_METHODS)}, got {unknown}")
    inputs, chosen = _layer_inputs(calibration), dict(zip(calibration.layers["layer"],
                                                          calibration.layers["act_method"]))
    qrange = INT8 if symmetric else UINT8
    rows = []
    for name in _check_layers(calibration, layers):
        observer = calibration.calibrator.observers_[inputs[name]]
        counts, edges = observer.nonzero_histogram
        for method in methods:
            lo, hi = CLIP_METHODS[method](counts, edges, qrange, symmetric, observed=(observer.min_, observer.max_))
            rows.append({"layer": name, "method": method, "clip_min": lo, "clip_max": hi,
                         **_clip_stats(counts, edges, lo, hi, qrange, symmetric), "chosen": method == chosen[name]})
    return pd.DataFrame(rows)


def _clip_stats(counts, edges, lo, hi, qrange, symmetric) -> dict:
    """Fraction of values outside [lo, hi], quantize-dequantize MSE and SQNR of the histogram."""
    centers = 0.5 * (edges[:-1] + edges[1:])
    total = max(float(counts.sum()), 1.0)
    outside = float(counts[(centers < lo) | (centers > hi)].sum()) / total
    mse = clip_error(counts, edges, lo, hi, qrange, symmetric)
    power = float(counts @ centers ** 2) / total
    sqnr = 10.0 * np.log10(power / mse) if mse > 0 and power > 0 else float("inf")
    return {"clipped_fraction": outside, "mse": mse, "sqnr_db": float(sqnr)}


def layer_diagnostics(calibration) -> pd.DataFrame:
    """Per layer: activation range, clipped fraction, outlier ratio, activation SQNR, weight-scale spread."""
    table = calibration.layers
    inputs = _layer_inputs(calibration)
    rows = []
    for row in table.itertuples(index=False):
        observer = calibration.calibrator.observers_[inputs[row.layer]]
        counts, edges = observer.nonzero_histogram
        symmetric = row.act_dtype == "int8"
        stats = _clip_stats(counts, edges, row.clip_min, row.clip_max, INT8 if symmetric else UINT8, symmetric)
        extreme = max(abs(row.act_min), abs(row.act_max))
        clip = max(abs(row.clip_min), abs(row.clip_max), 1e-30)
        rows.append({"layer": row.layer, "act_min": row.act_min, "act_max": row.act_max,
                     "clip_min": row.clip_min, "clip_max": row.clip_max,
                     "clipped_fraction": stats["clipped_fraction"], "outlier_ratio": extreme / clip,
                     "act_sqnr_db": stats["sqnr_db"],
                     "weight_scale_spread": row.weight_scale_max / max(row.weight_scale_min, 1e-30)})
    return pd.DataFrame(rows)


def explain_sensitive(ranking: pd.DataFrame, calibration, top: int = 10) -> pd.DataFrame:
    """The ``top`` most sensitive layers with their diagnostics and a short ``why``.

    ``why`` names each diagnostic in which the layer is among the worst quarter of all layers.
    """
    diag = layer_diagnostics(calibration)
    worse_high = {c: diag[c] >= diag[c].quantile(0.75) for c in WHY_COLUMNS if c != "act_sqnr_db"}
    worse_high["act_sqnr_db"] = diag["act_sqnr_db"] <= diag["act_sqnr_db"].quantile(0.25)
    diag["why"] = [", ".join(WHY_COLUMNS[c] for c in WHY_COLUMNS if worse_high[c].iloc[i])
                   or "error grows downstream (no single local cause)" for i in range(len(diag))]
    keep = [c for c in ("rank", "layer", "op", "score", "depthwise") if c in ranking]
    return ranking.sort_values("rank").head(top)[keep].merge(diag, on="layer", how="left")


def compare_rankings(rankings: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per layer, in graph order when known: rank_<name> and score_<name> per ranking."""
    if not rankings:
        raise ConfigError("compare_rankings needs at least one ranking, got none")
    out = None
    for name, frame in rankings.items():
        part = frame.set_index("layer")[["rank", "score"]].add_suffix(f"_{name}")
        if "graph_index" in frame and (out is None or "graph_index" not in out):
            part = part.join(frame.set_index("layer")[["graph_index", "op"]])
        out = part if out is None else out.join(part, how="outer")
    out = out.reset_index()
    return out.sort_values("graph_index").reset_index(drop=True) if "graph_index" in out else out


def rank_correlation(a, b) -> float:
    """Spearman correlation of two equally long rank (or score) sequences.

    >>> rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])
    0.8
    """
    ra = pd.Series(a).rank().to_numpy(float)
    rb = pd.Series(b).rank().to_numpy(float)
    return round(float(np.corrcoef(ra, rb)[0, 1]), 12)


def measure_latency(model, image, repeats: int = 20) -> float:
    """Median milliseconds of one run of ``model`` on ``image`` [1, ...] (or a feed dict of arrays),
    after one warm-up run."""
    session = make_session(model)
    inputs = feed(session, image)
    session.run(None, inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def compare_models(models: dict, data, pre=None, limit: int | None = None, repeats: int = 20) -> pd.DataFrame:
    """Top-1, top-5 and batch-1 latency (median ms) of each named model on the same images."""
    rows = []
    for name, model in models.items():
        result = evaluate(model, data, pre, limit=limit, progress=False)
        image = next(data.subset(1).iter_batches(pre or _default_pre(), 1)).images
        rows.append({"model": name, "top1": result.top1, "top5": result.top5, "images": result.n,
                     "latency_ms": measure_latency(model, image, repeats)})
    frame = pd.DataFrame(rows)
    frame["speedup"] = frame["latency_ms"].iloc[0] / frame["latency_ms"]
    return frame


def _default_pre():
    from ..data.preprocess import DEFAULT_PRESET, get_preset
    return get_preset(DEFAULT_PRESET)
