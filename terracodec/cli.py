# SPDX-License-Identifier: Apache-2.0
"""The ``tec`` command line tool.

    tec compress IN.tif OUT.tec [--quality Q] [--model NAME] [--bands B02,B03,...] [--tile-size N]
    tec compress --out-dir DIR A.tif B.tif ...           (each to DIR/<name>.tec, in one process)
    tec compress ... --workers N                         (tile threads; default up to 4, one per core)
    tec compress ... --effort best                       (4-8 % fewer bits, ~2x the encode time)
    tec compress ... --effort fast                       (tiles of 256 px or more 1.2-1.5x faster, ~1 % larger)
    tec compress --stack A.tif B.tif C.tif OUT.tec [--no-temporal] [--keyframe-interval K] [--dates ...]
    tec decompress IN.tec OUT.tif
    tec decompress STACK.tec --date 2021-06-01 OUT.tif    (or STACK.tec FOLDER: every date)
    tec info X.tec [--json]
    tec models [--json]
    tec train ... / tec bench ...            (passed through to terracodec.train / terracodec.bench)
    tec gdal-env / tec install-gdal-plugin   (GDAL driver plugin helpers)
    tec vrt X.tec [--date D] > X.vrt         (VRT with a Python pixel function, for GDALs without the plugin)

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
from .tilecodec import DEFAULT_EFFORT, EFFORTS

_EXPECTED = (TecError, FileNotFoundError, IsADirectoryError, PermissionError)


class _TecGroup(click.Group):
    """Turns the library's errors into ``tec: error: ...`` + exit status 1 (traceback with -v)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _EXPECTED as exc:
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exc()
            click.echo(f"tec: error: {_error_text(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("tec: interrupted", err=True)
            ctx.exit(130)


def _error_text(exc: BaseException) -> str:
    return str(exc) if not isinstance(exc, OSError) or not exc.filename else f"{exc.strerror or exc}: {exc.filename}"


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
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-q", "--quality", type=click.IntRange(1, 8), default=5, show_default=True,
              help="Quality 1 (smallest) .. 8 (best).")
@click.option("-m", "--model", default=None,
              help="Model name (`tec models`; default: the default model). 'lossless' stores tiles exactly; "
                   "'classical' never tries the learned candidate (other models: only with --effort best).")
@click.option("-b", "--bands", default=None,
              help="Comma-separated Sentinel-2 band names, overriding the GeoTIFF band descriptions.")
@click.option("--tile-size", type=int, default=None,
              help="Tile width and height in pixels (default: about 512, splitting the image evenly).")
@click.option("--nodata", type=float, default=None, help="Nodata value (default: the GeoTIFF's).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--stack", "is_stack", is_flag=True,
              help="PATHS are several GeoTIFFs of one grid (one per date) then OUT.tec: write a time stack.")
@click.option("--temporal/--no-temporal", default=True, show_default=True,
              help="With --stack: code later dates against earlier ones (TEC-TT latents, or predicted "
                   "from an earlier date's pixels, where cheaper) or each date alone.")
@click.option("--keyframe-interval", type=click.IntRange(1, 65535), default=None,
              help="With --stack: a date coded alone every K dates (default 8).")
@click.option("--dates", "dates_opt", default=None,
              help="With --stack: comma-separated ISO dates (default: ACQUISITION_DATE tags, else a "
                   "YYYY-MM-DD in the file names).")
@click.option("--effort", type=click.Choice(EFFORTS), default=DEFAULT_EFFORT, show_default=True,
              help="Encoder effort: 'best' searches longer (AV1 also for 20 m / 60 m bands, slower "
                   "AV1, the learned candidate): 4-8 % fewer bits on val for about 2x the encode time; "
                   "'fast' encodes tiles of 256 px or more 1.2-1.5x faster for about 1 % more bits "
                   "(the decoder is the same).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Threads that code tiles in parallel (default: up to 4, one per core). Each holds "
                   "about two tiles in flight, so memory grows with it.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="PATHS are GeoTIFFs, each compressed to OUT_DIR/<name>.tec in this one process (the "
                   "start-up and the model load are paid once); a file that fails is reported and the "
                   "others go on (exit status 1 when any failed).")
def compress(paths, quality, model, bands, tile_size, nodata, progress, is_stack, temporal,
             keyframe_interval, dates_opt, effort, workers, out_dir):
    """Compress the GeoTIFF SRC to the .tec file DST (PATHS = SRC DST), with --out-dir DIR every
    GeoTIFF of PATHS to DIR/<name>.tec, or with --stack the GeoTIFFs A.tif B.tif ... (dates of one
    place) to one .tec time stack (PATHS = A.tif ... OUT.tec)."""
    if is_stack:
        if out_dir is not None:
            raise click.UsageError("--out-dir and --stack do not go together (a stack is one output file)")
        _compress_stack(paths, quality, model, bands, tile_size, nodata, progress, temporal,
                        keyframe_interval, dates_opt, workers, effort)
        return
    options = dict(quality=quality, model=model, bands=bands, tile_size=tile_size, nodata=nodata,
                   progress=progress, workers=workers, effort=effort)
    if out_dir is not None:
        _compress_batch(paths, out_dir, options)
        return
    if len(paths) != 2:
        raise click.UsageError(f"expected SRC DST, got {len(paths)} path(s); use --out-dir DIR for several "
                               f"files, --stack for several dates")
    _compress_file(*paths, **options)


def _compress_batch(srcs, out_dir: str, options: dict) -> None:
    """Every GeoTIFF of ``srcs`` to OUT_DIR/<stem>.tec; failures are reported, the rest still written."""
    from pathlib import Path

    dsts = [Path(out_dir) / (Path(src).stem + ".tec") for src in srcs]
    seen: dict = {}
    for src, dst in zip(srcs, dsts):
        if dst in seen:
            raise click.UsageError(f"{seen[dst]} and {src} would both be written to {dst}")
        seen[dst] = src
    os.makedirs(out_dir, exist_ok=True)
    t0, failed, sizes = time.perf_counter(), [], [0, 0]
    for src, dst in zip(srcs, dsts):
        try:
            _compress_file(src, str(dst), **options)
        except _EXPECTED as exc:
            failed.append(src)
            click.echo(f"tec: error: {src}: {_error_text(exc)}", err=True)
            continue
        sizes[0] += os.path.getsize(src)
        sizes[1] += os.path.getsize(dst)
    done = len(srcs) - len(failed)
    click.echo(f"{done} of {len(srcs)} files compressed to {out_dir} ({sizes[0]} -> {sizes[1]} bytes on disk), "
               f"{time.perf_counter() - t0:.1f} s")
    if failed:
        raise click.exceptions.Exit(1)


def _compress_file(src, dst, *, quality, model, bands, tile_size, nodata, progress, workers, effort) -> None:
    from . import api
    from .geotiff import geotiff_meta, geotiff_strips

    meta = geotiff_meta(src, bands=bands)
    _refuse_unsupported_dtype(src, meta, bands)
    if nodata is None:
        nodata = meta["nodata"]
    date = meta["tags"].get("ACQUISITION_DATE")
    date = date if date and _ISO_DATE.match(date) else None
    t0 = time.perf_counter()
    count, height, width = meta["shape"]
    # strip by strip: the GeoTIFF is never held in memory whole
    with api.Writer(dst, width, height, count, meta["dtype"], meta["bands"], quality=quality, model=model,
                    nodata=nodata, tile_size=tile_size, crs_wkt=meta["crs_wkt"],
                    geotransform=meta["geotransform"], metadata=meta["tags"], date=date,
                    progress=_progress_default(progress), workers=workers, effort=effort) as w:
        for strip in geotiff_strips(src, w.tile_size):
            w.write(strip)
    elapsed = time.perf_counter() - t0
    with api.open(dst) as ds:
        size = os.path.getsize(dst)
        bpp = 8 * size / (ds.count * ds.width * ds.height)
        click.echo(f"{dst}: {ds.count} bands {ds.width}x{ds.height} {ds.dtype}, {size} bytes "
                   f"(ratio {ds.compression_ratio:.2f}, {bpp:.3f} bits/pixel/band), model {ds.model} "
                   f"q{ds.quality}, tiles: {ds.stats.get('learned_tiles', 0)} learned, {ds.fallback_tiles} classical, "
                   f"{ds.stats.get('lossless_tiles', 0)} lossless, {elapsed:.2f} s")


def _refuse_unsupported_dtype(src, meta: dict, bands) -> None:
    """TecInputError for a GeoTIFF TEC cannot code; such a file is read whole, to say if it holds NaN."""
    import numpy as np

    from . import api
    from .geotiff import read_geotiff

    if np.dtype(meta["dtype"]) not in api.SUPPORTED_DTYPES:
        array, _ = read_geotiff(src, bands=bands)
        api._check_dtype(array.dtype, array)


def _compress_stack(paths, quality, model, bands, tile_size, nodata, progress, temporal,
                    keyframe_interval, dates_opt, workers, effort):
    import numpy as np

    from . import api
    from .errors import TecInputError
    from .geotiff import geotiff_meta, geotiff_strips
    from .stack import StackWriter, check_dates

    if len(paths) < 2:
        raise click.UsageError("--stack needs at least one input GeoTIFF and the output .tec")
    *srcs, dst = paths
    metas = [geotiff_meta(src, bands=bands) for src in srcs]
    first = metas[0]
    for src, m in zip(srcs[1:], metas[1:]):
        if m["shape"] != first["shape"] or m["dtype"] != first["dtype"] or m["bands"] != first["bands"]:
            raise TecInputError(f"{src}: {m['dtype']}{list(m['shape'])} bands {','.join(m['bands'])} differs "
                                f"from {srcs[0]}: {first['dtype']}{list(first['shape'])} bands "
                                f"{','.join(first['bands'])}; a stack needs one grid")
    _refuse_unsupported_dtype(srcs[0], first, bands)
    if dates_opt:
        dates = [d.strip() for d in dates_opt.split(",")]
    else:
        dates = []
        for src, m in zip(srcs, metas):
            d = m["tags"].get("ACQUISITION_DATE")
            if not (d and _ISO_DATE.match(d)):
                found = re.search(r"\d{4}-\d{2}-\d{2}", os.path.basename(src))
                d = found.group(0) if found else None
            if d is None:
                raise TecInputError(f"{src}: no date (no ACQUISITION_DATE tag, no YYYY-MM-DD in its name); "
                                    f"pass --dates")
            dates.append(d)
    if nodata is None:
        nodata = first["nodata"]
    metadata = {k: v for k, v in first["tags"].items() if k != "ACQUISITION_DATE"}
    dates = check_dates(dates, len(srcs))
    t0 = time.perf_counter()
    count, height, width = first["shape"]
    writer = StackWriter(dst, width, height, count, first["dtype"], first["bands"], quality, model, nodata,
                         dates=dates, temporal=temporal, keyframe_interval=keyframe_interval,
                         tile_size=tile_size, crs_wkt=first["crs_wkt"], geotransform=first["geotransform"],
                         metadata=metadata, progress=_progress_default(progress),
                         created_by=f"terracodec {api._version()}", workers=workers, effort=effort)
    try:
        # one row of tiles of every date at a time: the dates are never held in memory whole
        for strips in zip(*(geotiff_strips(src, writer.tile_size) for src in srcs)):
            writer.write(np.stack(strips))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    elapsed = time.perf_counter() - t0
    with api.open(dst) as ds:
        size = os.path.getsize(dst)
        bpp = 8 * size / (len(ds.dates) * ds.count * ds.width * ds.height)
        click.echo(f"{dst}: {len(ds.dates)} dates x {ds.count} bands {ds.width}x{ds.height} {ds.dtype}, "
                   f"{size} bytes ({bpp:.3f} bits/pixel/band), model {ds.model} q{ds.quality}, "
                   f"keyframe interval {ds.keyframe_interval}, {elapsed:.2f} s")


def _safe_name(date: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]", "-", date)


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path())
@click.option("--date", default=None, help="For a time stack: the date to write (ISO, as `tec info` lists).")
@click.option("--level", type=click.IntRange(0, 30), default=0, show_default=True,
              help="Overview level: write the raster at 1/2**LEVEL resolution (a quicklook that "
                   "does not decode full resolution).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def decompress(src, dst, date, level, progress):
    """Decompress the .tec file SRC to the GeoTIFF DST (CRS, transform, bands, nodata kept).

    A time stack needs --date (DST is then a GeoTIFF), or DST is a folder that receives one
    GeoTIFF per date (<date>.tif)."""
    from . import api

    t0 = time.perf_counter()
    with api.open(src) as ds:
        if len(ds.dates) > 1 or date is not None:
            _decompress_stack(ds, dst, date, level, progress, t0)
            return
        height, width = _decode_to_geotiff(ds, dst, None, level, progress, ds.metadata)
    click.echo(f"{dst}: {ds.count} bands {width}x{height} {ds.dtype}, {time.perf_counter() - t0:.2f} s")


def _decode_to_geotiff(ds, dst, date, level, progress, tags) -> tuple[int, int]:
    """Decode one date of ``ds`` at overview ``level`` into the GeoTIFF ``dst`` strip by strip
    (the raster is never held whole); -> (height, width)."""
    from .geotiff import geotiff_block, write_geotiff_strips

    height, width = ds.level_shape(level)
    block = geotiff_block(width, height) or height
    # whole GeoTIFF blocks per strip, about one row of TEC tiles
    rows = block * max(1, (ds.tile_size >> level) // block)
    # a strip also needs the tiles above it (overlap): keep two rows of them decoded
    ds.tile_cache = max(ds.tile_cache, 2 * ds.tiles_x + 2)
    starts = range(0, height, rows)
    bar = None
    if _progress_default(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=height, unit="row", desc="decode", leave=False)

    def strips():
        for r in starts:
            strip = ds.read(window=((r, min(height, r + rows)), (0, width)), date=date, level=level)
            if bar is not None:
                bar.update(strip.shape[1])
            yield r, strip

    try:
        write_geotiff_strips(dst, (ds.count, height, width), ds.dtype, ds.bands, strips(), crs_wkt=ds.crs,
                             geotransform=ds.level_transform(level), nodata=ds.nodata, tags=tags)
    finally:
        if bar is not None:
            bar.close()
    return height, width


def _decompress_stack(ds, dst, date, level, progress, t0):
    from .stack import date_index

    def one(d, path):
        tags = dict(ds.metadata)
        if ds.dates[d]:
            tags["ACQUISITION_DATE"] = ds.dates[d]
        return _decode_to_geotiff(ds, path, d, level, progress, tags)

    if date is not None:
        d = date_index(ds.dates, date)
        height, width = one(d, dst)
        click.echo(f"{dst}: date {ds.dates[d]}, {ds.count} bands {width}x{height} "
                   f"{ds.dtype}, {time.perf_counter() - t0:.2f} s")
        return
    if os.path.isfile(dst):
        raise click.UsageError(f"{ds.name} holds {len(ds.dates)} dates: DST must be a folder (or pass --date)")
    os.makedirs(dst, exist_ok=True)
    for d, when in enumerate(ds.dates):
        one(d, os.path.join(dst, f"{_safe_name(when) if when else f'date{d:03d}'}.tif"))
    click.echo(f"{dst}: {len(ds.dates)} dates written, {time.perf_counter() - t0:.2f} s")


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
            "tile_size": ds.tile_size, "tile_overlap": ds.tile_overlap, "tiles_x": ds.tiles_x, "tiles_y": ds.tiles_y,
            "tiles": ds.tiles_x * ds.tiles_y, "dates": ds.dates,
            "keyframe_interval": ds.keyframe_interval,
            "fallback_tiles": ds.fallback_tiles,
            "compression_ratio": round(ds.compression_ratio, 4),
            "bits_per_pixel_per_band": round(8 * size / (len(ds.dates) * ds.count * ds.width * ds.height), 4),
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
        f"quality:      {d['quality']}"
        + (f" (encoder effort {d['stats']['effort']})" if d['stats'].get('effort') else ""),
        f"tiles:        {d['tiles_x']} x {d['tiles_y']} of {d['tile_size']} px (overlap {d['tile_overlap']} px), "
        f"{d['stats'].get('learned_tiles', 0)} learned, {d['fallback_tiles']} classical"
        + (f" ({d['stats']['coarse_grid_tiles']} with bands on coarser grids"
           + (f", {d['stats']['av1_tiles']} of them with AV1 10 m bands: reading needs an AV1 decoder"
              if d['stats'].get('av1_tiles') else "") + ")" if d['stats'].get('coarse_grid_tiles') else "")
        + ", "
        f"{d['stats'].get('lossless_tiles', 0)} lossless"
        + (f"; {d['stats']['floor_tiles']} recoded to reach the quality floor" if d['stats'].get('floor_tiles') else ""),
        f"compression:  ratio {d['compression_ratio']:.2f}, {d['bits_per_pixel_per_band']:.3f} bits/pixel/band",
        f"dates:        {', '.join(str(x) for x in d['dates'])}",
    ] + ([f"time stack:   {len(d['dates'])} dates, keyframe interval {d['keyframe_interval']}, "
          f"{d['stats'].get('temporal_tiles', 0)} temporal tile(s), "
          f"{d['stats'].get('predicted_tiles', 0)} predicted from an earlier date"] if len(d['dates']) > 1 else []) + [
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
    click.echo("  classical      (built in)  the encoder without the learned candidate at any effort: "
               "no weights, no torch")
    click.echo("  lossless       (built in)  exact storage, no weights needed")
    click.echo("(* = default; qualities 1..8; single images try a model's learned candidate with --effort best "
               "only, time stacks use TEC-TT at every effort)")


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
    """Rate-distortion benchmark (terracodec.bench; `tec bench --help`). `tec bench --temporal ...`
    runs the time-series benchmark instead (terracodec.bench_temporal; `tec bench --temporal --help`)."""
    if "--temporal" in args:
        _delegate("bench_temporal", [a for a in args if a != "--temporal"])
    else:
        _delegate("bench", args)


@cli.command("vrt")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--date", default=None, help="For a time stack: the date (ISO, as `tec info` lists, or a 0-based index).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the VRT here instead of to stdout.")
@click.option("--env", "show_env", is_flag=True,
              help="Print the shell lines GDAL command line tools need for such VRTs (for this Python) and exit.")
def vrt(path, date, output, show_env):
    """Print a read-only GDAL VRT for the .tec file PATH: tec vrt X.tec > X.vrt

    For GDALs that cannot load the TEC plugin, e.g. the one inside the rasterio or GDAL wheels
    from PyPI. Each band is a VRTDerivedRasterBand whose Python pixel function
    (terracodec.vrt.pixel_function) decodes the requested window with terracodec, so the reading
    process must be able to import terracodec. Size, CRS, geotransform, band names, nodata and
    the date are in the VRT; the .tec file is referenced by its absolute path.

    GDAL runs Python pixel functions only when allowed:

    \b
        export GDAL_VRT_ENABLE_PYTHON=YES    # or GDAL_VRT_PYTHON_TRUSTED_MODULES=terracodec.vrt

    rasterio / osgeo use their own interpreter. GDAL command line tools (gdal_translate,
    gdalinfo -stats) start one: PYTHONSO=/path/to/libpython3.X.so picks it, and PYTHONPATH must
    reach terracodec and its dependencies; `eval "$(tec vrt --env)"` sets all three for this
    environment."""
    from .vrt import build_vrt, env_lines

    if show_env:
        click.echo("\n".join(env_lines()))
        return
    if path is None:
        raise click.UsageError("missing argument PATH (the .tec file)")
    text = build_vrt(path, date=date)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)


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
