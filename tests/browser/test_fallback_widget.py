"""In a real browser: JupyterLab runs 03_fallback_loop.ipynb, the slider moves, run is pressed,
and the result table changes. Screenshots are kept in artifacts/browser/ (or $NBQUANT_ARTIFACTS)."""

import os
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterlab")
pytest.importorskip("ipywidgets")

from . import lab_session

pytestmark = [pytest.mark.browser, pytest.mark.real]
REPO = Path(__file__).resolve().parents[2]


def test_slider_and_run_button_retarget_the_search(real_model_path, real_data, tmp_path):
    if lab_session.chromium_path() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium chromium-driver)")
    out = Path(os.environ.get("NBQUANT_ARTIFACTS", REPO / "artifacts" / "browser"))
    seen = lab_session.retarget_in_browser(tmp_path, real_model_path, real_data.root, out, target=0.03)
    assert seen["errors"] == []
    assert seen["before"] != seen["after"] and abs(seen["readout"] - 0.03) <= 0.002, seen
    assert "all layers in int8" in seen["after"] and "from the evaluation cache" in seen["status"], seen
    assert (out / "widget_after_retarget.png").stat().st_size > 10_000
