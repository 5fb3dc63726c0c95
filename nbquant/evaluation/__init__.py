"""Evaluation: a model and data in; outputs, metrics and verdicts out.

onnxruntime sessions and feeds (``session``), top-1/top-5 of image classifiers
(``accuracy``), metrics against labels or the float model and the loss budget (``metrics``),
the built-in evaluator the search uses (``evaluators``), exact early decisions
(``early_decision``), and runs split into shards on executors or Dask (``shards``,
``executors``).
"""
