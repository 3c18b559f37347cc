# SPDX-License-Identifier: Apache-2.0
"""Python side of the GDAL driver plugin ``gdal_TEC.so`` (see gdal_plugin/README.md).

The C++ driver parses the container itself (header, tile index, CRCs) and calls only these:

* :func:`decode_payload` -- one tile payload (bytes-like) -> raw pixels (bytes);
* :func:`read_window` -- a window of one date of a file -> raw pixels (bytes), through a cached
  :func:`terracodec.open`; used where tiles cannot be decoded one by one (time stack dates,
  whose temporal tiles need earlier dates, and images whose tiles overlap and are cross-faded);
* :class:`Encoder` -- CreateCopy: ``Encoder(params_json)``, ``write_rows(buffer, nrows)``,
  ``close()``, ``abort()``; wraps :class:`terracodec.Writer`, or with ``dates`` in the parameters
  (``-co TEMPORAL=YES``) a :class:`terracodec.stack.StackWriter`.

Arguments and results are primitive types only (str, int, bytes-like), so the C++ side needs no
numpy or Python headers. Everything else here is for the ``tec`` CLI (:func:`gdal_env_lines`,
:func:`plugin_dir`, :func:`install_plugin`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import TecBandError, TecInputError

PLUGIN_NAME = "gdal_TEC.so"
CONFIG_NAME = "gdal_TEC.json"
SYSTEM_PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/gdalplugins"   # Debian's compiled-in GDAL_DRIVER_PATH


# -- read ---------------------------------------------------------------------------------------------
def decode_payload(payload, model: str, count: int, height: int, width: int, dtype: str) -> bytes:
    """Decode one tile payload to band-sequential little-endian pixels ``(count, height, width)``.

    ``model`` is the model name from the file header ("" = the default model)."""
    from . import tilecodec

    arr = tilecodec.decode_tile(bytes(payload), model=model or None)
    want = np.dtype(dtype)
    if arr.shape != (count, height, width) or arr.dtype != want:
        raise TecInputError(f"tile decoded to {arr.dtype}{list(arr.shape)}, "
                            f"the header says {want}{[count, height, width]}")
    return np.ascontiguousarray(arr, dtype=want.newbyteorder("<")).tobytes()


_OPEN_CACHE: OrderedDict = OrderedDict()     # abspath or /vsi path -> (_stamp(path), TecDataset)
_OPEN_CACHE_SIZE = 8
_OPEN_CACHE_LOCK = threading.Lock()


class VSIFile:
    """A read-only binary file object over GDAL's virtual file systems (``/vsizip/``,
    ``/vsicurl/``, ``/vsis3/``, ``/vsimem/`` ...), through GDAL's Python bindings (osgeo): so the
    driver's Python side reads .tec files wherever GDAL can, fetching only the bytes it needs."""

    def __init__(self, path: str):
        try:
            from osgeo import gdal
        except ImportError:
            raise TecInputError(f"{path}: reading GDAL virtual file systems from Python needs GDAL's "
                                f"Python bindings (osgeo) in the TerraCodec environment "
                                f"(make install adds them)") from None
        self._gdal, self.name = gdal, path
        self._fp = gdal.VSIFOpenL(path, "rb")
        if self._fp is None:
            raise FileNotFoundError(f"GDAL cannot open {path} (a /vsimem/ file is only visible in "
                                    f"the process that made it, not in a worker process)")

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self._gdal.VSIFSeekL(self._fp, int(offset), whence) != 0:
            raise OSError(f"{self.name}: cannot seek to {offset}")
        return self._gdal.VSIFTellL(self._fp)

    def read(self, size: int) -> bytes:
        return bytes(self._gdal.VSIFReadL(1, int(size), self._fp) or b"")

    def close(self) -> None:
        fp, self._fp = self._fp, None
        if fp is not None:
            self._gdal.VSIFCloseL(fp)

    def __del__(self):
        self.close()


def _stamp(key: str):
    """What identifies one version of a file: a rewritten file gets another stamp."""
    if key.startswith("/vsi"):
        from osgeo import gdal

        st = gdal.VSIStatL(key)
        if st is None:
            raise FileNotFoundError(f"GDAL cannot find {key}")
        return (st.size, st.mtime)
    st = os.stat(key)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def open_cached(path):
    """``terracodec.open(path)``, kept open for later calls (least recently used of 8 paths).

    A file replaced or rewritten under the same name (other inode, size or mtime) is reopened.
    GDAL virtual paths (``/vsi...``) are read through :class:`VSIFile`. The returned dataset may be
    shared by threads (its reads are thread-safe)."""
    from . import api

    path = os.fspath(path)
    key = path if path.startswith("/vsi") else os.path.abspath(path)
    try:
        stamp = _stamp(key)
    except ImportError:
        stamp = None                    # no osgeo: VSIFile raises the clear error below
    with _OPEN_CACHE_LOCK:
        hit = _OPEN_CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            _OPEN_CACHE.move_to_end(key)
            return hit[1]
    ds = api.open(VSIFile(key) if key.startswith("/vsi") else key)
    # GDAL reads block by block, row after row; with overlapping tiles a block also needs the
    # tiles around it, so keep three tile rows decoded (bounded to ~256 MiB) instead of 16 tiles
    side = ds.tile_size + 2 * ds.tile_overlap
    per_tile = ds.count * ds.dtype.itemsize * side * side
    ds.tile_cache = max(ds.tile_cache, min(3 * ds.tiles_x + 3, (256 << 20) // max(1, per_tile)))
    with _OPEN_CACHE_LOCK:
        old = _OPEN_CACHE.pop(key, None)
        _OPEN_CACHE[key] = (stamp, ds)
        while len(_OPEN_CACHE) > _OPEN_CACHE_SIZE:
            _OPEN_CACHE.popitem(last=False)
    # an evicted/replaced dataset is left to the garbage collector: another thread may still read it
    del old
    return ds


def read_window(path: str, date: int, xoff: int, yoff: int, xsize: int, ysize: int,
                level: int = 0) -> bytes:
    """Pixels of the window (``xoff, yoff, xsize, ysize``) of date ``date`` (0-based index) of the
    ``.tec`` file ``path``: band-sequential little-endian ``(count, ysize, xsize)``.

    ``level`` > 0 reads overview level ``level`` (reduced by ``2**level``; the window is in its
    pixel grid)."""
    ds = open_cached(path)
    window = ((int(yoff), int(yoff) + int(ysize)), (int(xoff), int(xoff) + int(xsize)))
    arr = ds.read(window=window, date=int(date) if len(ds.dates) > 1 or int(date) else None,
                  level=int(level))
    return np.ascontiguousarray(arr, dtype=ds.dtype.newbyteorder("<")).tobytes()


# -- write ---------------------------------------------------------------------------------------------
def _band_names(value, count: int):
    """BANDS creation option (str), the source's band descriptions (list) or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [b.strip() for b in value.split(",") if b.strip()]
    names = [str(v).strip() for v in value]
    missing = [i + 1 for i, n in enumerate(names) if not n]
    if missing:
        raise TecBandError(
            f"band(s) {missing} of the source have no description, so their Sentinel-2 names are "
            f"unknown; pass them with -co BANDS=B02,B03,... ({count} names)")
    return names


def _workers(value) -> int | None:
    """-co NUM_THREADS (an integer or ALL_CPUS) -> the writer's tile threads (None: its default)."""
    if value is None:
        return None
    if str(value).strip().upper() == "ALL_CPUS":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise TecInputError(f"NUM_THREADS must be a positive integer or ALL_CPUS, got {value!r}")
    return n


class Encoder:
    """CreateCopy target: receives horizontal strips of whole tile rows from the C++ driver.

    ``params_json`` holds: path, width, height, count, dtype, bands (str, list or null), quality,
    model, nodata, tile_size, crs_wkt, geotransform, metadata, num_threads and effort (optional).

    Time stack (``-co TEMPORAL=YES``): ``dates`` (one ISO date per group of ``count`` source bands)
    and ``keyframe_interval`` (or null); strips then hold ``len(dates) * count`` bands, date-major,
    and go to a :class:`terracodec.stack.StackWriter` (TEC-TT), which codes each row of tiles as
    it arrives and writes the file at :meth:`close`."""

    def __init__(self, params_json: str):
        from .bands import resolve_bands

        p = json.loads(params_json)
        self.count, self.width = int(p["count"]), int(p["width"])
        self.height = int(p["height"])
        self.dtype = np.dtype(p["dtype"])
        bands = resolve_bands(_band_names(p.get("bands"), self.count), self.count)
        nodata = p.get("nodata")
        if nodata is not None and float(nodata).is_integer():
            nodata = int(nodata)
        kwargs = dict(quality=int(p.get("quality", 5)), model=p.get("model"), nodata=nodata,
                      tile_size=p.get("tile_size"), crs_wkt=p.get("crs_wkt"),
                      geotransform=p.get("geotransform"), metadata=p.get("metadata") or None,
                      workers=_workers(p.get("num_threads")), effort=p.get("effort"))
        self.dates = p.get("dates")
        if self.dates is not None:
            from .stack import StackWriter, check_dates, is_temporal_model
            from .tilecodec import BUILTIN_MODELS

            self.dates = check_dates(self.dates, len(self.dates))      # ISO, distinct
            ki = p.get("keyframe_interval")
            model = p.get("model")
            # TEC-TT with the default or a temporal model; an image or built-in model codes each date alone
            temporal = model is None or model in BUILTIN_MODELS or is_temporal_model(model)
            self._writer = StackWriter(p["path"], self.width, self.height, self.count, self.dtype, bands,
                                       dates=self.dates, temporal=temporal,
                                       keyframe_interval=None if ki is None else int(ki), **kwargs)
            return
        from .api import Writer

        self._writer = Writer(p["path"], self.width, self.height, self.count, self.dtype, bands,
                              **kwargs)

    def write_rows(self, buffer, nrows: int) -> None:
        """``buffer``: (bands, nrows, width) little-endian pixels, only valid during this call."""
        nrows = int(nrows)
        arr = np.frombuffer(buffer, dtype=self.dtype.newbyteorder("<"))
        shape = (self.count, nrows, self.width) if self.dates is None else \
            (len(self.dates), self.count, nrows, self.width)
        self._writer.write(arr.reshape(shape).astype(self.dtype, copy=True))

    def close(self) -> None:
        self._writer.close()        # atomic: no file on failure

    def abort(self) -> None:
        self._writer.abort()


# -- installation helpers for the CLI --------------------------------------------------------------------
def plugin_dir() -> Path:
    """Where ``make -C gdal_plugin install`` puts the plugin for this environment."""
    return Path(sys.prefix) / "lib" / "gdalplugins"


def gdal_env_lines() -> list[str]:
    """Shell lines that make GDAL tools, rasterio and QGIS find the TEC plugin (``tec gdal-env``)."""
    d = plugin_dir()
    lines = []
    if not (d / PLUGIN_NAME).exists():
        lines.append(f"# warning: {d / PLUGIN_NAME} is not installed yet; run `make -C gdal_plugin install`")
    lines.append(f'export GDAL_DRIVER_PATH="{d}${{GDAL_DRIVER_PATH:+:$GDAL_DRIVER_PATH}}"')
    return lines


def install_plugin(dest: str | os.PathLike = SYSTEM_PLUGIN_DIR) -> Path:
    """Copy the built plugin and its config to ``dest`` (``tec install-gdal-plugin --system``).

    GDAL finds plugins in its compiled-in directory without any environment variable, which is
    what QGIS needs. Returns the installed plugin path."""
    src = plugin_dir()
    if not (src / PLUGIN_NAME).exists():
        raise FileNotFoundError(f"{src / PLUGIN_NAME} not found; run `make -C gdal_plugin install` first")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / PLUGIN_NAME, dest / PLUGIN_NAME)
    cfg = json.loads((src / CONFIG_NAME).read_text()) if (src / CONFIG_NAME).exists() else {}
    cfg.setdefault("python", str(Path(sys.prefix) / "bin" / "python"))
    cfg.setdefault("python_version", f"{sys.version_info.major}.{sys.version_info.minor}")
    cfg.setdefault("module", "terracodec.gdal_bridge")
    purelib = sysconfig.get_paths()["purelib"]
    if purelib not in cfg.setdefault("pythonpath", []):
        cfg["pythonpath"].append(purelib)
    (dest / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return dest / PLUGIN_NAME
