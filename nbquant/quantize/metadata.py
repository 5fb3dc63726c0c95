"""Metadata keys nbquant writes into the models it builds, and readers of them."""

from __future__ import annotations

TARGET_KEY = "nbquant.deploy_target"
WEIGHT_MAX_KEY = "nbquant.weight_max"
FULL_RANGE_KEY = "nbquant.full_range_kinds"
STATES_KEY = "nbquant.layer_states"  # JSON: every layer -> int8, a16w8, dynamic, float or float_raw


SIMULATE_KEY = "nbquant.simulate_int8"
