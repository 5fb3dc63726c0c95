"""Deploy targets: the integer weight range of each layer, so the deploy model is exact where it runs.

- ``full``: weights use the whole int8 range (|q| <= 127) on every layer. onnxruntime computes
  that exactly only where its int8 kernels add into int32 (VNNI, AMX, ARM dot product); on
  x86 without VNNI the pair sums of its u8 x s8 kernels saturate (see :mod:`nbquant.cpu_probe`).
- ``portable``: |q| <= 64 (2 * 255 * 64 <= 32767, the smallest cut that cannot overflow) on
  the layers whose kernels add products in pairs; depthwise Convs, whose kernels add into
  int32, keep |q| <= 127 where the probe confirms it. Exact on every CPU.
- ``auto`` (default): ``full`` where this CPU's probe shows full-range int8 exact, else ``portable``.
The fake-quant model uses the same integer weights, so its accuracy is the deploy model's.
"""

from __future__ import annotations

import json
import logging

from ..errors import ConfigError
from ..options import Choice
from .cpu_probe import Int8Report, pair_safe_weight_max, probe_int8
from .layer_quant import LayerState
from .metadata import FULL_RANGE_KEY, TARGET_KEY, WEIGHT_MAX_KEY

log = logging.getLogger(__name__)

FULL_WEIGHT_MAX = 127
PAIRING_KINDS = ("conv", "pointwise", "grouped", "gemm", "matmul", "conv_transpose")


class DeployTarget(Choice):
    """Which CPUs the deploy model must be exact on (see the module docstring)."""

    AUTO = "auto"
    PORTABLE = "portable"
    FULL = "full"


def resolve_target(target, report: Int8Report | None = None) -> DeployTarget:
    """``portable`` or ``full``; ``auto`` asks the CPU probe (run once per process)."""
    target = DeployTarget.parse(target)
    if target is not DeployTarget.AUTO:
        return target
    report = report or probe_int8()
    inexact = [kind for kind in PAIRING_KINDS if not report.is_exact(kind)]
    resolved = DeployTarget.PORTABLE if inexact else DeployTarget.FULL
    log.info("deploy target auto -> %s: %s", resolved.value,
             f"full-range int8 is inexact here for {', '.join(inexact)}" if inexact
             else "full-range int8 is exact on this CPU (use portable for models that must be exact on any CPU)")
    return resolved


def weight_max(kind: str, target: DeployTarget, report: Int8Report | None = None) -> int:
    """Largest |integer weight| of a layer of kernel ``kind`` under a resolved ``target``.

    >>> weight_max("pointwise", DeployTarget.PORTABLE), weight_max("gemm", DeployTarget.FULL)
    (64, 127)
    """
    if target is DeployTarget.FULL:
        return FULL_WEIGHT_MAX
    if target is not DeployTarget.PORTABLE:
        raise ConfigError(f"weight_max needs a resolved target (portable or full), got {target.value!r}")
    if kind in PAIRING_KINDS:
        return pair_safe_weight_max()
    report = report or probe_int8()
    return FULL_WEIGHT_MAX if report.is_exact(kind) else pair_safe_weight_max()


def full_range_kinds(quant: dict) -> list[str]:
    """Kernel kinds of the layers in ``quant`` (name -> LayerQuant) whose weights leave the pair-safe range
    on an int8 kernel (a16w8 layers compute in float: any weight range is exact)."""
    safe = pair_safe_weight_max()
    return sorted({lq.layer.kind for lq in quant.values()
                   if lq.weight.qmax > safe and lq.state is not LayerState.A16W8})


def target_metadata(quant: dict, target=None) -> dict[str, str]:
    """Model metadata: the deploy target, each layer's weight range, and the kinds that need an exact CPU.

    ``target`` None: ``full`` when a pairing layer uses the full range, else ``portable``.
    """
    wide = full_range_kinds(quant)
    if target is None:
        target = DeployTarget.FULL if set(wide) & set(PAIRING_KINDS) else DeployTarget.PORTABLE
    ranges = {name: int(lq.weight.qmax) for name, lq in quant.items()}
    return {TARGET_KEY: DeployTarget.parse(target).value, WEIGHT_MAX_KEY: json.dumps(ranges, separators=(",", ":")),
            FULL_RANGE_KEY: ",".join(wide)}


def inexact_kinds_here(metadata: dict[str, str], report: Int8Report | None = None) -> list[str]:
    """Kinds of a model's full-range layers (from its metadata) that this CPU computes inexactly."""
    wide = [k for k in metadata.get(FULL_RANGE_KEY, "").split(",") if k]
    if not wide:
        return []
    report = report or probe_int8()
    return [kind for kind in wide if not report.is_exact(kind)]
