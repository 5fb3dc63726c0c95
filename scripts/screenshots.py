#!/usr/bin/env python
"""Screenshots of the notebooks: each notebook's main figure (PNG, as the executed notebook shows it)
and the fallback widget in JupyterLab before and after a re-target (headless Debian Chromium).

    .venv/bin/python scripts/screenshots.py [--out artifacts/screenshots] [--no-browser]

Reads NBQUANT_MODEL / NBQUANT_DATA like the command line (default model/ and data/). Notebooks run
in a temp copy; the executed copies go to OUT/executed/. OUT is under artifacts/, which git ignores.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))

FIGURES = {"01_calibration.ipynb": "01_clip_methods.png", "02_ranking_visualization.ipynb": "02_sensitivity.png",
           "03_fallback_loop.ipynb": "03_search_history.png"}


def execute(name: str, work: Path, executed: Path) -> nbformat.NotebookNode:
    """Run one notebook top to bottom in ``work``/notebooks; keep the executed copy in ``executed``."""
    folder = work / "notebooks"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "notebooks" / name, folder / name)
    notebook = nbformat.read(folder / name, as_version=4)
    start = time.perf_counter()
    resources = {"metadata": {"path": str(folder)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    print(f"{name}: executed in {time.perf_counter() - start:.0f} s")
    nbformat.write(notebook, executed / name)
    return notebook


def main_figure(notebook) -> bytes:
    """The PNG output of the cell tagged main-figure."""
    for cell in notebook.cells:
        if "main-figure" in cell.metadata.get("tags", []):
            for output in cell.outputs:
                if "image/png" in output.get("data", {}):
                    return base64.b64decode(output["data"]["image/png"])
    raise SystemExit("no PNG output in a cell tagged main-figure")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "screenshots")
    parser.add_argument("--no-browser", action="store_true", help="only the notebooks' figures")
    args = parser.parse_args()
    from nbquant import settings
    model, data = settings.model_path().resolve(), settings.data_dir().resolve()
    import os
    os.environ.update(NBQUANT_MODEL=str(model), NBQUANT_DATA=str(data))
    (args.out / "executed").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nbquant-screenshots-") as tmp:
        for name, png in FIGURES.items():
            (args.out / png).write_bytes(main_figure(execute(name, Path(tmp) / name, args.out / "executed")))
            print(f"wrote {args.out / png}")
        if not args.no_browser:
            import lab_session
            seen = lab_session.retarget_in_browser(Path(tmp) / "browser", model, data, args.out)
            print(f"widget re-targeted to {seen['readout']}: {seen['status']}")
            print(f"wrote {args.out / 'widget_before_retarget.png'}, {args.out / 'widget_after_retarget.png'}")


if __name__ == "__main__":
    main()
