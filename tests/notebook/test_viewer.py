"""Netron viewer: served on loopback on a free port, page and model fetched over HTTP, then stopped."""

import urllib.error
import urllib.request

import pytest

pytest.importorskip("netron")

from synthetic import conv_bn_model, gemm_matmul_model

from nbquant.errors import ModelError
from nbquant.notebook.viewer import serve_model, show_side_by_side


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_serves_page_and_model_on_loopback_then_stops(tmp_path):
    model = conv_bn_model()
    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    (tmp_path / "secret.txt").write_text("not for the viewer")
    server = serve_model(path)
    try:
        assert server.address[0] == "127.0.0.1" and server.address[1] > 0 and server.running
        page = fetch(server.url).decode()
        assert "netron" in page.lower() and '<meta name="file" content="/data/tiny.onnx">' in page
        assert fetch(server.model_url) == path.read_bytes()
        with pytest.raises(urllib.error.HTTPError):
            fetch(server.url + "data/secret.txt")  # only the copied model is reachable
        assert server.url in server._repr_html_() and "<iframe" in server._repr_html_()
    finally:
        server.stop()
    assert not server.running and "stopped" in repr(server)
    with pytest.raises(urllib.error.URLError):
        fetch(server.url)
    server.stop()  # idempotent


def test_side_by_side_serves_two_models_on_two_ports():
    models = {"float": conv_bn_model(), "mixed model": gemm_matmul_model()}
    pair = show_side_by_side(models)
    try:
        ports = {s.address[1] for s in pair.servers}
        assert len(ports) == 2
        html = pair._repr_html_()
        assert html.count("<iframe") == 2 and "display:flex" in html
        for server, model in zip(pair.servers, models.values()):
            assert fetch(server.model_url) == model.SerializeToString()  # each server its own model
        assert pair.servers[1].model_url.endswith("/data/mixed_model.onnx")
    finally:
        pair.stop()
    assert not any(s.running for s in pair.servers)


def test_missing_model_file_raises(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        serve_model(tmp_path / "nope.onnx")
