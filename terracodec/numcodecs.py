# SPDX-License-Identifier: Apache-2.0
"""``TerraCodec``: the TEC tile codec as a numcodecs codec (zarr v2 format, numcodecs users, and the
engine behind the zarr v3 codec in :mod:`terracodec.zarr_codec`).

    import numcodecs
    from terracodec.numcodecs import TerraCodec

    codec = TerraCodec(quality=6)                 # or numcodecs.get_codec({"id": "terracodec", "quality": 6})
    payload = codec.encode(chunk)                 # chunk: (bands, y, x) or (time, bands, y, x) int16/uint16/uint8
    back = codec.decode(payload)                  # same shape and dtype

zarr, v2 format (zarr-python 2.x and 3.x hand the compressor the chunk as an array with its shape)::

    zarr.create_array(store, shape=(12, 2048, 2048), chunks=(12, 512, 512), dtype="int16",
                      zarr_format=2, compressor=TerraCodec(quality=6))

zarr, v3 format: use :class:`terracodec.zarr_codec.TerraCodecV3` as the array->bytes codec
(``serializer=``, ``compressors=None``).

Chunk payload. A (bands, y, x) chunk is stored as exactly one TEC tile payload
(:mod:`terracodec.tilecodec`, magic ``TECT``): self-describing (dtype, band count, height, width,
nodata mask) and CRC32-checked, the same bytes a ``.tec`` file holds for a tile. A chunk split into
several tiles (``tile_size`` smaller than the chunk, or a time stack) is a small frame around such
payloads, and nothing else::

    0  4  magic b"TECZ"     4  1  u8 frame version (1)     5  1  u8 ndim of the chunk (3 or 4)
    6  2  reserved (0)      8  4  u32 time count (1 for a 3-D chunk)
    12 4  u32 bands        16  4  u32 height      20  4  u32 width
    24 4  u32 tile size (0: one tile per date)     28  4  u32 n payloads (time x tile rows x tile cols)
    32 4n u32 payload lengths                      ..  4  u32 CRC32 of the frame header before it
    ..    the n tile payloads, time-major, then tile rows, then tile columns

Time stacks: TEC-TT, the temporal model, does not exist yet, so a (time, bands, y, x) chunk is coded
date by date with the image model (:meth:`TerraCodec._encode_dates` / :meth:`TerraCodec._decode_dates`
are the one place to swap in TEC-TT; its payloads would get a new frame version, and version-1
chunks stay readable).

Config (keyword-only, JSON-serialisable): ``quality`` 1..8 (ignored by ``model="lossless"``),
``model`` (a model name from ``weights/manifest.json``, None = the default learned model, or
``"lossless"``), ``bands`` (Sentinel-2 band names of the chunk's band axis; None = the default for
the band count, which exists for 4, 10, 12 and 13 bands), ``nodata`` (an integer value restored
exactly), ``tile_size`` (None: one tile per chunk/date; else tiles of at most that many pixels a side,
which bounds the encoder's memory for big chunks).

Errors are terracodec's (:mod:`terracodec.errors`, all ValueError/RuntimeError subclasses): a
wrong dtype or shape -> TecInputError, band trouble -> TecBandError, a corrupt chunk ->
TecFormatError / TecChecksumError, a well-formed chunk that cannot be decoded -> TecDecodeError.
numcodecs does not tell a codec which chunk it is coding, so messages name the chunk by what the codec
sees (shape, dtype, byte count, the header's shape); :class:`terracodec.zarr_codec.TerraCodecV3` adds
the chunk key when zarr v3 reads through it. Nothing is ever zero-filled: a chunk decodes completely or
raises.
"""
from __future__ import annotations

import math
import struct
import zlib
from numbers import Integral

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_bytes, ndarray_copy

from . import tilecodec
from .bands import normalize_band_name, resolve_bands
from .errors import (TecBandError, TecChecksumError, TecDecodeError, TecError, TecFormatError,
                     TecInputError)

__all__ = ["TerraCodec", "LOSSLESS_MODEL", "FRAME_MAGIC"]

LOSSLESS_MODEL = "lossless"
FRAME_MAGIC = b"TECZ"
FRAME_VERSION = 1
SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("int16"), np.dtype("uint16"))
MIN_TILE_SIZE, MAX_TILE_SIZE = 16, 65535
_FRAME_HEAD = struct.Struct("<4sBBHIIIIII")


def _check_config(quality, model, bands, nodata, tile_size):
    if isinstance(quality, bool) or not isinstance(quality, Integral) or not 1 <= int(quality) <= 8:
        raise TecInputError(f"TerraCodec: quality must be an integer 1..8, got {quality!r}")
    if model is not None and not isinstance(model, str):
        raise TecInputError(f"TerraCodec: model must be a model name (str) or None, got {model!r}")
    if bands is not None:
        if isinstance(bands, str):
            bands = [b for b in bands.split(",") if b.strip()]
        bands = [normalize_band_name(b) for b in bands]
        if not bands:
            raise TecBandError("TerraCodec: bands=[] names no band; give the chunk's band names or None")
        if len(set(bands)) != len(bands):
            raise TecBandError(f"TerraCodec: duplicate band names in {bands}")
    if nodata is not None:
        try:
            value = float(nodata)
        except (TypeError, ValueError):
            raise TecInputError(f"TerraCodec: nodata must be an integer, got {nodata!r}") from None
        if math.isnan(value) or not value.is_integer():
            raise TecInputError(f"TerraCodec: nodata must be an integer value (TEC codes integer "
                                f"rasters), got {nodata!r}")
        nodata = int(value)
    if tile_size is not None:
        if isinstance(tile_size, bool) or not isinstance(tile_size, Integral) \
                or not MIN_TILE_SIZE <= int(tile_size) <= MAX_TILE_SIZE:
            raise TecInputError(f"TerraCodec: tile_size must be None or an integer "
                                f"{MIN_TILE_SIZE}..{MAX_TILE_SIZE}, got {tile_size!r}")
        tile_size = int(tile_size)
    return int(quality), model, bands, nodata, tile_size


class TerraCodec(Codec):
    """TEC learned codec for (bands, y, x) and (time, bands, y, x) chunks; see the module docstring."""

    codec_id = "terracodec"

    def __init__(self, *, quality: int = 5, model: str | None = None, bands=None, nodata=None,
                 tile_size: int | None = None):
        (self.quality, self.model, self.bands, self.nodata,
         self.tile_size) = _check_config(quality, model, bands, nodata, tile_size)

    # -- config --------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"id": self.codec_id, "quality": self.quality, "model": self.model,
                "bands": None if self.bands is None else list(self.bands), "nodata": self.nodata,
                "tile_size": self.tile_size}

    @classmethod
    def from_config(cls, config: dict) -> "TerraCodec":
        config = dict(config)
        config.pop("id", None)
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"TerraCodec({args})"

    def __eq__(self, other) -> bool:
        return isinstance(other, TerraCodec) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))

    # -- numcodecs API -------------------------------------------------------------------------------
    def encode(self, buf) -> bytes:
        """Code one chunk, a (bands, y, x) or (time, bands, y, x) array, to bytes."""
        return self.encode_chunk(buf)

    def decode(self, buf, out=None):
        """Decode bytes made by :meth:`encode` to the chunk's array (into ``out`` when given)."""
        arr = self.decode_chunk(buf)
        if out is not None:
            try:
                return ndarray_copy(arr, out)
            except ValueError as exc:
                raise TecInputError(f"TerraCodec: decoded chunk {arr.dtype} {arr.shape} "
                                    f"({arr.nbytes} bytes) does not fit out={getattr(out, 'shape', '?')}: "
                                    f"{exc}") from None
        return arr

    # -- with context (used by the zarr v3 codec) ----------------------------------------------------
    def encode_chunk(self, buf, where: str | None = None) -> bytes:
        arr = self._check_chunk(buf, where)
        bands = arr.shape[-3]
        try:
            resolve_bands(self.bands, bands)
        except TecBandError as exc:
            hint = ("; every chunk must hold all bands (chunk the band axis whole, e.g. "
                    "chunks=(bands, 512, 512))" if self.bands is not None and len(self.bands) > bands
                    else "; set bands=[...] in the codec config" if self.bands is None else "")
            raise TecBandError(f"TerraCodec: {self._where(where, arr)}: {exc}{hint}") from None
        nodata = self._check_nodata(arr.dtype, where, arr)
        dates = arr[None] if arr.ndim == 3 else arr
        try:
            payloads = self._encode_dates(dates, nodata)
        except TecError as exc:
            raise type(exc)(f"TerraCodec: encoding {self._where(where, arr)} failed: {exc}") from exc
        if arr.ndim == 3 and len(payloads) == 1:
            return payloads[0]                                   # a plain tile payload
        return _pack_frame(arr.ndim, dates.shape, self._tile_size_for(arr), payloads)

    def decode_chunk(self, buf, where: str | None = None) -> np.ndarray:
        try:
            data = ensure_bytes(buf)
        except Exception as exc:
            raise TecFormatError(f"TerraCodec: cannot read {where or 'the chunk'} as bytes "
                                 f"({type(buf).__name__}): {exc}") from None
        desc = f"{where} ({len(data)} bytes)" if where else f"chunk of {len(data)} bytes"
        if data[:4] == tilecodec.TILE_MAGIC:
            return self._decode_tile(data, desc)
        if data[:4] == FRAME_MAGIC:
            ndim, shape, tile_size, payloads = _unpack_frame(data, desc)
            dates = self._decode_dates(payloads, shape, tile_size, desc)
            return dates if ndim == 4 else dates[0]
        head = data[:8]
        raise TecFormatError(f"TerraCodec: {desc} is not a TerraCodec chunk (starts with {head!r}; "
                             f"expected {tilecodec.TILE_MAGIC!r} or {FRAME_MAGIC!r}): corrupt, or "
                             f"written with another codec")

    # -- time axis: the TEC-TT swap point -----------------------------------------------------------
    def _encode_dates(self, dates: np.ndarray, nodata) -> list[bytes]:
        """(time, bands, y, x) -> tile payloads, time-major. Today every date is coded on its own with
        the image model; TEC-TT will code the stack jointly here (with a new frame version)."""
        out = []
        for date in dates:
            for tile in self._tiles(date):
                out.append(self._encode_tile(np.ascontiguousarray(tile), nodata))
        return out

    def _decode_dates(self, payloads: list[bytes], shape, tile_size: int, desc: str) -> np.ndarray:
        t, b, h, w = shape
        ts = tile_size or max(h, w)
        ty, tx = -(-h // ts), -(-w // ts)
        if len(payloads) != t * ty * tx:
            raise TecFormatError(f"TerraCodec: {desc}: frame holds {len(payloads)} tiles, its header "
                                 f"needs {t * ty * tx}")
        out = None
        k = 0
        for i in range(t):
            for r in range(ty):
                for c in range(tx):
                    tile = self._decode_tile(payloads[k], f"{desc}, date {i}, tile ({r}, {c})")
                    want = (b, min(ts, h - r * ts), min(ts, w - c * ts))
                    if tile.shape != want:
                        raise TecFormatError(f"TerraCodec: {desc}: date {i} tile ({r}, {c}) is {tile.shape}, "
                                             f"expected {want}")
                    if out is None:
                        out = np.empty((t, b, h, w), tile.dtype)
                    elif tile.dtype != out.dtype:
                        raise TecFormatError(f"TerraCodec: {desc}: date {i} tile ({r}, {c}) is {tile.dtype}, "
                                             f"not {out.dtype}")
                    out[i, :, r * ts:r * ts + want[1], c * ts:c * ts + want[2]] = tile
                    k += 1
        return out

    # -- helpers -------------------------------------------------------------------------------------
    def _encode_tile(self, tile: np.ndarray, nodata) -> bytes:
        if self.model == LOSSLESS_MODEL:
            return tilecodec.encode_tile(tile, nodata=nodata, lossless=True)[0]
        return tilecodec.encode_tile(tile, quality=self.quality, model=self.model, nodata=nodata)[0]

    def _decode_tile(self, payload: bytes, desc: str) -> np.ndarray:
        try:
            head = tilecodec.TileHeader(payload)
            shape = f"{head.dtype} {head.count}x{head.height}x{head.width}"
        except TecError:
            shape = "unreadable header"
        try:
            model = None if self.model == LOSSLESS_MODEL else self.model
            return tilecodec.decode_tile(payload, model=model)
        except TecChecksumError as exc:
            raise TecChecksumError(f"TerraCodec: {desc} ({shape}) is corrupt: {exc}") from exc
        except TecFormatError as exc:
            raise TecFormatError(f"TerraCodec: {desc} ({shape}) is not a valid tile: {exc}") from exc
        except TecError as exc:
            raise type(exc)(f"TerraCodec: cannot decode {desc} ({shape}): {exc}") from exc

    def _tile_size_for(self, arr: np.ndarray) -> int:
        h, w = arr.shape[-2:]
        return 0 if self.tile_size is None or self.tile_size >= max(h, w) else self.tile_size

    def _tiles(self, date: np.ndarray):
        ts = self._tile_size_for(date)
        if not ts:
            yield date
            return
        h, w = date.shape[-2:]
        for r in range(0, h, ts):
            for c in range(0, w, ts):
                yield date[:, r:r + ts, c:c + ts]

    @staticmethod
    def _where(where, arr) -> str:
        return f"{where + ': ' if where else ''}chunk {arr.dtype} {arr.shape} ({arr.nbytes} bytes)"

    def _check_chunk(self, buf, where) -> np.ndarray:
        if isinstance(buf, (bytes, bytearray, memoryview)) or not hasattr(buf, "shape"):
            n = len(buf) if hasattr(buf, "__len__") else "?"
            raise TecInputError(
                f"TerraCodec: {where + ': ' if where else ''}got a flat buffer of {n} bytes "
                f"({type(buf).__name__}); the codec needs each chunk as an array shaped (bands, y, x) "
                f"or (time, bands, y, x). Use it as the zarr v2 compressor= (zarr hands it the chunk "
                f"array) or, for zarr v3, terracodec.zarr_codec.TerraCodecV3 as serializer=")
        arr = np.asarray(buf)
        dt = arr.dtype
        if dt not in SUPPORTED_DTYPES:
            if dt.kind in "iu" and dt.newbyteorder("=") in SUPPORTED_DTYPES:
                why = "non-native byte order; store the array native-endian (e.g. '<i2')"
            elif dt.kind == "f":
                why = ("TEC codes integer rasters: store reflectance x 10000 as int16 and mark missing "
                       "pixels with an integer nodata value")
            else:
                why = "TEC codes uint8, int16 (Sentinel-2 reflectance x 10000) and uint16"
            raise TecInputError(f"TerraCodec: unsupported dtype {dt} in {self._where(where, arr)}: {why}")
        if arr.ndim not in (3, 4):
            what = ("a (y, x) chunk has no band axis" if arr.ndim == 2 else
                    f"a {arr.ndim}-D chunk is not (bands, y, x) or (time, bands, y, x)")
            raise TecBandError(f"TerraCodec: {self._where(where, arr)}: {what}; chunk the array so that "
                               f"every chunk holds all bands, (bands, y, x) or (time, bands, y, x)")
        if arr.size == 0:
            raise TecInputError(f"TerraCodec: {self._where(where, arr)} is empty")
        if self._tile_size_for(arr) == 0 and max(arr.shape[-2:]) > 65535:
            raise TecInputError(f"TerraCodec: {self._where(where, arr)}: a tile is at most 65535 px a "
                                f"side; set tile_size")
        return arr

    def _check_nodata(self, dtype, where, arr):
        if self.nodata is None:
            return None
        info = np.iinfo(dtype)
        if not info.min <= self.nodata <= info.max:
            raise TecInputError(f"TerraCodec: nodata {self.nodata} is not representable in {dtype} "
                                f"({self._where(where, arr)})")
        return self.nodata


def _pack_frame(ndim: int, shape, tile_size: int, payloads: list[bytes]) -> bytes:
    t, b, h, w = shape
    head = _FRAME_HEAD.pack(FRAME_MAGIC, FRAME_VERSION, ndim, 0, t, b, h, w, tile_size, len(payloads))
    head += struct.pack(f"<{len(payloads)}I", *(len(p) for p in payloads))
    head += struct.pack("<I", zlib.crc32(head))
    return head + b"".join(payloads)


def _unpack_frame(data: bytes, desc: str):
    if len(data) < _FRAME_HEAD.size + 4:
        raise TecFormatError(f"TerraCodec: {desc} is truncated (frame header needs "
                             f"{_FRAME_HEAD.size + 4} bytes)")
    _, version, ndim, _, t, b, h, w, tile_size, n = _FRAME_HEAD.unpack_from(data)
    if version != FRAME_VERSION:
        raise TecFormatError(f"TerraCodec: {desc} has frame version {version}; this terracodec reads "
                             f"version {FRAME_VERSION} (upgrade terracodec)")
    end = _FRAME_HEAD.size + 4 * n
    if len(data) < end + 4:
        raise TecFormatError(f"TerraCodec: {desc} is truncated inside its frame header ({n} tiles)")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) != crc:
        raise TecChecksumError(f"TerraCodec: {desc}: frame header CRC32 mismatch (corrupt chunk)")
    if ndim not in (3, 4) or min(t, b, h, w) == 0 or (ndim == 3 and t != 1):
        raise TecFormatError(f"TerraCodec: {desc}: bad frame header (ndim {ndim}, shape {(t, b, h, w)})")
    lengths = struct.unpack_from(f"<{n}I", data, _FRAME_HEAD.size)
    if end + 4 + sum(lengths) != len(data):
        raise TecFormatError(f"TerraCodec: {desc} is truncated or has trailing bytes (frame needs "
                             f"{end + 4 + sum(lengths)} bytes)")
    payloads, off = [], end + 4
    for length in lengths:
        payloads.append(data[off:off + length])
        off += length
    return ndim, (t, b, h, w), tile_size, payloads
