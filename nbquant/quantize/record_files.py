"""Writers and readers of a run's bookkeeping files: scale_offset_record.txt and <name>_quant.json.

``scale_offset_record.txt`` is the reference tool's protobuf-text layout. Its convention is
``q = clip(round(x / scale_d) + offset_d, -128, 127)``, so nbquant's uint8 zero point z is
written as the equivalent int8 offset ``z - 128``. nbquant adds ``weight_max``, the largest
|integer weight| of the layer (64 where the deploy target keeps pair sums from saturating); a layer
with 16-bit activations (state a16w8) has ``act_type: "INT16"`` and the int16 offset ``z - 32768``.
"""

from __future__ import annotations

import re

import numpy as np

from .layer_quant import LayerQuant

QUANT_JSON_VERSION = 1


def format_scale_offset_record(quant: dict[str, LayerQuant]) -> str:
    """Protobuf text ``record { key: .. value { scale_d .. offset_d .. scale_w .. offset_w .. } }``."""
    lines = []
    for name, lq in quant.items():
        act = lq.activation
        offset = int(act.zero_point) - ((act.qmax + 1) // 2 if act.qmin >= 0 else 0)
        lines += ["record {", f'  key: "{name}"', "  value {",
                  f"    scale_d: {float(act.scale):.9g}", f"    offset_d: {offset}"]
        scales = np.atleast_1d(lq.weight.scale)
        lines += [f"    scale_w: {float(s):.9g}" for s in scales]
        lines += ["    offset_w: 0"] * len(scales)
        lines += [f"    weight_max: {int(lq.weight.qmax)}"]
        lines += [f'    act_type: "INT{act.bits}"', '    wts_type: "INT8"', "  }", "}"]
    return "\n".join(lines) + "\n"


_FIELD = re.compile(r'^\s*(\w+):\s*"?([^"]*)"?\s*$')


def parse_scale_offset_record(text: str) -> dict[str, dict]:
    """Read a scale_offset_record.txt (ours or the reference tool's) into plain dicts per layer."""
    layers: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        match = _FIELD.match(line)
        if not match:
            continue
        key, value = match.groups()
        if key == "key":
            current = layers.setdefault(value, {"scale_w": [], "offset_w": []})
        elif current is None:
            continue
        elif key in ("scale_w", "offset_w"):
            current[key].append(float(value) if key == "scale_w" else int(value))
        elif key == "scale_d":
            current[key] = float(value)
        elif key in ("offset_d", "shift_bit", "weight_max"):
            current[key] = int(value)
        else:
            current[key] = value
    return layers


def make_quant_map(model_name: str, layer_names: list[str], fusions: list[dict],
                   renamed: list[str], enabled: list[str], weight_max: dict[str, int] | None = None,
                   deploy_target: str | None = None, states: dict[str, str] | None = None) -> dict:
    """What became of the original nodes: fusions, renamed nodes, each layer's origin, and the
    deploy target with each layer's weight range (and ``precision``, its state, where ``states`` gives it)."""
    origin = {f["layer"]: f["original_nodes"] for f in fusions}
    weight_max = weight_max or {}
    return {
        "version": QUANT_JSON_VERSION,
        "model": model_name,
        "deploy_target": deploy_target,
        "fusions": fusions,
        "renamed_nodes": renamed,
        "layers": {
            name: {"original_nodes": origin.get(name, [name]), "quantized": name in enabled,
                   "weight_max": weight_max.get(name),
                   **({"precision": str(getattr(states[name], "value", states[name]))}
                      if states and name in states else {})}
            for name in layer_names
        },
    }


def read_quant_map(data: dict) -> dict:
    """Check a loaded <name>_quant.json and return it (so every writer has a reader)."""
    if data.get("version") != QUANT_JSON_VERSION or "layers" not in data:
        raise ValueError(f"not an nbquant quant.json (version {data.get('version')!r})")
    return data
