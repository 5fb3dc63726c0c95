"""Quant configs as typed dataclasses, and the tmp/config.json file they are saved as.

The JSON layout is the reference tool's (global keys ``version``, ``batch_num``,
``activation_offset``, ``do_fusion``, ``skip_fusion_layers``, then one entry per layer),
so a file edited by the user, or written by the reference tool, is read back here.
nbquant adds the global ``deploy_target`` and each layer's ``weight_max`` (largest |integer
weight|): they are written for the record and decided by the run's deploy target, not read.
The global ``cross_layer_equalization`` (nbquant's) says whether the float model was equalized
before calibrating (:mod:`nbquant.calibration.equalization`); a file that sets it is followed.
A layer's ``precision`` (int8, a16w8, dynamic, float, float_raw: see
:mod:`nbquant.quantize.layer_states`) is written where it was set; files without it read as
``quant_enable`` says (int8, or dynamic where the MatMul's input is dynamic, else float).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from ..errors import ConfigError
from ..options import Choice
from ..quantize.deploy_target import FULL_WEIGHT_MAX, DeployTarget
from ..quantize.layer_quant import LayerState

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
# The reference tool's activation algorithms are MSE clip searches; its names map onto ours.
ALGO_ALIASES = {"ifmr": "mse", "hfmg": "mse", "max": "minmax", "entropy": "kl"}


class ActMethod(Choice):
    """How an activation's clip range is chosen from its calibration histogram."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    KL = "kl"

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return ALGO_ALIASES


class WeightRounding(Choice):
    """How weights become integers: ``nearest``, or ``gptq`` (error-compensating; see weight_rounding)."""

    NEAREST = "nearest"
    GPTQ = "gptq"

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {"arq_quantize": "nearest"}  # the reference tool's name for max-abs nearest rounding


@dataclass(frozen=True)
class ActivationQuant:
    """Activation settings: uint8 asymmetric unless ``symmetric`` (then int8, zero point 0);
    ``dynamic`` (MatMul layers): the input's range is measured on each run instead of calibrated
    (onnxruntime's DynamicQuantizeLinear, uint8), for inputs whose range varies from one input to
    the next, such as a transformer's FFN activations."""

    method: ActMethod = ActMethod.MSE
    symmetric: bool = False
    percentile: float = 99.99
    num_bits: int = 8
    dynamic: bool = False

    def __post_init__(self):
        object.__setattr__(self, "method", ActMethod.parse(self.method))
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        _check_bits(self.num_bits, "activation num_bits")


@dataclass(frozen=True)
class WeightQuant:
    """Weight settings: symmetric int8, one scale per output channel unless per-tensor;
    ``bias_correction`` moves the mean output shift that weight rounding causes into the bias;
    ``weight_max`` is the largest |integer weight| (127, or 64 where the deploy target needs it);
    ``rounding`` nearest or gptq (Conv with group 1, Gemm, 2-D MatMul; others round to nearest)."""

    per_channel: bool = True
    num_bits: int = 8
    bias_correction: bool = True
    weight_max: int = FULL_WEIGHT_MAX
    rounding: WeightRounding = WeightRounding.NEAREST

    def __post_init__(self):
        _check_bits(self.num_bits, "weight num_bits")
        object.__setattr__(self, "rounding", WeightRounding.parse(self.rounding))
        value = self.weight_max
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= FULL_WEIGHT_MAX:
            raise ConfigError(f"weight_max must be an int in [1, {FULL_WEIGHT_MAX}], got {value!r}")


@dataclass(frozen=True)
class LayerConfig:
    """Whether a layer is quantized, and how; ``precision`` its state where one was chosen (None: as
    ``enabled`` says), which must agree with ``enabled``."""

    enabled: bool = True
    activation: ActivationQuant = field(default_factory=ActivationQuant)
    weight: WeightQuant = field(default_factory=WeightQuant)
    precision: LayerState | None = None

    def __post_init__(self):
        if self.precision is not None:
            object.__setattr__(self, "precision", LayerState.parse(self.precision, "precision"))
            if self.precision.quantized != self.enabled:
                raise ConfigError(f"precision {self.precision.value} needs quant_enable "
                                  f"{str(self.precision.quantized).lower()}, got {str(self.enabled).lower()}")


@dataclass(frozen=True)
class QuantConfig:
    """Per-layer quant settings of one model, keyed by layer (node) name, in graph order."""

    layers: dict[str, LayerConfig]
    batch_num: int = 1
    do_fusion: bool = True
    skip_fusion_layers: tuple[str, ...] = ()
    deploy_target: DeployTarget = DeployTarget.FULL  # resolved: portable or full
    equalize: bool | None = None  # cross-layer equalization before calibrating (None: as the settings say)

    @classmethod
    def default(cls, layer_ops: dict[str, str], activation: ActivationQuant | None = None,
                per_channel: bool = True, bias_correction: bool = True, weight_max: dict[str, int] | None = None,
                deploy_target: DeployTarget = DeployTarget.FULL,
                rounding: WeightRounding = WeightRounding.NEAREST) -> QuantConfig:
        """All layers enabled with the same settings (MatMul weights per output column too: on
        all-MiniLM-L6-v2 per-column weights lift the all-int8 cosine from 0.931 to 0.949, 0.973 to 0.993
        with dynamic inputs); ``weight_max`` per layer (default 127) as the resolved ``deploy_target`` decided it;
        a ``dynamic`` activation applies to MatMul layers only (the others calibrate theirs)."""
        activation = activation or ActivationQuant()
        static = replace(activation, dynamic=False)
        weight_max = weight_max or {}
        layers = {
            name: LayerConfig(True, activation if op == "MatMul" else static,
                              WeightQuant(per_channel, bias_correction=bias_correction,
                                          weight_max=weight_max.get(name, FULL_WEIGHT_MAX), rounding=rounding))
            for name, op in layer_ops.items()
        }
        return cls(layers, deploy_target=DeployTarget.parse(deploy_target))

    @property
    def enabled(self) -> list[str]:
        return [name for name, layer in self.layers.items() if layer.enabled]

    @property
    def states(self) -> dict[str, LayerState]:
        """The layers whose state the config fixes: each precision that was set, and ``float`` for the
        other disabled layers (enabled layers without one take the calibrator's: int8 or dynamic)."""
        return {name: layer.precision or LayerState.FLOAT for name, layer in self.layers.items()
                if layer.precision is not None or not layer.enabled}

    def with_states(self, states) -> QuantConfig:
        """Copy with each layer of ``states`` (name -> LayerState or its value) in that state and all
        others enabled without a fixed precision (``with_float`` for any state)."""
        self.check_layers(states)
        parsed = {name: LayerState.parse(state, f"layer {name!r}: precision") for name, state in states.items()}
        layers = {n: replace(c, enabled=parsed[n].quantized if n in parsed else True, precision=parsed.get(n))
                  for n, c in self.layers.items()}
        return replace(self, layers=layers)

    def with_float(self, names) -> QuantConfig:
        """Copy with the named layers in float (quant_enable false) and all others enabled."""
        names = set(names)
        self.check_layers(names)
        layers = {n: replace(c, enabled=n not in names, precision=None) for n, c in self.layers.items()}
        return replace(self, layers=layers)

    def check_layers(self, names, source: str = "the config") -> None:
        """Raise naming the first layer in ``names`` that this config does not have."""
        unknown = [n for n in names if n not in self.layers]
        if unknown:
            raise ConfigError(f"layer {unknown[0]!r} in {source} is not a quantizable layer of the model "
                              f"({len(unknown)} unknown; known e.g. {next(iter(self.layers), None)!r})")


def config_to_dict(config: QuantConfig) -> dict:
    """The reference tool's config.json layout, plus our ``act_algo`` names."""
    first = next(iter(config.layers.values()), LayerConfig())
    out = {
        "version": CONFIG_VERSION,
        "batch_num": config.batch_num,
        "activation_offset": not first.activation.symmetric,
        "do_fusion": config.do_fusion,
        "skip_fusion_layers": list(config.skip_fusion_layers),
        "deploy_target": config.deploy_target.value,
        "cross_layer_equalization": bool(config.equalize),
    }
    for name, layer in config.layers.items():
        act = layer.activation
        act_params = {"num_bits": act.num_bits, "act_algo": act.method.value, "asymmetric": not act.symmetric}
        if act.method is ActMethod.PERCENTILE:
            act_params["percentile"] = act.percentile
        if act.dynamic:
            act_params["dynamic"] = True
        out[name] = {
            "quant_enable": layer.enabled,
            **({"precision": layer.precision.value} if layer.precision is not None else {}),
            "activation_quant_params": act_params,
            "weight_quant_params": {"num_bits": layer.weight.num_bits,
                                    "wts_algo": "arq_quantize" if layer.weight.rounding is WeightRounding.NEAREST
                                    else layer.weight.rounding.value,
                                    "channel_wise": layer.weight.per_channel,
                                    "bias_correction": layer.weight.bias_correction,
                                    "weight_max": layer.weight.weight_max},
        }
    return out


def config_from_dict(data: dict, base: QuantConfig, source: str = "config") -> QuantConfig:
    """Read a config.json dict; layers it leaves out keep ``base``'s settings."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a JSON object, got {type(data).__name__}")
    globals_ = {"version", "batch_num", "activation_offset", "do_fusion", "skip_fusion_layers", "tensor_quantize",
                "deploy_target", "cross_layer_equalization"}
    entries = {k: v for k, v in data.items() if k not in globals_}
    base.check_layers(entries, source)
    asymmetric_default = bool(data.get("activation_offset", True))
    layers = dict(base.layers)
    for name, entry in entries.items():
        layers[name] = _layer_from_dict(entry, layers[name], asymmetric_default, f"{source}: layer {name!r}")
    missing = [n for n in base.layers if n not in entries]
    if missing and entries:
        log.warning("%s has no entry for %d layers (e.g. %s); they keep the default settings",
                    source, len(missing), missing[0])
    skip = tuple(data.get("skip_fusion_layers", base.skip_fusion_layers))
    equalize = data.get("cross_layer_equalization", base.equalize)
    if equalize is not None and not isinstance(equalize, bool):
        raise ConfigError(f"{source}: cross_layer_equalization must be true or false, got {equalize!r}")
    return QuantConfig(layers, int(data.get("batch_num", base.batch_num)),
                       bool(data.get("do_fusion", base.do_fusion)), skip, base.deploy_target, equalize)


def _layer_from_dict(entry, base: LayerConfig, asymmetric_default: bool, where: str) -> LayerConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a JSON object, got {entry!r}")
    precision = entry.get("precision")
    if precision is not None:
        precision = LayerState.parse(precision, f"{where}: precision")
    enabled = entry.get("quant_enable", precision.quantized if precision is not None else base.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: quant_enable must be true or false, got {enabled!r}")
    if precision is not None and precision.quantized != enabled:
        raise ConfigError(f"{where}: precision {precision.value} needs quant_enable "
                          f"{str(precision.quantized).lower()}, got {str(enabled).lower()}")
    act = entry.get("activation_quant_params", {})
    wts = entry.get("weight_quant_params", {})
    activation = ActivationQuant(
        method=ActMethod.parse(act.get("act_algo", base.activation.method.value), f"{where}: act_algo"),
        symmetric=not bool(act.get("asymmetric", asymmetric_default)),
        percentile=float(act.get("percentile", base.activation.percentile)),
        num_bits=int(act.get("num_bits", base.activation.num_bits)),
        dynamic=bool(act.get("dynamic", base.activation.dynamic)),
    )
    weight = WeightQuant(bool(wts.get("channel_wise", base.weight.per_channel)),
                         int(wts.get("num_bits", base.weight.num_bits)),
                         bool(wts.get("bias_correction", base.weight.bias_correction)), base.weight.weight_max,
                         WeightRounding.parse(wts.get("wts_algo", base.weight.rounding.value), f"{where}: wts_algo"))
    return LayerConfig(enabled, activation, weight, precision)


def _check_bits(bits, what: str) -> None:
    if bits != 8:
        raise ConfigError(f"{what} must be 8 (nbquant quantizes to 8 bits only), got {bits!r}")
