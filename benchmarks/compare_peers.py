"""nbquant against the peer tools, side by side: same model, images, loss target; one table.

Run (nbquant's venv; the peers live in their own venv, see benchmarks/requirements-peers.txt):

    python benchmarks/compare_peers.py --work-dir ~/.cache/nbquant-peers \
        --peers-python /work/peers-venv/nncf/bin/python --inc-python /work/peers-venv/inc/bin/python

Rows, each run one after the other as a child process (nbquant's with this interpreter, NNCF's
and onnxruntime's with ``--peers-python``, Neural Compressor's with ``--inc-python``): nbquant
auto calibration (default strategy ``frugal`` and ``binary``), NNCF
``quantize_with_accuracy_control`` (ONNX backend), Intel Neural Compressor 2.x
``quantization.fit``, onnxruntime ``quantize_static`` with ``nodes_to_exclude`` picked
greedily from ``qdq_loss_debug``. Settings: per-channel weights at max drop 0.002 and
0.005, per-tensor weights at 0.01 (absolute top-1).

Every tool sees the same arrays: the first ``--calib-num`` images (sorted) for calibration and
all images for evaluation, decoded once by nbquant's preprocessing into ``<work>/data/*.npy``
(nbquant's own rows read the JPEGs themselves, as a user would). Each row's result is kept as
``<work>/rows/<tool>_<setting>.json`` and reused on the next run (``--rerun`` to redo rows,
``--retry-failed`` to redo failed ones). Then, in this process and this onnxruntime, each
produced model is evaluated once more (deploy top-1) and timed at batch 1 and 32 with
``--threads`` threads, alternating in blocks with the float model (the latency columns are
the ratio of the medians); its int8 layers are counted from its graph.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

from peerlib import SETTINGS, count_layers, paired_latency_ms, top1, write_json  # noqa: E402

from nbquant.quantize.cpu_probe import probe_int8  # noqa: E402

TOOLS = ["nbquant", "nbquant-binary", "nncf", "inc", "ort"]
TOOL_LABEL = {"nbquant": "nbquant (frugal, default)", "nbquant-binary": "nbquant (binary)",
              "nncf": "NNCF accuracy control", "inc": "Neural Compressor fit", "ort": "onnxruntime DIY"}
DEFAULT_PEERS_PYTHON = os.environ.get("NBQUANT_PEERS_PYTHON", "/work/peers-venv/nncf/bin/python")
DEFAULT_INC_PYTHON = os.environ.get("NBQUANT_INC_PYTHON", "/work/peers-venv/inc/bin/python")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_data(model: Path, data_dir: Path, work: Path, calib_num: int, eval_num: int | None) -> dict:
    """Decode the images once with nbquant's preprocessing; reuse when model/data/sizes match."""
    from nbquant.data.binding import resolve_preprocess
    from nbquant.data.images import ImageDataset
    from nbquant.data.pixel_cache import cache_images

    folder = work / "data"
    dataset = ImageDataset(data_dir)
    if eval_num:
        dataset = dataset.subset(min(eval_num, len(dataset)))
    proto = onnx.load(str(model))
    want = {"model": str(model.resolve()), "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
            "data": str(data_dir.resolve()), "calib_num": calib_num, "eval_num": len(dataset),
            "input_name": proto.graph.input[0].name, "calib_images": "spread"}
    meta_path = folder / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == want:
        return want
    folder.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    pre = resolve_preprocess(proto)
    log(f"decoding {len(dataset)} images with {pre} into {folder}")
    start = time.perf_counter()
    cached = cache_images(dataset, pre, progress=False)
    np.save(folder / "eval.npy", cached.images)
    write_json(folder / "decode.json", {"images": len(dataset), "seconds": round(time.perf_counter() - start, 1)})
    if len(cached) != len(dataset):
        raise SystemExit(f"compare_peers: {len(dataset) - len(cached)} images could not be decoded")
    np.save(folder / "labels.npy", cached.labels)
    spread = (np.arange(calib_num) * len(cached)) // calib_num  # the images nbquant calibrates on (spread)
    np.save(folder / "calib.npy", cached.subset(spread).images)
    write_json(meta_path, want)
    return want


def run_row(tool: str, setting: str, work: Path, python: str, timeout: float) -> dict:
    out = work / "rows" / f"{tool}_{setting}.json"
    cmd = [python, str(HERE / "peers" / "run_row.py"), tool, setting, "--work", str(work), "--out", str(out)]
    log(f"row {tool} {setting}: {' '.join(cmd[:2])} ...")
    start = time.perf_counter()
    out.unlink(missing_ok=True)
    out.with_suffix("").mkdir(parents=True, exist_ok=True)
    try:
        # cwd: Neural Compressor writes nc_workspace/ into the working directory
        proc = subprocess.run(cmd, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=out.with_suffix(""))
        text = proc.stdout
    except subprocess.TimeoutExpired as exc:
        text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        row = {"tool": tool, "setting": setting, "ok": False, "error": f"timeout after {timeout:.0f} s"}
    else:
        if out.is_file():
            row = json.loads(out.read_text())
        else:
            row = {"tool": tool, "setting": setting, "ok": False,
                   "error": f"child exited {proc.returncode} without a result: {text.strip()[-400:]}"}
    (work / "rows" / f"{tool}_{setting}.log").write_text(text)
    row["child_s"] = round(time.perf_counter() - start, 1)
    write_json(out, row)
    state = "ok" if row.get("ok") else f"FAILED: {row.get('error')}"
    log(f"row {tool} {setting}: {state}, met={row.get('met')}, wall {row.get('wall_s')} s, "
        f"evals {row.get('full_evaluations')}")
    return row


def measure(row: dict, work: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """Deploy top-1 (cached per row) and layer counts of the produced model, in this process."""
    path = work / "rows" / f"{row['tool']}_{row['setting']}.measure.json"
    model = row.get("model")
    if not row.get("ok") or not model or not Path(model).is_file():
        return {}
    stamp = os.path.getmtime(model)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("model") == model and cached.get("mtime") == stamp:
            return cached
    m = {"model": model, "mtime": stamp, "deploy_top1": top1(model, images, labels), **count_layers(model)}
    write_json(path, m)
    return m


def fmt(value, spec: str = ".3f", empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def table(rows: list[dict], latency: dict) -> list[str]:
    base_wall = {r["setting"]: r.get("wall_s") for r in rows if r["tool"] == "nbquant" and r.get("ok")}
    lines = ["| tool | setting | target met | final top-1 | drop | deploy top-1 (drop) | int8 layers | "
             "full evals | wall s | wall / nbquant | latency b1 | latency b32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label, setting = TOOL_LABEL[r["tool"]], r["setting"]
        if not r.get("ok"):
            versions = ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items())
            lines.append(f"| {label} | {setting} | **failed**: {r.get('error', '?')[:160]} ({versions}) "
                         "| | | | | | | | | |")
            continue
        m = r.get("measure", {})
        orig, final = r.get("original_metric"), r.get("final_metric")
        drop = orig - final if orig is not None and final is not None else None
        met = {True: "yes", False: "**no**", None: "?"}[r.get("met")]
        dep = m.get("deploy_top1")
        dep_txt = f"{dep:.3f} ({round(orig - dep, 3) + 0.0:+.3f})" if dep is not None and orig is not None else "-"
        layers = f"{m['layers_int8']}/{m['layers_total']}" if m else "-"
        evals = str(r.get("full_evaluations", "-"))
        if r.get("partial_calls"):
            evals += f" (+{r['partial_calls']} on subsets, {r['partial_images']} images)"
        wall = r.get("wall_s")
        ratio = wall / base_wall[setting] if wall and base_wall.get(setting) else None
        lat = latency.get((r["tool"], setting), {})
        b1, b32 = lat.get(1), lat.get(32)
        drop_txt = fmt(drop and round(drop, 3) + 0.0, '+.3f')
        lines.append(f"| {label} | {setting} | {met} | {fmt(final)} | {drop_txt} | {dep_txt} | {layers} | "
                     f"{evals} | {fmt(wall, '.0f')} | {fmt(ratio, '.2f')} | {fmt(b1, '.2f')} | {fmt(b32, '.2f')} |")
    return lines


def main() -> None:
    from nbquant import settings as nb_settings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default $NBQUANT_MODEL)")
    p.add_argument("--data", type=Path, default=None, help="image folder (default $NBQUANT_DATA)")
    p.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "nbquant-peers",
                   help="data cache, row results and produced models (outside the repo)")
    p.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON,
                   help="interpreter of the peers' venv (default $NBQUANT_PEERS_PYTHON or %(default)s)")
    p.add_argument("--inc-python", default=DEFAULT_INC_PYTHON,
                   help="interpreter of Neural Compressor's venv (default $NBQUANT_INC_PYTHON or %(default)s)")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, from %(default)s")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from %(default)s")
    p.add_argument("--calib-num", type=int, default=100)
    p.add_argument("--eval-num", type=int, default=None, help="evaluation images (default all)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads for latency")
    p.add_argument("--timeout", type=float, default=5400, help="seconds per row")
    p.add_argument("--rerun", default="", help="rows to redo, e.g. nncf:pc-0.002,ort:pt-0.01 or 'all'")
    p.add_argument("--retry-failed", action="store_true", help="redo rows whose result is a failure")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table and header here")
    args = p.parse_args()

    model = (args.model or nb_settings.model_path()).resolve()
    data_dir = (args.data or nb_settings.data_dir()).resolve()
    work = args.work_dir.expanduser().resolve()
    (work / "rows").mkdir(parents=True, exist_ok=True)
    tools = [t for t in args.tools.split(",") if t]
    settings = [s for s in args.settings.split(",") if s]
    bad = [t for t in tools if t not in TOOLS] + [s for s in settings if s not in SETTINGS]
    if bad:
        p.error(f"unknown tool or setting: {', '.join(bad)}")
    rerun = set(args.rerun.split(",")) if args.rerun else set()
    meta = prepare_data(model, data_dir, work, args.calib_num, args.eval_num)
    log(f"model {model}, {meta['eval_num']} evaluation images, first {meta['calib_num']} for calibration; "
        f"work dir {work}")
    interpreters = {"nbquant": sys.executable, "nbquant-binary": sys.executable, "nncf": args.peers_python,
                    "inc": args.inc_python, "ort": args.peers_python}

    rows = []
    for setting in settings:
        for tool in tools:
            path = work / "rows" / f"{tool}_{setting}.json"
            cached = json.loads(path.read_text()) if path.is_file() else None
            redo = ("all" in rerun or f"{tool}:{setting}" in rerun or tool in rerun
                    or (args.retry_failed and cached is not None and not cached.get("ok")))
            if cached is not None and not redo:
                log(f"row {tool} {setting}: cached ({'ok' if cached.get('ok') else 'failed'})")
                rows.append(cached)
                continue
            rows.append(run_row(tool, setting, work, interpreters[tool], args.timeout))

    eval_images = np.load(work / "data" / "eval.npy", mmap_mode="r")
    labels = np.load(work / "data" / "labels.npy")
    for r in rows:
        r["measure"] = measure(r, work, eval_images, labels)
    latency, float_ms = {}, {1: [], 32: []}
    if not args.no_latency:
        log(f"latency, {args.threads} threads: each produced model alternating with the float model")
        for r in rows:
            if r.get("measure"):
                pairs = {b: paired_latency_ms(r["model"], str(model), b, args.threads) for b in (1, 32)}
                latency[(r["tool"], r["setting"])] = {b: m / f for b, (m, f) in pairs.items()}
                for b, (_, f) in pairs.items():
                    float_ms[b].append(f)
    spread = {b: (f"{min(v):.2f}-{max(v):.2f}" if b == 1 else f"{min(v):.1f}-{max(v):.1f}") if v else "-"
              for b, v in float_ms.items()}
    header = [f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {probe_int8().describe()}, "
              f"{os.cpu_count()} cores; "
              f"Python {platform.python_version()}; measured with onnxruntime {ort.__version__}",
              f"float model: {spread[1]} ms at batch 1, {spread[32]} ms at batch 32 ({args.threads} threads; median "
              "of each pairing; latency columns = model / float, timed in alternating blocks); "
              f"{meta['eval_num']} evaluation images, {meta['calib_num']} calibration",
              "versions: " + "; ".join(sorted({f"{r['tool']}: " + ", ".join(f"{k} {v}" for k, v in
                                                                          (r.get("versions") or {}).items())
                                               for r in rows}))]
    floats = sorted({(r["tool"], r.get("original_metric")) for r in rows if r.get("ok")}, key=str)
    decode = work / "data" / "decode.json"
    if decode.is_file():
        d = json.loads(decode.read_text())
        header.append(f"decoding + preprocessing the {d['images']} JPEGs once took {d['seconds']} s (in every "
                      "nbquant wall time; the peers get the decoded arrays)")
    header.append("float top-1 seen by each tool: " + ", ".join(f"{t} {fmt(v)}" for t, v in floats))
    lines = header + [""] + table(rows, latency)
    print("\n".join(lines))
    if args.markdown:
        args.markdown.expanduser().parent.mkdir(parents=True, exist_ok=True)
        args.markdown.expanduser().write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
