# SPDX-License-Identifier: Apache-2.0
"""Read ``.tec`` files with a GDAL that cannot load the TEC plugin (e.g. the one bundled in the
rasterio/GDAL wheels from PyPI): ``tec vrt X.tec > X.vrt`` writes a read-only VRT whose bands are
``VRTDerivedRasterBand`` with a Python pixel function, :func:`pixel_function`, that decodes the
requested window with :func:`terracodec.open` (one open dataset kept per file).

GDAL runs Python pixel functions only when allowed::

    export GDAL_VRT_ENABLE_PYTHON=YES                        # or, narrower:
    export GDAL_VRT_PYTHON_TRUSTED_MODULES=terracodec.vrt

Inside a Python process (rasterio, osgeo) GDAL uses that interpreter, which must be able to import
terracodec. A GDAL command line tool (gdal_translate, gdalinfo -stats, QGIS) starts Python itself:
it finds libpython by name or through ``PYTHONSO=/path/to/libpython3.X.so``, and that interpreter
needs terracodec and its dependencies on its path (``PYTHONPATH=<venv>/lib/python3.X/site-packages``).
"""
from __future__ import annotations

import os
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from .errors import TecInputError

PIXEL_FUNCTION = "terracodec.vrt.pixel_function"
_GDAL_TYPES = {"uint8": "Byte", "int16": "Int16", "uint16": "UInt16"}


def build_vrt(path, *, date=None) -> str:
    """The VRT XML (str) that reads the ``.tec`` file ``path`` (for a time stack: ``date``, an ISO
    date as in ``.dates`` or a 0-based index) through :func:`pixel_function`."""
    from . import api
    from .stack import date_index

    path = os.path.abspath(os.fspath(path))
    with api.open(path) as ds:
        d = None
        if date is not None or len(ds.dates) > 1:
            if date is None:
                raise TecInputError(f"{path} is a time stack of {len(ds.dates)} dates "
                                    f"({', '.join(str(x) for x in ds.dates)}); pass --date")
            if isinstance(date, str) and date.isdigit():
                date = int(date)
            d = date_index(ds.dates, date)
        when = ds.dates[d] if d is not None else ds.dates[0]
        lines = [f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">']
        if ds.crs:
            lines.append(f"  <SRS>{escape(ds.crs)}</SRS>")
        if ds.transform:
            lines.append(f"  <GeoTransform>{', '.join(repr(float(v)) for v in ds.transform)}</GeoTransform>")
        meta = dict(ds.metadata)
        if when:
            meta["DATE"] = when
        if meta:
            lines.append("  <Metadata>")
            lines += [f"    <MDI key={quoteattr(k)}>{escape(str(v))}</MDI>" for k, v in meta.items()]
            lines.append("  </Metadata>")
        args = f"path={quoteattr(path)}" + (f" date={quoteattr(str(d))}" if d is not None else "")
        for b, name in enumerate(ds.bands, start=1):
            lines += [
                f'  <VRTRasterBand dataType="{_GDAL_TYPES[ds.dtype.name]}" band="{b}" '
                f'subClass="VRTDerivedRasterBand">',
                f"    <Description>{escape(name)}</Description>",
            ]
            if ds.nodata is not None:
                lines.append(f"    <NoDataValue>{ds.nodata}</NoDataValue>")
            if when:
                lines.append(f'    <Metadata><MDI key="DATE">{escape(when)}</MDI></Metadata>')
            lines += [
                f"    <PixelFunctionType>{PIXEL_FUNCTION}</PixelFunctionType>",
                "    <PixelFunctionLanguage>Python</PixelFunctionLanguage>",
                f'    <PixelFunctionArguments {args} band="{b}"/>',
                f"    <BlockXSize>{min(ds.tile_size, ds.width)}</BlockXSize>",
                f"    <BlockYSize>{min(ds.tile_size, ds.height)}</BlockYSize>",
                "  </VRTRasterBand>",
            ]
        lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def env_lines() -> list[str]:
    """Shell lines that let GDAL command line tools run :func:`pixel_function` with this
    environment's Python (``tec vrt --env``)."""
    import sysconfig
    from pathlib import Path

    lines = ["export GDAL_VRT_ENABLE_PYTHON=YES"]
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and soname \
            and (Path(libdir) / soname).exists():
        lines.append(f'export PYTHONSO="{Path(libdir) / soname}"')
    # the package's parent (a source checkout / editable install: .pth files are not read from
    # PYTHONPATH) and this environment's site-packages
    paths = [str(Path(__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"]]
    paths = list(dict.fromkeys(paths))
    lines.append(f'export PYTHONPATH="{os.pathsep.join(paths)}${{PYTHONPATH:+{os.pathsep}$PYTHONPATH}}"')
    return lines


def pixel_function(in_ar, out_ar, xoff, yoff, xsize, ysize, raster_xsize, raster_ysize, buf_radius,
                   gt, **kwargs):
    """GDAL VRT pixel function: fills ``out_ar`` with band ``band`` of the window (``xoff, yoff,
    xsize, ysize``) of the ``.tec`` file ``path`` (date index ``date`` of a time stack).

    When GDAL asks for fewer pixels than the window holds (``out_ar`` smaller: a zoomed-out read),
    pixels are taken nearest to the centres of the output pixels."""
    from .gdal_bridge import open_cached

    args = {k: v.decode() if isinstance(v, bytes) else v for k, v in kwargs.items()}  # GDAL: bytes
    ds = open_cached(args["path"])
    date = args.get("date")
    band = int(args["band"])
    xoff, yoff, xsize, ysize = int(xoff), int(yoff), int(xsize), int(ysize)
    data = ds.read(window=((yoff, yoff + ysize), (xoff, xoff + xsize)), bands=band,
                   date=int(date) if date is not None else None)
    h, w = out_ar.shape
    if (h, w) != data.shape:
        rows = np.minimum(((np.arange(h) + 0.5) * ysize / h).astype(np.int64), ysize - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * xsize / w).astype(np.int64), xsize - 1)
        data = data[rows[:, None], cols[None, :]]
    out_ar[:] = data
