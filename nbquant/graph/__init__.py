"""Graph analysis: an ONNX model in; its layers, tables and a prepared float model out.

Loads and names nodes (``load``), finds the layers nbquant quantizes and describes them
(``layers``), folds BatchNormalization into Convs (``fusion``), rescales Conv pairs so per-tensor
weights fit every channel (cross-layer equalization, ``equalization``), and gives the float model as
the later stages take it (``prepare``). ``helpers`` holds the small graph utilities every
stage shares. Nothing here runs a model.
"""
