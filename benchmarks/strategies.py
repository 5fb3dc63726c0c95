"""Fallback search strategies replayed on measured metrics: evaluations, layers in int8, passing steps.

Run: python benchmarks/strategies.py [--models lite0,lite1,lite2,minilm,minilm-static] [--targets auto,portable]
[--max-drops 0.001,0.002] [--strategies refine,frugal,binary,greedy] [--cache /tmp/nbquant-strategies]
(lite0 is $NBQUANT_MODEL / $NBQUANT_DATA, else the shared model and photos; lite1 and lite2 are
built from their pip weights with ``nbquant.zoo`` and run on the same photos; minilm is
all-MiniLM-L6-v2 on 600 tokenized sentences of 128 tokens, half calibration, half evaluation, cosine
metric, with dynamic MatMul inputs, the default, or static ones, ``--matmul-inputs static``).

Each (model, target) is calibrated and ranked once, as ``auto_calibrate`` does; every configuration
a strategy asks for is then evaluated in full (no early decision) with the real evaluator on the
model the search judges, and its metric kept in ``<cache>/<model>-<target>.json``. Every strategy
and budget replays on the same measured metrics, as the run would (the float model and the all-int8
model first, ``max_evals`` 20), and only configurations never measured cost time.
Per (model, target, budget, strategy): evaluations (as ``len(result.history)``), passing ones
(all-int8 included: they run every image, while failing ones stop early in a real run), layers in
int8, the final loss and the ranks of the layers left in float; then totals per strategy. The
header names this CPU's int8 verdict.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import machine

from nbquant import settings
from nbquant.calibration.run import CalibrationSettings
from nbquant.data.images import ImageDataset
from nbquant.data.tensors import TensorDataset
from nbquant.evaluation.metrics import Budget
from nbquant.files import atomic_write_json, read_json
from nbquant.graph.prepare import prepare_model
from nbquant.search.auto import AutoSettings, auto_calibrate
from nbquant.search.steps import choose_judge, config_model
from nbquant.search.strategies import STRATEGIES, BudgetExhausted

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGE_BUDGETS = (0.001, 0.002, 0.003, 0.005, 0.01)
COSINE_BUDGETS = (0.002, 0.005, 0.01)
VERSION = 1




# ---- the models: (float model path, evaluation data, calibration data, calibration settings) ----

def lite(variant: str, cache: Path):
    """EfficientNet-Lite: the shared Lite0, or Lite1/Lite2 built into ``cache``, on the shared photos."""
    if variant == "lite0":
        shared = SHARED / "models" / "efficientnet_lite0.onnx"
        model = settings.model_path() if "NBQUANT_MODEL" in os.environ else shared
    else:
        from nbquant.zoo import save_model
        model = cache / f"efficientnet_{variant}.onnx"
        if not model.is_file():
            save_model(variant, model, fold_bn=True)
    data = settings.data_dir() if "NBQUANT_DATA" in os.environ else SHARED / "data" / "imagenet-samples"
    images = ImageDataset(data)
    return model, images, images, {}


def minilm(cache: Path, dynamic: bool):
    """all-MiniLM-L6-v2 built into ``cache``; sentences alternately calibration and evaluation."""
    from nbquant.files import save_model
    from nbquant.zoo import build_minilm, encode_sentences, sample_sentences
    model = cache / "all_minilm_l6_v2.onnx"
    if not model.is_file():
        save_model(build_minilm(), model)
    arrays = encode_sentences(sample_sentences(600), 128)
    calib = TensorDataset({k: v[0::2] for k, v in arrays.items()}, source="calibration sentences")
    evals = TensorDataset({k: v[1::2] for k, v in arrays.items()}, source="evaluation sentences")
    return model, evals, calib, {"dynamic": dynamic}


MODELS = {
    "lite0": (lambda cache: lite("lite0", cache), IMAGE_BUDGETS),
    "lite1": (lambda cache: lite("lite1", cache), IMAGE_BUDGETS),
    "lite2": (lambda cache: lite("lite2", cache), IMAGE_BUDGETS),
    "minilm": (lambda cache: minilm(cache, True), COSINE_BUDGETS),
    "minilm-static": (lambda cache: minilm(cache, False), COSINE_BUDGETS),
}


# ---- measured metrics, kept per (model, target) ----

def key(float_layers) -> str:
    """A configuration's key in the cache file: its float layers, sorted, joined by ``|``."""
    return "|".join(sorted(float_layers))


@dataclass
class Measured:
    """The metrics of every configuration measured so far for one (model, target); configurations not
    measured yet are evaluated on first use (the calibration and ranking are then run once)."""

    name: str
    target: str
    cache: Path
    original: float | None = None
    ranking: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    judge: str = ""
    bench: tuple | None = field(default=None, repr=False)  # (prepared model, calibrator, evaluator, judge)

    @property
    def path(self) -> Path:
        return self.cache / f"{self.name}-{self.target}.json"

    @classmethod
    def load(cls, name: str, target: str, cache: Path) -> Measured:
        measured = cls(name, target, cache)
        if measured.path.is_file():
            saved = read_json(measured.path)
            if saved.get("version") == VERSION:
                measured.original, measured.ranking = saved["original"], saved["ranking"]
                measured.metrics, measured.judge = saved["metrics"], saved["judge"]
        if measured.original is None:
            measured.open()
        return measured

    def save(self) -> None:
        atomic_write_json(self.path, {"version": VERSION, "model": self.name, "target": self.target,
                                      "judge": self.judge, "original": self.original, "ranking": self.ranking,
                                      "metrics": self.metrics}, indent=1)

    def open(self) -> None:
        """Calibrate and rank as the run does (float and all-int8 evaluated in full), keep the pieces."""
        model, evals, calib, calib_options = MODELS[self.name][0](self.cache)
        print(f"  calibrating and ranking {self.name} for target {self.target} ...", flush=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:  # max_drop 0: the search stops at its first step
            result = auto_calibrate(model, evals, calib_data=calib, save_dir=Path(tmp), progress=False,
                                    settings=AutoSettings(max_drop=0.0, max_evals=2, early_decisions=False),
                                    calib_settings=CalibrationSettings(deploy_target=self.target, **calib_options))
        calibrator, evaluator = result.calibrator, result.evaluator
        judge = choose_judge(AutoSettings(), calibrator)
        ranking = list(result.ranking["layer"])
        if self.ranking and ranking != self.ranking:
            raise RuntimeError(f"{self.path}: the ranking changed since it was measured; remove the file")
        all_int8 = float(result.history.iloc[1]["metric"])
        if self.metrics and abs(self.metrics.get("", all_int8) - all_int8) > 1e-9:
            raise RuntimeError(f"{self.path}: the all-int8 metric changed since it was measured; remove the file")
        self.original, self.ranking, self.judge = float(result.original_metric), ranking, judge
        self.metrics[""] = all_int8
        self.bench = (prepare_model(model).model, calibrator, evaluator, judge)
        self.save()
        print(f"  ready in {time.perf_counter() - start:.0f} s: original {self.original}, all-int8 {all_int8}, "
              f"{len(ranking)} layers, judged on the {judge} model", flush=True)

    def metric(self, float_layers: frozenset) -> float:
        name = key(float_layers)
        if name not in self.metrics:
            if self.bench is None:
                self.open()
            model, calibrator, evaluator, judge = self.bench
            built = config_model(model, calibrator.quant_, float_layers, calibrator.tensor_qparams_,
                                 calibrator.config.deploy_target, judge == "deploy")
            self.metrics[name] = float(evaluator.evaluate(built))
            self.save()
        return self.metrics[name]


# ---- the replay ----

@dataclass
class Replay:
    """One strategy's run over measured metrics: the steps (float set, ok) in order and the result."""

    steps: list[tuple[frozenset, bool]]
    final: frozenset | None
    loss: float | None


def replay(measured: Measured, search, max_drop: float, max_evals: int = 20) -> Replay:
    """The search as ``auto_calibrate`` runs it: float model, all-int8, then the strategy with each
    distinct configuration evaluated once and at most ``max_evals`` evaluations in all."""
    budget = Budget(max_drop)
    seen: dict[frozenset, tuple[bool, float]] = {}

    def step(float_layers: frozenset) -> bool:
        if float_layers not in seen:
            if 1 + len(seen) >= max_evals:
                raise BudgetExhausted()
            seen[float_layers] = budget.check(measured.original, measured.metric(float_layers))
        return seen[float_layers][0]

    if step(frozenset()):
        final = frozenset()
    else:
        try:
            final = search(list(measured.ranking), step)
        except BudgetExhausted:
            final = None
        if final is None:  # the run keeps the best passing configuration found
            passing = [(len(s), loss, s) for s, (ok, loss) in seen.items() if ok]
            final = min(passing, key=lambda t: t[:2])[2] if passing else None
    loss = seen[final][1] if final is not None else None
    return Replay([(s, ok) for s, (ok, _) in seen.items()], final, loss)


def ranks_text(ranks: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``#1-#3, #7``."""
    runs: list[list[int]] = []
    for r in sorted(ranks):
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    return ", ".join(f"#{run[0]}" if len(run) == 1 else f"#{run[0]}-#{run[-1]}" for run in runs) or "none"


def report(name: str, target: str, measured: Measured, budgets, strategies, max_evals: int, steps: bool,
           totals: dict) -> None:
    """One table row per budget and strategy (and its steps when asked); adds to ``totals``."""
    rank = {layer: i + 1 for i, layer in enumerate(measured.ranking)}
    n = len(measured.ranking)
    for max_drop in budgets:
        for strategy in strategies:
            run = replay(measured, STRATEGIES[strategy], max_drop, max_evals)
            evaluations, passing = 1 + len(run.steps), sum(ok for _, ok in run.steps)
            int8 = "-" if run.final is None else f"{n - len(run.final)}/{n}"
            loss = "-" if run.loss is None else f"{run.loss:.4f}"
            holds = "-" if run.loss is None else ("yes" if run.loss <= max_drop + 1e-12 else "no")
            ranks = "-" if run.final is None else ranks_text([rank[x] for x in run.final])
            print(f"| {name} | {target} | {max_drop:g} | {strategy} | {evaluations} | {passing} | {int8} | {loss} | "
                  f"{holds} | {ranks} |", flush=True)
            if steps:
                for s, ok in run.steps:
                    print(f"|  |  |  | step | {'ok' if ok else 'not ok'} | {measured.metrics[key(s)]:.4f} | "
                          f"{len(s)} in float | | | {ranks_text([rank[x] for x in s])} |")
            t = totals.setdefault(strategy, [0, 0, 0, 0, 0])
            t[0] += 1
            t[1] += evaluations
            t[2] = max(t[2], evaluations)
            t[3] += evaluations > 10
            t[4] += passing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lite0", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--targets", default="auto,portable")
    p.add_argument("--max-drops", default=None, help="comma-separated (default: per model)")
    p.add_argument("--strategies", default="refine,frugal", help=f"comma-separated, from {', '.join(STRATEGIES)}")
    p.add_argument("--max-evals", type=int, default=20)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "nbquant-strategies")
    p.add_argument("--steps", action="store_true", help="also print each run's steps")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    strategies = args.strategies.split(",")
    print(f"machine: {machine()}; cache {args.cache}")
    print("| model | target | max drop | strategy | evaluations | passing | int8 | loss | holds | "
          "float layers (rank) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals: dict[str, list[int]] = {}
    for name in args.models.split(","):
        budgets = [float(d) for d in args.max_drops.split(",")] if args.max_drops else MODELS[name][1]
        for target in args.targets.split(","):
            measured = Measured.load(name, target, args.cache)
            report(name, target, measured, budgets, strategies, args.max_evals, args.steps, totals)
    print("\n| strategy | runs | evaluations (mean) | most | runs over 10 | passing (mean) |")
    print("|---|---|---|---|---|---|")
    for strategy, (runs, evaluations, most, over, passing) in totals.items():
        print(f"| {strategy} | {runs} | {evaluations / runs:.1f} | {most} | {over} | {passing / runs:.1f} |")


if __name__ == "__main__":
    main()
