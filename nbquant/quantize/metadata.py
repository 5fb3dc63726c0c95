"""Metadata keys nbquant writes into the models it builds, and readers of them."""

from __future__ import annotations

TARGET_KEY = "nbquant.deploy_target"
WEIGHT_MAX_KEY = "nbquant.weight_max"
FULL_RANGE_KEY = "nbquant.full_range_kinds"


SIMULATE_KEY = "nbquant.simulate_int8"
