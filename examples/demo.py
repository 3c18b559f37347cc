# SPDX-License-Identifier: Apache-2.0
"""TerraCodec demo (`make demo`): compress examples/scene_l2a.tif, decompress, report size and quality.

    .venv/bin/python examples/demo.py [--quality Q] [--model NAME] [SCENE.tif]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import terracodec as tec
from terracodec.geotiff import read_geotiff

HERE = Path(__file__).resolve().parent


def psnr10000(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(10000.0 ** 2 / mse)


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)     # torch.jit deprecation chatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scene", nargs="?", default=HERE / "scene_l2a.tif")
    p.add_argument("--quality", type=int, default=5)
    p.add_argument("--model", default=None, help="default: the default learned model; 'lossless' for exact")
    args = p.parse_args()

    array, meta = read_geotiff(args.scene)
    count, height, width = array.shape
    print(f"input   {args.scene}: {count} bands {width}x{height} {array.dtype}, "
          f"{os.path.getsize(args.scene)} bytes as DEFLATE GeoTIFF, {array.nbytes} bytes raw")

    if args.model != "lossless":                      # load the weights first: not part of the timings
        from terracodec.weights import load_model

        t0 = time.perf_counter()
        load_model(args.model)
        print(f"model   loaded in {time.perf_counter() - t0:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tec"
        t0 = time.perf_counter()
        tec.write(path, array, meta["bands"], quality=args.quality, model=args.model, nodata=meta["nodata"],
                  crs_wkt=meta["crs_wkt"], geotransform=meta["geotransform"], metadata=meta["tags"])
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        with tec.open(path) as ds:
            decoded = ds.read()
            model, fallback = ds.model, ds.fallback_tiles
        t_dec = time.perf_counter() - t0
        size = path.stat().st_size

    bpp = 8 * size / (count * width * height)
    print(f"output  {size} bytes .tec, model {model}, quality {args.quality}, {fallback} fallback tile(s)")
    print(f"ratio   {array.nbytes / size:.2f} x raw ({bpp:.3f} bits per pixel per band; raw is 16)")
    print(f"time    encode {t_enc:.2f} s, decode {t_dec:.2f} s")
    print(f"PSNR_10000 over all bands: {psnr10000(array, decoded):.2f} dB")
    print("band  PSNR_10000")
    for name, a, b in zip(meta["bands"], array, decoded):
        print(f"{name:>4}  {psnr10000(a, b):7.2f} dB")
    print("(bits per pixel are for the whole file; tiles hold all bands together)")


if __name__ == "__main__":
    main()
