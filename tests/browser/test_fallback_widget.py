"""In a real browser: JupyterLab runs 03_fallback_loop.ipynb, the slider moves, run is pressed,
and the result table changes. Screenshots are kept in artifacts/browser/ (or $NBQUANT_ARTIFACTS)."""

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterlab")
pytest.importorskip("ipywidgets")

import lab_session  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.real]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("NBQUANT_ARTIFACTS", REPO / "artifacts" / "browser"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_slider_and_run_button_retarget_the_search(real_model_path, real_data, tmp_path, artifacts):
    if lab_session.chromium_path() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium chromium-driver)")
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    shutil.copyfile(REPO / "notebooks" / lab_session.NOTEBOOK, root / "notebooks" / lab_session.NOTEBOOK)
    env = lab_session.environment(real_model_path, real_data.root)
    with lab_session.jupyterlab(root, env, artifacts / "jupyterlab.log") as (url, token), \
            lab_session.chromium_page(tmp_path / "chromium-profile") as page:
        lab_session.open_and_run_all(page, url, token, f"notebooks/{lab_session.NOTEBOOK}")
        assert lab_session.error_outputs(page) == []
        widget = lab_session.fallback_widget(page)
        widget.scroll_into_view_if_needed()
        before, before_readout = lab_session.table_text(widget), lab_session.readout(widget)
        widget.screenshot(path=str(artifacts / "widget_before_retarget.png"))
        lab_session.set_slider(page, widget, 0.03, 0.05)
        wait_until(lambda: lab_session.readout(widget) != before_readout, 10, "the slider readout to move")
        widget.get_by_role("button", name="Run search").click()
        after = wait_until(lambda: (t := lab_session.table_text(widget)) != before and t, 60, "the table to change")
        status = widget.locator(".widget-html-content").first.inner_text()
        moved = float(lab_session.readout(widget))
        widget.screenshot(path=str(artifacts / "widget_after_retarget.png"))
        page.screenshot(path=str(artifacts / "jupyterlab_after_retarget.png"))
    assert abs(moved - 0.03) <= 0.002, moved
    assert "all layers in int8" in after and "from the evaluation cache" in status, (before, after, status)
