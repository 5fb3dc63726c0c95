import numpy as np
import pytest

from nbquant.quantize.numerics import (
    INT8,
    UINT8,
    dequantize,
    fake_quantize,
    qparams_from_range,
    quantize,
    quantize_bias,
    sqnr_db,
    weight_qparams,
)


def test_asymmetric_uint8_hand_computed():
    p = qparams_from_range(-1.0, 3.0, UINT8)
    assert p.scale == pytest.approx(4.0 / 255)
    assert int(p.zero_point) == 64  # rint(0 - (-1) / (4/255)) = rint(63.75)
    assert quantize(np.array([-1.0, 0.0, 3.0, 10.0]), p).tolist() == [0, 64, 255, 255]


def test_range_is_widened_to_hold_zero():
    p = qparams_from_range(2.0, 6.0)
    assert int(p.zero_point) == 0 and p.scale == pytest.approx(6.0 / 255)
    assert fake_quantize(np.array([0.0]), p)[0] == 0.0


def test_symmetric_int8_zero_point_zero():
    p = qparams_from_range(-0.5, 1.27, INT8, symmetric=True)
    assert int(p.zero_point) == 0 and p.scale == pytest.approx(0.01)


def test_per_channel_weight_scales_hand_computed():
    w = np.zeros((2, 1, 2, 2), np.float32)
    w[0, 0, 0, 0], w[1, 0, 1, 1] = -2.54, 0.127
    p = weight_qparams(w, per_channel=True, axis=0)
    assert p.scale.tolist() == pytest.approx([0.02, 0.001])
    assert p.zero_point.tolist() == [0, 0]
    q = quantize(w, p, axis=0)
    assert q[0, 0, 0, 0] == -127 and q[1, 0, 1, 1] == 127 and q.dtype == np.int8
    assert np.allclose(dequantize(q, p, axis=0), w, atol=1e-6)
    assert weight_qparams(w, per_channel=False).scale == pytest.approx(0.02)


def test_rounding_is_half_to_even_like_onnx():
    p = qparams_from_range(0.0, 255.0)
    assert quantize(np.array([0.5, 1.5, 2.5]), p).tolist() == [0, 2, 2]


def test_all_zero_tensor_gets_a_usable_scale():
    p = weight_qparams(np.zeros((3, 2)), per_channel=True)
    assert np.all(p.scale == 1.0)


def test_bias_int32_in_product_scale():
    assert quantize_bias(np.array([0.5, -0.25]), 0.1, np.array([0.05, 0.025])).tolist() == [100, -100]


def test_sqnr():
    x = np.array([1.0, -1.0])
    assert sqnr_db(x, x) == float("inf")
    assert sqnr_db(x, x * 0.9) == pytest.approx(20.0)
