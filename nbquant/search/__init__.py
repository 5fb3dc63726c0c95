"""Sensitivity ranking and fallback search: a calibration and an evaluator in; the mixed-precision model out.

Ranks layers by how much their quantization hurts (``ranking``; each layer's region of the graph only,
many regions per session: ``ranking_subgraphs``, ``ranking_groups``), chooses which go back to float
(``strategies``), evaluates and records each configuration once (``steps``, through the one evaluator
interface of ``measure``), keeps the search record that lets a run resume (``record``), re-runs the
search for a new target without re-evaluating (``retarget``), and runs the whole accuracy-based auto
calibration (``auto``, with ``auto_settings``, ``context`` and ``outcome``).
"""
