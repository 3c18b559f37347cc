# SPDX-License-Identifier: Apache-2.0
"""Kind 5 tiles: a date of a time stack coded as the residual to a prediction from an earlier date.

Between dates of one place the layout persists (field edges, roads, shores) while the radiometry
moves (seasons, haze). Each band is predicted from the same band of the reference date's decoded
pixels as a linear map of three frequency bands of it (pixel - 3x3 mean, 3x3 mean - 9x9 mean,
9x9 mean - the tile's mean) plus a constant: one gain per frequency band lets the fine details
count less than the field pattern. The gains are fitted by least squares and stored as integers,
and the prediction is exact integer / float64 arithmetic, so every decoder computes the same
pixels. The residual (target - rounded prediction, int16) is coded by the classical tile coder
(kinds 1, 2 or 4) at the stack's rate-distortion slope; the stack encoder keeps this code for a
date only when its cost J = SSE + lambda * bits is below the date's other codes.

Pure numpy (no torch). Layout in docs/FORMAT.md ("kind 5").
"""
from __future__ import annotations

import struct

import numpy as np

from . import tilecodec
from .errors import TecFormatError
from .tilecodec import (COMMON_HEAD, KIND_CLASSICAL, KIND_LOSSLESS, KIND_MULTIRES, KIND_PREDICTED,
                        TILE_MAGIC, TileHeader, nodata_mask, pack_header, seal, unseal)

PREDICTOR = 1                      # the only predictor: the frequency bands below
BOXES = (3, 9)                     # mean filter sizes that split the reference into frequency bands
# The fine and mid gains are int8 in units of 2**-6 (range +-2), the coarse gain int16 in units of
# 2**-12 (range +-8): the coarse band carries the field pattern, thousands of units, the others tens
# to hundreds. The constant is stored relative to the reference band's mean (int16). 6 bytes a band
# instead of 10 for int16 gains and an int32 constant: on the 64 x 64 x 6 val stacks a date is
# 100-500 bytes at qualities 1-4.
SHIFTS = (6, 6, 12)
RESIDUAL_KINDS = (KIND_CLASSICAL, KIND_LOSSLESS, KIND_MULTIRES)
REFERENCE_KINDS = RESIDUAL_KINDS + (KIND_PREDICTED,)   # references decode without a model
_BODY = struct.Struct("<HBBB")     # dates back, predictor, residual kind, residual param
_BAND = struct.Struct("<bbhh")     # gains (fine, mid, coarse), constant - reference mean
_INT16 = np.iinfo(np.int16)


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k windows (mirrored edges) of an int64 image: exact sums, then one division."""
    r = k // 2
    p = np.pad(x, r, mode="symmetric")
    c = np.zeros((p.shape[0] + 1, p.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(p, axis=0), axis=1, out=c[1:, 1:])
    h, w = x.shape
    s = c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]
    return s / float(k * k)


def features(ref_band: np.ndarray) -> tuple[np.ndarray, int]:
    """(3, h, w) float64 frequency bands of one decoded reference band, and its rounded mean."""
    r = ref_band.astype(np.int64)
    fine, coarse = (_box_mean(r, k) for k in BOXES)
    mean = int(np.rint(r.sum() / r.size))
    return np.stack([r - fine, fine - coarse, coarse - float(mean)]), mean


def predict(ref: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """Rounded int64 prediction (bands, h, w) from the decoded reference and (bands, 4) integer
    coefficients (3 gains in units of 2**-SHIFTS, the constant relative to the band's mean)."""
    out = np.empty(ref.shape, np.int64)
    scales = [float(2 ** s) for s in SHIFTS]
    for b in range(ref.shape[0]):
        f, mean = features(ref[b])
        p = (f[0] * (coefs[b, 0] / scales[0]) + f[1] * (coefs[b, 1] / scales[1])) + f[2] * (coefs[b, 2] / scales[2])
        out[b] = np.rint(p + float(coefs[b, 3] + mean))
    return out


_LIMITS = (np.iinfo(np.int8).max, np.iinfo(np.int8).max, _INT16.max)


def fit(ref: np.ndarray, target: np.ndarray,
        valid: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Least-squares integer coefficients (bands, 4) predicting ``target`` from ``ref`` over the
    ``valid`` pixels (bands, h, w; all when None), the SSE of that (rounded) prediction there and
    the prediction; None when a band has no valid pixel or a constant does not fit its int16."""
    coefs = np.zeros((target.shape[0], 4), np.int64)
    scales = np.array([2.0 ** s for s in SHIFTS])
    for b in range(target.shape[0]):
        f, mean = features(ref[b])
        f = f.reshape(3, -1)
        y = target[b].reshape(-1).astype(np.float64)
        if valid is not None:
            keep = valid[b].reshape(-1)
            if not keep.any():
                return None
            f, y = f[:, keep], y[keep]
        gains = np.linalg.lstsq(np.vstack([f, np.ones(f.shape[1])]).T, y, rcond=None)[0][:3]
        coefs[b, :3] = np.clip(np.rint(gains * scales), [-v for v in _LIMITS], _LIMITS)
        rest = y - (f.T @ (coefs[b, :3] / scales))
        coefs[b, 3] = int(np.rint(rest.mean())) - mean
        if not _INT16.min <= coefs[b, 3] <= _INT16.max:
            return None
    prediction = predict(ref, coefs)
    diff = (target.astype(np.int64) - prediction).astype(np.float64)
    if valid is not None:
        diff = diff[valid]
    return coefs, float(np.sum(diff ** 2)), prediction


def fit_valid(tile: np.ndarray, nodata, ref: np.ndarray) -> np.ndarray | None:
    """Pixels to fit on: valid in the tile and in the reference (decoders keep valid pixels off the
    nodata value, so a decoded pixel equal to it is nodata); None when all are."""
    if nodata is None:
        return None
    value = np.asarray(nodata).astype(tile.dtype)
    valid = (tile != value) & (ref != value)
    return None if valid.all() else valid


def encode(tile: np.ndarray, nodata, ref: np.ndarray, back: int, lam: float, fitted: tuple | None = None,
           effort: str | None = None) -> tuple[bytes, float, np.ndarray] | None:
    """Code ``tile`` as kind 5 against ``ref``, the decoded pixels of the date ``back`` dates
    earlier, with ``fitted`` = (coefficients, _, their prediction) (:func:`fit`'s, fitted here when
    None). Nodata pixels go in the tile header's mask (the residual there is 0). -> (payload, J,
    decoded pixels), or None when the coefficients or the residual do not fit their integers."""
    mask = nodata_mask(tile, nodata)
    if fitted is None:
        fitted = fit(ref, tile, fit_valid(tile, nodata, ref))
        if fitted is None:
            return None
    coefs, _, prediction = fitted
    residual = tile.astype(np.int64) - prediction
    if mask is not None:
        residual[mask] = 0
    if residual.min() < _INT16.min or residual.max() > _INT16.max:
        return None
    sealed, _ = tilecodec.encode_classical(residual.astype(np.int16), None, lam, effort=effort)
    inner = unseal(sealed)
    head = TileHeader(inner)
    body = (_BODY.pack(back, PREDICTOR, head.kind, head.param)
            + b"".join(_BAND.pack(*(int(v) for v in c)) for c in coefs) + inner[head.body:])
    payload = seal(pack_header(KIND_PREDICTED, tile, nodata, mask) + body)
    # the decoder rebuilds the residual's header as it was (int16, no nodata), so this is its output
    decoded = _reconstruct(prediction, tilecodec.decode_tile(sealed), TileHeader(unseal(payload)))
    return payload, tilecodec.rd_cost(tile, decoded, mask, len(payload), lam), decoded


def _reconstruct(prediction: np.ndarray, residual: np.ndarray, head: TileHeader) -> np.ndarray:
    info = np.iinfo(head.dtype)
    out = np.clip(prediction + residual, info.min, info.max).astype(head.dtype)
    return tilecodec.restore_nodata(out, head)


def reference(payload: bytes) -> int:
    """Dates back to the reference of a kind 5 payload (CRC checked)."""
    raw = unseal(payload)
    head = TileHeader(raw)
    if head.kind != KIND_PREDICTED or len(raw) < head.body + _BODY.size:
        raise TecFormatError("not a kind 5 (predicted) tile, or truncated")
    back = _BODY.unpack_from(raw, head.body)[0]
    if back < 1:
        raise TecFormatError(f"predicted tile references {back} dates back")
    return back


def decode(payload: bytes, ref: np.ndarray) -> np.ndarray:
    """Pixels of a kind 5 payload, given its reference date's decoded pixels (bands, h, w)."""
    raw = unseal(payload)
    head = TileHeader(raw)
    n = head.count
    pos = head.body
    if len(raw) < pos + _BODY.size + n * _BAND.size:
        raise TecFormatError("predicted tile truncated in its prediction coefficients")
    _, predictor, kind, param = _BODY.unpack_from(raw, pos)
    if predictor != PREDICTOR or kind not in RESIDUAL_KINDS:
        raise TecFormatError(f"predicted tile has an unknown predictor {predictor} or residual kind {kind}")
    if ref.shape != head.shape:
        raise TecFormatError(f"predicted tile of shape {head.shape} references a tile of shape {ref.shape}")
    pos += _BODY.size
    coefs = np.array([_BAND.unpack_from(raw, pos + b * _BAND.size) for b in range(n)], np.int64)
    pos += n * _BAND.size
    inner = COMMON_HEAD.pack(TILE_MAGIC, kind, tilecodec.dtype_code(np.int16), n, param, head.height,
                             head.width, 0, float("nan"), 0) + raw[pos:]
    return _reconstruct(predict(ref, coefs), tilecodec.decode_tile(seal(inner)), head)
