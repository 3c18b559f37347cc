"""Kind 4 tiles: bands resampled from a coarser grid are coded on that grid.

Sentinel-2 measures B05-B07, B8A, B11, B12 at 20 m and B01, B09, B10 at 60 m. On a 10 m grid those
bands are interpolations (bilinear, nearest, or bilinear between samples on pixels) of 4x or 36x fewer samples, which a codec of the
10 m pixels pays for again. The encoder finds, per band, the coarse grid (factor, interpolation,
phase) that reproduces the band to rounding, groups bands of the same grid, and codes each group on
its grid: coarse groups are first predicted from the bands decoded before them (a linear map of
their cell means, or of the 3 x 3 neighbourhoods of those means), and the residual goes through a
KLT and one JPEG 2000 codestream, as in kind 1. A full-resolution group may instead code its
components as AV1 images (:mod:`terracodec.av1`, group mode bit 7), when that costs less.

Pure numpy + imagecodecs (no torch). Layout in docs/FORMAT.md ("kind 4").
"""
from __future__ import annotations

import struct
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from . import av1
from .errors import TecFormatError
from .tilecodec import (BARE_J2K, DEFAULT_EFFORT, SHIFT_MASK, _to_dtype, basis_side, component_values,
                        j2k_decode_checked, j2k_dress, j2k_store, parse_basis)

FACTORS = (6, 2)                     # tried largest first: a 60 m band also fits a 20 m grid roughly
# interp: how a band was brought to the fine grid. "bilinear" and "nearest" take the coarse cells as
# areas (a cell's centre between fine pixels, as GDAL and rasterio resample); "point" is bilinear
# between cell centres that sit on fine pixels (Google Earth Engine exports, e.g. SSL4EO-S12: every
# 2nd / 6th pixel is a sample of the coarse band and the pixels between are linear in between).
MODES = {"bilinear": 0, "nearest": 1, "point": 2}
AV1_STREAM = 0x80                    # group mode bit 7: the components are AV1 images, not JPEG 2000
CODED_COEF = 0x40                    # group mode bit 6: the prediction coefficients are Rice-coded integers
SPARSE_BASIS = 0x20                  # group mode bit 5: only the basis columns of nonzero components (basis_side)
AV1_STEP_PER_SLOPE = 3.2             # the AV1 walk starts where the quantizer step is this x sqrt(lambda)
AV1_MIN_CELLS = 16                   # effort "best" tries AV1 for coarse groups of this many cells a side
AV1_NEXT_J2K = 4                     # after an AV1 group the next OpenJPEG walk starts this far above kind 1's level
FIT_RMS = 1.0                        # a band "is" on a coarse grid when the refit is off by < 1 on average
DETECT_WINDOW = 96                   # phases are searched on a central window of this size
FULL_RESOLUTION = (1, 0, 0, 0)       # the grid of a band at full resolution
MIN_CELLS = 4                        # JPEG 2000 and the KLT need a few samples per axis
NO_STREAM = 0x20                     # group param bit 5: no codestream, the residual is its means
SPATIAL = 0x80                       # group param bit 7: the prediction also uses the 8 neighbour cells and a constant
# Offsets (dy, dx) of the spatial prediction's features, after the cell itself (0, 0): the 3 x 3
# neighbourhood lets the prediction learn how a coarse band's footprint differs from the mean of
# the fine pixels in its cell (on the 1068 x 1068 val scene the 20 m group's bits halve at quality 4).
NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
# group param bit 4, with SPATIAL: a u16 block mask selects the neighbourhood prediction's features.
# Bit b (b < e, the earlier bands) keeps earlier band b's 8 neighbour shifts; bit e adds the products
# c_i * c_j (i <= j) of the cell means c of the first QUADRATIC_BANDS earlier bands (reflectance /
# 1000): how a coarse band follows the 10 m bands is not linear (the red edge against red and NIR,
# water, haze). The cell's own means and the constant are always features. Each coefficient costs
# up to 2 bytes per band, so the encoder keeps only the blocks that pay (_select_blocks; it keeps
# estimating 16 bits per coefficient with CODED_COEF too: 10 bits did worse).
SELECTED = 0x10
QUADRATIC_BANDS = 4
PREDICTIONS = (0, SPATIAL)           # what the encoder tries for a predicted coarse group, at its
                                     # start level; SPATIAL with all neighbour shifts, or with the
                                     # selected blocks, whichever predicts better for its side bits
MASK_SHIFT = 8                       # in memory the block mask rides above the param byte
_GROUP = struct.Struct("<BBBBBB")    # factor, mode, phase_y, phase_x, band count, param
_BLOCK_MASK = struct.Struct("<H")    # after the band indexes, with SELECTED
_COEF_HEAD = struct.Struct("<BH")    # with CODED_COEF: step index, bytes of the Rice-coded integers
# With CODED_COEF a coefficient is q * step / scale: the scale of its feature's values (reflectance for
# the cell means and their shifts, 1 for the constant, (reflectance / 1000)**2 for the quadratic
# terms), so that one step bounds each feature's error in the prediction alike.
COEF_SCALES = (2048.0, 1.0, 32.0)    # cell means and shifts, constant, quadratic terms (8192: +0.08 % J)
_QUARTER_OCTAVES = (1.0, 1.189207115002721, 1.4142135623730951, 1.681792830507429)   # 2 ** (k / 4)
COEF_LIMIT = 2 ** 31 - 1
# The step is chosen by lambda x bits + this x the prediction error the rounding adds: the residual
# codestream codes much of that error again, so it costs less than its SSE (on the 36 tiles of
# examples/measure_tile_costs.py, mean J against float16 only: 1 -0.73 %, 0.5 -0.97 %, 0.25 -1.02 %,
# with the cell-mean scale 8192).
COEF_ERROR_WEIGHT = 0.25


# -- grids -----------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def upsample_matrix(n: int, factor: int, phase: int, mode: int) -> np.ndarray:
    """(n, cells) interpolation matrix of one axis of ``n`` pixels from a grid ``factor`` times coarser.

    Cell j (any integer) has its centre at ``phase + factor * j + (factor - 1) / 2`` in pixel
    units, or at ``phase + factor * j`` (on a pixel) in mode "point". Bilinear: pixel k sits at
    u = (k - phase - (factor - 1) / 2) / factor cells (point: u = (k - phase) / factor) and takes
    (1 - a) of cell floor(u) and a of the next (a = u - floor(u)). Nearest: pixel k takes cell
    floor((k - phase) / factor). The columns are the cells with a weight in some pixel, lowest first."""
    if factor == 1:
        return np.eye(n)
    k = np.arange(n)
    if mode == MODES["nearest"]:
        cells = np.floor_divide(k - phase, factor)
        lo = int(cells.min())
        u = np.zeros((n, int(cells.max()) - lo + 1))
        u[k, cells - lo] = 1.0
        return u
    centre = 0 if mode == MODES["point"] else (factor - 1) / 2
    pos = (k - phase - centre) / factor
    i0 = np.floor(pos).astype(int)
    a = pos - i0
    lo = int(i0.min())
    hi = int(np.where(a > 0, i0 + 1, i0).max())
    u = np.zeros((n, hi - lo + 1))
    u[k, i0 - lo] += 1 - a
    nz = a > 0
    u[k[nz], i0[nz] + 1 - lo] += a[nz]
    return u


@lru_cache(maxsize=256)
def _fit_matrix(n: int, factor: int, phase: int, mode: int) -> np.ndarray:
    """Least-squares inverse of upsample_matrix (encoder only)."""
    return np.linalg.pinv(upsample_matrix(n, factor, phase, mode))


@lru_cache(maxsize=256)
def cell_mean_matrix(n: int, factor: int, phase: int, mode: int) -> np.ndarray:
    """(cells, n): the mean of the pixels nearest to each cell (the prediction features)."""
    u = upsample_matrix(n, factor, phase, mode)
    owner = np.argmax(u, axis=1)                       # the cell of largest weight (first on ties)
    m = np.zeros((u.shape[1], n))
    m[owner, np.arange(n)] = 1.0
    owning = np.flatnonzero(m.sum(axis=1) > 0)
    m[owning] /= m[owning].sum(axis=1, keepdims=True)
    for j in np.flatnonzero(m.sum(axis=1) == 0):        # edge cells without pixels: the nearest cell's row
        m[j] = m[owning[np.argmin(np.abs(owning - j))]]
    return m


def _separable(left: np.ndarray, x: np.ndarray, right: np.ndarray) -> np.ndarray:
    """left @ x[b] @ right.T for every band."""
    return np.matmul(np.matmul(left, x), right.T)


@lru_cache(maxsize=256)
def _taps(n: int, factor: int, phase: int, mode: int):
    """The (at most) two nonzero weights per row of upsample_matrix: (i0, w0, i1, w1)."""
    u = upsample_matrix(n, factor, phase, mode)
    i0 = np.argmax(u > 0, axis=1)
    w0 = u[np.arange(n), i0]
    i1 = np.minimum(i0 + 1, u.shape[1] - 1)
    w1 = np.where(i1 > i0, u[np.arange(n), i1], 0.0)
    return i0, w0, i1, w1


def upsample(cells: np.ndarray, h: int, w: int, grid) -> np.ndarray:
    """U_y @ cells[b] @ U_x.T for every band, from the two taps per row (same sums as the matrices:
    w0 * c[i0] + w1 * c[i1], in that order, on each axis: rows first, then columns)."""
    factor, mode, py, px = grid
    if factor == 1:
        return cells
    i0, w0, i1, w1 = _taps(h, factor, py, mode)
    rows = cells[:, i0, :] * w0[:, None] + cells[:, i1, :] * w1[:, None]
    i0, w0, i1, w1 = _taps(w, factor, px, mode)
    return rows[:, :, i0] * w0 + rows[:, :, i1] * w1


@lru_cache(maxsize=256)
def _gram_bands(n: int, factor: int, mode: int, phase: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal and first off-diagonal of U.T @ U (U = upsample_matrix): U has at most two
    neighbouring weights per row, so the Gram matrix is tridiagonal."""
    u = upsample_matrix(n, factor, phase, mode)
    gram = u.T @ u
    return np.diagonal(gram).copy(), np.diagonal(gram, 1).copy()


def _grid_sse(e: np.ndarray, gram_y, gram_x) -> float:
    """||U_y @ e[b] @ U_x.T||^2 summed over bands, from the tridiagonal Gram matrices."""
    def apply(a, gram, axis):
        d0, d1 = gram
        shape = [1, 1, 1]
        shape[axis] = -1
        out = a * d0.reshape(shape)
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] += a[tuple(hi)] * d1.reshape(shape)
        out[tuple(hi)] += a[tuple(lo)] * d1.reshape(shape)
        return out

    return float(np.sum(apply(apply(e, gram_y, 1), gram_x, 2) * e))


# -- detection (encoder) -----------------------------------------------------------------------------
def _shifted_sum(a: np.ndarray) -> np.ndarray:
    """Sum of each pixel's 4 neighbours in (bands, h, w) ``a`` (zero outside)."""
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    return p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]


def fill_nodata(x: np.ndarray, mask: np.ndarray, steps: int = 2 * max(FACTORS)) -> np.ndarray:
    """(bands, h, w) float64 with nodata pixels (``mask``) filled: grown from the valid pixels
    around them (mean of the filled 4-neighbours, ``steps`` rings), the rest by the band mean of
    the valid pixels. Near an edge of nodata the band then looks clamped, which is how nodata-aware
    resampling treats it, so grid fits there stay close."""
    x = np.where(mask, 0.0, x)
    known = ~mask
    for _ in range(steps):
        if known.all():
            break
        count = _shifted_sum(known.astype(np.float64))
        grow = ~known & (count > 0)
        if not grow.any():
            break
        total = _shifted_sum(np.where(known, x, 0.0))
        x[grow] = total[grow] / count[grow]
        known = known | grow
    if not known.all():
        valid = ~mask
        means = np.array([x[b][valid[b]].mean() if valid[b].any() else 0.0 for b in range(x.shape[0])])
        x = np.where(known, x, means[:, None, None])
    return x


def _near_nodata(mask: np.ndarray, margin: int) -> np.ndarray:
    """(bands, h, w): nodata pixels and pixels within ``margin`` 4-neighbour steps of one."""
    near = mask.copy()
    for _ in range(margin):
        near |= _shifted_sum(near.astype(np.float64)) > 0
    return near


@lru_cache(maxsize=256)
def _grid_basis(n: int, factor: int, phase: int, mode: int) -> np.ndarray:
    """(n, rank) orthonormal basis of the span of upsample_matrix's columns (pinv's cutoff): the
    least-squares refit of a signal on the grid, upsampled, is its projection Q @ Q.T."""
    u, s, _ = np.linalg.svd(upsample_matrix(n, factor, phase, mode), full_matrices=False)
    return u[:, s > 1e-15 * s.max()]


@lru_cache(maxsize=64)
def _phase_bases(n: int, factor: int, mode: int) -> tuple[np.ndarray, np.ndarray]:
    """The bases of every phase side by side, and where each phase's columns start (and the last ends)."""
    bases = [_grid_basis(n, factor, phase, mode) for phase in range(factor)]
    return np.concatenate(bases, axis=1), np.cumsum([0] + [b.shape[1] for b in bases])


def _refit_ms(x: np.ndarray, factor: int, py: int, px: int, mode: int) -> float:
    """Mean square of x minus its refit on the grid: ||x||^2 - ||Qy.T x Qx||^2 over the pixels
    (x centred first: constants lie on every grid, and centring keeps the difference accurate)."""
    xc = x - x.mean()
    kept = _grid_basis(x.shape[0], factor, py, mode).T @ xc @ _grid_basis(x.shape[1], factor, px, mode)
    return max(float(np.sum(xc * xc)) - float(np.sum(kept * kept)), 0.0) / x.size


def _window_fits(window: np.ndarray, factor: int, mode: int) -> np.ndarray:
    """(factor, factor) bools: whether the grid of phases (py, px) refits ``window`` within
    FIT_RMS, all phases from two matrix products."""
    xc = window - window.mean()
    qy, ey = _phase_bases(window.shape[0], factor, mode)
    qx, ex = _phase_bases(window.shape[1], factor, mode)
    kept = qy.T @ xc @ qx
    kept = np.add.reduceat(np.add.reduceat(kept * kept, ey[:-1], axis=0), ex[:-1], axis=1)
    return (float(np.sum(xc * xc)) - kept) / window.size < FIT_RMS ** 2


def _fits(x: np.ndarray, factor: int, py: int, px: int, mode: int, trusted: np.ndarray | None = None) -> bool:
    if trusted is None:
        return _refit_ms(x, factor, py, px, mode) < FIT_RMS ** 2
    h, w = x.shape
    fy, fx = _fit_matrix(h, factor, py, mode), _fit_matrix(w, factor, px, mode)
    uy, ux = upsample_matrix(h, factor, py, mode), upsample_matrix(w, factor, px, mode)
    resid = (x - uy @ (fy @ x @ fx.T) @ ux.T)[trusted]
    return resid.size > 0 and float(np.sqrt(np.mean(resid * resid))) < FIT_RMS


def detect_grids(tile: np.ndarray, mask: np.ndarray | None = None) -> list[tuple[int, int, int, int]]:
    """Per band (factor, mode, phase_y, phase_x) of the coarsest grid that reproduces it to within
    FIT_RMS on the whole tile; FULL_RESOLUTION for a band at full resolution.

    With nodata (``mask``), ``tile`` holds the filled values (fill_nodata); the fit is judged on
    valid pixels at least 2 * factor from nodata, and phases are searched on a window without
    nodata (the central one, else the first of a 3 x 3 grid of windows)."""
    count, h, w = tile.shape
    x = tile.astype(np.float64)
    win = min(DETECT_WINDOW, h, w)
    if mask is None:
        y0, x0 = (h - win) // 2, (w - win) // 2
        return [_band_grid(band, band[y0:y0 + win, x0:x0 + win], y0, x0) for band in x]
    near = {f: _near_nodata(mask, 2 * f) for f in FACTORS}
    starts = [((h - win) // 2, (w - win) // 2)] + [(int(fy * (h - win)), int(fx * (w - win)))
                                                   for fy in (0, 0.5, 1) for fx in (0, 0.5, 1)]
    grids = []
    for b in range(count):
        trusted = {f: ~near[f][b] for f in FACTORS}
        window = next(((y0, x0) for y0, x0 in starts if not mask[b, y0:y0 + win, x0:x0 + win].any()), None)
        if window is None:              # no clean window (a small tile): search on the whole band
            grids.append(_band_grid(x[b], x[b], 0, 0, trusted, trusted))
            continue
        y0, x0 = window
        grids.append(_band_grid(x[b], x[b, y0:y0 + win, x0:x0 + win], y0, x0, trusted))
    return grids


def _band_grid(band: np.ndarray, window: np.ndarray, y0: int, x0: int,
               trusted: dict | None = None, window_trusted: dict | None = None) -> tuple[int, int, int, int]:
    """detect_grids for one band; ``window`` = band[y0:, x0:] cropped, where phases are searched
    (per phase_y the first phase_x that fits the window is verified on the whole band). Fits are
    judged on the pixels ``trusted[factor]`` (``window_trusted[factor]`` in the window) when given."""
    if np.ptp(band) == 0:                    # a constant band fits every grid: keep it at full size
        return FULL_RESOLUTION
    for factor in FACTORS:
        if min(band.shape) < factor * MIN_CELLS:
            continue
        for mode in MODES.values():
            if window_trusted is None:
                window_fits = _window_fits(window, factor, mode)
            for py in range(factor):
                if window_trusted is None:
                    px = next((px for px in range(factor) if window_fits[py, px]), None)
                else:
                    px = next((px for px in range(factor)
                               if _fits(window, factor, py, px, mode, window_trusted[factor])), None)
                if px is None:
                    continue
                grid = (factor, mode, (py + y0) % factor, (px + x0) % factor)
                if _fits(band, factor, grid[2], grid[3], mode, None if trusted is None else trusted[factor]):
                    return grid
    return FULL_RESOLUTION


def groups_of(grids) -> list[tuple[tuple[int, int, int, int], list[int]]]:
    """Bands of the same grid, full resolution first, then by factor."""
    by_grid: dict[tuple, list[int]] = {}
    for b, g in enumerate(grids):
        by_grid.setdefault(g, []).append(b)
    return sorted(by_grid.items(), key=lambda item: (item[0][0], item[1][0]))


# -- coding ------------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _runs(n: int, factor: int, phase: int, mode: int):
    """Each row of cell_mean_matrix averages one contiguous run of pixels: -> (starts, stops)."""
    m = cell_mean_matrix(n, factor, phase, mode) > 0
    starts = np.argmax(m, axis=1)
    return starts, starts + m.sum(axis=1)


def _run_means(x: np.ndarray, axis: int, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    csum = np.concatenate([np.zeros_like(x.take([0], axis=axis)), np.cumsum(x, axis=axis)], axis=axis)
    shape = [1] * x.ndim
    shape[axis] = len(starts)
    return (csum.take(stops, axis=axis) - csum.take(starts, axis=axis)) / (stops - starts).reshape(shape)


def cell_means(x: np.ndarray, grid) -> np.ndarray:
    """cell_mean_matrix_y @ x[b] @ cell_mean_matrix_x.T for every band of (bands, h, w) ``x``, from
    running sums (each cell averages a contiguous run of pixels along each axis)."""
    factor, mode, py, px = grid
    _, h, w = x.shape
    rows = _run_means(x, 1, *_runs(h, factor, py, mode))
    return _run_means(rows, 2, *_runs(w, factor, px, mode))


def prediction_features(means: np.ndarray, param: int) -> np.ndarray:
    """(features, cells) of a group's prediction from the earlier bands' cell means (bands, cy, cx):
    the means themselves; with SPATIAL (in ``param``) then, for each NEIGHBOURS offset, the means
    shifted by it (cell (i, j) takes the mean at (i + dy, j + dx), indexes clipped to the grid) and a
    constant 1. With SELECTED, ``param >> MASK_SHIFT`` is the block mask: only the masked bands'
    shifts, then the constant, then (mask bit e) the quadratic products."""
    n, cy, cx = means.shape
    if not param & SPATIAL:
        return means.reshape(n, cy * cx)
    shifted = _shifted_bands(n, param)
    out = np.empty((feature_count(n, param), cy, cx))
    out[:n] = means
    edged = np.pad(means[shifted], ((0, 0), (1, 1), (1, 1)), mode="edge")
    k = n
    for dy, dx in NEIGHBOURS:
        out[k:k + len(shifted)] = edged[:, 1 + dy:1 + dy + cy, 1 + dx:1 + dx + cx]
        k += len(shifted)
    out[k] = 1.0
    if _has_quadratic(n, param):
        scaled = means[:QUADRATIC_BANDS] / 1000
        for i, j in _pairs(min(n, QUADRATIC_BANDS)):
            k += 1
            np.multiply(scaled[i], scaled[j], out=out[k])
    return out.reshape(-1, cy * cx)


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i, n)]


def _shifted_bands(n_earlier: int, param: int) -> list[int]:
    if not param & SELECTED:
        return list(range(n_earlier))
    mask = param >> MASK_SHIFT
    return [b for b in range(n_earlier) if mask >> b & 1]


def _has_quadratic(n_earlier: int, param: int) -> bool:
    return bool(param & SELECTED and param >> MASK_SHIFT >> n_earlier & 1)


def feature_count(n_earlier: int, param: int) -> int:
    if not param & SPATIAL:
        return n_earlier
    quadratic = len(_pairs(min(n_earlier, QUADRATIC_BANDS))) if _has_quadratic(n_earlier, param) else 0
    return n_earlier + len(NEIGHBOURS) * len(_shifted_bands(n_earlier, param)) + 1 + quadratic


# -- prediction coefficients ---------------------------------------------------------------------
def coefficient_scales(n_earlier: int, param: int) -> np.ndarray:
    """(features,) COEF_SCALES of each prediction feature (see prediction_features' order)."""
    means, one, quadratic = COEF_SCALES
    p = feature_count(n_earlier, param)
    out = np.full(p, means)
    if param & SPATIAL:
        k = n_earlier + len(NEIGHBOURS) * len(_shifted_bands(n_earlier, param))
        out[k] = one
        out[k + 1:] = quadratic
    return out


def coefficient_step(index: int) -> float:
    """The quantizer step of coded coefficients: 2 ** ((index - 64) / 4), exact on every platform."""
    return float(np.ldexp(_QUARTER_OCTAVES[index & 3], (index >> 2) - 16))


def rice_encode(values) -> bytes:
    """Signed integers -> adaptive Golomb-Rice bits, MSB first, zero-padded to a byte (FORMAT.md)."""
    acc, nbits, total, count = 0, 0, 16, 1
    for v in values:
        u = 2 * v if v >= 0 else -2 * v - 1
        k = 0
        while count << k < total and k < 31:
            k += 1
        m = u >> k
        if m < 32:
            acc = (((acc << (m + 1)) | ((1 << (m + 1)) - 2)) << k) | (u & ((1 << k) - 1))
            nbits += m + 1 + k
        else:                                   # escape: 32 ones, then u in 32 bits
            acc = (acc << 64) | (0xFFFFFFFF << 32) | u
            nbits += 64
        total, count = total + u, count + 1
        if count == 64:
            total, count = total >> 1, count >> 1
    pad = -nbits % 8
    return (acc << pad).to_bytes((nbits + pad) // 8, "big")


def rice_decode(data: bytes, n: int) -> np.ndarray:
    """rice_encode's ``n`` integers back (int64); TecFormatError unless ``data`` holds exactly them."""
    bits = bin(int.from_bytes(data, "big") | 1 << 8 * len(data))[3:]
    out = np.empty(n, np.int64)
    pos, total, count = 0, 16, 1
    for i in range(n):
        k = 0
        while count << k < total and k < 31:
            k += 1
        zero = bits.find("0", pos, pos + 33)
        if zero < 0 or zero - pos >= 32:
            if len(bits) < pos + 64:
                raise TecFormatError("kind 4 group's coded coefficients are truncated")
            u, pos = int(bits[pos + 32:pos + 64], 2), pos + 64
        else:
            if len(bits) < zero + 1 + k:
                raise TecFormatError("kind 4 group's coded coefficients are truncated")
            u = (zero - pos) << k | (int(bits[zero + 1:zero + 1 + k], 2) if k else 0)
            pos = zero + 1 + k
        out[i] = u >> 1 if not u & 1 else -(u >> 1) - 1
        total, count = total + u, count + 1
        if count == 64:
            total, count = total >> 1, count >> 1
    if (pos + 7) // 8 != len(data):
        raise TecFormatError("kind 4 group's coded coefficients have extra bytes")
    return out


_STEPS = np.array([coefficient_step(t) for t in range(256)])


def decode_coefficients(q: np.ndarray, index: int, scales: np.ndarray) -> np.ndarray:
    """Coded coefficients (n, features) of integers -> float64 coefficients."""
    return q * coefficient_step(index) / scales


def _weighted_added_error(hat: np.ndarray, coef: np.ndarray, gram: np.ndarray, factor: int) -> float:
    """COEF_ERROR_WEIGHT x the prediction error (per cell, times factor**2) that stored coefficients
    ``hat`` add to the least-squares ``coef``: (hat - coef) gram (hat - coef)^T over the bands."""
    e = hat - coef
    return float(np.einsum("ik,kl,il->", e, gram, e)) * factor ** 2 * COEF_ERROR_WEIGHT


def _code_coefficients(coef: np.ndarray, gram: np.ndarray, scales: np.ndarray, lam: float,
                       factor: int) -> tuple[bytes, np.ndarray, float] | None:
    """-> (side bytes, coefficients as decoded, cost) of the step of least COEF_ERROR_WEIGHT x added
    prediction error (from ``gram``, per cell times factor**2) + lam x bits, or None when no step
    fits in the u16 length. A bit estimate over all steps picks the 5 that are coded."""
    steps = _STEPS[:, None, None]
    scaled = coef * scales / steps                                     # (steps, n, p)
    err = np.rint(np.clip(scaled, -COEF_LIMIT, COEF_LIMIT)) * steps / scales - coef
    added = np.sum((err @ gram) * err, axis=(1, 2)) * (factor ** 2 * COEF_ERROR_WEIGHT)
    # about 2 + log2(|q| + 1) bits per integer (sign, unary part, Rice remainder)
    centre = int(np.argmin(added + lam * (np.log2(np.abs(scaled) + 1).sum(axis=(1, 2)) + 2 * coef.size)))
    best = None
    for t in range(max(centre - 2, 0), min(centre + 3, 256)):
        q = np.clip(np.rint(scaled[t]), -COEF_LIMIT, COEF_LIMIT).astype(np.int64)
        data = rice_encode(q.ravel().tolist())
        if len(data) > 0xFFFF:
            continue
        hat = decode_coefficients(q, t, scales)
        cost = _weighted_added_error(hat, coef, gram, factor) + lam * 8 * (_COEF_HEAD.size + len(data))
        if best is None or cost < best[2]:
            best = (_COEF_HEAD.pack(t, len(data)) + data, hat, cost)
    return best


def _select_blocks(means: np.ndarray, cells: np.ndarray, factor: int, lam: float) -> int:
    """The SELECTED param (mask included) of the feature blocks worth their side bits: greedy, from
    the cell's own means and the constant, each step adds the block (one earlier band's 8 shifts,
    or the quadratic products) that most lowers the prediction's squared error (per cell times
    factor**2) + lam x 16 bits per coefficient, while one does. All from one Gram matrix."""
    n = len(means)
    every = SPATIAL | SELECTED | ((1 << (n + 1)) - 1) << MASK_SHIFT
    feats = prediction_features(means, every)
    target = cells.reshape(cells.shape[0], -1)
    gram = feats @ feats.T
    gram += np.eye(len(feats)) * max(1e-9 * np.trace(gram), 1e-12)
    cross = feats @ target.T
    energy = float(np.sum(target * target))
    rows_of = {b: [n + k * n + b for k in range(len(NEIGHBOURS))] for b in range(n)}
    constant = n + len(NEIGHBOURS) * n
    rows_of[n] = list(range(constant + 1, len(feats)))        # the quadratic products
    per_row = lam * 16 * len(target)

    def cost(rows):
        rows = sorted(rows)
        coef = np.linalg.solve(gram[np.ix_(rows, rows)], cross[rows])
        return (energy - float(np.sum(cross[rows] * coef))) * factor ** 2 + per_row * len(rows)

    chosen, rows = 0, list(range(n)) + [constant]
    best = cost(rows)
    while True:
        trials = {b: cost(rows + r) for b, r in rows_of.items() if not chosen >> b & 1 and r}
        if not trials:
            break
        b = min(trials, key=trials.get)
        if trials[b] >= best:
            break
        chosen, best, rows = chosen | 1 << b, trials[b], rows + rows_of[b]
    return SPATIAL | SELECTED | chosen << MASK_SHIFT


class Prediction(NamedTuple):
    """A coarse group's fitted prediction: its coefficients as stored, whether they are coded
    (CODED_COEF) or float16, and the prediction (bands, cy, cx) from them."""
    side: bytes
    coded: bool
    pred: np.ndarray


def _fit_prediction(earlier: np.ndarray, cells: np.ndarray, param: int, lam: float, factor: int) -> Prediction:
    """Least squares on prediction_features(``earlier``, ``param``), its coefficients stored as
    float16 or coded (_code_coefficients), whichever costs less."""
    feats = prediction_features(earlier, param)
    target = cells.reshape(cells.shape[0], -1)
    gram = feats @ feats.T
    # ridge of 1e-9 of the features' total energy (the trace); the floor keeps all-zero earlier bands solvable
    gram += np.eye(len(feats)) * max(1e-9 * np.trace(gram), 1e-12)
    coef = np.linalg.solve(gram, feats @ target.T).T
    half = np.clip(coef, -60000, 60000).astype("<f2")
    half_cost = _weighted_added_error(half.astype(np.float64), coef, gram, factor) + lam * 8 * half.nbytes
    coded = _code_coefficients(coef, gram, coefficient_scales(len(earlier), param), lam, factor)
    if coded is not None and coded[2] < half_cost:
        side, hat, is_coded = coded[0], coded[1], True
    else:
        side, hat, is_coded = half.tobytes(), half.astype(np.float64), False
    return Prediction(side, is_coded, (hat @ feats).reshape(cells.shape))


def encode_groups(tile: np.ndarray, grids, lam: float, kind1_level: int, mask: np.ndarray | None = None,
                  filled: np.ndarray | None = None, plan: list | None = None, levels: list | None = None,
                  effort: str = DEFAULT_EFFORT):
    """-> (body bytes, decoded tile) of least J = SSE + lam * bits, chosen group by group: each
    group's level is walked from a start, and a predicted group may also drop its codestream.

    The full-resolution group is coded with JPEG 2000 and with AV1 (:mod:`terracodec.av1`), the
    cheaper kept (with AV1 only when it is the tile's only group: its JPEG 2000 code is kind
    1's); coarse groups with JPEG 2000, and with effort "best" also with AV1 when they have at
    least AV1_MIN_CELLS cells a side. The full-resolution group's walks start at
    ``kind1_level - 1`` (``kind1_level`` being the kind 1 level of the tile) and at
    av1_start_level; a coarse group's OpenJPEG walk from the level of the group before it, or at
    ``kind1_level + AV1_NEXT_J2K`` after an AV1 group, and its AV1 walk at av1_start_level for
    its cells' weight in the error (_cell_weight).
    ``plan`` (e.g. ``levels`` of the tile's central crop) gives a (codec, level, AV1 quantizer
    step in reflectance units or None) per group in coding order: a group with a plan entry tries
    only that codec (except coarse groups with effort "best"), and a JPEG 2000 walk starts at its
    level. ``levels`` (a list) gets each group's entry. With nodata
    (``mask``), the groups code the tile filled by fill_nodata (``filled``, when already computed)
    and SSE counts valid pixels only. With ``effort`` "best" (tilecodec.EFFORTS), AV1's chosen
    level is coded again at av1.BEST_SPEED instead of av1.SPEED; with "fast", a group with a plan
    entry codes the planned level (AV1: the planned step) and walks no further than
    tilecodec.walk_tries allows."""
    from .tilecodec import J2K_LEVEL_MAX, J2K_LEVEL_MIN, WALK_TRIES, _descend, walk_tries

    count, h, w = tile.shape
    if mask is None:
        x = tile.astype(np.float64)
    else:
        x = fill_nodata(tile.astype(np.float64), mask) if filled is None else filled
    decoded = np.zeros_like(x)
    j2k_start = int(np.clip(kind1_level - 1, J2K_LEVEL_MIN, J2K_LEVEL_MAX))
    done: list[int] = []
    groups = groups_of(grids)
    parts = [bytes([len(groups)])]
    for index, (grid, bands) in enumerate(groups):
        factor, mode, py, px = grid
        planned = plan[index] if plan is not None and index < len(plan) else None
        cells = x[bands] if factor == 1 else _separable(_fit_matrix(h, factor, py, mode), x[bands],
                                                         _fit_matrix(w, factor, px, mode))
        earlier = cell_means(decoded[done], grid) if done else None
        # a coarse group's prediction is tried with and without neighbour cells at the start level
        # (the features cost up to 2 bytes per coefficient); the walk goes on with the cheaper
        options = PREDICTIONS if done and factor > 1 else (0,)
        fits = {spatial: _fit_prediction(earlier, cells, spatial, lam, factor) if done else None
                for spatial in options}
        if SPATIAL in fits:
            # all neighbour shifts, or the selected blocks: the one of lower prediction error +
            # lambda x side bits (on the grid where there is no nodata)
            selected = _select_blocks(earlier, cells, factor, lam)
            fit = _fit_prediction(earlier, cells, selected, lam, factor)
            if (_prediction_cost(fit, cells, grid, mask, (h, w), lam) + lam * 8 * _BLOCK_MASK.size
                    < _prediction_cost(fits[SPATIAL], cells, grid, mask, (h, w), lam)):
                del fits[SPATIAL]
                fits[selected] = fit
        # the crop (coded at the default effort) plans JPEG 2000 for coarse groups; "best" tries
        # both on the tile: following a crop's AV1 choice on 64² cells had cost +4-6 % J on 3 of 36
        # val tiles (examples/measure_tile_costs.py)
        coarse_both = factor > 1 and effort == "best"
        if factor == 1 and not done:
            # a tile without coarse grids is this one group, whose JPEG 2000 code is kind 1's
            codecs = ("j2k", "av1") if len(groups) > 1 else ("av1",)
        elif coarse_both and min(cells.shape[1:]) >= AV1_MIN_CELLS:
            codecs = ("j2k", "av1")
        else:
            codecs = ("j2k",)
        if planned is not None and planned[0] in codecs and not coarse_both:
            codecs = (planned[0],)
        walked = []
        for codec in codecs:
            coded = {spatial: _GroupCoder(x, tile.dtype, mask, grid, bands, cells, fit, spatial, lam, codec)
                     for spatial, fit in fits.items()}
            # the full-resolution group's walk from the crop's own level for this codec is cut short
            # with effort "fast"; coarse groups walk on (their codings are 4-36x smaller, and the
            # crop's levels for them were the least reliable: +10-12 % J on a val tile at q3-q4)
            trusted = factor == 1 and planned is not None and planned[0] == codec
            tries = walk_tries(effort, lam) if trusted else WALK_TRIES
            if codec == "av1":
                scale = next(iter(coded.values())).av1_scale
                if tries < WALK_TRIES:       # the crop's quantizer step, in this tile's samples
                    start = av1_level_of_step(planned[2] / scale)
                else:
                    # the guess from the slope, not the crop's level: the crop's components often
                    # have another sample step, and the guess was closer on val tiles
                    start = av1_start_level(lam / _cell_weight((h, w), grid), scale)
            else:
                start = planned[1] if planned is not None and planned[0] == "j2k" else j2k_start
            lo, hi = (0, av1.LEVELS - 1) if codec == "av1" else (J2K_LEVEL_MIN, J2K_LEVEL_MAX)
            final_speed = av1.BEST_SPEED if effort == "best" else av1.SPEED
            if codec == "av1" and tries == 1:    # no walk: the one coding is the final one
                for one in coded.values():
                    one.results[start] = one.code_av1(start, final_speed)
                costs = {spatial: one.results[start][0] for spatial, one in coded.items()}
            else:
                costs = {spatial: one(start) for spatial, one in coded.items()}
            coder = coded[min(costs, key=costs.get)]
            # the first group's best level is usually 0-2 below the kind 1 level, and each group's
            # near the one before it; the walk goes on while the cost falls
            level, _ = _descend(coder, start, lo, hi, step=1, max_tries=tries)
            if codec == "av1" and tries > 1:
                coder.finish_av1(level, final_speed)
            # far from the start the other prediction may be the cheaper one (its side bits weigh
            # less at a finer level): it is tried there and walked on when it is
            for other in coded.values():
                if other is not coder and other(level) < coder.results[level][0]:
                    coder = other
                    level, _ = _descend(coder, level, lo, hi, step=1, max_tries=tries)
                    break
            walked.append((coder.results[level], codec, level, coder))
        best, codec, level, coder = min(walked, key=lambda item: item[0][0])
        # the next JPEG 2000 walk starts at this group's level, or above kind 1's after an AV1
        # group (coarse groups' levels are usually above the first group's)
        j2k_start = level if codec == "j2k" else int(np.clip(kind1_level + AV1_NEXT_J2K, J2K_LEVEL_MIN,
                                                             J2K_LEVEL_MAX))
        if levels is not None:
            levels.append((codec, level, av1.STEPS[level] * coder.av1_scale if codec == "av1" else None))
        if done:                                         # prediction alone may be cheaper
            alone = coder.alone()
            if alone[0] < best[0]:
                best = alone
        parts.append(best[1])
        decoded[bands] = coder.values(best[2])
        done += bands
    return b"".join(parts), decoded


def _cell_weight(size: tuple[int, int], grid) -> float:
    """The mean squared error on pixels per unit of squared error on a cell of ``grid``, for
    errors independent from cell to cell (the mean diagonals of the upsampling's Gram matrices):
    1 at full resolution, 1.56 for bilinear and 4 for nearest at factor 2."""
    if grid[0] == 1:
        return 1.0
    gram_y, gram_x = _grams(size, grid)
    return float(np.mean(gram_y[0]) * np.mean(gram_x[0]))


def av1_level_of_step(step: float) -> int:
    """The AV1 level whose quantizer step (av1.STEPS, in samples) is nearest ``step`` on a log scale."""
    return int(np.argmin(np.abs(np.log(np.asarray(av1.STEPS, float) / step))))


def av1_start_level(lam: float, scale: float) -> int:
    """Where an AV1 walk starts: the level whose quantizer step (av1.STEPS, in samples ``scale``
    times coarser than reflectance) is nearest AV1_STEP_PER_SLOPE x sqrt(``lam``) on a log scale.
    On 40 val tiles x qualities 1-8 the best level's step was 3.2 sqrt(lam) (median; spread of
    log2 0.23)."""
    return av1_level_of_step(AV1_STEP_PER_SLOPE * np.sqrt(lam) / scale)


def _grams(size: tuple[int, int], grid) -> tuple:
    factor, mode, py, px = grid
    return _gram_bands(size[0], factor, mode, py), _gram_bands(size[1], factor, mode, px)


def _prediction_cost(fit, cells: np.ndarray, grid, mask, size: tuple[int, int], lam: float) -> float:
    """A coarse group's prediction error (on the grid, as _GroupCoder compares codes; per cell
    times the factor squared with nodata) + lambda x its coefficients' bits."""
    e = fit.pred - cells
    sse = float(np.sum(e * e)) * grid[0] ** 2 if mask is not None else _grid_sse(e, *_grams(size, grid))
    return sse + lam * 8 * len(fit.side)


class _GroupCoder:
    """cost(level) of one group of a kind 4 tile, prediction fitted once: J = SSE + lam * bits of
    its body at OpenJPEG level ``level``; .results[level] = (J, body, decoded grid values).

    A coarse group without nodata compares its codes by the error of their grid values against
    the least-squares fit of its pixels on the grid: on pixels that error differs from the real
    one by the fit's own residual (the same for every code) and by rounding to integers (about
    the same), so the choice is the same at a fraction of the work (no upsampling per code)."""

    def __init__(self, x, dtype, mask, grid, bands, cells, fit, spatial, lam, codec="j2k"):
        from . import spectral
        from .tilecodec import j2k_components, rate_shift

        self.dtype, self.grid, self.bands, self.lam, self.codec = dtype, grid, bands, lam, codec
        self.size = x.shape[1:]
        # the group's pixels, and which count in SSE (nodata excluded), taken once for every level
        self.target = x[bands]
        self.valid = None if mask is None else ~mask[bands]
        if fit is None:                 # the first group: nothing to predict from
            fit = Prediction(b"", False, np.zeros_like(cells))
        self.pred, self.coded = fit.pred, fit.coded
        resid = cells - self.pred
        means, basis = spectral.fit_klt(resid.reshape(len(bands), -1))
        self.means, self.basis_q = spectral.quantize_means_f16(means), spectral.quantize_basis_int8(basis)
        self.comps, self.shift = j2k_components(spectral.forward(resid, self.means, self.basis_q), rate_shift(lam))
        self.av1_scale = 2.0 ** self.shift * av1.sample_step(self.comps)
        block_mask = _BLOCK_MASK.pack(spatial >> MASK_SHIFT) if spatial & SELECTED else b""
        self.side = block_mask + fit.side + self.means.astype("<f2").tobytes()
        self.spatial, self.shape = spatial, resid.shape
        # a coarse group without nodata measures its error on the grid (see _grid_sse), not on pixels
        self.on_grid = grid[0] > 1 and self.valid is None
        if self.on_grid:
            self.cells_fit, self.grams = cells, _grams(self.size, grid)
        self.results: dict[int, tuple[float, bytes, np.ndarray]] = {}

    def _finish(self, stream: bytes, comps: np.ndarray, r: np.ndarray, param: int):
        """``comps``: the decoded components (their all-zero ones need no basis column)."""
        factor, mode, py, px = self.grid
        if self.codec == "av1" and not param & NO_STREAM:
            mode |= AV1_STREAM
        if self.coded:
            mode |= CODED_COEF
        basis, sparse = basis_side(self.basis_q, comps)
        if sparse:
            mode |= SPARSE_BASIS
        body = _GROUP.pack(factor, mode, py, px, len(self.bands), (param | self.spatial) & 0xFF) + bytes(self.bands) \
            + self.side + basis + struct.pack("<I", len(stream)) + stream
        coarse = self.pred + r
        if self.on_grid:
            return _grid_sse(coarse - self.cells_fit, *self.grams) + self.lam * 8 * len(body), body, coarse
        vals = self.values(coarse)
        err = vals - self.target if self.valid is None else (vals - self.target)[self.valid]
        return float(np.sum(err * err)) + self.lam * 8 * len(body), body, coarse

    def values(self, coarse: np.ndarray) -> np.ndarray:
        """The group's decoded pixels from its decoded grid values (a result's third item)."""
        return _to_dtype(upsample(coarse, *self.size, self.grid), self.dtype)

    def __call__(self, level: int) -> float:
        from .tilecodec import j2k_stream

        if level not in self.results:
            if self.codec == "av1":
                self.results[level] = self.code_av1(level, av1.WALK_SPEED)
                return self.results[level][0]
            stream = j2k_stream(self.comps, level)
            comps = j2k_decode_checked(stream, self.shape, "kind 4 tile")
            r = component_values(comps, self.shift, self.means, self.basis_q)
            stored, bare = j2k_store(stream, self.shape)
            self.results[level] = self._finish(stored, comps, r, self.shift | bare)
        return self.results[level][0]

    def code_av1(self, level: int, speed: int):
        stored = av1.encode(self.comps, level, speed)
        comps = av1.decode(stored, self.shape)
        return self._finish(stored, comps, component_values(comps, self.shift, self.means, self.basis_q), self.shift)

    def finish_av1(self, level: int, speed: int = av1.SPEED):
        """Code ``level`` again at libaom ``speed`` (the walk used the fast av1.WALK_SPEED); keep the cheaper."""
        final = self.code_av1(level, speed)
        if final[0] < self.results[level][0]:
            self.results[level] = final

    def alone(self):
        """The group without codestream: the prediction plus the residual means."""
        no_components = np.zeros((len(self.bands), 1))       # nothing decoded: no basis column is kept
        return self._finish(b"", no_components, np.broadcast_to(self.means[:, None, None], self.shape), NO_STREAM)


def _parse_groups(body: bytes, count: int, h: int, w: int):
    """Validate a kind 4 body and yield its groups in coding order:
    (grid, bands, coef (n, feature_count), means, basis_q, param, codestream or None)."""
    if not body:
        raise TecFormatError("kind 4 tile truncated")
    n_groups, pos = body[0], 1
    done: list[int] = []
    for _ in range(n_groups):
        if len(body) < pos + _GROUP.size:
            raise TecFormatError("kind 4 tile truncated in a group header")
        factor, mode, py, px, n, param = _GROUP.unpack_from(body, pos)
        pos += _GROUP.size
        bands = list(body[pos:pos + n])
        pos += n
        codec_av1, coded, sparse = bool(mode & AV1_STREAM), bool(mode & CODED_COEF), bool(mode & SPARSE_BASIS)
        mode &= ~(AV1_STREAM | CODED_COEF | SPARSE_BASIS)
        if (not 1 <= factor <= 16 or mode not in MODES.values() or py >= factor or px >= factor
                or (codec_av1 and param & (NO_STREAM | BARE_J2K))
                or n == 0 or len(bands) != n or any(b >= count or b in done for b in bands)
                or param & ~(NO_STREAM | SHIFT_MASK | BARE_J2K | SPATIAL | SELECTED) or param & SHIFT_MASK > 8
                or (param & NO_STREAM and param & BARE_J2K) or (param & SPATIAL and not done)
                or (param & SELECTED and not param & SPATIAL) or (coded and not done)):
            raise TecFormatError(f"kind 4 tile has a bad group header (factor {factor}, mode {mode}, "
                                 f"phase {py},{px}, bands {bands}, param {param:#04x}, AV1 {codec_av1}, "
                                 f"coded coefficients {coded})")
        if param & SELECTED:
            if len(body) < pos + _BLOCK_MASK.size:
                raise TecFormatError("kind 4 tile truncated in a group's block mask")
            (block_mask,) = _BLOCK_MASK.unpack_from(body, pos)
            pos += _BLOCK_MASK.size
            if block_mask >> (len(done) + 1):
                raise TecFormatError(f"kind 4 group's block mask {block_mask:#06x} names more than "
                                     f"its {len(done)} earlier bands and the quadratic terms")
            param |= block_mask << MASK_SHIFT
        p = feature_count(len(done), param)
        if coded:
            if len(body) < pos + _COEF_HEAD.size:
                raise TecFormatError("kind 4 tile truncated in a group's coefficients")
            step, length = _COEF_HEAD.unpack_from(body, pos)
            pos += _COEF_HEAD.size
            if len(body) < pos + length:
                raise TecFormatError("kind 4 tile truncated in a group's coefficients")
            q = rice_decode(body[pos:pos + length], n * p).reshape(n, p)
            coef = decode_coefficients(q, step, coefficient_scales(len(done), param))
            pos += length
        else:
            if len(body) < pos + 2 * n * p:
                raise TecFormatError("kind 4 tile truncated in a group's coefficients")
            coef = np.frombuffer(body, "<f2", n * p, pos).astype(np.float64).reshape(n, p)
            pos += 2 * n * p
        if len(body) < pos + 2 * n:
            raise TecFormatError("kind 4 tile truncated in a group's side information")
        means = np.frombuffer(body, "<f2", n, pos).astype(np.float64)
        basis_q, pos = parse_basis(body, pos + 2 * n, n, sparse, "kind 4 group")
        if len(body) < pos + 4:
            raise TecFormatError("kind 4 tile truncated in a group's side information")
        (length,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if len(body) < pos + length:
            raise TecFormatError("kind 4 tile truncated in a codestream")
        if param & NO_STREAM and length:
            raise TecFormatError("kind 4 group without codestream has stream bytes")
        stream = None if param & NO_STREAM else body[pos:pos + length]
        if param & BARE_J2K:
            stream = j2k_dress(stream, _grid_shape(n, h, w, (factor, mode, py, px)))
        if codec_av1:
            stream = Av1Stream(stream)
        pos += length
        yield (factor, mode, py, px), bands, coef, means, basis_q, param, stream
        done += bands
    if sorted(done) != list(range(count)) or pos != len(body):
        raise TecFormatError("kind 4 tile does not code every band exactly once")


class Av1Stream(bytes):
    """A group's codestream that is an AV1 stream (group mode bit 7), not JPEG 2000."""


def _cells(stream, shape, param, means, basis_q) -> np.ndarray:
    """A group's decoded residual on its grid (``shape`` = (bands, cells_y, cells_x))."""
    if stream is None:
        return np.broadcast_to(means[:, None, None], shape)
    comps = av1.decode(stream, shape) if isinstance(stream, Av1Stream) else \
        j2k_decode_checked(stream, shape, "kind 4 tile")
    return component_values(comps, param & SHIFT_MASK, means, basis_q)


def _grid_shape(n, h, w, grid) -> tuple[int, int, int]:
    factor, mode, py, px = grid
    return n, len(_runs(h, factor, py, mode)[0]), len(_runs(w, factor, px, mode)[0])


def decode_groups(body: bytes, count: int, h: int, w: int, dtype) -> np.ndarray:
    """Body of a kind 4 tile -> (count, h, w) array of ``dtype``."""
    decoded = np.zeros((count, h, w), dtype)
    done: list[int] = []
    for grid, bands, coef, means, basis_q, param, stream in _parse_groups(body, count, h, w):
        shape = _grid_shape(len(bands), h, w, grid)
        resid = _cells(stream, shape, param, means, basis_q)
        pred = 0.0
        if done:
            feats = prediction_features(cell_means(decoded[done].astype(np.float64), grid), param)
            pred = (coef @ feats).reshape(shape)
        decoded[bands] = _to_dtype(upsample(pred + resid, h, w, grid), dtype)
        done += bands
    return decoded


@lru_cache(maxsize=256)
def _block_mean_matrix(n: int, f: int) -> np.ndarray:
    """(ceil(n / f), n): each row averages one block of f pixels (the last block may be shorter)."""
    rows = -(-n // f)
    m = np.zeros((rows, n))
    k = np.arange(n)
    m[k // f, k] = 1.0
    return m / m.sum(axis=1, keepdims=True)


@lru_cache(maxsize=256)
def _repeat_matrix(n: int, f: int) -> np.ndarray:
    """(n, ceil(n / f)): pixel k takes the value of its block k // f."""
    m = np.zeros((n, -(-n // f)))
    m[np.arange(n), np.arange(n) // f] = 1.0
    return m


def _banded(m: np.ndarray):
    """A matrix with few nonzeros per row -> (index, weight) arrays of shape (K, rows), K the most
    nonzeros in a row (short rows padded with weight 0)."""
    nz = m != 0
    k = int(nz.sum(axis=1).max())
    order = np.argsort(~nz, axis=1, kind="stable")[:, :k]      # the nonzero columns first, in order
    return order.T.copy(), np.take_along_axis(m, order, axis=1).T.copy()


@lru_cache(maxsize=512)
def _overview_taps(kind: str, n: int, f: int, grid_axis: tuple, to_axis: tuple | None):
    """Banded matrices of the reduced decode, along one axis of n pixels:
    ("out", ...): block means (1/f) of a band interpolated from its grid;
    ("feat", ...): cell means on grid ``to_axis`` of a band given on ``grid_axis``
    (grid (factor, phase, mode) per axis; factor 0 = given at 1/f, repeated over its blocks)."""
    factor, phase, mode = grid_axis
    source = _repeat_matrix(n, f) if factor == 0 else upsample_matrix(n, factor, phase, mode)
    left = _block_mean_matrix(n, f) if kind == "out" else cell_mean_matrix(n, to_axis[0], to_axis[1], to_axis[2])
    return _banded(left @ source)


def _apply_banded(x: np.ndarray, taps_y, taps_x) -> np.ndarray:
    """M_y @ x[b] @ M_x.T for every band, from the banded forms of M_y and M_x."""
    iy, wy = taps_y
    rows = sum(x[:, i, :] * w[:, None] for i, w in zip(iy, wy))
    ix, wx = taps_x
    return sum(rows[:, :, i] * w for i, w in zip(ix, wx))


def decode_groups_reduced(body: bytes, count: int, h: int, w: int, dtype, reduce: int) -> np.ndarray:
    """Body of a kind 4 tile -> (count, ceil(h / 2**reduce), ceil(w / 2**reduce)) float64 values,
    an overview that never works at full resolution.

    The full-resolution group's JPEG 2000 codestream is decoded at 1/2**reduce (low-pass moved to
    the block centres, as for kind 1 overviews; block means where it has fewer wavelet levels); an
    AV1 group is decoded in full and shown as block means. The
    coarse groups are decoded on their grids and shown as block means of their interpolation; their
    predictions use cell means of the earlier bands, with bands known at 1/2**reduce taken as
    constant over their blocks. So the overview is close to, not equal to, block means of the full decode. Falls back
    to exactly that where OpenJPEG's reduced decode is missing."""
    from . import openjpeg
    from .tilecodec import box_reduce, j2k_decode_reduced_checked, low_pass_to_blocks, reduced_size

    f = 1 << reduce
    if not openjpeg.available():
        return box_reduce(decode_groups(body, count, h, w, dtype).astype(np.float64), f)[0]
    out = np.zeros((count, reduced_size(h, reduce), reduced_size(w, reduce)))
    known: list[tuple] = []         # (bands, axis grids y, axis grids x, values) of decoded groups
    for grid, bands, coef, means, basis_q, param, stream in _parse_groups(body, count, h, w):
        factor, mode, py, px = grid
        if factor == 1 and stream is not None and not known and not isinstance(stream, Av1Stream):
            comps, r = j2k_decode_reduced_checked(stream, (len(bands), h, w), reduce, "kind 4 tile")
            low = low_pass_to_blocks(component_values(comps, param & SHIFT_MASK, means, basis_q), r)
            if r < reduce:
                low = box_reduce(low, 1 << (reduce - r))[0]
            out[bands] = low
            known.append((bands, (0, 0, 0), (0, 0, 0), low))
            continue
        gy, gx = (factor, py, mode), (factor, px, mode)
        shape = _grid_shape(len(bands), h, w, grid)
        cells = np.array(_cells(stream, shape, param, means, basis_q))
        if known:
            feats = prediction_features(np.concatenate([
                _apply_banded(v, _overview_taps("feat", h, f, ky, gy), _overview_taps("feat", w, f, kx, gx))
                for _, ky, kx, v in known]), param)
            cells += (coef @ feats).reshape(shape)
        out[bands] = _apply_banded(cells, _overview_taps("out", h, f, gy, None), _overview_taps("out", w, f, gx, None))
        known.append((bands, gy, gx, cells))
    return out
