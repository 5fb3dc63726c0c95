"""Evaluation: a model and data in; outputs, metrics and verdicts out.

onnxruntime sessions and feeds (``session``), top-1/top-5 of image classifiers
(``accuracy``), metrics against labels or the float model and the loss budget (``metrics``),
the built-in evaluator the search uses (``evaluators``), exact early decisions
(``early_decision``), runs split into shards on executors or Dask (``shards``,
``executors``), and latency on this CPU: per-layer costs of each precision from onnxruntime's
profiles (``latency``) and a mixed model's latency and size predicted from them (``latency_model``).
"""
