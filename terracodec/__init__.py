# SPDX-License-Identifier: Apache-2.0
"""TerraCodec (TEC): learned compression for Sentinel-2 rasters.

    import terracodec as tec
    data = tec.encode(array, quality=6)                 # (bands, H, W) uint8/int16/uint16 -> bytes
    back = tec.decode(data)
    tec.write("scene.tec", array, bands=["B02", "B03", "B04", "B08"], crs_wkt=wkt, geotransform=gt)
    with tec.open("scene.tec") as ds:
        part = ds.read(window=((0, 256), (512, 768)))   # decodes only the tiles it touches

Importing this package does not import torch; the model is loaded on the first learned tile.
"""
from .api import LOSSLESS_MODEL, TecDataset, Writer, decode, encode, open, write
from .errors import (TecBandError, TecChecksumError, TecDecodeError, TecError, TecFormatError,
                     TecInputError, TecModelError, TecVersionError)

__version__ = "0.1.0"

__all__ = ["encode", "decode", "open", "write", "Writer", "TecDataset", "LOSSLESS_MODEL",
           "TecError", "TecFormatError", "TecChecksumError", "TecVersionError", "TecInputError",
           "TecBandError", "TecModelError", "TecDecodeError", "__version__"]
