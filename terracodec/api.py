# SPDX-License-Identifier: Apache-2.0
"""The public core of terracodec: every front end (CLI, GDAL plugin, numcodecs) goes through here.

Arrays are ``(bands, height, width)``; a 2-D ``(height, width)`` array is one band and needs its band
name (``bands=["B04"]``), since no default exists for a single band. :func:`decode` and
:meth:`TecDataset.read` always return 3-D arrays (except ``read(bands=<int>)``, which, as in
rasterio, returns the 2-D band).

Supported dtypes: ``uint8``, ``int16`` (Sentinel-2 reflectance x 10000) and ``uint16``. Floating-point
arrays (and NaN) are rejected with :class:`TecInputError`: scale to integers and mark missing
pixels with a ``nodata`` value, which comes back exactly.

Models: ``model=None`` is the default learned model (``terracodec.weights``), whose learned
candidate the encoder tries with ``effort="best"`` only (tilecodec.LEARNED_EFFORTS: it won no tile
of the benches, and loading it costs seconds and ~0.7 GB); other efforts load no weights or torch.
``model="lossless"`` stores every tile exactly (zlib), needs no weights, and is what to use when
the decoded pixels must equal the input. ``model="classical"`` never tries the learned candidate,
at any effort, and the header names no weights. Quality is an int 1..8 (ignored by ``"lossless"``).

Errors (all from :mod:`terracodec.errors`): bad arrays or arguments -> TecInputError (band problems
-> TecBandError), unknown model or missing weights -> TecModelError, corrupt or truncated files ->
TecFormatError / TecChecksumError, a well-formed tile that fails to decode -> TecDecodeError,
a missing path -> FileNotFoundError.
"""
from __future__ import annotations

import io
import math
import os
import threading
from collections import OrderedDict, deque
from numbers import Integral

import numpy as np

from . import tilecodec
from . import workers as workers_module
from .bands import MAX_BANDS, resolve_bands
from .errors import (TecBandError, TecDecodeError, TecError, TecFormatError, TecInputError,
                     TecModelError)

__all__ = ["encode", "decode", "write", "open", "Writer", "TecDataset", "LOSSLESS_MODEL",
           "SUPPORTED_DTYPES"]

LOSSLESS_MODEL = tilecodec.LOSSLESS_MODEL
CLASSICAL_MODEL = tilecodec.CLASSICAL_MODEL
SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("int16"), np.dtype("uint16"))
MIN_TILE_SIZE, MAX_TILE_SIZE = 16, 4096
DEFAULT_TILE_SIZE = 512       # nominal (see default_tile_size): 8 % fewer bits than 256 on val
# Tiles are coded with this many extra pixels on each inner side and cross-faded over the 2x wide
# band around every seam, so that seams are not visible (examples/measure_seams.py measures it).
DEFAULT_TILE_OVERLAP = 4
READ_WORKERS = workers_module.DEFAULT_WORKERS   # threads that decode the tiles of one read()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("terracodec")
    except Exception:                                       # not installed (source checkout)
        return "0.1.0"


# -- validation ----------------------------------------------------------------------------------------
# The tile counts of a header's stats. Writers store the nonzero ones (in the order of
# format.HEADER_DICTIONARY, so that they deflate to a few bytes); readers take a missing count as 0.
TILE_COUNTS = ("fallback_tiles", "lossless_tiles", "learned_tiles", "coarse_grid_tiles", "floor_tiles",
               "av1_tiles", "temporal_tiles", "predicted_tiles")
STACK_TILE_COUNTS = ("temporal_tiles", "predicted_tiles")


def tile_counts(kinds: dict, av1_tiles: int, coarse_grid_tiles: int, floor_tiles: int = 0) -> dict:
    """The tile counts of a header's stats from the tiles per kind (``kinds``), the kind 4 tiles
    with an AV1 stream, those with bands on a coarser grid and the tiles recoded to reach the
    quality floor: the nonzero ones."""
    counts = {"fallback_tiles": kinds.get(tilecodec.KIND_CLASSICAL, 0) + kinds.get(tilecodec.KIND_MULTIRES, 0),
              "lossless_tiles": kinds.get(tilecodec.KIND_LOSSLESS, 0),
              "learned_tiles": kinds.get(tilecodec.KIND_LEARNED, 0),
              "coarse_grid_tiles": coarse_grid_tiles,
              "floor_tiles": floor_tiles, "av1_tiles": av1_tiles,
              "temporal_tiles": kinds.get(tilecodec.KIND_TEMPORAL, 0),
              "predicted_tiles": kinds.get(tilecodec.KIND_PREDICTED, 0)}
    return {k: v for k, v in counts.items() if v}


def _check_dtype(dtype, array: np.ndarray | None = None) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TecInputError(f"unsupported dtype {dtype!r}; TEC codes uint8, int16 and uint16") from None
    if dt in SUPPORTED_DTYPES:
        return dt
    if dt.kind == "f":
        msg = (f"{dt} arrays are not supported: TEC codes integer rasters (uint8, int16, uint16), "
               f"e.g. reflectance x 10000 as int16; scale the data and mark missing pixels (NaN) "
               f"with an integer nodata value")
        if array is not None and np.isnan(array).any():
            msg = f"the array contains NaN and {msg}"
        raise TecInputError(msg)
    raise TecInputError(f"unsupported dtype {dt}; TEC codes uint8, int16 and uint16"
                        + (" (int16 holds Sentinel-2 reflectance x 10000)" if dt.kind in "iu" else ""))


def _check_quality(quality) -> int:
    if isinstance(quality, bool) or not isinstance(quality, Integral):
        raise TecInputError(f"quality must be an integer 1..8, got {quality!r}")
    if not 1 <= int(quality) <= 8:
        raise TecInputError(f"quality must be 1..8, got {quality}")
    return int(quality)


def default_tile_size(width: int, height: int) -> int:
    """The tile size used when none is given: about DEFAULT_TILE_SIZE, splitting each axis evenly.

    Thin edge tiles cost bits: a 1068-pixel axis is cut 544 + 524, not 512 + 512 + 44, and a 600 one
    is a single tile (on val: 1-2 % less rate-distortion cost on the 1068² scene, 2-7 % on a 600²
    one). Each axis of n pixels gets round(n / 512) tiles (at least 1) of ceil(n / tiles) pixels,
    rounded up to a multiple of 16 so that overviews down to 1/16 decode from reduced-resolution
    tiles; the larger of the two axes' sizes is used (16 ... 768). The GDAL plugin computes the same
    (gdal_plugin/tecdataset.cpp, DefaultTileSize)."""
    def axis(n: int) -> int:
        tiles = max(1, (n + DEFAULT_TILE_SIZE // 2) // DEFAULT_TILE_SIZE)
        size = -(-n // tiles)
        return -(-size // 16) * 16

    return min(MAX_TILE_SIZE, max(MIN_TILE_SIZE, axis(int(width)), axis(int(height))))


def _check_tile_size(tile_size) -> int:
    if isinstance(tile_size, bool) or not isinstance(tile_size, Integral):
        raise TecInputError(f"tile_size must be an integer, got {tile_size!r}")
    if not MIN_TILE_SIZE <= int(tile_size) <= MAX_TILE_SIZE:
        raise TecInputError(f"tile_size must be {MIN_TILE_SIZE}..{MAX_TILE_SIZE}, got {tile_size}")
    return int(tile_size)


def _check_tile_overlap(overlap, tile_size: int) -> int:
    if isinstance(overlap, bool) or not isinstance(overlap, Integral) or not 0 <= overlap <= tile_size // 4:
        raise TecInputError(f"tile_overlap must be an integer 0..{tile_size // 4} (a quarter of the tile "
                            f"size), got {overlap!r}")
    return int(overlap)


def coded_extent(index: int, tile_size: int, overlap: int, size: int) -> tuple[int, int]:
    """[start, stop) of the pixels that tile ``index`` codes along an axis of ``size`` pixels."""
    return max(0, index * tile_size - overlap), min(size, (index + 1) * tile_size + overlap)


def _axis_segments(start: int, stop: int, tile_size: int, overlap: int, size: int):
    """Split [start, stop) of an axis into runs that lie in one tile's core away from seams, or in
    the band of +-overlap around one inner seam. -> [((a, b), [tile indexes covering the run])]."""
    cuts = {start, stop}
    for seam in range(tile_size, size, tile_size):
        for p in (seam - overlap, seam, seam + overlap):
            if start < p < stop:
                cuts.add(p)
    cuts = sorted(cuts)
    out = []
    for a, b in zip(cuts, cuts[1:]):
        seam = (a + overlap) // tile_size * tile_size        # the nearest seam at or after a - overlap
        if overlap and 0 < seam < size and seam - overlap <= a < seam + overlap:
            out.append(((a, b), [seam // tile_size - 1, seam // tile_size]))
        else:
            out.append(((a, b), [a // tile_size]))
    return out


def blend_weights(index: int, tile_size: int, overlap: int, size: int) -> np.ndarray:
    """Cross-fade weights of tile ``index`` over its coded extent: 1 inside, linear ramps across
    the 2*overlap pixels around each inner seam, so that neighbours' weights sum to 1."""
    a, b = coded_extent(index, tile_size, overlap, size)
    x = np.arange(a, b, dtype=np.float64) + 0.5
    w = np.ones(b - a)
    if overlap:
        core0, core1 = index * tile_size, min(size, (index + 1) * tile_size)
        if core0 > 0:
            w *= np.clip((x - (core0 - overlap)) / (2 * overlap), 0, 1)
        if core1 < size:
            w *= np.clip(((core1 + overlap) - x) / (2 * overlap), 0, 1)
    return w


def _check_nodata(nodata, dtype: np.dtype):
    """nodata as a Python int representable in ``dtype`` (or None)."""
    if nodata is None:
        return None
    try:
        value = float(nodata)
    except (TypeError, ValueError):
        raise TecInputError(f"nodata must be a number, got {nodata!r}") from None
    if math.isnan(value):
        raise TecInputError(f"nodata NaN cannot be represented in {dtype}; use an integer value (e.g. 0)")
    info = np.iinfo(dtype)
    if not value.is_integer() or not info.min <= value <= info.max:
        raise TecInputError(f"nodata {nodata!r} is not representable in {dtype} ({info.min}..{info.max})")
    return int(value)


def _check_georef(crs_wkt, geotransform):
    if crs_wkt is not None:
        if hasattr(crs_wkt, "to_wkt"):                       # rasterio / pyproj CRS objects
            crs_wkt = crs_wkt.to_wkt()
        if not isinstance(crs_wkt, str):
            raise TecInputError(f"crs_wkt must be a WKT string, got {type(crs_wkt).__name__}")
        crs_wkt = crs_wkt or None
    if geotransform is not None:
        if hasattr(geotransform, "to_gdal"):                 # affine.Affine
            geotransform = geotransform.to_gdal()
        try:
            gt = [float(v) for v in geotransform]
        except (TypeError, ValueError):
            raise TecInputError(f"geotransform must be 6 numbers, got {geotransform!r}") from None
        if len(gt) != 6 or not all(math.isfinite(v) for v in gt):
            raise TecInputError(f"geotransform must be 6 finite numbers, got {geotransform!r}")
        geotransform = gt
    return crs_wkt, geotransform


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TecInputError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}")
    return {str(k): str(v) for k, v in metadata.items()}


def _as_3d(array) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TecInputError(f"expected a numpy array (bands, height, width), got {type(array).__name__}")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim != 3:
        raise TecInputError(f"expected a 3-D array (bands, height, width) or a 2-D single band, "
                            f"got {array.ndim} dimensions {array.shape}")
    if array.size == 0:
        raise TecInputError(f"the array is empty (shape {array.shape})")
    return array


# -- models ----------------------------------------------------------------------------------------------
def _model_record(model: str | None) -> dict:
    """What the header records about ``model``: {"name": ..., "sha256": ...} ("" when no weights).

    Raises TecModelError for an unknown model or when no model is installed."""
    if model in tilecodec.BUILTIN_MODELS:
        return {"name": model, "sha256": ""}
    if model is not None and not isinstance(model, str):
        raise TecInputError(f"model must be a model name (str) or None, got {type(model).__name__}")
    try:
        from . import weights
    except ImportError:
        return {"name": model or LOSSLESS_MODEL, "sha256": ""}
    try:
        rec = weights.describe(model)
    except TecModelError as exc:
        if model is None:
            raise TecModelError(f"{exc}; no default model is available (model='lossless' "
                                f"needs no weights)") from None
        raise
    return {"name": rec["name"], "sha256": rec.get("sha256") or ""}


# -- tile grid --------------------------------------------------------------------------------------------
def _check_dims(width, height, count) -> tuple[int, int, int]:
    for name, value in (("width", width), ("height", height), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise TecInputError(f"{name} must be a positive integer, got {value!r}")
    return int(width), int(height), int(count)


def _grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    return -(-width // tile_size), -(-height // tile_size)


# -- container (terracodec.format) ------------------------------------------------------------------
def _header_dict(header) -> dict:
    return header.to_dict() if hasattr(header, "to_dict") else dict(header)


# -- streaming writer --------------------------------------------------------------------------------------
class Writer:
    """Encode a raster to a ``.tec`` file strip by strip (the file appears atomically at :meth:`close`).

    Feed horizontal strips of rows from the top with :meth:`write` (any number of rows; they are
    buffered until a row of tiles is complete) or :meth:`write_tiles` (explicit ``row_off``).
    Used as a context manager, an exception inside the block aborts the write (no file is left)::

        with Writer("x.tec", width, height, 12, "int16", None, quality=6) as w:
            for strip in strips:          # (12, rows, width) arrays, top to bottom
                w.write(strip)

    ``effort="best"`` searches harder (see :func:`write`); a non-default effort is recorded in the
    header's stats.
    """

    def __init__(self, path, width: int, height: int, count: int, dtype, bands=None, quality: int = 5,
                 model: str | None = None, nodata=None, tile_size: int | None = None,
                 crs_wkt: str | None = None, geotransform=None, metadata: dict | None = None, *,
                 date: str | None = None, progress: bool = False, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                 workers: int | None = None, effort: str | None = None):
        self.width, self.height, self.count = _check_dims(width, height, count)
        if self.count > MAX_BANDS:
            raise TecBandError(f"{self.count} bands given; Sentinel-2 has at most {MAX_BANDS}")
        self.dtype = _check_dtype(dtype)
        self.bands = resolve_bands(bands, self.count)
        self.quality = _check_quality(quality)
        self.effort = tilecodec.check_effort(effort)
        self.tile_size = _check_tile_size(default_tile_size(self.width, self.height) if tile_size is None
                                          else tile_size)
        self.tile_overlap = _check_tile_overlap(tile_overlap, self.tile_size)
        # tiles are coded in parallel threads (terracodec.workers), across rows too; a tile's bytes
        # depend on its pixels only, so the file does not depend on it
        self.workers = workers_module.check_workers(workers)
        self._pool = workers_module.CodingPool(self.workers, "tec-encode")
        self._inflight: deque = deque()    # futures of submitted tiles, in tile order
        if max(self.width, self.height) > 0xFFFFFFFF:
            raise TecInputError("raster too large")
        self.nodata = _check_nodata(nodata, self.dtype)
        self.crs_wkt, self.geotransform = _check_georef(crs_wkt, geotransform)
        self.metadata = _check_metadata(metadata)
        self.date = None if date is None else str(date)
        self.model_record = _model_record(model)
        self._lossless = self.model_record["name"] == LOSSLESS_MODEL
        self.tiles_x, self.tiles_y = _grid(self.width, self.height, self.tile_size)
        # fewer tiles than workers (e.g. a single-tile image): the spare threads go to OpenJPEG
        self._j2k_threads = max(1, self.workers // (self.tiles_x * self.tiles_y))
        self.path = path if hasattr(path, "write") else os.fspath(path)
        self.rows_written = 0          # rows received
        self._next_tile_row = 0
        self._buf_start = 0            # first image row held in self._pending
        self.floor_tiles = 0           # tiles recoded to reach the quality's PSNR floor
        self.kinds: dict[int, int] = {}
        self.av1_tiles = 0             # tiles whose reader needs an AV1 decoder
        self.coarse_grid_tiles = 0     # tiles with bands coded on a coarser grid
        self.payload_bytes = 0
        self._pending: list[np.ndarray] = []
        self._closed = False
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.tiles_x * self.tiles_y, unit="tile", desc="encode",
                             leave=False)
        from .format import ContainerWriter

        try:
            self._out = ContainerWriter(self.path)
        except BaseException:
            self._closed = True
            self._release()
            raise

    # -- feeding --
    def write(self, block: np.ndarray) -> None:
        """Append the next rows: ``block`` is (count, rows, width), or (rows, width) for one band."""
        self._check_open()
        try:
            block = self._check_block(block)
            if self.rows_written + block.shape[1] > self.height:
                raise TecInputError(f"more rows written than the raster's height {self.height}")
            self._pending.append(block)
            self.rows_written += block.shape[1]
            self._flush_rows()
        except BaseException:
            self.abort()
            raise

    def write_tiles(self, row_off: int, block: np.ndarray) -> None:
        """Write the strip that starts at row ``row_off`` (strips must come in order, top to bottom)."""
        expected = self.rows_written
        if row_off != expected:
            self.abort()
            raise TecInputError(f"strips must be written top to bottom: got row_off {row_off}, "
                                f"expected {expected}")
        self.write(block)

    def _check_block(self, block) -> np.ndarray:
        if not isinstance(block, np.ndarray):
            raise TecInputError(f"expected a numpy array, got {type(block).__name__}")
        if block.ndim == 2 and self.count == 1:
            block = block[None]
        if block.ndim != 3 or block.shape[0] != self.count or block.shape[2] != self.width:
            raise TecInputError(f"strip of shape {block.shape} does not fit a raster of "
                                f"{self.count} bands x {self.width} columns")
        if block.dtype != self.dtype:
            _check_dtype(block.dtype, block)
            raise TecInputError(f"strip dtype {block.dtype} differs from the writer's {self.dtype}")
        return block

    def _flush_rows(self) -> None:
        """Code every row of tiles whose rows (with the overlap below it) have all arrived."""
        T, o = self.tile_size, self.tile_overlap
        while self._next_tile_row < self.tiles_y:
            top, stop = coded_extent(self._next_tile_row, T, o, self.height)
            if self.rows_written < stop:
                return
            buf = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
            self._encode_tile_row(buf[:, top - self._buf_start:stop - self._buf_start])
            self._next_tile_row += 1
            keep = min(self.height, self._next_tile_row * T - o)     # the next row's first row
            self._pending = [buf[:, max(0, keep - self._buf_start):]]
            self._buf_start = max(self._buf_start, keep)

    def _encode_tile_row(self, strip: np.ndarray) -> None:
        for tx in range(self.tiles_x):
            x0, x1 = coded_extent(tx, self.tile_size, self.tile_overlap, self.width)
            tile = np.ascontiguousarray(strip[:, :, x0:x1])
            if self.workers == 1:
                self._add_tile(*self._encode_tile(tile))
                continue
            self._inflight.append(self._pool.submit(self._encode_tile, tile))
            # a bounded queue: the next row's tiles start while this row's last ones finish, and
            # at most 2 * workers tiles are held
            while len(self._inflight) > 2 * self.workers:
                self._add_tile(*self._inflight.popleft().result())

    def _drain(self) -> None:
        while self._inflight:
            self._add_tile(*self._inflight.popleft().result())

    def _add_tile(self, payload: bytes, kind: int, info: dict) -> None:
        """Append the next tile (in tile order) and count it."""
        self._out.add_tile(payload, kind)
        self.floor_tiles += bool(info.get("floor_raised"))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        groups = tilecodec.kind4_groups(payload)
        self.av1_tiles += tilecodec.uses_av1(groups)
        self.coarse_grid_tiles += tilecodec.uses_coarse_grid(groups)
        self.payload_bytes += len(payload)
        if self._bar is not None:
            self._bar.update(1)

    def _encode_tile(self, tile: np.ndarray) -> tuple[bytes, int, dict]:
        info: dict = {}
        if self._lossless:
            payload, kind = tilecodec.encode_tile(tile, quality=self.quality, model=None, nodata=self.nodata,
                                                  lossless=True)
            return payload, kind, info
        token = tilecodec.J2K_THREADS.set(self._j2k_threads)
        try:
            payload, kind = tilecodec.encode_tile(tile, quality=self.quality, model=self.model_record["name"],
                                                  nodata=self.nodata, info=info, effort=self.effort)
        finally:
            tilecodec.J2K_THREADS.reset(token)
        return payload, kind, info

    # -- finishing --
    def header_fields(self) -> dict:
        """The JSON header as it will be written (stats filled in at close)."""
        return {
            "width": self.width, "height": self.height, "count": self.count,
            "dtype": self.dtype.name, "bands": list(self.bands), "nodata": self.nodata,
            "crs_wkt": self.crs_wkt, "geotransform": self.geotransform,
            "tile_size": self.tile_size, "tile_overlap": self.tile_overlap,
            "tiles_x": self.tiles_x, "tiles_y": self.tiles_y, "dates": [self.date], "levels": 1, "model": dict(self.model_record),
            "quality": self.quality, "stats": self._stats(), "metadata": dict(self.metadata),
            "created_by": f"terracodec {_version()}",
        }

    def _header(self):
        from .format import TecHeader

        return TecHeader(**self.header_fields())

    def _stats(self) -> dict:
        # no compression ratio: readers measure it on the file (TecDataset.compression_ratio)
        return (tile_counts(self.kinds, self.av1_tiles, self.coarse_grid_tiles, self.floor_tiles)
                | tilecodec.effort_record(self.effort))

    def close(self) -> None:
        """Finish the file (atomic rename). Raises TecInputError when rows are missing."""
        if self._closed:
            return
        if self.rows_written != self.height or self._next_tile_row != self.tiles_y:
            missing = self.height - self.rows_written
            self.abort()
            raise TecInputError(f"writer closed with {missing} of {self.height} rows not written")
        try:
            self._drain()
            self._out.finish(self._header())
            self._closed = True
        except BaseException:
            self.abort()
            raise
        finally:
            self._release()

    def abort(self) -> None:
        """Drop the partial file; the destination path is left as it was."""
        if self._closed:
            return
        self._closed = True
        self._release()
        out = getattr(self, "_out", None)
        if out is not None:
            try:
                out.abort()
            except Exception:
                pass

    def _release(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if getattr(self, "_pool", None) is not None:
            self._pool.close()
            self._inflight.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise TecInputError("the writer is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):                                      # an abandoned writer leaves no file
        try:
            if not self._closed:
                self.abort()
        except Exception:
            pass


# -- one-shot encoding ------------------------------------------------------------------------------------
def write(path, array: np.ndarray, bands=None, quality: int = 5, model: str | None = None, nodata=None, *,
          tile_size: int | None = None, crs_wkt: str | None = None, geotransform=None,
          metadata: dict | None = None, progress: bool = False, date: str | None = None,
          dates=None, temporal: bool = True, keyframe_interval: int | None = None,
          tile_overlap: int | None = None, effort: str | None = None) -> None:
    """Encode ``array`` (bands, height, width) to the ``.tec`` file ``path`` (written atomically).

    ``path`` may also be a seekable binary file object. A 4-D ``array`` (dates, bands, height, width)
    is a time stack (terracodec.stack): ``dates`` names its dates (ISO strings); with >= 2 dates it is
    coded with TEC-TT (the temporal model; a later date may also be predicted from an earlier date's
    decoded pixels, kind 5, where that costs less) unless ``temporal=False``; ``keyframe_interval``
    (default 8) bounds how many earlier dates a read decodes. ``tile_overlap`` (default 4 for single
    images; time stacks use 0) is how far tiles reach into their neighbours to hide seams.
    ``effort`` ("fast", "default" or "best", see tilecodec.EFFORTS) is how hard the encoder
    searches: "best" (AV1 also for 20 m / 60 m bands, slower AV1, and the learned candidate) needs
    4-8 % fewer bits on val for about 2x the encode time; "fast" codes tiles of 256 px or more
    1.2-1.5x faster for about 1 % more bits. The decoder is the same."""
    if isinstance(array, np.ndarray) and array.ndim == 4:
        from . import stack

        if tile_overlap:
            raise TecInputError("time stacks are coded without tile overlap (tile_overlap=0)")

        stack.write_stack(path, array, bands, quality, model, nodata, dates=dates, temporal=temporal,
                          keyframe_interval=keyframe_interval, tile_size=tile_size, crs_wkt=crs_wkt,
                          geotransform=geotransform, metadata=metadata, progress=progress,
                          created_by=f"terracodec {_version()}", effort=effort)
        return
    array = _as_3d(array)
    dtype = _check_dtype(array.dtype, array)
    count, height, width = array.shape
    with Writer(path, width, height, count, dtype, bands, quality=quality, model=model, nodata=nodata,
                tile_size=tile_size, crs_wkt=crs_wkt, geotransform=geotransform, metadata=metadata,
                date=date, progress=progress, effort=effort,
                tile_overlap=DEFAULT_TILE_OVERLAP if tile_overlap is None else tile_overlap) as w:
        for r in range(0, height, w.tile_size):
            w.write(array[:, r:r + w.tile_size])


def encode(array: np.ndarray, bands=None, quality: int = 5, model: str | None = None, nodata=None, *,
           tile_size: int | None = None, crs_wkt: str | None = None, geotransform=None,
           metadata: dict | None = None, progress: bool = False, date: str | None = None,
           dates=None, temporal: bool = True, keyframe_interval: int | None = None,
           tile_overlap: int | None = None, effort: str | None = None) -> bytes:
    """Encode ``array`` (bands, height, width) and return the bytes of a ``.tec`` file.

    A 4-D array (dates, bands, height, width) is a time stack: see :func:`write`."""
    if isinstance(array, np.ndarray) and array.ndim == 4:
        buf = io.BytesIO()
        write(buf, array, bands, quality, model, nodata, tile_size=tile_size, crs_wkt=crs_wkt,
              geotransform=geotransform, metadata=metadata, progress=progress, dates=dates,
              temporal=temporal, keyframe_interval=keyframe_interval, tile_overlap=tile_overlap,
              effort=effort)
        return buf.getvalue()
    array = _as_3d(array)
    _check_dtype(array.dtype, array)
    buf = io.BytesIO()
    write(buf, array, bands, quality, model, nodata, tile_size=tile_size, crs_wkt=crs_wkt,
          geotransform=geotransform, metadata=metadata, progress=progress, date=date,
          tile_overlap=tile_overlap, effort=effort)
    return buf.getvalue()


# -- reading ----------------------------------------------------------------------------------------------
def _parse_window(window, width: int, height: int) -> tuple[int, int, int, int]:
    """-> (row_start, row_stop, col_start, col_stop) inside the raster."""
    if window is None:
        return 0, height, 0, width
    try:
        if all(hasattr(window, a) for a in ("col_off", "row_off", "width", "height")):
            r0, c0 = window.row_off, window.col_off
            r1, c1 = r0 + window.height, c0 + window.width
        else:
            (r0, r1), (c0, c1) = window
        vals = [float(v) for v in (r0, r1, c0, c1)]
    except (TypeError, ValueError):
        raise TecInputError("window must be ((row_start, row_stop), (col_start, col_stop)) or an "
                            "object with col_off, row_off, width, height") from None
    if not all(v.is_integer() for v in vals):
        raise TecInputError(f"window offsets and sizes must be whole pixels, got {window!r}")
    r0, r1, c0, c1 = (int(v) for v in vals)
    if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
        raise TecInputError(f"window rows {r0}:{r1}, cols {c0}:{c1} is empty or outside the raster "
                            f"({height} rows x {width} cols)")
    return r0, r1, c0, c1


class TecDataset:
    """An open ``.tec`` file. Reads decode only the tiles a window touches."""

    def __init__(self, path, tile_cache: int | None = None):
        from .format import ContainerReader

        # bytes (decode()) and binary file objects are read as they are; a path must exist
        if not isinstance(path, (bytes, bytearray, memoryview)) and not hasattr(path, "read"):
            if not os.path.exists(os.fspath(path)):
                raise FileNotFoundError(f"No such file: {os.fspath(path)!r}")
        if tile_cache is not None and (isinstance(tile_cache, bool) or not isinstance(tile_cache, Integral)
                                       or tile_cache < 0):
            raise TecInputError(f"tile_cache must be a non-negative integer, got {tile_cache!r}")
        self.tile_cache = self.TILE_CACHE_SIZE if tile_cache is None else int(tile_cache)
        self._decoded_tiles: OrderedDict = OrderedDict()    # (date, ty, tx, reduce) -> read-only array, LRU
        self._decoded_lock = threading.Lock()
        self._reader = ContainerReader(path)
        self.name, self._size = self._reader.name, self._reader.size
        self._head = self._reader.header
        self.header = _header_dict(self._head)
        h = self.header
        try:
            self.width, self.height, self.count = int(h["width"]), int(h["height"]), int(h["count"])
            self.dtype = np.dtype(h["dtype"])
            self.bands = tuple(h["bands"])
            self.tile_size = int(h["tile_size"])
            self.tile_overlap = int(h.get("tile_overlap", 0))
            self.tiles_x, self.tiles_y = int(h["tiles_x"]), int(h["tiles_y"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TecFormatError(f"{self.name}: header lacks or has a bad field: {exc}") from None
        if (self.tiles_x, self.tiles_y) != _grid(self.width, self.height, self.tile_size):
            raise TecFormatError(f"{self.name}: tile grid does not match the raster size")
        self._closed = False

    # -- header views --
    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.count, self.height, self.width)

    @property
    def nodata(self):
        return self.header.get("nodata")

    @property
    def crs(self) -> str | None:
        return self.header.get("crs_wkt")

    @property
    def transform(self) -> tuple | None:
        gt = self.header.get("geotransform")
        return tuple(float(v) for v in gt) if gt is not None else None

    @property
    def affine(self):
        """The geotransform as an ``affine.Affine`` (needs the affine package; None without georef)."""
        from affine import Affine

        gt = self.transform
        return Affine.from_gdal(*gt) if gt is not None else None

    @property
    def profile(self) -> dict:
        """Keyword arguments for ``rasterio.open(path, "w", **profile)`` (GeoTIFF)."""
        try:
            transform = self.affine
        except ImportError:
            transform = self.transform
        return {"driver": "GTiff", "width": self.width, "height": self.height, "count": self.count,
                "dtype": self.dtype.name, "crs": self.crs, "transform": transform,
                "nodata": self.nodata}

    @property
    def quality(self) -> int | None:
        return self.header.get("quality")

    @property
    def model(self) -> str | None:
        return (self.header.get("model") or {}).get("name")

    @property
    def dates(self) -> list:
        return list(self.header.get("dates") or [None])

    @property
    def metadata(self) -> dict:
        return dict(self.header.get("metadata") or {})

    @property
    def stats(self) -> dict:
        """The header's stats, with the tile counts a writer left out (zeros) filled in
        (``temporal_tiles`` and ``predicted_tiles`` for time stacks only)."""
        stored = dict(self.header.get("stats") or {})
        counts = TILE_COUNTS if len(self.dates) > 1 else [k for k in TILE_COUNTS if k not in STACK_TILE_COUNTS]
        return {k: stored.get(k, 0) for k in counts} | stored

    @property
    def fallback_tiles(self) -> int | None:
        return self.stats.get("fallback_tiles")

    @property
    def compression_ratio(self) -> float:
        """Raw pixel bytes / file size (measured on the file, not taken from the header)."""
        raw = len(self.dates) * self.count * self.width * self.height * self.dtype.itemsize
        return raw / self._size

    @property
    def closed(self) -> bool:
        return self._closed

    # -- pixels --
    def _model_arg(self):
        name = self.model
        return None if name is None or name in tilecodec.BUILTIN_MODELS else name

    def _tile_index(self, ty: int, tx: int, date: int = 0) -> int:
        return self._head.entry_index(ty, tx, date)       # level 0

    @property
    def keyframe_interval(self) -> int | None:
        return self.header.get("keyframe_interval")

    def _stack_decoder(self):
        if getattr(self, "_stack", None) is None:
            from .stack import StackDecoder

            self._stack = StackDecoder(lambda d, ty, tx: bytes(self._reader.read_tile(self._tile_index(ty, tx, d))),
                                       self._model_arg())
        return self._stack

    TILE_CACHE_SIZE = 16      # default number of decoded tiles kept (block readers revisit overlaps)

    def _read_tile(self, ty: int, tx: int, date: int = 0, reduce: int = 0) -> np.ndarray:
        """The decoded pixels of the tile's coded extent (its core plus the overlap), at
        1/2**reduce resolution, cached."""
        key = (date, ty, tx, reduce)
        with self._decoded_lock:
            hit = self._decoded_tiles.get(key)
            if hit is not None:
                self._decoded_tiles.move_to_end(key)
                return hit
        if reduce and len(self.dates) > 1:       # temporal tiles decode in full only
            arr = tilecodec.reduce_pixels(self._read_tile(ty, tx, date), reduce, self.nodata)
        else:
            arr = self._decode_tile_at(ty, tx, date, reduce)
        arr.flags.writeable = False
        with self._decoded_lock:
            self._decoded_tiles[key] = arr
            while len(self._decoded_tiles) > self.tile_cache:
                self._decoded_tiles.popitem(last=False)
        return arr

    def _decode_tile_at(self, ty: int, tx: int, date: int, reduce: int = 0) -> np.ndarray:
        T, o = self.tile_size, self.tile_overlap
        y0, y1 = coded_extent(ty, T, o, self.height)
        x0, x1 = coded_extent(tx, T, o, self.width)
        shape = (self.count, tilecodec.reduced_size(y1 - y0, reduce), tilecodec.reduced_size(x1 - x0, reduce))
        i = self._tile_index(ty, tx, date)
        try:
            payload = self._reader.read_tile(i)          # checks the payload CRC
        except TecError as exc:
            if len(self.dates) > 1:                      # name the date as the file does
                raise type(exc)(f"{exc} [date {self.dates[date]}]") from exc
            raise
        where = f"{self.name}: tile (row {ty}, col {tx}) [index {i}]"
        if len(self.dates) > 1:
            where = f"{self.name}: date {self.dates[date]}, tile (row {ty}, col {tx}) [index {i}]"
        try:
            if len(self.dates) > 1:                     # time stack (terracodec.stack)
                arr = self._stack_decoder().tile(date, ty, tx)
            else:
                arr = tilecodec.decode_tile_reduced(bytes(payload), reduce, model=self._model_arg())
        except TecModelError:
            raise
        except TecError as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        except Exception as exc:                         # torch / rANS on bad streams
            raise TecDecodeError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if arr.shape != shape or arr.dtype != self.dtype:
            raise TecFormatError(f"{where}: decoded to {arr.dtype}{list(arr.shape)}, "
                                 f"the header says {self.dtype}{list(shape)}")
        return arr

    # -- overviews --
    def level_shape(self, level: int) -> tuple[int, int]:
        """(height, width) of overview level ``level``: the raster at 1/2**level resolution."""
        level = self._check_level(level)
        return tilecodec.reduced_size(self.height, level), tilecodec.reduced_size(self.width, level)

    def level_transform(self, level: int) -> tuple | None:
        """GDAL geotransform of overview level ``level`` (pixels scaled as GDAL scales overviews:
        by the ratio of the raster sizes, so the overview covers the same extent)."""
        gt = self.transform
        if gt is None:
            return None
        height, width = self.level_shape(level)
        sx, sy = self.width / width, self.height / height
        return (gt[0], gt[1] * sx, gt[2] * sy, gt[3], gt[4] * sx, gt[5] * sy)

    def _check_level(self, level) -> int:
        if isinstance(level, bool) or not isinstance(level, Integral) or not 0 <= level <= 30:
            raise TecInputError(f"level must be an integer 0..30 (1/2**level resolution), got {level!r}")
        return int(level)

    def _tile_reduce_limit(self, level: int) -> int:
        """Tiles are decoded at 1/2**r (r <= level) where tile cores and overlaps fall on whole
        pixels; the rest of the way is block averaging."""
        r = level
        for n in (self.tile_size, self.tile_overlap):
            if n:
                r = min(r, (n & -n).bit_length() - 1)      # 2**r divides n
        return r

    def _read_reduced(self, date: int, idx: list[int], window, level: int) -> np.ndarray:
        """Window (rows r0..r1, cols c0..c1 of overview ``level``) from tile cores decoded at
        reduced resolution (no cross-fade: the seams are below a pixel there)."""
        R0, R1, C0, C1 = window
        r = self._tile_reduce_limit(level)
        g = 1 << (level - r)
        Hr, Wr = self.level_shape(r)
        y0, y1, x0, x1 = R0 * g, min(Hr, R1 * g), C0 * g, min(Wr, C1 * g)
        T, o = self.tile_size, self.tile_overlap
        Tr = T >> r
        mosaic = np.empty((len(idx), y1 - y0, x1 - x0), self.dtype)
        for ty in range(y0 // Tr, (y1 - 1) // Tr + 1):
            oy = (ty * T - coded_extent(ty, T, o, self.height)[0]) >> r     # overlap above the core
            a0, a1 = max(y0, ty * Tr), min(y1, (ty + 1) * Tr)
            for tx in range(x0 // Tr, (x1 - 1) // Tr + 1):
                ox = (tx * T - coded_extent(tx, T, o, self.width)[0]) >> r
                b0, b1 = max(x0, tx * Tr), min(x1, (tx + 1) * Tr)
                tile = self._read_tile(ty, tx, date, r)
                mosaic[:, a0 - y0:a1 - y0, b0 - x0:b1 - x0] = tile[
                    idx, a0 - ty * Tr + oy:a1 - ty * Tr + oy, b0 - tx * Tr + ox:b1 - tx * Tr + ox]
        return tilecodec.reduce_pixels(mosaic, level - r, self.nodata)

    def _blend_result(self, values: np.ndarray) -> np.ndarray:
        """Cross-faded values -> the dtype, with nodata exactly where the tiles' masks put it."""
        out = tilecodec._to_dtype(values, self.dtype)
        if self.nodata is None:
            return out
        # every tile covering a pixel carries the same source pixels, so they agree on nodata, and
        # each has already set nodata exactly and kept valid pixels off it; only a blend of two
        # valid values can land on the nodata value: bump it off as a tile decoder does
        nodata = np.asarray(self.nodata).astype(self.dtype)
        hits = out == nodata
        if hits.any():
            exact = np.isclose(values, float(nodata), rtol=0, atol=1e-6)
            out[hits & ~exact] = tilecodec.off_nodata(nodata, self.dtype)
        return out

    def _band_indexes(self, bands) -> tuple[list[int], bool]:
        """-> (0-based indexes, squeeze) from None, a 1-based int, names or 1-based ints."""
        if bands is None:
            return list(range(self.count)), False
        if isinstance(bands, (Integral, str)) and not isinstance(bands, bool):
            idx, _ = self._band_indexes([bands])
            return idx, isinstance(bands, Integral)
        out = []
        for b in bands:
            if isinstance(b, Integral) and not isinstance(b, bool):
                if not 1 <= b <= self.count:
                    raise TecBandError(f"band index {b} out of range 1..{self.count} (1-based)")
                out.append(int(b) - 1)
            else:
                from .bands import normalize_band_name

                name = normalize_band_name(b)
                if name not in self.bands:
                    raise TecBandError(f"band {name} is not in this file ({', '.join(self.bands)})")
                out.append(self.bands.index(name))
        if not out:
            raise TecBandError("no bands selected")
        return out, False

    def read(self, window=None, bands=None, *, date=None, level: int = 0,
             progress: bool = False) -> np.ndarray:
        """Pixels of ``window`` (None = all) as (bands, rows, cols).

        ``window``: ((row_start, row_stop), (col_start, col_stop)) or an object with
        ``col_off, row_off, width, height`` (rasterio ``Window``). ``bands``: None (all), a list of
        Sentinel-2 names or 1-based indexes, or a single 1-based int (returns a 2-D array).
        ``date``: for a time stack (``.dates`` has several entries), which date: an ISO string
        (as in ``.dates``; a bare ``YYYY-MM-DD`` matches a date-time of that day), a
        ``datetime.date`` or an int index; required when the file holds several dates.
        ``level``: overview level, the raster at 1/2**level resolution (:meth:`level_shape`;
        ``window`` is then in that grid). Overviews do not decode full resolution: classical
        tiles keep only their coarse wavelet subbands (a JPEG 2000 low-pass), others are block
        averages; nodata where a whole block is nodata."""
        if self._closed:
            raise TecInputError("the dataset is closed")
        d = 0
        if date is not None or len(self.dates) > 1:
            from .stack import date_index

            if date is None:
                raise TecInputError(f"{self.name} holds {len(self.dates)} dates "
                                    f"({', '.join(str(x) for x in self.dates)}); pass date=...")
            d = date_index(self.dates, date)
        idx, squeeze = self._band_indexes(bands)
        if self._check_level(level):
            height, width = self.level_shape(level)
            out = self._read_reduced(d, idx, _parse_window(window, width, height), level)
            return out[0] if squeeze else out
        r0, r1, c0, c1 = _parse_window(window, self.width, self.height)
        T, o = self.tile_size, self.tile_overlap
        # tiles whose coded extent (core + overlap) meets the window
        tiles = [(ty, tx) for ty in range(max(0, (r0 - o) // T), min(self.tiles_y, (r1 - 1 + o) // T + 1))
                 for tx in range(max(0, (c0 - o) // T), min(self.tiles_x, (c1 - 1 + o) // T + 1))]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(tiles), unit="tile", desc="decode", leave=False)
        try:
            decoded = self._read_tiles(tiles, d, bar)
        finally:
            if bar is not None:
                bar.close()
        out = np.empty((len(idx), r1 - r0, c1 - c0), self.dtype)
        # The window splits into rectangles that one tile owns alone (copied) and the 2*o wide bands
        # around inner seams (cross-faded in float64): blending touches only the seam bands.
        for (a0, a1), rows_from in _axis_segments(r0, r1, T, o, self.height):
            for (b0, b1), cols_from in _axis_segments(c0, c1, T, o, self.width):
                if len(rows_from) == 1 and len(cols_from) == 1:
                    ty, tx = rows_from[0], cols_from[0]
                    ys, xs = coded_extent(ty, T, o, self.height)[0], coded_extent(tx, T, o, self.width)[0]
                    out[:, a0 - r0:a1 - r0, b0 - c0:b1 - c0] = decoded[ty, tx][idx, a0 - ys:a1 - ys, b0 - xs:b1 - xs]
                    continue
                acc = np.zeros((len(idx), a1 - a0, b1 - b0))
                wsum = np.zeros((a1 - a0, b1 - b0))
                for ty in rows_from:
                    ys = coded_extent(ty, T, o, self.height)[0]
                    wy = blend_weights(ty, T, o, self.height)[a0 - ys:a1 - ys]
                    for tx in cols_from:
                        xs = coded_extent(tx, T, o, self.width)[0]
                        wx = blend_weights(tx, T, o, self.width)[b0 - xs:b1 - xs]
                        w = wy[:, None] * wx[None, :]
                        acc += decoded[ty, tx][idx, a0 - ys:a1 - ys, b0 - xs:b1 - xs] * w
                        wsum += w
                out[:, a0 - r0:a1 - r0, b0 - c0:b1 - c0] = self._blend_result(acc / wsum)
        return out[0] if squeeze else out

    def _read_tiles(self, tiles, date: int, bar=None) -> dict:
        """{(ty, tx): decoded tile} of ``tiles`` of ``date``. Several tiles of a single-date file
        are decoded in parallel threads (terracodec.workers); a stack's tiles depend on earlier
        dates' and decode in order."""
        workers = min(len(tiles), READ_WORKERS) if len(self.dates) == 1 else 1
        decoded = {}
        with workers_module.CodingPool(workers, "tec-decode") as pool:
            for key, tile in zip(tiles, pool.map(lambda k: self._read_tile(*k, date), tiles)):
                decoded[key] = tile
                if bar is not None:          # counted here, in the caller: tqdm is not for many threads
                    bar.update(1)
        return decoded

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if hasattr(self._reader, "close"):
                self._reader.close()

    def __enter__(self) -> "TecDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<TecDataset {self.name!r} {self.count}x{self.height}x{self.width} {self.dtype} "
                f"model={self.model} quality={self.quality}>")


def open(path, *, tile_cache: int | None = None) -> TecDataset:   # noqa: A001 - mirrors rasterio.open
    """Open a ``.tec`` file for reading (FileNotFoundError if it does not exist).

    ``path`` may also be a seekable binary file object (e.g. ``fsspec.open("s3://...").open()``):
    only the header, the index and the tiles a read touches are fetched from it.

    ``tile_cache``: how many decoded tiles to keep (default 16); a reader that walks the raster in
    small blocks row by row wants about three tile rows."""
    return TecDataset(path, tile_cache=tile_cache)


def decode(data, *, window=None, date=None) -> np.ndarray:
    """Decode the bytes of a ``.tec`` file (all of it, or ``window``) to (bands, rows, cols).

    A time stack decodes to (dates, bands, rows, cols), or to one date's (bands, rows, cols) with
    ``date=``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TecInputError(f"decode() takes the bytes of a .tec file, got {type(data).__name__}; "
                            f"use terracodec.open(path) for files")
    with TecDataset(data) as ds:
        if date is None and len(ds.dates) > 1:
            return np.stack([ds.read(window, date=i) for i in range(len(ds.dates))])
        return ds.read(window, date=date)
