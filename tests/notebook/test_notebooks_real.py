"""The notebooks run top to bottom on a fresh kernel with the real data.

Each executes headless with nbclient in a temp copy of notebooks/ (runs/ lands there too);
the executed copies are left in pytest's temp folder, never in the repo.
"""

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import need_ocr_package

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.real
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))  # test_notebooks.py pins the list
LIMIT_SECONDS = 180


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, real_model_path, real_data, tmp_path, monkeypatch):
    if name == "04_dense_outputs.ipynb":
        need_ocr_package()  # its model is the zoo's text detector
    monkeypatch.setenv("NBQUANT_MODEL", str(Path(real_model_path).resolve()))
    monkeypatch.setenv("NBQUANT_DATA", str(Path(real_data.root).resolve()))
    folder = tmp_path / "notebooks"
    folder.mkdir()
    path = folder / name
    shutil.copyfile(NOTEBOOKS / name, path)
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    try:
        nbclient.NotebookClient(notebook, timeout=LIMIT_SECONDS, kernel_name="python3",
                                resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        nbformat.write(notebook, path)
    seconds = time.perf_counter() - start
    assert seconds < LIMIT_SECONDS, f"{name} took {seconds:.0f} s"
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    tagged = [c for c in notebook.cells if "main-figure" in c.metadata.get("tags", [])]
    assert tagged and all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in tagged)
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert any("calibrate" in o["data"].get("text/plain", "") for o in widgets), "tqdm.auto renders as a widget"
    assert not (NOTEBOOKS / "runs").exists() and (tmp_path / "runs").exists() == (name == "03_fallback_loop.ipynb")
    assert os.environ["NBQUANT_MODEL"] == str(Path(real_model_path).resolve())
