"""JupyterLab on 127.0.0.1 and headless Debian Chromium driven by Playwright, for the browser test
and scripts/screenshots.py. Nothing is downloaded: Chromium is /usr/bin/chromium."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOK = "03_fallback_loop.ipynb"


def chromium_path() -> str | None:
    """Debian's Chromium binary, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lab_command(root: Path, port: int, token: str) -> list[str]:
    return [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={token}", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={root / '.lab-settings'}", f"--LabApp.workspaces_dir={root / '.lab-ws'}",
            "--ServerApp.terminals_enabled=False"] + (["--allow-root"] if os.geteuid() == 0 else [])


@contextmanager
def jupyterlab(root: Path, env: dict, log_path: Path, timeout: float = 90.0):
    """JupyterLab serving ``root`` on 127.0.0.1; yields its base URL with the token. Stopped on exit."""
    config = root / ".jupyter-config"
    (config / "labconfig").mkdir(parents=True, exist_ok=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = {**env, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(root / ".jupyter-runtime")}
    port, token = free_port(), secrets.token_hex(16)
    log = open(log_path, "w")  # noqa: SIM115 (the server's stdout for its lifetime)
    proc = subprocess.Popen(_lab_command(root, port, token), env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(f"{url}/api/status?token={token}", proc, timeout)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer on {url.split('?')[0]} within {timeout:.0f} s")


@contextmanager
def chromium_page(profile: Path, width: int = 1500, height: int = 1100):
    """A Playwright page in headless Debian Chromium with a new, empty profile."""
    from playwright.sync_api import sync_playwright
    profile.mkdir(parents=True, exist_ok=False)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def open_and_run_all(page, url: str, token: str, path: str, timeout_s: float = 300.0) -> None:
    """Open the notebook, run all cells, and wait until the kernel is idle with every cell run."""
    page.goto(f"{url}/lab/tree/{path}?token={token}&reset", wait_until="domcontentloaded")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=120_000)
    page.wait_for_function(_IDLE, timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_ALL_RUN, timeout=timeout_s * 1000, polling=1000)


_IDLE = "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'"
_ALL_RUN = """() => {
    const nb = window.jupyterapp.shell.currentWidget;
    const cells = nb.content.widgets.filter(c => c.model.type === 'code');
    const kernel = nb.sessionContext.session.kernel;
    return kernel.status === 'idle' && cells.every(c => c.model.executionCount !== null
        && !c.node.querySelector('.jp-InputArea-prompt').textContent.includes('*'));
}"""


def error_outputs(page) -> list[str]:
    """``ename: evalue`` of every error output of the open notebook."""
    return page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
        .filter(c => c.model.type === 'code')
        .flatMap(c => c.model.outputs.toJSON())
        .filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)""")


def fallback_widget(page):
    """The last fallback widget on the page (the one the notebook displayed)."""
    return page.locator(".widget-vbox:has(.nbquant-fallback)").last


def set_slider(page, widget, value: float, maximum: float) -> None:
    """Drag the target slider's handle to ``value`` (of ``maximum``) with the mouse."""
    track = widget.locator(".widget-slider .noUi-target").first
    handle = widget.locator(".widget-slider .noUi-handle").first
    track.scroll_into_view_if_needed()
    box, hbox = track.bounding_box(), handle.bounding_box()
    page.mouse.move(hbox["x"] + hbox["width"] / 2, hbox["y"] + hbox["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * value / maximum, hbox["y"] + hbox["height"] / 2, steps=12)
    page.mouse.up()


def table_text(widget) -> str:
    return widget.locator(".widget-html-content:has(table.nbquant-fallen)").first.inner_text()


def readout(widget) -> str:
    return widget.locator(".widget-slider .widget-readout").first.inner_text()


def environment(model: Path, data: Path) -> dict:
    """This process's environment with absolute model and data paths for the kernel."""
    return {**os.environ, "NBQUANT_MODEL": str(Path(model).resolve()), "NBQUANT_DATA": str(Path(data).resolve())}


def _wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def retarget_in_browser(workdir: Path, model: Path, data: Path, out: Path, target: float = 0.03) -> dict:
    """Run 03_fallback_loop in JupyterLab, drag the slider to ``target``, press run; screenshots into ``out``.

    Returns the table text before and after, the status line, the slider readout and any errors.
    """
    root = workdir / "lab"
    (root / "notebooks").mkdir(parents=True)
    shutil.copyfile(Path(__file__).resolve().parents[2] / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    out.mkdir(parents=True, exist_ok=True)
    with jupyterlab(root, environment(model, data), out / "jupyterlab.log") as (url, token), \
            chromium_page(workdir / "chromium-profile") as page:
        open_and_run_all(page, url, token, f"notebooks/{NOTEBOOK}")
        errors = error_outputs(page)
        widget = fallback_widget(page)
        widget.scroll_into_view_if_needed()
        before, before_readout = table_text(widget), readout(widget)
        widget.screenshot(path=str(out / "widget_before_retarget.png"))
        set_slider(page, widget, target, 0.05)
        _wait_until(lambda: readout(widget) != before_readout, 10, "the slider readout to move")
        widget.get_by_role("button", name="Run search").click()
        after = _wait_until(lambda: (t := table_text(widget)) != before and t, 60, "the result table to change")
        page.wait_for_function(_IDLE, timeout=60_000)  # the callback has finished: status and plot are set too
        status = widget.locator(".widget-html-content").first.inner_text()
        moved = float(readout(widget))
        widget.screenshot(path=str(out / "widget_after_retarget.png"))
        page.screenshot(path=str(out / "jupyterlab_after_retarget.png"))
    return {"before": before, "after": after, "status": status, "readout": moved, "errors": errors}
