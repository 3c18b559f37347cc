# SPDX-License-Identifier: Apache-2.0
"""``TerraCodecV3``: TerraCodec as a zarr v3 array->bytes codec (zarr-python >= 3.1).

zarr-python 3 documents custom v3 codecs as subclasses of ``zarr.abc.codec.ArrayBytesCodec``
registered through the ``zarr.codecs`` entry point (see "Extending Zarr" in its user guide). TEC maps a
(bands, y, x) array straight to bytes, so it is the array->bytes codec (``serializer=``) and needs no
bytes->bytes compressor after it::

    import zarr
    from terracodec.zarr_codec import TerraCodecV3

    z = zarr.create_array(store, shape=(12, 4096, 4096), chunks=(12, 512, 512), dtype="int16",
                          serializer=TerraCodecV3(quality=6), compressors=None)

The array metadata records ``{"name": "terracodec", "configuration": {quality, model, bands, nodata,
tile_size, temporal, keyframe_interval}}`` (and ``effort`` when not the default); reading it needs
this class registered under ``terracodec`` in zarr's codec registry: the package's ``zarr.codecs``
entry point does that without importing terracodec first, and importing this module does it too.
The chunk bytes are those of :class:`terracodec.numcodecs.TerraCodec` (one TEC tile payload per
(bands, y, x) chunk; a (time, bands, y, x) chunk of >= 2 dates is coded with TEC-TT unless
``temporal=False``), so a v3 chunk and a v2 chunk of the same array are byte-identical.

Partial reads: the codec implements zarr's partial-decode interface, so (when it is the only codec,
the recommended set-up) zarr hands it the chunk's store path, and errors name the chunk key
(``"scene/c/0/1/2"``). Each chunk is decoded whole (a TEC tile has no sub-tile access); a slice
decodes exactly the chunks it touches.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec, ArrayBytesCodecPartialDecodeMixin
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

from .errors import TecBandError, TecFormatError, TecInputError
from .numcodecs import SUPPORTED_DTYPES, TerraCodec
from .tilecodec import DEFAULT_EFFORT

__all__ = ["TerraCodecV3", "CODEC_NAME"]

CODEC_NAME = "terracodec"


@dataclass(frozen=True)
class TerraCodecV3(ArrayBytesCodecPartialDecodeMixin, ArrayBytesCodec):
    """zarr v3 array->bytes codec wrapping :class:`terracodec.numcodecs.TerraCodec` (same config)."""

    is_fixed_size = False

    quality: int = 5
    model: str | None = None
    bands: tuple[str, ...] | None = None
    nodata: int | None = None
    tile_size: int | None = None
    temporal: bool = True
    keyframe_interval: int | None = None
    effort: str = DEFAULT_EFFORT

    def __init__(self, *, quality: int = 5, model: str | None = None, bands=None, nodata=None,
                 tile_size: int | None = None, temporal: bool = True,
                 keyframe_interval: int | None = None, effort: str | None = None) -> None:
        codec = TerraCodec(quality=quality, model=model, bands=bands, nodata=nodata, tile_size=tile_size,
                           temporal=temporal, keyframe_interval=keyframe_interval, effort=effort)
        object.__setattr__(self, "quality", codec.quality)
        object.__setattr__(self, "model", codec.model)
        object.__setattr__(self, "bands", None if codec.bands is None else tuple(codec.bands))
        object.__setattr__(self, "nodata", codec.nodata)
        object.__setattr__(self, "tile_size", codec.tile_size)
        object.__setattr__(self, "temporal", codec.temporal)
        object.__setattr__(self, "keyframe_interval", codec.keyframe_interval)
        object.__setattr__(self, "effort", codec.effort)

    # -- metadata ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TerraCodecV3":
        _, configuration = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        return cls(**(configuration or {}))

    def to_dict(self) -> dict[str, Any]:
        config = self.numcodec.get_config()
        config.pop("id")
        return {"name": CODEC_NAME, "configuration": config}

    @property
    def numcodec(self) -> TerraCodec:
        """The equivalent numcodecs codec (the one that does the work)."""
        return TerraCodec(quality=self.quality, model=self.model, bands=self.bands, nodata=self.nodata,
                          tile_size=self.tile_size, temporal=self.temporal,
                          keyframe_interval=self.keyframe_interval, effort=self.effort)

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        """Reject unusable arrays when the array is created, not at the first chunk."""
        native = dtype.to_native_dtype()
        if np.dtype(native) not in SUPPORTED_DTYPES:
            raise TecInputError(f"TerraCodecV3: unsupported array dtype {native}; TEC codes uint8, "
                                f"int16 (Sentinel-2 reflectance x 10000) and uint16")
        chunks = getattr(chunk_grid, "chunk_shape", None)
        if len(shape) not in (3, 4):
            raise TecBandError(f"TerraCodecV3: array shape {tuple(shape)} is not (bands, y, x) or "
                               f"(time, bands, y, x)")
        if chunks is not None:
            nb, cb = shape[-3], chunks[-3]
            example = (1, nb, 512, 512) if len(shape) == 4 else (nb, 512, 512)
            if cb != nb:
                raise TecBandError(f"TerraCodecV3: chunks {tuple(chunks)} split the band axis of array "
                                   f"{tuple(shape)}; every chunk must hold all {nb} bands "
                                   f"(e.g. chunks={example})")
        if self.bands is not None and len(self.bands) != shape[-3]:
            raise TecBandError(f"TerraCodecV3: {len(self.bands)} band names {list(self.bands)} for an "
                               f"array with {shape[-3]} bands")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError("TerraCodec chunks have variable size")

    # -- coding --------------------------------------------------------------------------------------
    def _decode_array(self, data: bytes, chunk_spec, where: str) -> np.ndarray:
        arr = self.numcodec.decode_chunk(data, where=where)
        want = tuple(chunk_spec.shape)
        native = np.dtype(chunk_spec.dtype.to_native_dtype())
        if arr.shape != want or arr.dtype != native:
            raise TecFormatError(f"TerraCodecV3: {where} decoded to {arr.dtype} {arr.shape}, but the "
                                 f"array's chunks are {native} {want} (chunk from another array?)")
        return arr

    async def _decode_single(self, chunk_bytes, chunk_spec):
        data = chunk_bytes.to_bytes()
        where = f"chunk shaped {tuple(chunk_spec.shape)}"
        arr = await asyncio.to_thread(self._decode_array, data, chunk_spec, where)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr)

    async def _decode_partial_single(self, byte_getter, selection, chunk_spec):
        chunk_bytes = await byte_getter.get(prototype=chunk_spec.prototype)
        if chunk_bytes is None:
            return None                       # absent chunk: zarr uses the fill value, as for any codec
        where = f"zarr chunk {getattr(byte_getter, 'path', '?')!r}"
        arr = await asyncio.to_thread(self._decode_array, chunk_bytes.to_bytes(), chunk_spec, where)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr)[selection]

    async def _encode_single(self, chunk_array, chunk_spec):
        arr = chunk_array.as_numpy_array()
        where = f"chunk shaped {tuple(chunk_spec.shape)}"
        payload = await asyncio.to_thread(self.numcodec.encode_chunk, arr, where)
        return chunk_spec.prototype.buffer.from_bytes(payload)


register_codec(CODEC_NAME, TerraCodecV3)
