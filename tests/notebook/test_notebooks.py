"""The notebooks are committed clean: valid, without outputs or absolute paths, reading the settings
(running them on the real data: test_notebooks_real)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["01_calibration.ipynb", "02_ranking_visualization.ipynb", "03_fallback_loop.ipynb",
         "04_dense_outputs.ipynb"]
ZOO_MODEL = {"04_dense_outputs.ipynb"}  # the zoo's text detector, not NBQUANT_MODEL


def test_every_notebook_is_checked():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_clean_without_absolute_paths(name):
    text = (NOTEBOOKS / name).read_text(encoding="utf-8")
    notebook = nbformat.reads(text, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: clear outputs before committing"
    assert "/work/" not in text and "../shared" not in text and "shared/models" not in text
    assert ("settings.model_path()" in text) != (name in ZOO_MODEL) and "settings.data_dir()" in text
