# SPDX-License-Identifier: Apache-2.0
import math

import numpy as np
import pytest

from terracodec.metrics import bd_rate, bpppb, mse, pchip_eval, pchip_integrate, pchip_slopes, psnr10000

RATE = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
PSNR = np.array([36.0, 40.0, 44.5, 49.0, 54.0])


def test_psnr10000_known_value():
    ref = np.zeros((3, 4, 5), np.int16)
    test = ref + 100                          # MSE 1e4 -> 10 log10(1e8 / 1e4) = 40 dB
    assert psnr10000(ref, test) == pytest.approx(40.0)
    assert psnr10000(ref, ref) == math.inf


def test_psnr10000_valid_mask_and_float64():
    ref = np.full((2, 3, 3), 30000, np.int16)
    test = ref.copy()
    test[:, 0, 0] = -30000                    # would overflow int16 arithmetic; excluded by the mask
    test[:, 1, 1] = 30010
    valid = np.ones((3, 3), bool)
    valid[0, 0] = False
    # 2 of the 16 valid band-pixels have error 10
    assert mse(ref, test, valid) == pytest.approx(100 * 2 / 16)
    assert psnr10000(ref, test, valid) == pytest.approx(10 * math.log10(1e8 / (200 / 16)))
    full = np.broadcast_to(valid, ref.shape)
    assert psnr10000(ref, test, full) == psnr10000(ref, test, valid)
    with pytest.raises(ValueError):
        psnr10000(ref, test, np.zeros((3, 3), bool))
    with pytest.raises(ValueError):
        psnr10000(ref, test[:1])


def test_bpppb():
    assert bpppb(1200, 10, 10, 12) == pytest.approx(8.0)
    assert bpppb(0, 1, 1, 1) == 0.0


def test_bd_rate_self_is_zero():
    r = bd_rate(RATE, PSNR, RATE, PSNR)
    assert r == pytest.approx(0.0, abs=1e-9)
    assert r.overlap == (36.0, 50.0)


@pytest.mark.parametrize("factor,expected", [(0.5, -50.0), (2.0, 100.0), (0.9, -10.0)])
def test_bd_rate_scaled_rates(factor, expected):
    assert bd_rate(RATE * factor, PSNR, RATE, PSNR) == pytest.approx(expected, abs=1e-9)


def test_bd_rate_order_and_duplicates_do_not_matter():
    perm = np.array([3, 0, 4, 1, 2])
    a = bd_rate(RATE[perm] * 0.5, PSNR[perm], RATE, PSNR)
    assert a == pytest.approx(-50.0)
    # a duplicated PSNR point with a worse rate is dropped
    r = np.append(RATE * 0.5, 5.0)
    p = np.append(PSNR, PSNR[2])
    assert bd_rate(r, p, RATE, PSNR) == pytest.approx(-50.0)


def test_bd_rate_shifted_psnr_curve():
    # b is a shifted by +3 dB: a needs more bits everywhere
    val = bd_rate(RATE, PSNR, RATE, PSNR + 3.0)
    assert val > 0
    assert math.isfinite(val)


def test_bd_rate_empty_overlap_is_nan_with_reason():
    r = bd_rate(RATE, PSNR, RATE, PSNR + 30.0, psnr_range=(35, 50))
    assert math.isnan(r)
    assert "overlap" in r.reason
    r = bd_rate([0.1], [40.0], RATE, PSNR)
    assert math.isnan(r) and "usable point" in r.reason


def test_pchip_matches_scipy_and_integrates_exactly():
    x = np.array([30.0, 33.0, 37.5, 41.0, 48.0, 55.0])
    y = np.log(np.array([0.05, 0.09, 0.2, 0.31, 0.9, 1.8]))
    d = pchip_slopes(x, y)
    t = np.linspace(x[0], x[-1], 301)
    v = pchip_eval(x, y, d, t)
    # interpolates the knots and is monotone for monotone data
    assert np.allclose(pchip_eval(x, y, d, x), y)
    assert np.all(np.diff(v) >= -1e-12)
    # integral vs a fine trapezoid
    fine = np.linspace(35.0, 50.0, 200001)
    fv = pchip_eval(x, y, d, fine)
    trap = float(np.sum((fv[1:] + fv[:-1]) * np.diff(fine) / 2))
    assert pchip_integrate(x, y, 35.0, 50.0) == pytest.approx(trap, rel=1e-8)
    scipy_interp = pytest.importorskip("scipy.interpolate")
    ref = scipy_interp.PchipInterpolator(x, y)
    assert np.allclose(v, ref(t), atol=1e-12)
    assert pchip_integrate(x, y, 35.0, 50.0) == pytest.approx(float(ref.integrate(35.0, 50.0)), rel=1e-12)
