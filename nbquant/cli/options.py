"""The command line's options: each takes its default and choices from the settings dataclasses and option
enums (imported when the command is parsed, so ``nbquant --help`` stays fast), and the helpers that turn parsed
options into settings, the model path, the data and the preprocessing."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

from .. import settings
from ..errors import ConfigError

DEMO_UNLABELED_MAX_DROP = 0.04  # demo on unlabeled images: top-1 agreement with the float model

# what each choice does, for the help (the choices and the defaults come from the settings)
DEPLOY_TARGET_HELP = {"auto": "full if `nbquant cpu` finds this CPU exact, else portable", "portable": "7-bit weights "
                      "(|q| <= 64) where int8 kernels add products in pairs, exact on every CPU", "full": "8-bit "
                      "weights, exact only where this onnxruntime adds in int32 (VNNI, AMX, ARM)"}
MATMUL_INPUTS_HELP = {"dynamic": "MatMul layers (transformers) quantize their input on each run (onnxruntime's "
                      "DynamicQuantizeMatMul)", "static": "a calibrated range, like Conv and Gemm layers"}
METRIC_HELP = {"top1": "class scores; needs labels, the default with labels", "agreement": "of the top-1, the default "
               "for class scores without labels", "kl": "minus the mean softmax KL", "cosine": "mean cosine "
               "similarity of the outputs, the default for outputs that are neither class scores nor maps (e.g. "
               "embeddings)", "sqnr": "mean per-sample signal-to-error power in dB (60 = no error)", "iou": "mean "
               "IoU of the thresholded map with the float model's, the default for maps; iou@T: threshold T "
               "(default: the model's metadata, else 0.5 for probabilities, 0 for logits)"}
EQUALIZE_HELP = {"auto": "on with --per-tensor, off per channel (where it did not help EfficientNet-Lite0)",
                 "on": "rescale Conv -> ReLU/ReLU6 -> Conv channels and absorb high biases (exact in float)",
                 "off": "quantize the model as it is"}
STRATEGY_HELP = {"frugal": "doubling, short tail probes, then layers back to int8 until --max-evals is spent",
                 "refine": "doubling + bisection, then layers back to int8 (up to about 20 evaluations)",
                 "binary": "the reference tool's prefix bisection", "greedy": "one layer at a time"}
OBJECTIVE_HELP = {"latency": "the passing configuration predicted fastest on this CPU (per-layer profiles)",
                  "size": "the smallest weights (16-bit-activation layers keep int8 weights)",
                  "count": "the fewest layers out of int8 (the reference tool's)"}
SENSITIVITY_HELP = {"output": "model-output effect of each layer's fallback", "cosine": "the reference tool's "
                    "per-layer metric"}


def defaults_of(cls) -> argparse.Namespace:
    """The field defaults of a settings dataclass, by name (``defaults_of(AutoSettings).max_drop``)."""
    return argparse.Namespace(**{f.name: f.default for f in fields(cls) if f.default is not MISSING})


def settings_from(cls, args: argparse.Namespace, **given):
    """``cls`` from the options named after its fields (the others keep their defaults) and ``given``."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}, **given)


def add_choice(parser, flag: str, values: list[str], default, descriptions: dict[str, str], what: str = "") -> None:
    """An option of closed choices, its help ``what: a: ...; b (default): ...`` (undescribed choices only named)."""
    named = [(v, f"{v} (default)" if v == default else v) for v in values]
    listed = "; ".join(f"{n}: {descriptions[v]}" if v in descriptions else n for v, n in named)
    parser.add_argument(flag, choices=values, default=default, help=f"{what}: {listed}" if what else listed)


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="ONNX model file (default: $NBQUANT_MODEL, else the one .onnx in model/)")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The model, the data and how images are preprocessed."""
    from ..data.preprocess import DEFAULT_PRESET, Layout
    add_model_arg(parser)
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
    group.add_argument("--letterbox", default=None, metavar="SIZE",
                       help="instead of resize and crop: scale each image to fit SIZE (640, or 640x480 = width x "
                            "height), aspect kept, and pad the rest; a model whose input fixes height and width "
                            "needs its own size")
    group.add_argument("--pad-multiple", type=int, default=None, metavar="N",
                       help="with --letterbox: pad to a multiple of N (e.g. 32 for a network that downsamples 5 "
                            "times; default 1)")
    group.add_argument("--layout", choices=[m.value.lower() for m in Layout], help="input layout")


def add_calib_args(parser: argparse.ArgumentParser) -> None:
    """Model, data, run folder and the options named after the CalibrationSettings fields they set."""
    from ..calibration.config import ActMethod
    from ..calibration.equalization import Equalize
    from ..calibration.run import CalibrationSettings
    from ..quantize.deploy_target import DeployTarget
    add_data_args(parser)
    add_save_dir_arg(parser)
    add_cache_args(parser)
    default = defaults_of(CalibrationSettings)
    group = parser.add_argument_group("calibration")
    group.add_argument("--calib-num", type=int, default=default.calib_num,
                       help="calibration images (default %(default)s)")
    group.add_argument("--batch-size", type=int, default=default.batch_size,
                       help="images per batch, calibrating and evaluating (default %(default)s)")
    add_choice(group, "--act-method", [m.value for m in ActMethod], default.act_method.value,
               {"mse": "the best output fidelity measured on EfficientNet-Lite0 (docs/benchmarks.md)"},
               "activation clipping")
    group.add_argument("--symmetric", action="store_true", default=default.symmetric,
                       help="symmetric int8 activations (default: asymmetric uint8)")
    add_choice(group, "--matmul-inputs", ["dynamic", "static"], "dynamic" if default.dynamic else "static",
               MATMUL_INPUTS_HELP)
    group.add_argument("--per-tensor", dest="per_channel", action="store_false", default=default.per_channel,
                       help="one weight scale per tensor (default: per output channel)")
    add_choice(group, "--equalize", [m.value for m in Equalize], default.equalize.value, EQUALIZE_HELP,
               "cross-layer equalization of the float model before calibrating")
    group.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                       default=default.bias_correction,
                       help="keep the model's biases (default: correct the mean shift weight rounding causes)")
    group.add_argument("--config", help="a config.json (e.g. an edited tmp/config.json of an earlier run)")
    add_choice(group, "--deploy-target", [m.value for m in DeployTarget], default.deploy_target.value,
               DEPLOY_TARGET_HELP)


def calib_settings_from(args: argparse.Namespace):
    from ..calibration.run import CalibrationSettings
    return settings_from(CalibrationSettings, args, dynamic=args.matmul_inputs == "dynamic")


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    """Where results kept across runs live (see ``nbquant cache``)."""
    group = parser.add_argument_group("cache (results kept across runs)")
    group.add_argument("--cache-dir", default=None,
                       help="cache folder (default $NBQUANT_CACHE_DIR, else $XDG_CACHE_HOME/nbquant, else "
                            "~/.cache/nbquant)")
    group.add_argument("--no-cache", dest="cache", action="store_false", default=True,
                       help="compute everything anew and keep nothing")


def cache_of(args: argparse.Namespace):
    """The ``cache`` argument of calibrate / auto_calibrate the options give."""
    return False if not args.cache else (args.cache_dir or True)


def add_cache_command_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["list", "clear"], default="list",
                        help="list (default): what the cache holds, by kind; clear: remove it (or one --kind)")
    parser.add_argument("--kind", default=None, help="with clear: only entries of this kind (e.g. ranking)")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: as for the runs)")


def add_save_dir_arg(parser, name: str = "<model name>") -> None:
    from ..files import DEFAULT_RUNS_DIR
    parser.add_argument("--save-dir", default=None, help=f"run folder (default {DEFAULT_RUNS_DIR / name})")


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.accuracy import DEFAULT_BATCH_SIZE
    add_data_args(parser)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per inference batch (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--samples", default=None, help="write the per-image results to this CSV file")


def add_calibrate_args(parser: argparse.ArgumentParser) -> None:
    add_calib_args(parser)
    parser.add_argument("--eval-num", type=int, default=None,
                        help="also evaluate float, fake-quant and deploy models on N images (0 = skip)")


def add_auto_args(parser: argparse.ArgumentParser) -> None:
    """Options named after the AutoSettings fields they set, after the calibration ones."""
    from ..evaluation.metrics import METRICS
    from ..search.auto import AutoSettings
    from ..search.objective import Objective
    from ..search.ranking import METHODS
    from ..search.strategies import STRATEGIES
    add_calib_args(parser)
    default = defaults_of(AutoSettings)
    group = parser.add_argument_group("search")
    group.add_argument("--calib-data", default=None, help="calibration images (default: --data)")
    group.add_argument("--eval-num", type=int, default=default.eval_num,
                       help="evaluate on the first N images (default all)")
    group.add_argument("--max-drop", type=float, default=default.max_drop,
                       help="largest acceptable metric drop, e.g. 0.005 = half a point of top-1 (default %(default)s)")
    group.add_argument("--relative", action="store_true", default=default.relative,
                       help="--max-drop is relative to the float metric")
    listed = "; ".join(f"{name}: {METRIC_HELP[name]}" for name in METRICS)
    group.add_argument("--metric", type=metric_spec, default=default.metric, metavar="{" + ",".join(METRICS) + "}",
                       help="the metric judged (all but top1 are fidelity to the float model; default: by the "
                            f"model's output, and the run says which): {listed}")
    add_choice(group, "--strategy", list(STRATEGIES), default.strategy, STRATEGY_HELP)
    add_choice(group, "--sensitivity", list(METHODS), default.sensitivity, SENSITIVITY_HELP)
    add_choice(group, "--objective", [o.value for o in Objective], default.objective, OBJECTIVE_HELP)
    group.add_argument("--max-evals", type=int, default=default.max_evals,
                       help="at most this many evaluated configurations, the float model included "
                            "(default %(default)s)")
    group.add_argument("--rank-num", type=int, default=default.rank_num,
                       help="calibration images used for ranking (default %(default)s)")
    group.add_argument("--always-rank", action="store_true", default=default.always_rank,
                       help="rank the layers and write the ranking even when the all-int8 model meets the budget, "
                            "as the reference tool does (default: only when some layer must fall back)")
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


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    from ..search.auto import AutoSettings
    parser.add_argument("--max-drop", type=float, default=None,
                        help=f"accuracy budget (default {defaults_of(AutoSettings).max_drop} top-1 with labels, "
                             f"{DEMO_UNLABELED_MAX_DROP} top-1 agreement without)")
    add_save_dir_arg(parser, "demo")


def metric_spec(text: str) -> str:
    """A --metric value checked (a name, or iou@T), for argparse."""
    from ..evaluation.metrics import parse_metric
    try:
        parse_metric(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_zoo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant", choices=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
                                            "all-minilm-l6-v2", "pp-ocrv4-det"])
    parser.add_argument("--sentences", default=None,
                        help="all-minilm-l6-v2: also write this .npz of tokenized sentences (600 from Python's "
                             "reference documentation, 128 tokens) to pass as --data")
    parser.add_argument("-o", "--output", default=None, help="output file (default model/<variant>.onnx)")
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNormalization into the Convs")


def model_path_of(args) -> Path:
    return Path(args.model) if args.model else settings.model_path()


def save_dir_of(args, name: str) -> Path:
    from ..files import DEFAULT_RUNS_DIR
    return Path(args.save_dir) if args.save_dir else DEFAULT_RUNS_DIR / name


def dataset_of(args):
    from ..data.tensors import open_data
    return open_data(args.data if args.data else settings.data_dir())


def preprocess_of(args, model_proto, data=None):
    """The image preprocessing the flags, the model's metadata or its input shape give; None for arrays."""
    from ..data.binding import resolve_preprocess
    from ..data.preprocess import with_sizes
    from ..data.tensors import TensorDataset
    given = [f"--{k.replace('_', '-')}" for k in ("preset", "resize", "crop", "layout", "letterbox", "pad_multiple")
             if getattr(args, k) is not None]
    if isinstance(data, TensorDataset) and given:
        raise ConfigError(f"{' '.join(given)} preprocess images, but {data.root} holds arrays")
    if isinstance(data, TensorDataset):
        return None
    return with_sizes(resolve_preprocess(model_proto, args.preset), args.resize, args.crop, args.layout,
                      args.letterbox, args.pad_multiple)


