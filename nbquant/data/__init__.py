"""Data: image folders or arrays in; preprocessed batches and input feeds out.

Labelled image folders (``images``), arrays for models that do not take images
(``tensors``), image preprocessing as a validated config (``preprocess``), decoded pixels
kept on disk for repeated evaluations (``pixel_cache``), and data checked against a model
(``binding``).
"""
