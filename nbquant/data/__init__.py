"""Data: image folders or arrays in; preprocessed batches and input feeds out.

Labelled image folders (``images``), arrays for models that do not take images
(``tensors``), image preprocessing as a validated config (``preprocess``; keep-aspect resizing
with padding for models of any input size: ``letterbox``), decoded pixels kept on disk for
repeated evaluations (``pixel_cache``), and data checked against a model (``binding``).
"""
