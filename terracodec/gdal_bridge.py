# SPDX-License-Identifier: Apache-2.0
"""Python side of the GDAL driver plugin ``gdal_TEC.so`` (see gdal_plugin/README.md).

The C++ driver parses the container itself (header, tile index, CRCs) and calls only these:

* :func:`decode_payload` -- one tile payload (bytes-like) -> raw pixels (bytes);
* :class:`Encoder` -- CreateCopy: ``Encoder(params_json)``, ``write_rows(buffer, nrows)``,
  ``close()``, ``abort()``; wraps :class:`terracodec.Writer`.

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


def _set_threads(value) -> None:
    if value is None:
        return
    n = (os.cpu_count() or 1) if str(value).upper() == "ALL_CPUS" else int(value)
    try:
        import torch

        torch.set_num_threads(max(1, n))
    except ImportError:                                          # pragma: no cover
        pass


class Encoder:
    """CreateCopy target: receives horizontal strips of whole tile rows from the C++ driver.

    ``params_json`` holds: path, width, height, count, dtype, bands (str, list or null), quality,
    model, nodata, tile_size, crs_wkt, geotransform, metadata, num_threads (optional)."""

    def __init__(self, params_json: str):
        from .api import Writer
        from .bands import resolve_bands

        p = json.loads(params_json)
        self.count, self.width = int(p["count"]), int(p["width"])
        self.dtype = np.dtype(p["dtype"])
        bands = resolve_bands(_band_names(p.get("bands"), self.count), self.count)
        nodata = p.get("nodata")
        if nodata is not None and float(nodata).is_integer():
            nodata = int(nodata)
        _set_threads(p.get("num_threads"))
        self._writer = Writer(
            p["path"], int(p["width"]), int(p["height"]), self.count, self.dtype, bands,
            quality=int(p.get("quality", 5)), model=p.get("model"), nodata=nodata,
            tile_size=int(p.get("tile_size", 256)), crs_wkt=p.get("crs_wkt"),
            geotransform=p.get("geotransform"), metadata=p.get("metadata") or None)

    def write_rows(self, buffer, nrows: int) -> None:
        """``buffer``: (count, nrows, width) little-endian pixels, only valid during this call."""
        arr = np.frombuffer(buffer, dtype=self.dtype.newbyteorder("<"))
        arr = arr.reshape(self.count, int(nrows), self.width).astype(self.dtype, copy=True)
        self._writer.write(arr)

    def close(self) -> None:
        self._writer.close()

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
