"""Running the ``output`` ranking's one-layer fake-quant models: whole, one session each (models with
subgraphs), or as group models (:mod:`.ranking_subgraphs`) that compute each layer's region only.

In this process a group model's session differs from :func:`~nbquant.evaluation.session.make_session`'s
in two options, measured on EfficientNet-Lite0 (2 cores shared with other jobs): its threads do not spin
while idle (between a group's many small operators they spun away a fifth of the CPU time), and it keeps
no memory pattern (which reserved a second copy of the group's peak memory at its second batch, about
350 MB, for no measurable speed). On a pool the group models run on its workers through
:func:`~nbquant.evaluation.shards.outputs_of`, in the workers' own sessions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort

from ..evaluation.session import feed
from ..evaluation.shards import Derived, batch_plan, outputs_of
from ..quantize.fake_quant import make_fake_quant_model
from .ranking_subgraphs import chunks, group_model

GROUP_LAYERS = 16  # one-layer models per group model: fewer sessions and float passes vs. memory


def one_layer_outputs(model, quant, images, batch_size: int, output_qparams: dict, pool=None) -> Iterator[np.ndarray]:
    """The first output of each whole one-layer fake-quant model, in ``quant`` order, one session each:
    what the group models reproduce, and how models with subgraphs rank."""
    alone = (Derived(model, make_fake_quant_model, ({name: quant[name]}, output_qparams)) for name in quant)
    return outputs_of(alone, images, batch_size, pool, simulate=True)


def grouped_outputs(model, quant, images, batch_size: int, output_qparams: dict, pool=None,
                    size: int = GROUP_LAYERS) -> Iterator[np.ndarray]:
    """The outputs of :func:`one_layer_outputs` from group models of ``size`` layers each."""
    groups = [{name: quant[name] for name in names} for names in chunks(quant, size)]
    if pool is not None:
        stacks = outputs_of((Derived(model, group_model, (group, output_qparams)) for group in groups), images,
                            batch_size, pool, simulate=True)
    else:
        stacks = run_here(model, groups, images, batch_size, output_qparams)
    for stacked in stacks:
        for k in range(stacked.shape[1]):
            yield np.ascontiguousarray(stacked[:, k])


def run_here(model, groups: list[dict], images, batch_size: int, output_qparams: dict) -> Iterator[np.ndarray]:
    """Each group model's stacked outputs on every image, in order, one session after the other."""
    batches = [images.gather(picked) for picked in batch_plan(np.arange(len(images)), batch_size)]
    for group in groups:
        yield run_batches(group_session(group_model(model, group, output_qparams)), batches)


def run_batches(session: ort.InferenceSession, batches: list) -> np.ndarray:
    """The session's first output on every batch, concatenated (the session ends with the call)."""
    return np.concatenate([session.run(None, feed(session, batch))[0] for batch in batches])


def group_session(model: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session that computes Q/DQ as written, as ``make_session(model, simulate=True)``, but whose
    threads (``threads``, default every core) do not spin while idle, and without memory pattern (see the
    module)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads if threads is not None else (os.cpu_count() or 1)
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
