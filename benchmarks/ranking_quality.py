"""How well each sensitivity ranking predicts the measured effect of each layer.

Run: python benchmarks/ranking_quality.py  (NBQUANT_MODEL / NBQUANT_DATA; about 8 minutes on 2 cores)
Ground truth, per layer: from the all-int8 fake-quant model, fall back that one layer and
evaluate on every image: the top-1 gained and the mean softmax KL to the float model left.
Prints the Spearman rank correlation of each ranking's scores with both.
"""

from __future__ import annotations

import pandas as pd
from common import machine, model_and_data, parser

from nbquant.calibration.calibrator import Calibrator
from nbquant.calibration.run import CalibrationSettings, build_config, collect_statistics
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.data.pixel_cache import cache_images
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.evaluation.metrics import mean_kl, top1
from nbquant.graph.prepare import prepare_model
from nbquant.notebook.tables import rank_correlation as spearman
from nbquant.quantize.fake_quant import make_fake_quant_model
from nbquant.search.ranking import rank_layers


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rank-num", type=int, default=32, help="ranking images (from the calibration set)")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    prepared = prepare_model(model_path)
    pre = resolve_preprocess(prepared.model)
    settings = CalibrationSettings()
    calib = data.subset(settings.calib_num)
    statistics = collect_statistics(prepared, calib, pre, settings, progress=False)
    cal = Calibrator(build_config(prepared, settings)).fit(prepared.model, *statistics)
    images = cache_images(calib.subset(args.rank_num), pre, progress=False)
    outputs = cal.tensor_qparams_
    rankings = {m: rank_layers(prepared.model, cal.quant_, images, m, progress=False, output_qparams=outputs)
                .set_index("layer")["score"] for m in ("output", "cosine")}
    evaluator = LogitEvaluator(data).prepare(prepared.model, pre, progress=False)
    rows = []
    for name in cal.quant_:
        rest = {k: v for k, v in cal.quant_.items() if k != name}
        logits = evaluator.logits(make_fake_quant_model(prepared.model, rest, outputs))
        rows.append({"layer": name, "top1": top1(logits, evaluator.images_.labels),
                     "kl": mean_kl(evaluator.reference_, logits)})
    truth = pd.DataFrame(rows).set_index("layer")
    base = evaluator.logits(make_fake_quant_model(prepared.model, cal.quant_, outputs))
    print(f"machine: {machine()}; all-int8 top-1 {top1(base, evaluator.images_.labels):.4f}, "
          f"KL {mean_kl(evaluator.reference_, base):.5f}; {len(data)} images, ranking on {args.rank_num}")
    print(f"{'ranking':8s} {'spearman vs KL left':>20s} {'spearman vs top-1 gained':>25s}")
    for method, scores in rankings.items():
        s = scores.reindex(truth.index)
        # low score = sensitive = falling back helps most = low KL left / high top-1 gained
        print(f"{method:8s} {spearman(s, truth['kl']):20.3f} {spearman(s, -truth['top1']):25.3f}")
    print("\nmost helpful single fallbacks (1000 images):")
    print(truth.sort_values("kl").head(8).to_string())


if __name__ == "__main__":
    main()
