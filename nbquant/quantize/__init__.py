"""Quantized model building: layer quant parameters in; fake-quant and deploy ONNX models out.

Pure numerics over numpy (``numerics``), the types every later stage shares (``layer_quant``,
``metadata``), the integer weight range each CPU computes exactly (``cpu_probe``,
``deploy_target``), Q/DQ graph rewriting (``graph_edit``) and the two builders: the deploy
model with int8 weights and int32 biases (``deploy``) and its float simulation
(``fake_quant``), and either from a state per layer (``layer_states``); ``record_files`` writes the
reference tool's bookkeeping files.
"""
