# SPDX-License-Identifier: Apache-2.0
"""GeoTIFF in and out for the ``tec`` CLI (rasterio; imported only when needed).

Band names travel as GDAL band descriptions, the convention of the Sentinel-2 data set this
project uses. Georeferencing is passed as WKT + GDAL geotransform, like the .tec header.
"""
from __future__ import annotations

import math
import os
import secrets
import warnings
from contextlib import contextmanager

import numpy as np

from .bands import normalize_band_name, resolve_bands
from .errors import TecBandError, TecInputError


def _rasterio():
    try:
        import rasterio
    except ImportError:                                        # pragma: no cover
        raise TecInputError("reading and writing GeoTIFF needs rasterio: pip install 'terracodec[io]'") from None
    return rasterio


def read_geotiff(path, bands=None) -> tuple[np.ndarray, dict]:
    """Read a GeoTIFF -> ``(array (count, H, W), meta)``.

    Band names come from the band descriptions, or from ``bands`` (list or "B02,B03,...") which
    overrides them. ``meta``: ``bands`` (tuple of S2 names), ``crs_wkt``, ``geotransform`` (None
    when the file has no georeferencing), ``nodata``, ``tags`` (dataset tags, str -> str), ``dtype``,
    ``shape`` (count, H, W).
    """
    meta = geotiff_meta(path, bands)
    return next(geotiff_strips(path, meta["shape"][1])), meta         # one strip: the whole raster


def geotiff_meta(path, bands=None) -> dict:
    """The ``meta`` of :func:`read_geotiff` without reading pixels."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path!r}")
    with _open(path) as ds:
        descriptions = list(ds.descriptions)
        crs_wkt = ds.crs.to_wkt() if ds.crs else None
        gt = ds.transform.to_gdal()
        georef = ds.crs is not None or not ds.transform.is_identity
        nodatavals = {repr(v) for v in ds.nodatavals}       # repr: NaN == NaN here
        nodata = ds.nodata
        tags = {str(k): str(v) for k, v in ds.tags().items()}
        shape = (ds.count, ds.height, ds.width)
        dtype = np.dtype(ds.dtypes[0]).name
    count = shape[0]
    if bands is not None:
        names = resolve_bands(bands, count)
    else:
        missing = [i + 1 for i, d in enumerate(descriptions) if not d]
        if missing:
            raise TecBandError(
                f"{path}: band(s) {missing} have no description, so their Sentinel-2 names are "
                f"unknown; pass them with --bands B02,B03,... ({count} names)")
        try:
            names = resolve_bands([normalize_band_name(d) for d in descriptions], count)
        except TecBandError as exc:
            raise TecBandError(f"{path}: band descriptions {descriptions} are not Sentinel-2 band "
                               f"names ({exc}); pass the names with --bands B02,B03,...") from None
    if len(nodatavals) > 1:
        raise TecInputError(f"{path}: bands have different nodata values {sorted(nodatavals)}; "
                            f"TEC stores one nodata value")
    if nodata is not None and math.isfinite(nodata) and float(nodata).is_integer():
        nodata = int(nodata)
    return {"bands": names, "crs_wkt": crs_wkt, "geotransform": list(gt) if georef else None,
            "nodata": nodata, "tags": tags, "dtype": dtype, "shape": shape}


# GDAL's block cache (by default 5 % of RAM) would keep every block a strip read touched, though
# each is read once: 0.5 GB more peak memory for `tec compress` of a 4272 x 4272 x 12 GeoTIFF.
STRIP_CACHE_MB = 64


def geotiff_strips(path, rows: int):
    """Yield the GeoTIFF's pixels as (count, <= rows, W) strips from the top, one window read each
    (with GDAL's block cache held to STRIP_CACHE_MB), so a raster larger than memory can be encoded
    strip by strip."""
    rasterio = _rasterio()
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    path = os.fspath(path)
    with _open(path) as ds:
        for r in range(0, ds.height, rows):
            try:
                with rasterio.Env(GDAL_CACHEMAX=STRIP_CACHE_MB):
                    strip = ds.read(window=Window(0, r, ds.width, min(rows, ds.height - r)))
            except RasterioIOError as exc:
                raise TecInputError(f"cannot read rows {r}.. of {path}: {exc}") from None
            yield strip


@contextmanager
def _open(path):
    """rasterio.open with its errors as TecInputError and without the ungeoreferenced warning."""
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(path)
        except RasterioIOError as exc:
            raise TecInputError(f"cannot read {path} as a raster: {exc}") from None
    with ds:
        yield ds


def geotiff_block(width: int, height: int) -> int | None:
    """Side of the square blocks write_geotiff uses for a raster of this size (None: striped)."""
    if width < 16 or height < 16:             # GeoTIFF tiles are multiples of 16 pixels
        return None
    return 256 if min(width, height) >= 256 else 16 * max(1, min(width, height) // 16)


def write_geotiff(path, array: np.ndarray, bands, crs_wkt=None, geotransform=None, nodata=None,
                  tags: dict | None = None) -> None:
    """Write a tiled DEFLATE GeoTIFF with band descriptions, atomically (temporary file + rename)."""
    if array.ndim == 2:
        array = array[None]
    write_geotiff_strips(path, array.shape, array.dtype, bands, [(0, array)], crs_wkt=crs_wkt,
                         geotransform=geotransform, nodata=nodata, tags=tags)


def write_geotiff_strips(path, shape, dtype, bands, strips, crs_wkt=None, geotransform=None, nodata=None,
                         tags: dict | None = None) -> None:
    """write_geotiff from ``strips``, an iterable of (row_off, (count, rows, width) array) that
    covers the raster of ``shape`` (count, height, width) top to bottom, so that the raster is
    never held whole. Strips whose heights are multiples of geotiff_block() fill whole blocks
    (a block that two strips share is compressed twice). GDAL's block cache is held to
    STRIP_CACHE_MB while writing."""
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.transform import Affine
    from rasterio.windows import Window

    count, height, width = shape
    bands = list(bands)
    if len(bands) != count:
        raise TecBandError(f"{len(bands)} band names for {count} bands")
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count,
               "dtype": np.dtype(dtype).name, "nodata": nodata, "compress": "deflate",
               "predictor": 2, "interleave": "band"}
    block = geotiff_block(width, height)
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    if crs_wkt:
        profile["crs"] = crs_wkt
    if geotransform is not None:
        profile["transform"] = Affine.from_gdal(*geotransform)
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp-{secrets.token_hex(6)}")
    try:
        with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=STRIP_CACHE_MB):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                for row_off, strip in strips:
                    dst.write(strip, window=Window(0, row_off, width, strip.shape[1]))
                for i, b in enumerate(bands, 1):
                    dst.set_band_description(i, b)
                if tags:
                    dst.update_tags(**{str(k): str(v) for k, v in tags.items()})
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp + ".aux.xml"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        raise
