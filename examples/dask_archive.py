# SPDX-License-Identifier: Apache-2.0
"""Compress a multi-scene Sentinel-2 archive into one zarr store with dask.distributed and TerraCodec.

The archive is built from ``../shared/data``: several single-date scenes (L2A and L1C) and one time
series (the first dates of ``timeseries/rsgislib_T37MEM``). The store holds one zarr v3 array per scene
(``scenes/<name>``, (bands, y, x)) and one per series (``series/<name>``, (time, bands, y, x)), all with
the TerraCodec array->bytes codec, all bands in every chunk, and band names, CRS, geotransform, dates and
nodata as attributes.

Every chunk is one task: the worker reads its window from the GeoTIFF(s) itself, encodes it and writes
the chunk object, so no pixel data travels through the scheduler. The same tasks run three ways:
in this process without dask (the reference), on a LocalCluster with 1 worker and with 2 workers
(``threads_per_worker=1``). The script then reads every store back and prints, per run: throughput,
compression ratio and PSNR_10000 (= 10 log10(1e8 / MSE) over valid pixels), and checks that every chunk
object is byte-identical to the reference (TEC encoding is deterministic).

    OMP_NUM_THREADS=1 .venv/bin/python examples/dask_archive.py                # full archive
    OMP_NUM_THREADS=1 .venv/bin/python examples/dask_archive.py --small        # a quick version

On a multi-machine cluster, start ``dask scheduler`` and ``dask worker tcp://SCHEDULER:8786
--nthreads 1`` on each machine (with terracodec + its weights, torch CPU, zarr, rasterio installed and the
source files and the store on shared storage), and pass ``--scheduler tcp://SCHEDULER:8786``.
See docs/zarr_dask.md.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")          # one core per worker; inherited by LocalCluster

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data"
SCENES = [
    "s2l2a/hydro_patch10-utm33N_undated.tif",           # 12-band L2A, 256 x 256
    "s2l2a/hydro_patch100-utm27N_undated.tif",          # 12-band L2A with nodata 0
    "s2l2a/oceanecowatch_manilabay-a_undated.tif",      # 12-band L2A, 480 x 480
    "s2l1c/dsen2_T33UUB_2017-05-27.tif",                # L1C without B10, 600 x 600
    "s2l1c/ssl4eo_0000200-T43RCP_2020-06-04.tif",       # 13-band L1C, 264 x 264
]
SERIES = "timeseries/rsgislib_T37MEM"                  # 10 bands, 280 x 338, nodata 0 (masked clouds)


# -- the archive ---------------------------------------------------------------------------------------
def _open(path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def build_items(data_dir=DEFAULT_DATA, scenes=SCENES, series=SERIES, dates: int = 6,
                crop: int | None = None) -> list[dict]:
    """The archive's arrays: name, source file(s), shape, dtype, band names, georeferencing."""
    data_dir = Path(data_dir)
    items = []
    for rel in scenes:
        items.append(_item(f"scenes/{Path(rel).stem}", [data_dir / rel], crop, series=False))
    if series and dates:
        folder = data_dir / series
        files = sorted(p for p in folder.glob("*.tif") if not p.stem.endswith(("_scl", "_cloudmask")))[:dates]
        item = _item(f"series/{folder.name}", files, crop, series=True)
        item["dates"] = [p.stem for p in files]
        items.append(item)
    return items


def _item(name, files, crop, series):
    with _open(files[0]) as src:
        h, w = src.height, src.width
        if crop:
            h, w = min(h, crop), min(w, crop)
        bands = [d for d in src.descriptions]
        nodata = None if src.nodata is None else int(src.nodata)
        item = {"name": name, "files": [str(f) for f in files], "dtype": str(src.dtypes[0]),
                "bands": bands, "nodata": nodata,
                "crs_wkt": src.crs.to_wkt() if src.crs else None,
                "geotransform": list(src.transform.to_gdal()) if src.crs else None}
    item["shape"] = ((len(files),) if series else ()) + (len(bands), h, w)
    return item


def read_item(item, region=None) -> np.ndarray:
    """The source pixels of ``item`` (optionally only ``region``: slices over the array's axes)."""
    series = len(item["shape"]) == 4
    shape = item["shape"]
    if region is None:
        region = tuple(slice(0, n) for n in shape)
    ys, xs = region[-2], region[-1]
    files = item["files"][region[0]] if series else item["files"]
    planes = []
    for f in files:
        with _open(f) as src:
            planes.append(src.read(window=((ys.start, ys.stop), (xs.start, xs.stop))))
    return np.stack(planes) if series else planes[0]


# -- the store -------------------------------------------------------------------------------------------
def create_store(store, items, quality: int = 5, chunk: int = 256, model=None):
    """Create the zarr v3 group and one array per item (metadata only); returns the chunk tasks."""
    import zarr

    from terracodec.zarr_codec import TerraCodecV3

    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    tasks = []
    for item in items:
        shape = tuple(item["shape"])
        series = len(shape) == 4
        chunks = ((1,) if series else ()) + (shape[-3], min(chunk, shape[-2]), min(chunk, shape[-1]))
        codec = TerraCodecV3(quality=quality, model=model, bands=item["bands"], nodata=item["nodata"])
        arr = root.create_array(item["name"], shape=shape, chunks=chunks, dtype=item["dtype"],
                                serializer=codec, compressors=None,
                                fill_value=item["nodata"] or 0,
                                dimension_names=(("time",) if series else ()) + ("band", "y", "x"))
        arr.attrs.update({k: item[k] for k in ("bands", "nodata", "crs_wkt", "geotransform", "dates")
                          if k in item})
        grid = [range(0, n, c) for n, c in zip(shape, chunks)]
        for start in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, len(shape)):
            region = tuple(slice(int(s), int(min(s + c, n))) for s, c, n in zip(start, chunks, shape))
            tasks.append((str(store), item, region))
    return tasks


def write_chunk(store: str, item: dict, region) -> int:
    """One task: read the window from the source file(s), encode it, write the chunk; -> raw bytes."""
    import zarr

    import terracodec.zarr_codec  # noqa: F401  registers "terracodec" (the zarr.codecs entry point does too)

    _one_thread()
    data = read_item(item, region)
    zarr.open_array(store, path=item["name"], mode="r+")[region] = data
    return int(data.nbytes)


def _one_thread():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def tune_dask() -> None:
    """Keep glibc's dynamic malloc thresholds in the workers.

    The dask nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker by default; setting any such
    variable switches off glibc's dynamic mmap threshold, so the codec's large float64 temporaries are
    mmap'ed and page-faulted on every tile: measured 40 % slower per chunk. ``None`` unsets it.
    (For ``dask worker`` on other machines: DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None.)"""
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


def warm_up() -> bool:
    """Load torch and the default model (done once per worker before the clock starts)."""
    _one_thread()
    from terracodec import weights

    weights.load_model(None)
    return True


# -- runs ------------------------------------------------------------------------------------------------
def run_local(store, items, **kw) -> dict:
    """Reference: every chunk task in this process, no dask."""
    tasks = create_store(store, items, **kw)
    warm_up()
    t0 = time.perf_counter()
    raw = sum(write_chunk(*t) for t in tasks)
    return {"seconds": time.perf_counter() - t0, "raw_bytes": raw, "chunks": len(tasks)}


def run_dask(store, items, client, **kw) -> dict:
    """The same chunk tasks on a dask.distributed cluster."""
    if __name__ != "__main__":                 # imported (e.g. by a test): ship this module's code by value
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tasks = create_store(store, items, **kw)
    client.run(warm_up)
    t0 = time.perf_counter()
    futures = client.map(lambda t: write_chunk(*t), tasks, pure=False)
    raw = sum(client.gather(futures))
    return {"seconds": time.perf_counter() - t0, "raw_bytes": raw, "chunks": len(tasks),
            "workers": len(client.scheduler_info(n_workers=-1)["workers"])}


def evaluate(store, items) -> dict:
    """Read the store back: compression ratio, PSNR_10000 over valid pixels, chunk digests."""
    import zarr

    stored = 0
    digests = {}
    for p in sorted(Path(store).rglob("*")):
        if p.is_file() and "/c/" in p.as_posix():
            data = p.read_bytes()
            stored += len(data)
            digests[p.relative_to(store).as_posix()] = hashlib.sha256(data).hexdigest()
    sse = n = raw = 0
    per_array = {}
    t0 = time.perf_counter()
    for item in items:
        orig = read_item(item)
        back = zarr.open_array(str(store), path=item["name"], mode="r")[:]
        assert back.shape == orig.shape and back.dtype == orig.dtype
        valid = np.ones(orig.shape, bool) if item["nodata"] is None else orig != item["nodata"]
        diff = (orig.astype(np.float64) - back)[valid]
        e, k = float(np.sum(diff * diff)), int(diff.size)
        per_array[item["name"]] = _psnr(e, k)
        sse, n, raw = sse + e, n + k, raw + orig.nbytes
    return {"stored_bytes": stored, "ratio": raw / stored, "psnr": _psnr(sse, n), "per_array": per_array,
            "digests": digests, "read_seconds": time.perf_counter() - t0}


def _psnr(sse, n):
    return float("inf") if sse == 0 else 10 * np.log10(1e8 / (sse / n))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the shared S2 data folder")
    ap.add_argument("--out", default="/tmp/tec_dask_archive", help="folder for the zarr stores")
    ap.add_argument("--quality", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=256, help="spatial chunk size (px)")
    ap.add_argument("--dates", type=int, default=6, help="dates of the time series")
    ap.add_argument("--crop", type=int, default=None, help="crop every scene to at most this many px")
    ap.add_argument("--small", action="store_true", help="2 scenes + 2 dates, 128 px crops, 64 px chunks")
    ap.add_argument("--workers", default="1,2", help="LocalCluster sizes to run (comma separated)")
    ap.add_argument("--scheduler", default=None, help="address of an existing dask scheduler instead")
    args = ap.parse_args(argv)
    if not (Path(args.data) / SERIES).exists():
        print(f"shared data not found at {args.data}", file=sys.stderr)
        return 2
    scenes, dates, crop, chunk = SCENES, args.dates, args.crop, args.chunk
    if args.small:
        scenes, dates, crop, chunk = SCENES[:2], 2, 128, 64
    items = build_items(args.data, scenes, SERIES, dates, crop)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"quality": args.quality, "chunk": chunk}
    px = sum(int(np.prod(i["shape"])) // i["shape"][-3] for i in items)
    print(f"archive: {len(items)} arrays ({', '.join(i['name'] + str(tuple(i['shape'])) for i in items)}), "
          f"{px / 1e6:.2f} Mpx, chunks {chunk} px, quality {args.quality}")

    runs = {}
    shutil.rmtree(out / "local.zarr", ignore_errors=True)
    runs["1 process, no dask"] = (run_local(out / "local.zarr", items, **kw), out / "local.zarr")
    from dask.distributed import Client, LocalCluster

    tune_dask()

    if args.scheduler:
        with Client(args.scheduler) as client:
            store = out / "cluster.zarr"
            shutil.rmtree(store, ignore_errors=True)
            runs[f"cluster {args.scheduler}"] = (run_dask(store, items, client, **kw), store)
    else:
        for n in [int(v) for v in args.workers.split(",") if v]:
            store = out / f"dask{n}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                    Client(cl) as client:
                runs[f"LocalCluster {n} worker{'s' if n > 1 else ''}"] = (run_dask(store, items, client, **kw), store)

    ref = None
    ok = True
    print("\n| run | chunks | write s | MB/s raw | Mpx/s | ratio | PSNR_10000 dB | read s | chunks identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (res, store) in runs.items():
        ev = evaluate(store, items)
        same = "reference" if ref is None else ("yes" if ev["digests"] == ref["digests"] else "NO")
        ok &= same != "NO"
        ref = ref or ev
        print(f"| {name} | {res['chunks']} | {res['seconds']:.1f} | {res['raw_bytes'] / 1e6 / res['seconds']:.2f} "
              f"| {px / 1e6 / res['seconds']:.3f} | {ev['ratio']:.1f} | {ev['psnr']:.2f} | {ev['read_seconds']:.1f} "
              f"| {same} |")
    print("\nPSNR_10000 per array (reference): " + ", ".join(f"{k} {v:.2f}" for k, v in ref["per_array"].items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
