"""Auto calibration on larger evaluation sets: peak memory, wall time and images evaluated.

Run: python benchmarks/scale.py [--sizes 1000,5000,20000] [--max-drop 0.002] [--code DIR]
(NBQUANT_MODEL / NBQUANT_DATA). The evaluation set is the image folder repeated to each size
(symlinks in a temp folder, names kept so labels stay right): decoding and inference cost as
much as distinct images would, the accuracy does not change with the size. Each size runs in a
child process; peak RSS is its VmHWM. ``--code DIR`` runs another checkout of nbquant (e.g. a git
worktree of an older commit) for comparison. The header names this CPU's int8 verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, model_and_data, parser

from nbquant.data.images import ImageDataset

CHILD = """
import json, sys, time
from nbquant.search.auto import AutoSettings, auto_calibrate
start = time.perf_counter()
r = auto_calibrate(sys.argv[1], sys.argv[2], save_dir=sys.argv[3], settings=AutoSettings(max_drop=float(sys.argv[4])),
                   calib_data=sys.argv[5], progress=False)
hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]
n = len(r.ranking)
import nbquant
print(json.dumps({"code": nbquant.__file__, "ok": r.ok, "int8": n - len(r.float_layers) if r.ok else 0, "layers": n,
                  "evaluations": r.evaluations, "images_evaluated": getattr(r, "images_evaluated", None),
                  "final": r.final_metric, "float_layers": r.float_layers,
                  "seconds": time.perf_counter() - start, "peak_rss_mb": int(hwm) / 1024}))
"""


def repeated_folder(data: ImageDataset, size: int, folder: Path) -> Path:
    """``size`` symlinks cycling over the folder's files, named so that labels and order hold."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(size):
        source = data.files[i % len(data)]
        (folder / f"{source.stem}_r{i // len(data)}{source.suffix}").symlink_to(source.resolve())
    return folder


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", default="1000,5000,20000")
    p.add_argument("--max-drop", type=float, default=0.002)
    p.add_argument("--code", default=None, help="another nbquant checkout to run (PYTHONPATH)")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    env = dict(os.environ)
    if args.code:
        env["PYTHONPATH"] = str(Path(args.code).resolve())
    print(f"machine: {machine()}\ncode: {args.code or 'this checkout'}; max drop {args.max_drop}; "
          f"calibration: the first folder's images ({len(data)})")
    print(f"{'images':>7s} {'met':>4s} {'int8':>6s} {'evals':>5s} {'images evaluated':>16s} {'wall s':>7s} "
          f"{'peak RSS MB':>11s}  final")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            folder = repeated_folder(data, size, Path(tmp) / f"images_{size}")
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, model_path, str(folder), str(Path(tmp) / f"run_{size}"),
                                  str(args.max_drop), data_dir], capture_output=True, text=True, env=env,
                                 cwd=tmp)  # not this checkout's folder: `python -c` puts the cwd first on sys.path
            if out.returncode:
                print(f"{size:7d} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            evaluated = r["images_evaluated"] or r["evaluations"] * size  # older code: every evaluation runs all
            print(f"{size:7d} {str(r['ok']):>4s} {r['int8']:3d}/{r['layers']:<2d} {r['evaluations']:5d} "
                  f"{evaluated:16d} "
                  f"{time.perf_counter() - start:7.1f} {r['peak_rss_mb']:11.0f}  {r['final']} "
                  f"{', '.join(r['float_layers'])}  (ran {Path(r['code']).parent.parent})", flush=True)


if __name__ == "__main__":
    main()
