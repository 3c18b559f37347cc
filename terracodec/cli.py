# SPDX-License-Identifier: Apache-2.0
"""The ``tec`` command line tool.

    tec compress IN.tif OUT.tec [--quality Q] [--model NAME] [--bands B02,B03,...] [--tile-size N]
    tec decompress IN.tec OUT.tif
    tec info X.tec [--json]
    tec models [--json]
    tec train ... / tec bench ...            (passed through to terracodec.train / terracodec.bench)
    tec gdal-env / tec install-gdal-plugin   (GDAL driver plugin helpers)

Errors print one line ``tec: error: ...`` and exit with status 1; ``tec -v ...`` adds the traceback.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
import warnings

import click

from .errors import TecError

_EXPECTED = (TecError, FileNotFoundError, IsADirectoryError, PermissionError)


class _TecGroup(click.Group):
    """Turns the library's errors into ``tec: error: ...`` + exit status 1 (traceback with -v)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _EXPECTED as exc:
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exc()
            msg = str(exc) if not isinstance(exc, OSError) or not exc.filename else \
                f"{exc.strerror or exc}: {exc.filename}"
            click.echo(f"tec: error: {msg}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("tec: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_TecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="terracodec", prog_name="tec")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """TerraCodec: learned compression for Sentinel-2 rasters (.tec files)."""
    ctx.ensure_object(dict)["verbose"] = verbose
    if not verbose:                  # deprecation chatter of torch/compressai is not for CLI users
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def _progress_default(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+Z?)?$")


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("-q", "--quality", type=click.IntRange(1, 8), default=5, show_default=True,
              help="Quality 1 (smallest) .. 8 (best).")
@click.option("-m", "--model", default=None,
              help="Model name (`tec models`; default: the default model). 'lossless' stores tiles exactly.")
@click.option("-b", "--bands", default=None,
              help="Comma-separated Sentinel-2 band names, overriding the GeoTIFF band descriptions.")
@click.option("--tile-size", type=int, default=256, show_default=True, help="Tile width and height in pixels.")
@click.option("--nodata", type=float, default=None, help="Nodata value (default: the GeoTIFF's).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def compress(src, dst, quality, model, bands, tile_size, nodata, progress):
    """Compress the GeoTIFF SRC to the .tec file DST."""
    from . import api
    from .geotiff import read_geotiff

    array, meta = read_geotiff(src, bands=bands)
    if nodata is None:
        nodata = meta["nodata"]
    date = meta["tags"].get("ACQUISITION_DATE")
    date = date if date and _ISO_DATE.match(date) else None
    t0 = time.perf_counter()
    api.write(dst, array, meta["bands"], quality=quality, model=model, nodata=nodata, tile_size=tile_size,
              crs_wkt=meta["crs_wkt"], geotransform=meta["geotransform"], metadata=meta["tags"],
              date=date, progress=_progress_default(progress))
    elapsed = time.perf_counter() - t0
    with api.open(dst) as ds:
        size = os.path.getsize(dst)
        bpp = 8 * size / (ds.count * ds.width * ds.height)
        click.echo(f"{dst}: {ds.count} bands {ds.width}x{ds.height} {ds.dtype}, {size} bytes "
                   f"(ratio {ds.compression_ratio:.2f}, {bpp:.3f} bits/pixel/band), model {ds.model} "
                   f"q{ds.quality}, {ds.fallback_tiles} fallback tile(s), {elapsed:.2f} s")


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def decompress(src, dst, progress):
    """Decompress the .tec file SRC to the GeoTIFF DST (CRS, transform, bands, nodata kept)."""
    from . import api
    from .geotiff import write_geotiff

    t0 = time.perf_counter()
    with api.open(src) as ds:
        array = ds.read(progress=_progress_default(progress))
        write_geotiff(dst, array, ds.bands, crs_wkt=ds.crs, geotransform=ds.transform, nodata=ds.nodata,
                      tags=ds.metadata)
    click.echo(f"{dst}: {array.shape[0]} bands {array.shape[2]}x{array.shape[1]} {array.dtype}, "
               f"{time.perf_counter() - t0:.2f} s")


def _crs_name(wkt: str | None) -> str | None:
    if not wkt:
        return None
    try:
        from rasterio.crs import CRS

        crs = CRS.from_wkt(wkt)
        return crs.to_string() if crs.to_epsg() else crs.to_wkt()[:60] + "..."
    except Exception:
        m = re.match(r'\s*\w+\["([^"]+)"', wkt)
        return m.group(1) if m else wkt[:60]


def info_dict(path) -> dict:
    """What ``tec info --json`` prints (reads the header only; nothing is decoded)."""
    from . import api

    with api.open(path) as ds:
        size = os.path.getsize(path)
        h = ds.header
        return {
            "path": os.fspath(path), "size_bytes": size, "format_version": list(ds._reader.version),
            "width": ds.width, "height": ds.height, "count": ds.count, "shape": list(ds.shape),
            "dtype": ds.dtype.name, "bands": list(ds.bands), "nodata": ds.nodata,
            "crs": _crs_name(ds.crs), "crs_wkt": ds.crs,
            "geotransform": list(ds.transform) if ds.transform else None,
            "model": h.get("model"), "quality": ds.quality,
            "tile_size": ds.tile_size, "tiles_x": ds.tiles_x, "tiles_y": ds.tiles_y,
            "tiles": ds.tiles_x * ds.tiles_y, "dates": ds.dates,
            "fallback_tiles": ds.fallback_tiles,
            "compression_ratio": round(ds.compression_ratio, 4),
            "bits_per_pixel_per_band": round(8 * size / (ds.count * ds.width * ds.height), 4),
            "stats": ds.stats, "metadata": ds.metadata, "created_by": h.get("created_by"),
        }


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(path, as_json):
    """Describe a .tec file (header only, nothing is decoded)."""
    d = info_dict(path)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    model = d["model"] or {}
    sha = (model.get("sha256") or "")[:12]
    gt = d["geotransform"]
    lines = [
        f"file:         {d['path']} ({d['size_bytes']} bytes, format {d['format_version'][0]}.{d['format_version'][1]})",
        f"shape:        {d['count']} bands x {d['height']} rows x {d['width']} cols, {d['dtype']}",
        f"bands:        {','.join(d['bands'])}",
        f"nodata:       {d['nodata']}",
        f"crs:          {d['crs'] or '(none)'}",
        f"geotransform: {', '.join(f'{v:g}' for v in gt) if gt else '(none)'}",
        f"model:        {model.get('name')}" + (f" (sha256 {sha}...)" if sha else ""),
        f"quality:      {d['quality']}",
        f"tiles:        {d['tiles_x']} x {d['tiles_y']} of {d['tile_size']} px, "
        f"{d['fallback_tiles']} fallback (classical)",
        f"compression:  ratio {d['compression_ratio']:.2f}, {d['bits_per_pixel_per_band']:.3f} bits/pixel/band",
        f"dates:        {', '.join(str(x) for x in d['dates'])}",
        f"created by:   {d['created_by']}",
    ]
    click.echo("\n".join(lines))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json):
    """List the installed models."""
    try:
        from .weights import list_models
    except ImportError:
        click.echo("tec: no model registry in this installation (terracodec.weights is missing); "
                   "only --model lossless is available", err=True)
        sys.exit(1)
    entries = list_models()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for m in entries:
        mark = "*" if m.get("default") else " "
        click.echo(f"{mark} {m['name']:<14} {m.get('entropy', ''):<11} sha256 {str(m.get('sha256', ''))[:12]}  "
                   f"{m.get('description', '')}")
    click.echo("  lossless       (built in)  exact storage, no weights needed")
    click.echo("(* = default; qualities 1..8)")


_PASS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _delegate(module: str, args) -> None:
    import importlib

    try:
        mod = importlib.import_module(f"terracodec.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"terracodec.{module}":
            raise
        click.echo(f"tec: error: `tec {module}` is not available in this installation "
                   f"(terracodec.{module} is missing)", err=True)
        sys.exit(1)
    rc = mod.main(list(args))
    if isinstance(rc, int) and rc:
        sys.exit(rc)


@cli.command(context_settings=_PASS, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args):
    """Train a model (terracodec.train; `tec train --help`)."""
    _delegate("train", args)


@cli.command(context_settings=_PASS, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args):
    """Rate-distortion benchmark (terracodec.bench; `tec bench --help`)."""
    _delegate("bench", args)


@cli.command("gdal-env")
def gdal_env():
    """Print shell lines that let GDAL tools find the TEC plugin: eval "$(tec gdal-env)"."""
    from .gdal_bridge import gdal_env_lines

    click.echo("\n".join(gdal_env_lines()))


@cli.command("install-gdal-plugin")
@click.option("--dest", default=None, help="Plugin directory (default: GDAL's compiled-in one, for QGIS).")
def install_gdal_plugin(dest):
    """Copy the built GDAL plugin to GDAL's plugin directory (after `make -C gdal_plugin install`)."""
    from .gdal_bridge import SYSTEM_PLUGIN_DIR, install_plugin

    click.echo(f"installed {install_plugin(dest or SYSTEM_PLUGIN_DIR)}")


def main(argv=None) -> None:
    """Console script entry point (``tec``)."""
    cli.main(args=argv, prog_name="tec")


if __name__ == "__main__":
    main()
