# SPDX-License-Identifier: Apache-2.0
"""Classical anchor codecs for the rate-distortion benchmark (imagecodecs: OpenJPEG, libjxl).

Every anchor is a true round trip: ``encode(array, param) -> bytes`` returns a self-contained byte
string (all side information included) and ``decode(bytes) -> array`` rebuilds a (bands, H, W) int16
array from those bytes alone. The benchmark counts ``len(bytes)`` and measures the error on the
decoded pixels.

Anchors
-------
``jpeg2000``
    Intra-band JPEG 2000 (OpenJPEG): all bands in ONE raw J2K codestream (no JP2 box), one component per
    band, no multi-component transform (``mct=False``), 16-bit signed components (OpenJPEG codes
    signed int16 natively, so negative reflectances need no offset), irreversible 9/7 wavelet.
    ``param`` is imagecodecs' ``level``, which OpenJPEG uses as a fixed-quality target: the PSNR in dB
    of the whole codestream with the 16-bit peak 65535, i.e. a total squared-error target, reached by
    one rate-distortion slope over all code blocks of all bands (bands share the bit budget
    optimally). PSNR_10000 is about ``level - 16.5`` dB. One codestream shares the main header between
    bands (per-band codestreams cost ~100-200 extra bytes each, which dominates on 64x64 chips).
    The codestream carries band count, size and precision, so there is no further side info.
``jpeg2000_klt``
    Per image: band means and covariance (float64, valid pixels), KLT = eigenvectors of the covariance
    (descending eigenvalue). Stored: 4-byte header (version, band count, scale exponent), means
    float32[B] and the matrix float32[B, B] (4 B + 4 B^2 bytes, e.g. 624 bytes for 12 bands, all in the
    rate), followed by one J2K codestream of the B components. The encoder uses the float32-rounded
    means/matrix, so encoder and decoder agree. Components stay in reflectance units (x 10000) and are
    rounded to int16 (step 1, quantization noise ~110 dB PSNR_10000, never the bottleneck); when a
    component would leave the int16 range, all components are divided by 2^k (k stored) and the level
    is raised by 20 log10(2^k) so the distortion target in reflectance units stays the same.
    Rate allocation: the KLT is orthonormal, so squared error in the component domain equals squared
    error in the band domain; the same ``level`` as ``jpeg2000`` means the same total squared-error
    target, and OpenJPEG's PCRD-opt reaches it with one slope over all components' code blocks (the
    optimal allocation across components, including giving nothing to components below the noise
    level). Decoding: inverse KLT (transpose) in float64, + means, round, clip to int16.
``jpegxl``
    libjxl per band as a 16-bit grayscale image (lossy VarDCT); negative values are shifted by a
    per-band offset stored as uint16. ``param`` is the Butteraugli ``distance`` (lower = better);
    effort 7 (libjxl default). Byte string: version, band count, then per band uint16 offset + uint32
    length, then the band codestreams. (libjxl's multi-channel path codes extra channels with the
    modular coder and does not reach low rates, so it is not used.)

Nodata: when the caller passes ``nodata``, band-pixels equal to it are replaced by the band mean of the
valid pixels before coding (they carry no information; the benchmark measures valid pixels only) and
are excluded from the KLT statistics. The anchors do not store a nodata mask.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import struct
import sys
import threading

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Anchor", "ANCHORS", "get_anchor", "available_anchors"]


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:                                        # pragma: no cover
        return None
    return imagecodecs


_LOAD_LOCK = threading.Lock()
_LOADED: dict = {}


def codec_module(name: str):
    """imagecodecs' extension module ``name`` ("_jpeg2k", "_avif"), loaded so that it calls the
    codec libraries bundled with it.

    In a process that loaded other copies of those libraries first (gdal_translate and QGIS link
    Debian's libaom and OpenJPEG through libgdal), the dynamic linker would resolve the module's
    codec calls to those, and the encoders could write other bytes than in a plain Python process.
    RTLD_DEEPBIND (glibc; ignored where it does not exist) makes the module and its libraries look
    up their own symbols first."""
    module = _LOADED.get(name)          # only modules whose import has finished (tiles decode in threads)
    if module is not None:
        return module
    import imagecodecs  # noqa: F401  (the package itself without the flag)

    with _LOAD_LOCK:
        if name not in _LOADED:
            flags = sys.getdlopenflags()
            try:
                sys.setdlopenflags(flags | getattr(os, "RTLD_DEEPBIND", 0))
                _LOADED[name] = importlib.import_module(f"imagecodecs.{name}")
            finally:
                sys.setdlopenflags(flags)
        return _LOADED[name]


def _as_bands(array) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected (bands, H, W), got shape {a.shape}")
    if a.dtype != np.int16:
        if not np.issubdtype(a.dtype, np.integer) or a.min() < -32768 or a.max() > 32767:
            raise ValueError(f"anchors code int16 data, got {a.dtype} with range {a.min()}..{a.max()}")
        a = a.astype(np.int16)
    return a


def _fill_nodata(a: np.ndarray, nodata) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (array with nodata band-pixels replaced by the band's valid mean, valid mask or None)."""
    if nodata is None:
        return a, None
    nd = np.asarray(nodata).astype(a.dtype)
    invalid = a == nd
    if not invalid.any():
        return a, None
    out = a.copy()
    for b in range(a.shape[0]):
        inv = invalid[b]
        if inv.any():
            ok = ~inv
            fill = int(round(float(a[b][ok].mean()))) if ok.any() else 0
            out[b][inv] = fill
    return out, ~invalid


# -- JPEG 2000 ------------------------------------------------------------------------------------------
def _j2k_encode(comps: np.ndarray, level: float, threads: int) -> bytes:
    ic = codec_module("_jpeg2k")
    data = np.ascontiguousarray(comps[0] if comps.shape[0] == 1 else comps)
    kw = {} if comps.shape[0] == 1 else {"planar": True}
    return bytes(ic.jpeg2k_encode(data, level=float(level), codecformat="J2K", mct=False,
                                  reversible=False, numthreads=threads, **kw))


def _j2k_decode(data, threads: int) -> np.ndarray:
    ic = codec_module("_jpeg2k")
    out = ic.jpeg2k_decode(bytes(data), planar=True, numthreads=threads)
    return out[None] if out.ndim == 2 else out


def j2k_encode(array, level: float, *, nodata=None, threads: int = 1) -> bytes:
    a, _ = _fill_nodata(_as_bands(array), nodata)
    return _j2k_encode(a, level, threads)


def j2k_decode(data, *, threads: int = 1) -> np.ndarray:
    out = _j2k_decode(data, threads)
    if out.dtype != np.int16:                                  # signed 16-bit codestreams decode as int16
        out = np.clip(out, -32768, 32767).astype(np.int16)
    return out


# -- JPEG 2000 + KLT ------------------------------------------------------------------------------------
_KLT_HEAD = struct.Struct("<BBbx")          # version, bands, scale exponent k, pad
_KLT_VERSION = 1


def klt_basis(a: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (means float64 [B], eigenvectors float64 [B, B], columns by descending eigenvalue)."""
    B = a.shape[0]
    x = a.reshape(B, -1).astype(np.float64)
    if valid is not None:
        keep = valid.reshape(B, -1).all(axis=0)
        if keep.any():
            x = x[:, keep]
    mu = x.mean(axis=1)
    xc = x - mu[:, None]
    cov = xc @ xc.T / max(x.shape[1], 1)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    v = v[:, order]
    # deterministic sign: largest-magnitude entry of each eigenvector positive
    idx = np.argmax(np.abs(v), axis=0)
    v = v * np.sign(v[idx, np.arange(B)])
    return mu, v


def klt_encode(array, level: float, *, nodata=None, threads: int = 1) -> bytes:
    a0 = _as_bands(array)
    a, valid = _fill_nodata(a0, nodata)
    B, H, W = a.shape
    mu, v = klt_basis(a, valid)
    mu32 = mu.astype(np.float32)
    v32 = v.astype(np.float32)
    y = v32.astype(np.float64).T @ (a.reshape(B, -1).astype(np.float64) - mu32.astype(np.float64)[:, None])
    peak = float(np.abs(y).max()) if y.size else 0.0
    k = 0
    while peak / (1 << k) > 32767.0:
        k += 1
    q = np.rint(y / (1 << k)).astype(np.int16).reshape(B, H, W)
    stream = _j2k_encode(q, level + 20.0 * math.log10(1 << k), threads)
    return _KLT_HEAD.pack(_KLT_VERSION, B, k) + mu32.tobytes() + v32.tobytes() + stream


def klt_decode(data, *, threads: int = 1) -> np.ndarray:
    data = bytes(data)
    version, B, k = _KLT_HEAD.unpack_from(data, 0)
    if version != _KLT_VERSION:
        raise ValueError(f"jpeg2000_klt: unknown version {version}")
    off = _KLT_HEAD.size
    mu = np.frombuffer(data, np.float32, B, off).astype(np.float64)
    off += 4 * B
    v = np.frombuffer(data, np.float32, B * B, off).reshape(B, B).astype(np.float64)
    off += 4 * B * B
    q = _j2k_decode(data[off:], threads)
    if q.shape[0] != B:
        raise ValueError(f"jpeg2000_klt: header says {B} bands, codestream has {q.shape[0]}")
    _, H, W = q.shape
    y = q.reshape(B, -1).astype(np.float64) * float(1 << k)
    x = v @ y + mu[:, None]
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16).reshape(B, H, W)


# -- JPEG XL --------------------------------------------------------------------------------------------
_JXL_HEAD = struct.Struct("<BB")            # version, bands
_JXL_BAND = struct.Struct("<HI")            # offset added before coding, codestream length
_JXL_VERSION = 1
JXL_EFFORT = 7


def jxl_encode(array, distance: float, *, nodata=None, threads: int = 1) -> bytes:
    ic = _imagecodecs()
    a, _ = _fill_nodata(_as_bands(array), nodata)
    heads, streams = [], []
    for band in a:
        lo = int(band.min())
        offset = -lo if lo < 0 else 0
        u = (band.astype(np.int32) + offset).astype(np.uint16)
        s = bytes(ic.jpegxl_encode(np.ascontiguousarray(u), distance=float(distance), effort=JXL_EFFORT,
                                   numthreads=threads))
        heads.append(_JXL_BAND.pack(offset, len(s)))
        streams.append(s)
    return _JXL_HEAD.pack(_JXL_VERSION, a.shape[0]) + b"".join(heads) + b"".join(streams)


def jxl_decode(data, *, threads: int = 1) -> np.ndarray:
    ic = _imagecodecs()
    data = bytes(data)
    version, B = _JXL_HEAD.unpack_from(data, 0)
    if version != _JXL_VERSION:
        raise ValueError(f"jpegxl: unknown version {version}")
    off = _JXL_HEAD.size
    heads = [_JXL_BAND.unpack_from(data, off + i * _JXL_BAND.size) for i in range(B)]
    off += B * _JXL_BAND.size
    bands = []
    for offset, n in heads:
        d = ic.jpegxl_decode(data[off:off + n], numthreads=threads)
        off += n
        if d.ndim == 3:
            d = d[..., 0]
        bands.append(np.clip(d.astype(np.int32) - offset, -32768, 32767).astype(np.int16))
    return np.stack(bands)


# -- registry -------------------------------------------------------------------------------------------
class Anchor:
    """A classical codec: ``encode(array, param, nodata=None, threads=1) -> bytes``, ``decode(bytes)``."""

    def __init__(self, name, label, param_name, params, encode, decode, feature, higher_is_better):
        self.name = name
        self.label = label
        self.param_name = param_name
        self.params = tuple(params)              # default sweep, roughly 30-60 dB PSNR_10000
        self._encode = encode
        self._decode = decode
        self.feature = feature                   # imagecodecs feature class name (JPEG2K, JPEGXL)
        self.higher_is_better = higher_is_better

    def available(self) -> tuple[bool, str]:
        ic = _imagecodecs()
        if ic is None:
            return False, "imagecodecs is not installed (pip install 'terracodec[bench]')"
        feat = getattr(ic, self.feature, None)
        if feat is None or not getattr(feat, "available", False):
            return False, f"imagecodecs {ic.__version__} was built without {self.feature}"
        return True, ""

    def encode(self, array, param, *, nodata=None, threads: int = 1) -> bytes:
        return self._encode(array, param, nodata=nodata, threads=threads)

    def decode(self, data, *, threads: int = 1) -> np.ndarray:
        return self._decode(data, threads=threads)

    def __repr__(self):
        return f"Anchor({self.name!r})"


# OpenJPEG level = PSNR target with peak 65535: PSNR_10000 ~ level - 16.5
J2K_LEVELS = (46, 49, 52, 54, 56, 58, 60, 62, 64, 66, 68, 70, 72, 75, 78)
# Butteraugli distances (libjxl allows up to 25), about 34-65 dB PSNR_10000 on S2 L2A
JXL_DISTANCES = (0.08, 0.12, 0.18, 0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 4.5, 7.0, 11.0, 16.0, 25.0)

ANCHORS = {
    "jpeg2000": Anchor("jpeg2000", "JPEG 2000 (per band)", "level", J2K_LEVELS, j2k_encode, j2k_decode,
                       "JPEG2K", True),
    "jpeg2000_klt": Anchor("jpeg2000_klt", "JPEG 2000 + KLT", "level", J2K_LEVELS, klt_encode, klt_decode,
                           "JPEG2K", True),
    "jpegxl": Anchor("jpegxl", "JPEG XL (per band)", "distance", JXL_DISTANCES, jxl_encode, jxl_decode,
                     "JPEGXL", False),
}


def get_anchor(name: str) -> Anchor:
    try:
        return ANCHORS[name]
    except KeyError:
        raise ValueError(f"unknown anchor {name!r}; known: {', '.join(ANCHORS)}") from None


def available_anchors(names=None) -> list[Anchor]:
    """The requested anchors that work here; the others are logged (warning) with the reason."""
    out = []
    for name in names if names is not None else ANCHORS:
        anchor = get_anchor(name)
        ok, why = anchor.available()
        if ok:
            out.append(anchor)
        else:
            log.warning("skipping anchor %s: %s", name, why)
    return out
