# SPDX-License-Identifier: Apache-2.0
"""zarr + TerraCodec vs zarr + Blosc/Zstd (lossless) vs zarr + imagecodecs JPEG 2000, on the same data.

The data: the val images of ``../shared/data/splits.csv`` (single-date L2A and L1C scenes; every image
cropped to at most ``--max-px`` a side), one zarr array per image, chunks (all bands, 256, 256). For
every codec the script writes all arrays to a fresh store, reads them back, and prints one Markdown row:
stored size, compression ratio, bits per pixel per band, PSNR_10000 (= 10 log10(1e8 / MSE), pooled over
the valid pixels of all images) and write/read wall time. zarr runs with one codec thread
(``threading.max_workers=1``) so that times compare one core each.

Codecs: TerraCodec (zarr v3, ``serializer=TerraCodecV3``); Blosc with Zstd (clevel 5, byte shuffle,
lossless, zarr v3); imagecodecs' numcodecs ``Jpeg2k`` (OpenJPEG, planar bands, no MCT) as the zarr v2
compressor, once reversible (lossless) and once lossy at the OpenJPEG level whose PSNR_10000 is the
closest at or above TerraCodec's at the first quality given (found by bisection before timing).

    OMP_NUM_THREADS=1 .venv/bin/python examples/zarr_bench.py --qualities 5
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data"


def load_val(data_dir: Path, max_px: int, limit: int | None) -> list[dict]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    rows = [r for r in csv.DictReader(open(data_dir / "splits.csv"))
            if r["split"] == "val" and r.get("kind", "image") == "image"
            and r["file"].split("/")[0] in ("s2l2a", "s2l1c") and r["file"].endswith(".tif")]
    images = []
    for r in sorted(rows, key=lambda r: r["file"])[:limit]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(data_dir / r["file"]) as src:
                h, w = min(src.height, max_px), min(src.width, max_px)
                arr = src.read(window=((0, h), (0, w)))
                nodata = None if src.nodata is None else int(src.nodata)
                bands = list(src.descriptions)
        name = r["file"].split("/")[0] + "_" + Path(r["file"]).stem      # ssl4eo stems exist in both
        images.append({"name": name, "array": arr, "nodata": nodata, "bands": bands})
    return images


def _chunks(img, chunk):
    b, h, w = img["array"].shape
    return (b, min(chunk, h), min(chunk, w))


def write_store(path: Path, images, chunk: int, codec: dict) -> float:
    import zarr

    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    root = zarr.open_group(str(path), mode="w", zarr_format=codec["format"])
    for img in images:
        arr = img["array"]
        kw = codec["make"](img)
        z = root.create_array(img["name"], shape=arr.shape, chunks=_chunks(img, chunk), dtype=arr.dtype,
                              **kw)
        z[:] = arr
    return time.perf_counter() - t0


def read_store(path: Path, images) -> tuple[float, list[np.ndarray]]:
    import zarr

    t0 = time.perf_counter()
    root = zarr.open_group(str(path), mode="r")
    out = [root[img["name"]][:] for img in images]
    return time.perf_counter() - t0, out


def pooled_psnr(images, decoded) -> float:
    sse = n = 0
    for img, back in zip(images, decoded):
        orig = img["array"]
        valid = np.ones(orig.shape, bool) if img["nodata"] is None else orig != img["nodata"]
        d = (orig.astype(np.float64) - back)[valid]
        sse, n = sse + float(np.sum(d * d)), n + d.size
    return float("inf") if sse == 0 else 10 * np.log10(1e8 / (sse / n))


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()
               and p.name not in ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"))


def j2k_psnr_at(level, images, chunk) -> float:
    """Pooled PSNR of Jpeg2k at ``level`` straight through the codec (no zarr), chunk by chunk."""
    from imagecodecs.numcodecs import Jpeg2k

    codec = Jpeg2k(level=level, planar=True, mct=False, numthreads=1)
    decoded = []
    for img in images:
        arr = img["array"]
        b, h, w = arr.shape
        back = np.empty_like(arr)
        for r in range(0, h, chunk):
            for c in range(0, w, chunk):
                tile = np.zeros((b, min(chunk, h), min(chunk, w)), arr.dtype)   # zarr pads edge chunks
                part = arr[:, r:r + chunk, c:c + chunk]
                tile[:, :part.shape[1], :part.shape[2]] = part
                dec = np.asarray(codec.decode(codec.encode(tile))).reshape(tile.shape)
                back[:, r:r + chunk, c:c + chunk] = dec[:, :part.shape[1], :part.shape[2]]
        decoded.append(back)
    return pooled_psnr(images, decoded)


def match_j2k_level(target: float, images, chunk) -> int:
    """Lowest OpenJPEG level (quality, higher is better) whose PSNR_10000 reaches ``target``."""
    lo, hi = 20, 100
    if j2k_psnr_at(hi - 1, images, chunk) < target:
        return hi - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if j2k_psnr_at(mid, images, chunk) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default="/tmp/tec_zarr_bench")
    ap.add_argument("--qualities", default="5", help="TerraCodec qualities, comma separated")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--max-px", type=int, default=512, help="crop every image to at most this many px")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N val images")
    ap.add_argument("--threads", type=int, default=1, help="zarr codec threads")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "splits.csv").exists():
        print(f"shared data not found at {data}", file=sys.stderr)
        return 2

    import zarr
    from imagecodecs.numcodecs import Jpeg2k
    from zarr.codecs import BloscCodec

    from terracodec.zarr_codec import TerraCodecV3

    import numcodecs

    numcodecs.register_codec(Jpeg2k)          # so the v2 store can be read back ("imagecodecs_jpeg2k")
    zarr.config.set({"threading.max_workers": args.threads})
    warnings.filterwarnings("ignore", category=FutureWarning)

    from terracodec import weights

    weights.load_model(None)                  # load torch + the model before the clock starts
    images = load_val(data, args.max_px, args.limit)
    px = sum(img["array"].shape[1] * img["array"].shape[2] for img in images)
    band_px = sum(img["array"].size for img in images)
    raw = sum(img["array"].nbytes for img in images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    qualities = [int(q) for q in args.qualities.split(",") if q]

    codecs = []
    for q in qualities:
        codecs.append({"label": f"zarr v3 + TerraCodec q{q}", "format": 3, "key": f"tec_q{q}",
                       "make": lambda img, q=q: {"serializer": TerraCodecV3(quality=q, bands=img["bands"],
                                                                            nodata=img["nodata"]),
                                                 "compressors": None}})
    codecs.append({"label": "zarr v3 + Blosc/Zstd clevel 5, shuffle (lossless)", "format": 3, "key": "blosc",
                   "make": lambda img: {"compressors": BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")}})
    codecs.append({"label": "zarr v2 + imagecodecs JPEG 2000 reversible (lossless)", "format": 2, "key": "j2k_rev",
                   "make": lambda img: {"compressors": Jpeg2k(reversible=True, planar=True, mct=False,
                                                              numthreads=1), "filters": None}})

    results = []
    tec_psnr = None
    for codec in codecs:
        path = out / f"{codec['key']}.zarr"
        wt = write_store(path, images, args.chunk, codec)
        rt, decoded = read_store(path, images)
        psnr = pooled_psnr(images, decoded)
        if tec_psnr is None and codec["key"].startswith("tec"):
            tec_psnr = psnr
        results.append((codec["label"], store_bytes(path), psnr, wt, rt))
    if tec_psnr is not None:
        level = match_j2k_level(tec_psnr, images, args.chunk)
        codec = {"label": f"zarr v2 + imagecodecs JPEG 2000 level {level} (PSNR-matched to q{qualities[0]})",
                 "format": 2, "key": "j2k_lossy",
                 "make": lambda img: {"compressors": Jpeg2k(level=level, planar=True, mct=False, numthreads=1),
                                      "filters": None}}
        path = out / "j2k_lossy.zarr"
        wt = write_store(path, images, args.chunk, codec)
        rt, decoded = read_store(path, images)
        results.append((codec["label"], store_bytes(path), pooled_psnr(images, decoded), wt, rt))

    print(f"Data: {len(images)} val images from splits.csv (cropped to <= {args.max_px} px), "
          f"{px / 1e6:.2f} Mpx, {band_px / 1e6:.1f} M band-pixels, {raw / 1e6:.1f} MB raw int16; "
          f"chunks (bands, {args.chunk}, {args.chunk}); {args.threads} zarr codec thread(s).\n")
    print("| store | size MB | ratio | bits/px/band | PSNR_10000 dB | write s | read s | write Mpx/s | read Mpx/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, size, psnr, wt, rt in results:
        ps = "lossless" if np.isinf(psnr) else f"{psnr:.2f}"
        print(f"| {label} | {size / 1e6:.3f} | {raw / size:.1f} | {8 * size / band_px:.3f} | {ps} | {wt:.1f} "
              f"| {rt:.1f} | {px / 1e6 / wt:.3f} | {px / 1e6 / rt:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
