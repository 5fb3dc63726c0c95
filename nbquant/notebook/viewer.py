"""Netron model viewer served on 127.0.0.1 only, on a free port, shown inline as an IFrame.

The model is copied into a private temp folder first, so the server can read nothing else.
Uses netron's request handler (``netron.server._HTTPRequestHandler``, private: pinned by tests).
"""

from __future__ import annotations

import html
import re
import shutil
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import onnx

from ..errors import ModelError

HOST = "127.0.0.1"


def _start_http(path: Path) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Netron's request handler with this server's own content (netron.serve shares one
    content across all its servers, so two models could not be shown side by side)."""
    from netron import server as netron_server
    content = netron_server._ContentProvider(None, str(path), str(path), path.name)
    handler = type("ModelHandler", (netron_server._HTTPRequestHandler,), {"content": content})
    httpd = ThreadingHTTPServer((HOST, 0), handler)  # port 0: the OS picks a free port
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                              name=f"netron {path.name}")
    thread.start()
    return httpd, thread


class ModelServer:
    """One netron server for one model; ``url`` while running, ``stop()`` to end it."""

    def __init__(self, model, name: str | None = None, height: int = 600):
        self.name = name or (Path(model).name if not isinstance(model, onnx.ModelProto) else "model.onnx")
        self.height = height
        self._model = model

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"ModelServer({self.name!r}, {state})"

    def start(self) -> ModelServer:
        """Copy the model to a temp folder and serve it on 127.0.0.1, on a free port."""
        self._dir = Path(tempfile.mkdtemp(prefix="nbquant-netron-"))
        path = self.path = self._dir / (re.sub(r"[^\w.-]+", "_", self.name).removesuffix(".onnx") + ".onnx")
        if isinstance(self._model, onnx.ModelProto):
            path.write_bytes(self._model.SerializeToString())
        elif Path(self._model).is_file():
            shutil.copyfile(self._model, path)
        else:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise ModelError(f"model file {self._model} does not exist")
        self._httpd, self._thread = _start_http(path)
        self.address = self._httpd.server_address[:2]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}/"

    @property
    def model_url(self) -> str:
        """Where netron's page fetches the model from."""
        return f"{self.url}data/{self.path.name}"

    @property
    def running(self) -> bool:
        return hasattr(self, "_thread") and self._thread.is_alive()

    def stop(self) -> None:
        """Stop the server and remove its temp folder (idempotent)."""
        if self.running:
            self._httpd.shutdown()
            self._thread.join(timeout=5.0)
        if hasattr(self, "_httpd"):
            self._httpd.server_close()
        if hasattr(self, "_dir"):
            shutil.rmtree(self._dir, ignore_errors=True)

    def iframe_html(self, width: str = "100%") -> str:
        return (f'<iframe src="{html.escape(self.url)}" title="{html.escape(self.name)}" width="{width}" '
                f'height="{self.height}" style="border:1px solid #ddd"></iframe>')

    def _repr_html_(self) -> str:
        return f"<b>{html.escape(self.name)}</b><br>{self.iframe_html()}"


def serve_model(model, name: str | None = None, height: int = 600) -> ModelServer:
    """Serve ``model`` (path or ModelProto) with netron; display the result to see it inline."""
    return ModelServer(model, name, height).start()


class SideBySide:
    """Several ModelServers shown next to each other; ``stop()`` ends them all."""

    def __init__(self, servers: list[ModelServer]):
        self.servers = servers

    def __repr__(self) -> str:
        return f"SideBySide({', '.join(repr(s) for s in self.servers)})"

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def _repr_html_(self) -> str:
        cells = "".join(f'<div style="flex:1;min-width:0"><b>{html.escape(s.name)}</b><br>'
                        f"{s.iframe_html()}</div>" for s in self.servers)
        return f'<div style="display:flex;gap:8px">{cells}</div>'


def show_side_by_side(models: dict, height: int = 700) -> SideBySide:
    """Serve each named model (e.g. float and final mixed-precision) and show them side by side."""
    servers = []
    try:
        for name, model in models.items():
            servers.append(serve_model(model, name, height))
    except BaseException:
        SideBySide(servers).stop()
        raise
    return SideBySide(servers)
