"""The zoo's text detector without its package: the preprocessing it records reads back as the letterbox it
means, and a missing package is one clear error."""

import importlib.metadata

import pytest
from structures import probability_map

from nbquant.cli import main
from nbquant.data.binding import resolve_preprocess
from nbquant.errors import ModelError
from nbquant.zoo import find_text_detector, text_detector


def test_the_recorded_preprocessing_reads_back():
    model = probability_map()
    for key, value in text_detector.preprocess_metadata("640x480").items():
        model.metadata_props.add(key=key, value=value)
    pre = resolve_preprocess(model)
    assert (pre.letterbox, pre.pad_multiple, pre.channel_order.value, pre.mean, pre.std) == \
        ((480, 640), 32, "BGR", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert pre.output_shape == (3, 480, 640)
    assert {p.key: p.value for p in model.metadata_props}["nbquant.map_threshold"] == "0.3"


def test_a_missing_package_is_one_clear_error(monkeypatch, capsys, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(text_detector.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match=r"package 'rapidocr-onnxruntime', which is not installed: .*nbquant\[ocr\]"):
        find_text_detector()
    assert main(["zoo", "pp-ocrv4-det", "-o", str(tmp_path / "det.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rapidocr-onnxruntime" in err and not (tmp_path / "det.onnx").exists()
