"""GPTQ's fixed cost in a calibration: the input covariances it needs and the per-layer rounding choice.

Run: python benchmarks/gptq.py [--calib-num 100] [--batch-size 10] [--zoo minilm]
(NBQUANT_MODEL / NBQUANT_DATA; ``--zoo minilm`` builds all-MiniLM-L6-v2 and calibrates on 100 of
300 real sentences padded to 128 tokens, as benchmarks/minilm.py does; it needs the text extra).
The calibration batches are decoded once and kept in memory, so no stage pays for image decoding.
Stages, each timed in wall seconds and CPU seconds of this process (all its threads; the steadier
figure on a shared machine):
- the calibration float pass (onnxruntime, histograms, channel means) without and with the
  covariance observers: the difference is what GPTQ adds to the pass;
- the covariance observers alone, fed one after the other on the pass's outputs;
- ``choose_rounding`` over every layer GPTQ applies to, as the calibrator calls it, and the same
  with the implementation it replaced (kept below), which must choose the same integers.
Then how many layers chose nearest or each damping, by layer kind. The header names the CPU.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager

import numpy as np
from common import machine, model_and_data, parser

from nbquant.calibration.calibrator import Calibrator, observe, observed_tensors, with_outputs
from nbquant.calibration.config import WeightRounding
from nbquant.calibration.input_covariance import weight_matrix
from nbquant.calibration.run import CalibrationSettings, build_config, covariance_observers, layer_input
from nbquant.calibration.weight_rounding import DAMPING, choose_rounding, output_error, round_nearest
from nbquant.data.binding import bind_data
from nbquant.evaluation.session import feed, make_session
from nbquant.graph.helpers import constants
from nbquant.graph.prepare import prepare_model


def round_gptq_before(w, cov, scale, qmax, damping=0.01, block=128):
    """``round_gptq`` before issue 18: one damping per call, float64 (the reference for the integers)."""
    order = np.argsort(-np.diag(cov), kind="stable")
    w = np.array(w, np.float64)[:, order]
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    s = np.broadcast_to(s, (w.shape[0], 1)) if s.size == 1 else s
    k = w.shape[1]
    h = np.array(cov, np.float64)[np.ix_(order, order)]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(k)] += damping * max(float(np.mean(np.diag(h))), 1e-12)
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros(w.shape, np.int64)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        cols, errors = w[:, i1:i2].copy(), np.zeros((w.shape[0], i2 - i1))
        for i in range(i2 - i1):
            column = cols[:, i]
            q[:, i1 + i] = np.clip(np.rint(column / s[:, 0]), -qmax, qmax)
            err = (column - q[:, i1 + i] * s[:, 0]) / upper[i1 + i, i1 + i]
            cols[:, i:] -= np.outer(err, upper[i1 + i, i1 + i:i2])
            errors[:, i] = err
        w[:, i2:] -= errors @ upper[i1:i2, i2:]
    return q[:, np.argsort(order)]


def choose_rounding_before(w, scale, qmax, covs, cov_all, dampings=DAMPING):
    """``choose_rounding`` before issue 18: three GPTQ runs on fold 0, scored on fold 1, winner refitted."""
    nearest = round_nearest(w, scale, qmax)
    best, best_error = "nearest", output_error(w, nearest, scale, covs[1])
    for damping in dampings:
        error = output_error(w, round_gptq_before(w, covs[0], scale, qmax, damping), scale, covs[1])
        if error < best_error:
            best, best_error = f"gptq({damping:g})", error
    if best == "nearest":
        return nearest, best
    return round_gptq_before(w, cov_all, scale, qmax, float(best[5:-1])), best


@contextmanager
def timed(label: str, figures: dict):
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    figures[label] = (time.perf_counter() - wall, time.process_time() - cpu)
    print(f"{label:52s} {figures[label][0]:8.2f} {figures[label][1]:8.2f}", flush=True)


def model_and_batches(args):
    """(prepared model, decoded calibration batches) for the shared image model or the zoo MiniLM."""
    if args.zoo == "minilm":
        from nbquant.data.tensors import TensorDataset
        from nbquant.zoo import build_minilm, encode_sentences, sample_sentences
        arrays = encode_sentences(sample_sentences(600), 128)
        model, data = build_minilm(), TensorDataset({k: v[0::2] for k, v in arrays.items()}, source="sentences")
    else:
        model, data = model_and_data(args)
    prepared = prepare_model(model)
    dataset, pre = bind_data(prepared, data)
    calib = dataset.spread(args.calib_num)
    return prepared, [batch.images for batch in calib.iter_batches(pre, args.batch_size)]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calib-num", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--zoo", choices=("minilm",), default=None, help="a zoo model instead of --model")
    p.add_argument("--no-before", action="store_true", help="skip timing the replaced implementation")
    args = p.parse_args()
    prepared, batches = model_and_batches(args)
    print(f"machine: {machine()}")
    print(f"model {prepared.name}: {len(prepared.layers)} layers; {args.calib_num} calibration samples in "
          f"{len(batches)} batches")
    print(f"{'stage':52s} {'wall s':>8s} {'cpu s':>8s}")
    figures: dict[str, tuple[float, float]] = {}
    names = observed_tensors(prepared.model, prepared.layers)
    session = make_session(with_outputs(prepared.model, names))
    mean_names = list(dict.fromkeys(layer.input for layer in prepared.layers))
    session.run(names, feed(session, batches[0]))  # warm-up: the first run of a session is slower
    with timed("float pass, no covariance", figures):
        histograms, means = observe(session, names, batches, 4096, mean_names)
    covariances = covariance_observers(prepared)
    with timed(f"float pass + covariance ({len(covariances)} layers)", figures):
        observe(session, names, batches, 4096, mean_names,
                [(layer_input(prepared, name), obs) for name, obs in covariances.items()])
    alone, inputs = covariance_observers(prepared), {name: layer_input(prepared, name) for name in covariances}
    needed = sorted(set(inputs.values()))
    spent = [0.0, 0.0]
    for batch in batches:
        outputs = dict(zip(needed, session.run(needed, feed(session, batch))))
        wall, cpu = time.perf_counter(), time.process_time()
        for name, obs in alone.items():
            obs.partial_fit(outputs[inputs[name]])
        spent[0] += time.perf_counter() - wall
        spent[1] += time.process_time() - cpu
    figures["covariance observers alone"] = tuple(spent)
    print(f"{'covariance observers alone (serial)':52s} {spent[0]:8.2f} {spent[1]:8.2f}")

    config = build_config(prepared, CalibrationSettings(weight_rounding=WeightRounding.NEAREST))
    calibrator = Calibrator(config).fit(prepared.model, histograms, means)  # weight scales do not depend on rounding
    values, layers = constants(prepared.model), {layer.name: layer for layer in prepared.layers}
    problems = []
    with timed("covariance matrices (3 per layer)", figures):
        for name, obs in covariances.items():
            quant = calibrator.layer_quant_[name]
            problems.append((name, weight_matrix(layers[name], values[layers[name].weight]), quant.weight.scale,
                             quant.weight.qmax, (obs.covariance(0), obs.covariance(1)), obs.covariance()))
    with timed("choose_rounding, every layer", figures):
        chosen = {name: choose_rounding(*problem) for name, *problem in problems}
    if not args.no_before:
        with timed("choose_rounding before issue 18, every layer", figures):
            before = {name: choose_rounding_before(*problem) for name, *problem in problems}
        changed = [name for name in chosen if chosen[name][1] != before[name][1]
                   or not np.array_equal(chosen[name][0], before[name][0])]
        print(f"layers whose rounding or integers differ from before: {len(changed)} {changed[:10]}")
    rounding = np.add(figures["covariance matrices (3 per layer)"], figures["choose_rounding, every layer"])
    for label, collect in (("pass difference", np.subtract(figures[f"float pass + covariance ({len(covariances)} "
                                                                    "layers)"], figures["float pass, no covariance"])),
                           ("observers alone", figures["covariance observers alone"])):
        total = collect + rounding
        print(f"{'GPTQ total (' + label + ' + matrices + choice)':52s} {total[0]:8.2f} {total[1]:8.2f}")
    by_kind = Counter((layers[name].kind, how) for name, (_, how) in chosen.items())
    for kind in sorted({kind for kind, _ in by_kind}):
        picks = ", ".join(f"{how} {n}" for (k, how), n in sorted(by_kind.items()) if k == kind)
        print(f"{kind}: {picks}")


if __name__ == "__main__":
    main()
