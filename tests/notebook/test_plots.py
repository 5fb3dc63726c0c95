"""Plot functions and the analysis tables they draw, on hand-made frames (the real calibration: test_plots_real)."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from nbquant.errors import ConfigError
from nbquant.notebook import plots
from nbquant.notebook import tables as analysis

LAYERS = ["stem", "dw1", "pw1", "fc"]
TABLE = pd.DataFrame({"layer": LAYERS, "op": ["Conv", "Conv", "Conv", "Gemm"],
                      "depthwise": [False, True, False, False],
                      "weight_shape": [[8, 3, 3, 3], [8, 1, 3, 3], [16, 8, 1, 1], [10, 16]]})


def ranking(scores, metric="output"):
    frame = pd.DataFrame({"layer": LAYERS, "score": scores, "op": TABLE["op"], "metric": metric,
                          "graph_index": range(4)})
    frame = frame.sort_values("score", kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, 5))
    return frame


def test_layer_kinds_tell_depthwise_pointwise_conv_and_gemm():
    assert analysis.layer_kinds(TABLE).tolist() == ["conv", "depthwise", "pointwise", "gemm"]
    assert analysis.layer_kinds(TABLE.drop(columns=["weight_shape"])).tolist() == ["conv", "depthwise", "conv", "gemm"]
    assert analysis.layer_kinds(TABLE.assign(kind=["a", "b", "c", "d"])).tolist() == ["a", "b", "c", "d"]


def test_sensitivity_bars_in_graph_order_colored_by_kind(tmp_path):
    frame = ranking([0.95, 0.99, 0.97, 0.98])
    fig = plots.plot_sensitivity(frame, TABLE, top=2)
    assert isinstance(fig, Figure)
    bars = fig.axes[0].patches
    assert [round(b.get_height(), 6) for b in bars] == [0.05, 0.01, 0.03, 0.02]  # 1 - score, graph order
    colors = [tuple(np.round(b.get_facecolor()[:3], 3)) for b in bars]
    assert colors[1] != colors[2] != colors[3] and len(fig.axes[0].texts) == 2
    fig.savefig(tmp_path / "sensitivity.png")
    assert (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_cosine_sensitivity_is_one_minus_score_and_graph_order_is_required():
    frame = ranking([0.99, 0.90, 0.95, 0.98], metric="cosine")
    assert plots.sensitivity_values(frame).round(6).tolist() == [0.1, 0.05, 0.02, 0.01]
    with pytest.raises(ConfigError, match="graph_index"):
        plots.plot_sensitivity(frame.drop(columns=["graph_index"]))
    with pytest.raises(ConfigError, match=r"needs columns \['score'\]"):
        plots.plot_sensitivity(frame.drop(columns=["score"]), TABLE)


def test_ranking_comparison_reports_spearman():
    comparison = analysis.compare_rankings({"output": ranking([0.95, 0.99, 0.97, 0.98]),
                                            "cosine": ranking([0.95, 0.99, 0.98, 0.97], "cosine")})
    assert comparison["layer"].tolist() == LAYERS
    assert comparison[["rank_output", "rank_cosine"]].values.tolist() == [[1, 1], [4, 4], [2, 3], [3, 2]]
    fig = plots.plot_ranking_comparison(comparison, "output", "cosine", TABLE)
    assert "Spearman 0.80" in fig.axes[0].get_title()
    with pytest.raises(ConfigError, match="at least one ranking"):
        analysis.compare_rankings({})


def test_search_history_marks_target_float_and_chosen_point():
    history = pd.DataFrame({"step": [0, 1, 2, 3], "kind": ["original", "all_int8", "search", "search"],
                            "n_int8": [0, 4, 3, 2], "metric": [0.90, 0.88, 0.895, 0.899],
                            "float_layers": [LAYERS, [], ["dw1"], ["dw1", "fc"]]})
    fig = plots.plot_search_history(history, 0.90, 0.01, chosen=["dw1"])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "target 0.8900 (0.01)" in labels and "chosen: 3 layers int8" in labels
    met, missed = ax.collections[0].get_offsets(), ax.collections[1].get_offsets()
    assert sorted(met[:, 0].tolist()) == [2, 3] and missed[:, 0].tolist() == [4]
    relative = plots.plot_search_history(history, 0.90, 0.1, relative=True)
    assert any("0.8100" in t.get_text() for t in relative.axes[0].get_legend().get_texts())
    with pytest.raises(ConfigError, match="needs columns"):
        plots.plot_search_history(history.drop(columns=["metric"]), 0.9, 0.01)


def test_coarse_histogram_keeps_the_total():
    counts, edges = np.arange(4096.0), np.linspace(-1, 3, 4097)
    merged, new_edges = plots.coarse_histogram(counts, edges, bins=100)
    assert merged.sum() == counts.sum() and len(new_edges) == len(merged) + 1 <= 101
    assert new_edges[0] == -1 and new_edges[-1] == 3
