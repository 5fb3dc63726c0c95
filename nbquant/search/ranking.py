"""Sensitivity ranking: which layers hurt most when quantized. Lower score = more sensitive.

- ``cosine`` (the reference tool's): each layer alone, its float output against its
  fake-quant output on the same float input; score ``0.5 + 0.5 * cosine``, averaged over
  images. Local: the error a layer adds downstream is not seen.
- ``output`` (nbquant's default): quantize that one layer alone and measure how far the
  model output moves from the float model's (mean softmax KL over the ranking images);
  score ``exp(-KL)``. It sees the error the layer propagates to the output. For outputs that
  are not class scores (embeddings; the ``cosine`` evaluation metric) the distance is the
  mean cosine similarity of the outputs instead (``distance="cosine"``).
On the shared EfficientNet-Lite0 (benchmarks/ranking_quality.py) ``output`` on 64 images
predicts the measured effect of each layer's fallback (1000 images) with Spearman 0.63,
``cosine`` with 0.28; measuring the fallback itself from the all-int8 model on 64 images
does not predict it (0.08): the other 49 layers' noise drowns one layer's share.
The one-layer models of ``output`` run as group models (:mod:`.ranking_subgraphs`, :mod:`.ranking_groups`):
each computes from its layer's input on, with the whole one-layer model's outputs (bit-identical on
Lite0), for about a third of the CPU time (benchmarks/ranking_speed.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pandas as pd
from onnx import helper
from tqdm.auto import tqdm

from ..data.pixel_cache import CachedImages
from ..errors import ConfigError
from ..evaluation.metrics import cosine_similarity, mean_kl
from ..evaluation.session import feed, make_session
from ..evaluation.shards import outputs_of, reference_outputs
from ..graph.helpers import node_by_name, set_bias
from ..quantize.graph_edit import GraphEdit
from ..quantize.layer_quant import LayerQuant
from .ranking_groups import GROUP_LAYERS, grouped_outputs, one_layer_outputs
from .ranking_subgraphs import has_subgraphs

RANKING_COLUMNS = ["rank", "layer", "op", "score", "metric"]
GROUP_BYTES = 64 << 20  # a group model's stacked outputs in one batch, at most


def shadow_model(model: onnx.ModelProto, quant: dict[str, LayerQuant]) -> tuple[onnx.ModelProto, list]:
    """Float ``model`` plus, per layer, a fake-quant twin on the same float input; both are outputs."""
    edit = GraphEdit(model)
    nodes = node_by_name(edit.model)
    pairs = []
    for name, lq in quant.items():
        node = nodes[name]
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        twin.name, twin.output[0] = f"{name}/shadow", f"{name}/shadow_output"
        twin.input[0] = (_dynamic_quantize_dequantize(edit, name, lq.layer.input) if lq.dynamic else
                         edit.quantize_dequantize(name, lq.layer.input, f"{name}/shadow_input", lq.activation))
        twin.input[1] = edit.integer_weight(name, f"{name}/shadow_weight", lq)
        if lq.bias is not None:
            set_bias(twin, edit.constant(f"{name}/shadow_bias", lq.bias))
        edit.add_node(name, twin)
        pairs.append((node.output[0], twin.output[0]))
    out = edit.finish()
    out.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                            for pair in pairs for t in pair)
    return out, pairs


def _dynamic_quantize_dequantize(edit: GraphEdit, before: str, tensor: str) -> str:
    """``tensor`` quantized with the range of the run at hand and dequantized, as a dynamic layer sees it."""
    prefix = f"{before}/shadow_input"
    outputs = [f"{prefix}_quantized", f"{prefix}_scale", f"{prefix}_zero_point"]
    edit.add_node(before, helper.make_node("DynamicQuantizeLinear", [tensor], outputs,
                                           name=f"{prefix}/DynamicQuantizeLinear"))
    return edit.dequantize(before, *outputs[:1], prefix, *outputs[1:], {})


def cosine_scores(model, quant, images: CachedImages, batch_size: int = 4, progress: bool = True,
                  output_qparams: dict | None = None) -> dict:
    """The reference tool's local metric for every layer in ``quant``."""
    shadow, pairs = shadow_model(model, quant)
    session = make_session(shadow, simulate=True)
    names = [t for pair in pairs for t in pair]
    sums = np.zeros(len(pairs))
    batches = tqdm(images.batches(batch_size), total=-(-len(images) // batch_size), desc="rank (cosine)",
                   disable=not progress)
    for x in batches:
        outs = session.run(names, feed(session, x))
        for i in range(len(pairs)):
            sums[i] += np.sum(0.5 + 0.5 * cosine_similarity(outs[2 * i], outs[2 * i + 1]))
    return {name: float(s / len(images)) for name, s in zip(quant, sums)}


DISTANCES: dict[str, Callable] = {
    "kl": lambda reference, outputs: float(np.exp(-mean_kl(reference, outputs))),
    "cosine": lambda reference, outputs: float(np.mean(cosine_similarity(reference, outputs))),
}


def output_scores(model, quant, images, batch_size: int = 16, progress: bool = True,
                  output_qparams: dict | None = None, pool=None, distance: str = "kl",
                  group_layers: int = GROUP_LAYERS) -> dict:
    """``exp(-KL)`` of the model output with each layer alone quantized (as in the fake-quant model:
    input, weight and output; ``output_qparams`` is a calibrator's ``tensor_qparams_``), against the
    float output (``distance="cosine"``: their mean cosine similarity). ``pool``: the models run side
    by side on its workers (``images`` are then ImageFiles), with the same scores. The one-layer
    models run ``group_layers`` at a time as group models (:mod:`.ranking_subgraphs`), which give
    their outputs for a fraction of the work."""
    if output_qparams is None:
        raise ConfigError("output sensitivity needs output_qparams (a fitted calibrator's tensor_qparams_)")
    if pool is not None:
        images, reference = reference_outputs(model, images, batch_size, pool, simulate=True)
    else:
        reference = next(outputs_of([model], images, batch_size, simulate=True))
    if has_subgraphs(model):
        outputs = one_layer_outputs(model, quant, images, batch_size, output_qparams, pool)
    else:  # a group's stacked outputs are at most GROUP_BYTES a batch (large outputs: fewer layers a group)
        size = max(1, min(group_layers, GROUP_BYTES // max(1, reference[:1].nbytes * batch_size)))
        outputs = grouped_outputs(model, quant, images, batch_size, output_qparams, pool, size)
    score = DISTANCES[distance]
    return {name: score(reference, logits)
            for name, logits in zip(quant, tqdm(outputs, total=len(quant), desc="rank (output)",
                                                disable=not progress))}


METHODS: dict[str, Callable] = {"output": output_scores, "cosine": cosine_scores}


def rank_layers(model, quant, images: CachedImages, method: str = "output", progress: bool = True,
                layer_table: pd.DataFrame | None = None, output_qparams: dict | None = None,
                pool=None, distance: str = "kl") -> pd.DataFrame:
    """Ranking DataFrame, most sensitive first: rank, layer, op, score, metric (+ layer columns).

    ``output_qparams`` (a calibrator's ``tensor_qparams_``) is needed by the ``output`` method;
    ``pool`` (``output`` only) runs it on an executor's workers, ``images`` being ImageFiles;
    ``distance`` (``output`` only): ``kl`` for class scores, ``cosine`` for other outputs."""
    kwargs = {"pool": pool} if pool is not None else {}
    if method == "output":
        kwargs["distance"] = distance
    scores = METHODS[method](model, quant, images, progress=progress, output_qparams=output_qparams, **kwargs)
    ops = {name: lq.layer.op for name, lq in quant.items()}
    frame = pd.DataFrame({"layer": list(scores), "score": list(scores.values())})
    frame["op"] = frame["layer"].map(ops)
    frame["metric"] = method
    frame["graph_index"] = range(len(frame))
    frame = frame.sort_values(["score", "graph_index"], kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    if layer_table is not None:
        extra = layer_table.set_index("layer")[["macs", "params", "depthwise"]]
        frame = frame.join(extra, on="layer")
    return frame


RANKING_COLUMNS = ["rank", "layer", "score", "op", "metric", "graph_index"]


def unranked() -> pd.DataFrame:
    """The ranking of a run that needed none (every layer met the budget in int8): no rows."""
    return pd.DataFrame(columns=RANKING_COLUMNS)


def ranking_pairs(ranking: pd.DataFrame) -> list[list]:
    """The reference tool's ranking file content: ``[[layer, score], ...]``, most sensitive first."""
    return [[layer, float(score)] for layer, score in zip(ranking["layer"], ranking["score"])]
