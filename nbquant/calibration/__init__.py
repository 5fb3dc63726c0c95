"""Calibration: a prepared float model and calibration data in; per-layer quant parameters out.

Streaming statistics of the float pass (``histogram``, ``channel_mean``,
``input_covariance``), activation clip methods (``clip_methods``), weight rounding (GPTQ,
``weight_rounding``) and bias correction (``bias_correction``), cross-layer equalization with
high-bias absorption from the calibration images (``equalization``), the per-layer config and its
JSON file (``config``), the calibrator that turns statistics into
:class:`~nbquant.quantize.layer_quant.LayerQuant` (``calibrator``), and the whole calibration
run that writes the run folder (``run``).
"""
