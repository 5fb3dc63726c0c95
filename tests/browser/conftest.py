"""The real-browser tests: JupyterLab on 127.0.0.1 and headless Debian Chromium (pytest -m browser)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (Debian chromium, "
                                       "python playwright); slow, needs the real data")
