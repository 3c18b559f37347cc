# SPDX-License-Identifier: Apache-2.0
"""One tile <-> one self-describing payload. Shared by the .tec container and the numcodecs codec.

Payload layout (little-endian):

    0   4  magic b"TECT"
    4   1  u8  kind (0 learned, 1 classical fallback, 2 lossless)
    5   1  u8  dtype code (1 uint8, 2 int16, 3 uint16)
    6   1  u8  band count
    7   1  u8  reserved
    8   2  u16 height
    10  2  u16 width
    12  1  u8  nodata mask mode (0 none, 1 one mask for all bands, 2 one mask per band)
    13  8  f64 nodata value (NaN when mode 0)
    21  4  u32 mask length, then zlib(packbits(mask))
    ..     kind-specific body
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from .errors import TecFormatError, TecInputError

TILE_MAGIC = b"TECT"
KIND_LEARNED, KIND_CLASSICAL, KIND_LOSSLESS = 0, 1, 2
DTYPE_CODES = {np.dtype("uint8"): 1, np.dtype("int16"): 2, np.dtype("uint16"): 3}
DTYPES_BY_CODE = {v: k for k, v in DTYPE_CODES.items()}
_HEAD = struct.Struct("<4sBBBBHHBdI")


def dtype_code(dtype) -> int:
    try:
        return DTYPE_CODES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TecInputError(
            f"unsupported dtype {dtype}; TEC codes {', '.join(str(d) for d in DTYPE_CODES)}") from None


def nodata_mask(tile: np.ndarray, nodata) -> np.ndarray | None:
    """(bands, h, w) bool mask of nodata pixels, or None when there are none."""
    if nodata is None:
        return None
    mask = tile == np.asarray(nodata).astype(tile.dtype)
    return mask if mask.any() else None


def pack_header(kind: int, tile: np.ndarray, nodata, mask: np.ndarray | None) -> bytes:
    count, height, width = tile.shape
    if mask is None:
        mode, blob = 0, b""
    elif (mask == mask[:1]).all():
        mode, blob = 1, zlib.compress(np.packbits(mask[0]).tobytes(), 9)
    else:
        mode, blob = 2, zlib.compress(np.packbits(mask).tobytes(), 9)
    value = float(nodata) if mode else float("nan")
    return _HEAD.pack(TILE_MAGIC, kind, dtype_code(tile.dtype), count, 0, height, width,
                      mode, value, len(blob)) + blob


class TileHeader:
    """Fields of a payload's common header; ``body`` is the offset of the kind-specific part."""

    def __init__(self, payload: bytes):
        if len(payload) < _HEAD.size:
            raise TecFormatError(f"tile payload too short ({len(payload)} bytes)")
        (magic, self.kind, code, self.count, _, self.height, self.width, mode, value,
         mask_len) = _HEAD.unpack_from(payload)
        if magic != TILE_MAGIC:
            raise TecFormatError("not a TEC tile payload (bad tile magic)")
        if code not in DTYPES_BY_CODE or self.kind not in (KIND_LEARNED, KIND_CLASSICAL, KIND_LOSSLESS):
            raise TecFormatError(f"bad tile header (kind {self.kind}, dtype code {code})")
        self.dtype = DTYPES_BY_CODE[code]
        end = _HEAD.size + mask_len
        if end > len(payload):
            raise TecFormatError("tile payload truncated inside its nodata mask")
        self.nodata = value if mode else None
        self.mask = None
        if mode:
            try:
                bits = np.frombuffer(zlib.decompress(payload[_HEAD.size:end]), np.uint8)
            except zlib.error as exc:
                raise TecFormatError(f"corrupt nodata mask: {exc}") from None
            planes = 1 if mode == 1 else self.count
            n = planes * self.height * self.width
            if bits.size * 8 < n:
                raise TecFormatError("nodata mask too short")
            mask = np.unpackbits(bits, count=n).astype(bool).reshape(planes, self.height, self.width)
            self.mask = np.broadcast_to(mask, (self.count, self.height, self.width))
        self.body = end

    @property
    def shape(self):
        return (self.count, self.height, self.width)


def restore_nodata(decoded: np.ndarray, head: TileHeader) -> np.ndarray:
    """Put nodata back exactly and keep valid pixels from colliding with the nodata value."""
    if head.mask is None:
        return decoded
    nodata = np.asarray(head.nodata).astype(decoded.dtype)
    info = np.iinfo(decoded.dtype)
    bump = nodata + 1 if nodata < info.max else nodata - 1
    decoded = np.where((decoded == nodata) & ~head.mask, bump, decoded)
    return np.where(head.mask, nodata, decoded).astype(decoded.dtype)


def encode_lossless(tile: np.ndarray, nodata=None) -> bytes:
    mask = nodata_mask(tile, nodata)
    body = zlib.compress(np.ascontiguousarray(tile).astype(tile.dtype.newbyteorder("<")).tobytes(), 6)
    return pack_header(KIND_LOSSLESS, tile, nodata, mask) + body


def decode_lossless(payload: bytes, head: TileHeader) -> np.ndarray:
    try:
        raw = zlib.decompress(payload[head.body:])
    except zlib.error as exc:
        raise TecFormatError(f"corrupt lossless tile: {exc}") from None
    expected = head.count * head.height * head.width * head.dtype.itemsize
    if len(raw) != expected:
        raise TecFormatError(f"lossless tile has {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, head.dtype.newbyteorder("<")).astype(head.dtype).reshape(head.shape)


def encode_tile(tile: np.ndarray, *, quality: int = 5, model: str | None = None, nodata=None,
                lossless: bool = False) -> tuple[bytes, int]:
    """Code one (bands, h, w) tile; returns (payload, kind).

    TODO(core): the learned path (kind 0, with closed-loop floor check and classical fallback)
    replaces this lossless-only body.
    """
    return encode_lossless(tile, nodata), KIND_LOSSLESS


def decode_tile(payload: bytes) -> np.ndarray:
    """Decode a payload made by :func:`encode_tile` to a (bands, h, w) array of its dtype."""
    head = TileHeader(payload)
    if head.kind == KIND_LOSSLESS:
        out = decode_lossless(payload, head)
    else:
        raise TecFormatError(f"tile kind {head.kind} not supported by this build")
    return restore_nodata(out, head)
