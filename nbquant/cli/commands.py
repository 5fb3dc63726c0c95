"""What each ``nbquant`` command does: one function per command, taking the parsed options and returning
the exit code."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError
from .options import (
    DEMO_UNLABELED_MAX_DROP,
    cache_of,
    calib_settings_from,
    dataset_of,
    model_path_of,
    preprocess_of,
    save_dir_of,
    settings_from,
)

EXIT_ERROR = 2
EXIT_NOT_MET = 3  # auto-calibrate: the accuracy target cannot be met; no quantized model written
EXIT_INTERRUPTED = 130


def print_stage_times(frame) -> None:
    """Seconds per stage of the run just done, headed by the CPU they were measured on."""
    from ..quantize.cpu_probe import probe_int8
    print(f"\ntime per stage on {probe_int8().cpu}:")
    print(frame.to_string(index=False))


def cmd_cache(args) -> int:
    from ..cache import Cache, clear_cache, describe_cache
    cache = Cache(args.cache_dir) if args.cache_dir else Cache()
    print(clear_cache(cache, args.kind) if args.action == "clear" else describe_cache(cache))
    return 0


def cmd_evaluate(args) -> int:
    from ..data.binding import check_preprocess
    from ..data.tensors import TensorDataset
    from ..evaluation.accuracy import evaluate
    from ..graph.load import load_model
    from ..quantize.cpu_probe import probe_int8
    path = model_path_of(args)
    model, data = load_model(path), dataset_of(args)
    if isinstance(data, TensorDataset):
        raise ConfigError(f"evaluate reports top-1/top-5 of image classifiers; {data.root} holds arrays (use "
                          "calibrate --eval-num N for the cosine similarity of the quantized outputs)")
    pre = preprocess_of(args, model)
    check_preprocess(model, pre, str(path))
    result = evaluate(model, data, pre, batch_size=args.batch_size, limit=args.limit)
    print(f"model: {path}\nimages: {result.n} from {data.root}\ncpu: {probe_int8().describe()}")
    print(f"top-1: {result.top1:.4f}\ntop-5: {result.top5:.4f}\nseconds: {result.seconds:.1f}")
    if args.samples:
        result.samples.to_csv(args.samples, index=False)
        print(f"per-image results: {args.samples}")
    return 0


def cmd_cpu(args) -> int:
    from ..quantize.cpu_probe import probe_int8
    from ..quantize.deploy_target import resolve_target
    report = probe_int8()
    print(report.describe())
    print(report.table.to_string(index=False))
    print(f"deploy target auto picks: {resolve_target('auto', report).value}")
    return 0


def cmd_layers(args) -> int:
    from ..graph.layers import float_op_table
    from ..graph.prepare import prepare_model
    prepared = prepare_model(model_path_of(args))
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
    from ..calibration.run import calibrate
    from ..evaluation.accuracy import evaluate
    from ..graph.load import load_model
    calib_settings = calib_settings_from(args)
    path, data = model_path_of(args), dataset_of(args)
    pre = preprocess_of(args, load_model(path), data)
    save_dir = save_dir_of(args, path.stem)
    result = calibrate(path, data, save_dir, calib_settings, args.config, pre, cache=cache_of(args))
    table = result.layers[["layer", "kind", "enabled", "clip_min", "clip_max", "act_scale",
                           "act_zero_point", "weight_scale_max", "weight_max"]]
    print(table.to_string(index=False, max_colwidth=40))
    print(f"\n{len(result.config.enabled)} of {len(result.config.layers)} layers in int8, "
          f"calibrated in {result.seconds:.1f} s; deploy target {result.config.deploy_target.value}")
    for label, file in (("fake-quant model", result.paths.fake_quant_model),
                        ("deploy model", result.paths.deploy_model), ("config", result.paths.config),
                        ("scales", result.paths.scale_offset_record), ("log", result.paths.log_file)):
        print(f"{label}: {file}")
    print_stage_times(result.stage_times)
    if args.eval_num == 0 or ((pre is None or _output_rank(result.prepared.model) > 2)
                              and _print_fidelity(result, data, pre, args.eval_num, args.batch_size)):
        return 0
    for label, model in (("float", result.prepared.model), ("fake-quant", result.fake_quant_model),
                         ("deploy", result.deploy_model)):
        r = evaluate(model, data, pre, batch_size=args.batch_size, limit=args.eval_num, progress=False)
        print(f"top-1 {label}: {r.top1:.4f} (top-5 {r.top5:.4f}, {r.n} images)")
    return 0


def _output_rank(model) -> int:
    """The rank of the model's first output (2 for class scores [N, C])."""
    return len(model.graph.output[0].type.tensor_type.shape.dim)


def _print_fidelity(result, data, pre, limit, batch_size) -> bool:
    """How close the fake-quant and deploy models' outputs are to the float model's, for outputs that are not
    class scores (arrays, maps): each dense metric's mean and the sample that scores lowest. False (nothing
    printed) for class scores."""
    from ..evaluation.evaluators import LogitEvaluator
    from ..evaluation.metrics import SQNR_LIMIT_DB
    if pre is None:
        data = data.bind(result.prepared.model)
    data = data.subset(min(limit, len(data))) if limit else data
    evaluator = LogitEvaluator(data, batch_size=batch_size).prepare(result.prepared.model, pre, progress=False)
    if evaluator.kind_ == "scores":
        return False
    unit = "samples" if pre is None else "images"
    print(f"\nfidelity to the float model (which scores cosine 1, sqnr {SQNR_LIMIT_DB:g} dB, iou 1); "
          f"auto-calibrate's default metric here: {evaluator.metric}")
    for label, model in (("fake-quant", result.fake_quant_model), ("deploy", result.deploy_model)):
        frame = evaluator.samples(model)
        key = "iou" if "iou" in frame else "sqnr_db"
        worst = frame.loc[frame[key].idxmin()]
        iou = f", mean iou {frame['iou'].mean():.4f}" if "iou" in frame else ""
        print(f"mean cosine similarity to float, {label}: {frame['cosine'].mean():.5f} ({len(frame)} {unit}); mean "
              f"sqnr {frame['sqnr_db'].mean():.2f} dB{iou}; lowest {key}: {worst['file']} ({worst[key]:.4f})")
    return True


def cmd_auto_calibrate(args) -> int:
    from ..evaluation.executors import open_pool
    from ..graph.load import load_model
    from ..search.auto import AutoSettings, auto_calibrate
    settings = settings_from(AutoSettings, args)
    calib_settings = calib_settings_from(args)
    path, data = model_path_of(args), dataset_of(args)
    pre = preprocess_of(args, load_model(path), data)
    save_dir = save_dir_of(args, path.stem)
    pool = open_pool(args.scheduler, args.workers)
    if pool is not None:
        print(f"evaluating on {len(pool.workers())} Dask workers; dashboard: {pool.dashboard_link}")
    try:
        result = auto_calibrate(path, data, calib_data=args.calib_data, settings=settings,
                                calib_settings=calib_settings, save_dir=save_dir, resume=args.resume,
                                preprocess=pre, config=args.config, executor=pool, cache=cache_of(args))
    except KeyboardInterrupt:
        print(f"nbquant: interrupted; the record is kept: continue with the same command and --resume "
              f"(save dir {save_dir})", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if pool is not None:
            pool.close()
    evaluator = result.evaluator
    if getattr(evaluator, "metric_why_", None):
        print(f"metric: {evaluator.metric} ({evaluator.metric_why_})")
    print(result.history.drop(columns=["float_layers", "states"]).to_string(index=False))
    print(f"\n{result.message}")
    if result.ok:
        print(f"deploy model metric (onnxruntime integer kernels): {result.deploy_metric}")
        if result.latency:
            predicted, float_ms = result.latency.get("predicted_ms"), result.latency.get("float_predicted_ms")
            print("deploy model latency at batch 1 on this CPU: "
                  + (f"predicted {predicted:.2f} ms, " if predicted is not None else "")
                  + f"measured {result.latency['measured_ms']:.2f} ms"
                  + (f" (float model: predicted {float_ms:.2f} ms)" if float_ms is not None else ""))
    judged = "deploy" if result.deploy_evaluations else "fake-quant"
    unit = "samples" if pre is None else "images"
    early = int(result.history["decided_early"].fillna(False).astype(bool).sum())
    print(f"{result.evaluations} evaluations (float model included), configurations judged on their {judged} "
          f"models, {early} decided early, {result.images_evaluated} {unit} evaluated, {result.seconds:.1f} s")
    if result.float_layers and result.ok:
        print("layers in float: " + ", ".join(result.float_layers))
    print_stage_times(result.stage_times)
    paths = result.paths
    files = ([("ranking", paths.ranking)] if not result.ranking.empty else []) + [("record", paths.record),
                                                                                ("log", paths.log_file)]
    if result.ok:
        files = [("fake-quant model", paths.fake_quant_model), ("deploy model", paths.deploy_model),
                 ("final config", paths.final_config)] + files
    for label, file in files:
        print(f"{label}: {file}")
    return 0 if result.ok else EXIT_NOT_MET


def cmd_demo(args) -> int:
    from ..zoo.demo import demo_data, demo_model
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
    save_dir = str(save_dir_of(args, "demo"))
    from . import main
    return main(["auto-calibrate", str(model), "--data", str(data.root), "--save-dir", save_dir, *argv])


def cmd_zoo(args) -> int:
    from ..data.tensors import save_arrays
    from ..zoo import encode_sentences, sample_sentences, save_minilm, save_model, save_text_detector
    output = Path(args.output) if args.output else Path("model") / f"{args.variant.replace('-', '_')}.onnx"
    if args.variant == "pp-ocrv4-det":
        save_text_detector(output)
    elif args.variant == "all-minilm-l6-v2":
        save_minilm(output)
        if args.sentences:
            arrays = encode_sentences(sample_sentences(600), 128)
            save_arrays(args.sentences, arrays)
            print(f"wrote {args.sentences}: {len(arrays['input_ids'])} tokenized sentences")
    else:
        save_model(args.variant.replace("efficientnet-", ""), output, fold_bn=args.fold_bn)
    print(f"wrote {output}")
    return 0


