"""Run one row of compare_peers.py in this interpreter and write its JSON.

    python benchmarks/peers/run_row.py TOOL SETTING --work DIR --out FILE

TOOL: nbquant, nbquant-binary, nncf, inc, ort. SETTING: pc-0.002, pc-0.005, pt-0.01.
The row's JSON has ``ok`` (ran to the end), ``met`` (the tool says the target holds),
``wall_s`` (the tool's own call, imports and data loading excluded), the tool's float and
final top-1, its evaluation counts, versions, and ``model`` (the file it produced).
A tool that raises gives a row with ``error``; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerlib import SETTINGS, Data, error_row, write_json

MODULES = {"nbquant": "nbquant_row", "nbquant-binary": "nbquant_row", "nncf": "nncf_row", "inc": "inc_row",
           "ort": "ort_row"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool", choices=sorted(MODULES))
    p.add_argument("setting", choices=sorted(SETTINGS))
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    out_dir = args.out.with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    row = {"tool": args.tool, "setting": args.setting, "python": platform.python_version(),
           "interpreter": sys.executable, "loadavg_start": os.getloadavg()[0]}
    start = time.perf_counter()
    try:
        module = importlib.import_module(MODULES[args.tool])
        row["versions"] = module.versions()
        row.update(module.run(Data(args.work), args.tool, args.setting, out_dir))
        row.setdefault("ok", True)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        row.update(error_row(exc))
        row.setdefault("versions", _safe_versions(args.tool))
    row["process_s"] = round(time.perf_counter() - start, 1)
    row["loadavg_end"] = os.getloadavg()[0]  # 1-minute load: > 2.5 on 2 cores means others competed
    write_json(args.out, row)
    print(f"{args.tool} {args.setting}: {'ok' if row.get('ok') else 'FAILED ' + row.get('error', '')}",
          flush=True)


def _safe_versions(tool: str) -> dict:
    try:
        return importlib.import_module(MODULES[tool]).versions()
    except Exception as exc:
        return {"import": f"{type(exc).__name__}: {exc}"[:200]}


if __name__ == "__main__":
    main()
