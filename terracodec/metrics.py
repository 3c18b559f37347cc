# SPDX-License-Identifier: Apache-2.0
"""Rate-distortion metrics: PSNR on the reflectance x 10000 scale, bits per pixel per band, BD-rate.

* ``psnr10000``: 10 log10(10000^2 / MSE), MSE over all bands and (valid) pixels in float64. The peak is
  reflectance 1.0 (= 10000), not the int16 maximum, so values compare across sources.
* ``bpppb``: bits per pixel per band = bytes * 8 / (H * W * bands).
* ``bd_rate``: Bjontegaard delta rate of curve a against curve b (percent; negative = a needs fewer bits
  for the same PSNR), from monotone piecewise cubic (PCHIP, Fritsch-Carlson) interpolation of
  log(rate) as a function of PSNR, integrated over the PSNR range both curves cover, clipped to
  ``psnr_range``. PCHIP is implemented here with numpy (same slopes as scipy's PchipInterpolator) and
  integrated exactly (Simpson's rule is exact on each cubic piece).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["psnr10000", "mse", "bpppb", "bd_rate", "BDRate", "pchip_slopes", "pchip_eval", "pchip_integrate"]

PEAK = 10000.0


def mse(ref, test, valid=None) -> float:
    """Mean squared error in float64 over all bands and the pixels where ``valid`` is true.

    ``ref``/``test``: (bands, H, W) or (H, W). ``valid``: None, (H, W) (same mask for every band) or the
    full shape."""
    ref = np.asarray(ref)
    test = np.asarray(test)
    if ref.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape}, test {test.shape}")
    diff = ref.astype(np.float64) - test.astype(np.float64)
    if valid is None:
        if diff.size == 0:
            raise ValueError("no pixels to compare")
        return float(np.mean(diff * diff))
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != ref.shape:
        if ref.ndim == 3 and valid.shape == ref.shape[1:]:
            valid = np.broadcast_to(valid, ref.shape)
        else:
            raise ValueError(f"valid mask shape {valid.shape} fits neither {ref.shape} nor {ref.shape[1:]}")
    n = int(valid.sum())
    if n == 0:
        raise ValueError("the valid mask selects no pixel")
    d = diff[valid]
    return float(np.dot(d, d) / n)


def psnr10000(ref, test, valid=None) -> float:
    """PSNR with peak 10000 (reflectance 1.0): 10 log10(10000^2 / MSE); inf when identical."""
    m = mse(ref, test, valid)
    if m == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK * PEAK / m)


def bpppb(nbytes: int, height: int, width: int, bands: int) -> float:
    """Bits per pixel per band: nbytes * 8 / (height * width * bands)."""
    n = int(height) * int(width) * int(bands)
    if n <= 0:
        raise ValueError(f"empty raster {bands}x{height}x{width}")
    return float(nbytes) * 8.0 / n


# -- PCHIP (monotone piecewise cubic Hermite) ---------------------------------------------------------------
def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson derivatives at the knots (scipy.interpolate.PchipInterpolator's choice)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 2:
        raise ValueError("PCHIP needs at least 2 points")
    h = np.diff(x)
    if np.any(h <= 0):
        raise ValueError("x must be strictly increasing")
    delta = np.diff(y) / h
    d = np.zeros(n)
    if n == 2:
        d[:] = delta[0]
        return d
    # interior: weighted harmonic mean where the secants have the same sign, else 0
    w1 = 2.0 * h[1:] + h[:-1]
    w2 = h[1:] + 2.0 * h[:-1]
    same = (np.sign(delta[:-1]) * np.sign(delta[1:])) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        hm = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    d[1:-1] = np.where(same, hm, 0.0)
    d[0] = _edge_slope(h[0], h[1], delta[0], delta[1])
    d[-1] = _edge_slope(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _edge_slope(h0, h1, m0, m1) -> float:
    d = ((2.0 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > abs(3.0 * m0):
        return 3.0 * m0
    return float(d)


def pchip_eval(x, y, d, t) -> np.ndarray:
    """Evaluate the Hermite cubic through (x, y) with slopes d at t (t inside [x0, x_last])."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    k = np.clip(np.searchsorted(x, t, side="right") - 1, 0, x.size - 2)
    h = x[k + 1] - x[k]
    s = (t - x[k]) / h
    h00 = (1 + 2 * s) * (1 - s) ** 2
    h10 = s * (1 - s) ** 2
    h01 = s * s * (3 - 2 * s)
    h11 = s * s * (s - 1)
    return h00 * y[k] + h10 * h * d[k] + h01 * y[k + 1] + h11 * h * d[k + 1]


def pchip_integrate(x, y, a: float, b: float) -> float:
    """Exact integral of the PCHIP interpolant of (x, y) over [a, b] (inside [x0, x_last])."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not (x[0] - 1e-12 <= a <= b <= x[-1] + 1e-12):
        raise ValueError(f"[{a}, {b}] is outside the data range [{x[0]}, {x[-1]}]")
    d = pchip_slopes(x, y)
    knots = np.concatenate([[a], x[(x > a) & (x < b)], [b]])
    lo, hi = knots[:-1], knots[1:]
    mid = 0.5 * (lo + hi)
    # Simpson's rule is exact for cubics and each [lo, hi] lies inside one Hermite piece
    f = pchip_eval(x, y, d, np.concatenate([lo, mid, hi])).reshape(3, -1)
    return float(np.sum((hi - lo) / 6.0 * (f[0] + 4.0 * f[1] + f[2])))


# -- BD-rate ------------------------------------------------------------------------------------------------
class BDRate(float):
    """A float (percent, NaN when undefined) that also carries ``reason`` and the ``overlap`` range used."""

    reason: str = ""
    overlap: tuple | None = None

    def __new__(cls, value: float, reason: str = "", overlap=None):
        obj = super().__new__(cls, value)
        obj.reason = reason
        obj.overlap = overlap
        return obj


def _curve(rate, psnr, name):
    rate = np.asarray(rate, dtype=np.float64).ravel()
    psnr = np.asarray(psnr, dtype=np.float64).ravel()
    if rate.shape != psnr.shape:
        raise ValueError(f"curve {name}: {rate.size} rates but {psnr.size} PSNR values")
    ok = np.isfinite(rate) & np.isfinite(psnr) & (rate > 0)
    rate, psnr = rate[ok], psnr[ok]
    order = np.argsort(psnr, kind="stable")
    rate, psnr = rate[order], psnr[order]
    # PCHIP needs strictly increasing PSNR: of points with equal PSNR keep the cheapest
    keep = np.ones(psnr.size, dtype=bool)
    last = 0
    for i in range(1, psnr.size):
        if psnr[i] <= psnr[last] + 1e-9:
            keep[i] = False
            rate[last] = min(rate[last], rate[i])
        else:
            last = i
    return np.log(rate[keep]), psnr[keep]


def bd_rate(rate_a, psnr_a, rate_b, psnr_b, psnr_range=(35.0, 50.0)) -> BDRate:
    """Bjontegaard delta rate of a versus b in percent (negative: a needs fewer bits than b).

    log(rate) is interpolated as a function of PSNR with PCHIP on each curve; the mean difference over
    the PSNR interval that both curves cover, intersected with ``psnr_range``, gives
    ``100 * (exp(mean(log ra - log rb)) - 1)``. Returns a NaN ``BDRate`` with ``.reason`` when a curve
    has fewer than 2 usable points or the overlap is empty."""
    la, pa = _curve(rate_a, psnr_a, "a")
    lb, pb = _curve(rate_b, psnr_b, "b")
    for name, p in (("a", pa), ("b", pb)):
        if p.size < 2:
            return BDRate(math.nan, f"curve {name} has {p.size} usable point(s) (need 2 with rate > 0 "
                                    f"and distinct finite PSNR)")
    lo = max(pa[0], pb[0], float(psnr_range[0]))
    hi = min(pa[-1], pb[-1], float(psnr_range[1]))
    if not hi > lo:
        return BDRate(math.nan, f"no PSNR overlap: a covers {pa[0]:.2f}-{pa[-1]:.2f} dB, b covers "
                                f"{pb[0]:.2f}-{pb[-1]:.2f} dB, range {psnr_range[0]}-{psnr_range[1]} dB")
    ia = pchip_integrate(pa, la, lo, hi)
    ib = pchip_integrate(pb, lb, lo, hi)
    avg = (ia - ib) / (hi - lo)
    return BDRate(100.0 * math.expm1(avg), "", (lo, hi))
