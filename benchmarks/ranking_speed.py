"""The ``output`` sensitivity ranking before and after issue 18: whole one-layer models vs. group models.

Run: python benchmarks/ranking_speed.py  (NBQUANT_MODEL / NBQUANT_DATA; a default calibration on 100
images first, about 2 minutes on 2 cores). The ranking images are the flow's: 32 spread over the
calibration images, decoded once. Both rankings run in this process on those images; each prints its
wall and CPU (process) seconds, the peak RSS sampled while it ran (and the RSS it started from), then
the largest score difference and whether the rank order is the same. ``--group-layers 4,16`` also times
the group models at other sizes; ``--repeat`` runs each ranking more than once (best time kept);
``--cut-pass`` also measures the design the group models avoid: one float pass that keeps, for every
ranking image, each layer's cut tensors (the tensors its region reads from the float model).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
from common import machine, model_and_data, parser

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.binding import bind_data
from nbquant.data.pixel_cache import cache_images
from nbquant.evaluation.session import feed, make_session
from nbquant.evaluation.shards import outputs_of
from nbquant.search.auto_settings import AutoSettings
from nbquant.search.ranking import DISTANCES, output_scores, rank_layers
from nbquant.search.ranking_groups import one_layer_outputs
from nbquant.search.ranking_subgraphs import FloatGraph


class PeakRss:
    """The largest resident set size of this process seen while the block ran (sampled every 10 ms)."""

    def __enter__(self):
        self.start = self.peak = _rss_mb()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def whole_model_scores(model, quant, images, output_qparams, batch_size: int = 16) -> dict:
    """The ranking before issue 18: each whole one-layer fake-quant model in a session of its own."""
    reference = next(outputs_of([model], images, batch_size, simulate=True))
    outputs = one_layer_outputs(model, quant, images, batch_size, output_qparams)
    return {name: DISTANCES["kl"](reference, out) for name, out in zip(quant, outputs)}


def cut_pass(model, quant, images, batch_size: int = 16) -> dict:
    """Every layer's cut tensors on every image, from one float pass with them as extra outputs."""
    graph = FloatGraph(model)
    cut = {t for lq in quant.values() for t in graph.region_model(graph.region(lq.layer.input))[1]}
    inputs = {i.name for i in model.graph.input}
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    extra.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in sorted(cut - inputs))
    session = make_session(extra, simulate=True)
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(None, feed(session, batch)) for batch in images.batches(batch_size)]
    kept = {name: np.concatenate([run[k] for run in runs]) for k, name in enumerate(names)}
    print(f"{len(cut)} cut tensors, {sum(a.nbytes for a in kept.values()) / 2**20:.0f} MB for {len(images)} images")
    return kept


def timed(label: str, run, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        with PeakRss() as rss:
            wall, cpu = time.perf_counter(), time.process_time()
            scores = run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or wall < best[0]:
            best = (wall, cpu, rss.start, rss.peak)
    wall, cpu, start, peak = best
    print(f"{label:34s} wall {wall:6.1f} s   cpu {cpu:6.1f} s   peak RSS {peak:6.0f} MB (from {start:.0f})", flush=True)
    return scores


def order(scores: dict) -> list[str]:
    """Most sensitive first, ties in graph order (as rank_layers sorts)."""
    names = list(scores)
    return sorted(names, key=lambda name: (scores[name], names.index(name)))


def compare(label: str, scores: dict, reference: dict) -> None:
    a, b = np.array([scores[k] for k in reference]), np.array(list(reference.values()))
    same = "identical" if order(scores) == order(reference) else "DIFFERENT"
    print(f"{label:34s} max |score difference| {np.max(np.abs(a - b)):.3g} (relative {np.max(np.abs(a - b) / b):.3g}), "
          f"{int(np.sum(a == b))}/{len(b)} scores identical, rank order {same}")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--group-layers", default="", help="comma-separated group sizes to time as well")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--cut-pass", action="store_true")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    settings, rank_num = CalibrationSettings(), AutoSettings().rank_num
    start = time.perf_counter()
    result = calibrate(model_path, data_dir, save_dir=None, settings=settings, progress=False)
    dataset, pre = bind_data(result.prepared, data_dir)
    calib_set = dataset.spread(settings.calib_num)  # as calibrate and auto_calibrate pick them
    images = cache_images(calib_set.spread(min(rank_num, len(calib_set))), pre, progress=False)
    model, quant, qparams = result.prepared.model, result.calibrator.quant_, result.calibrator.tensor_qparams_
    print(f"machine: {machine()}")
    print(f"{Path(model_path).name}: {len(quant)} layers, {len(images)} ranking images (batch 16); "
          f"calibration took {time.perf_counter() - start:.0f} s\n")
    ranking = timed("group models (rank_layers)", lambda: rank_layers(model, quant, images, progress=False,
                                                                       output_qparams=qparams), args.repeat)
    new = ranking.set_index("layer")["score"].reindex(list(quant)).to_dict()
    old = timed("whole one-layer models (before)", lambda: whole_model_scores(model, quant, images, qparams),
                args.repeat)
    sizes = [int(s) for s in args.group_layers.split(",") if s]
    others = {size: timed(f"group models of {size} layers", lambda size=size: output_scores(
        model, quant, images, progress=False, output_qparams=qparams, group_layers=size), args.repeat)
        for size in sizes}
    if args.cut_pass:
        timed("float pass keeping every cut", lambda: cut_pass(model, quant, images), 1)
    print()
    compare("group models vs. before:", new, old)
    for size, scores in others.items():
        compare(f"groups of {size} vs. before:", scores, old)


if __name__ == "__main__":
    main()
