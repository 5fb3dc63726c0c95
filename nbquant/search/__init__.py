"""Sensitivity ranking and fallback search: a calibration and an evaluator in; the mixed-precision model out.

Ranks layers by how much their quantization hurts (``ranking``), chooses which go back to
float (``strategies``), keeps the search record that lets a run resume (``record``),
re-runs the search for a new target without re-evaluating (``retarget``), and runs the
whole accuracy-based auto calibration (``auto``).
"""
