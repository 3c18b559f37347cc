# SPDX-License-Identifier: Apache-2.0
"""A zarr chunk of several dates: TerraCodec with temporal coding against each date alone.

    .venv/bin/python examples/measure_temporal_chunks.py [--quality 5] [--size 256]

Codes (3 dates, 10 bands, size, size) chunks of the train series rsgislib_T37MEM (the top-left
window) with the numcodecs codec (terracodec.numcodecs.TerraCodec), ``temporal=True`` (the default)
and ``temporal=False``, and prints chunk bytes, PSNR_10000 over the chunk and encode seconds. Two
chunks: three dates of 2016 (the first 49 % cloud, zeroed by the source) and three clear dates five
days apart in 2019.
"""
import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio

from terracodec.numcodecs import TerraCodec

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries" / "rsgislib_T37MEM"
CHUNKS = (["2016-03-12", "2016-07-10", "2016-07-20"], ["2019-06-10", "2019-06-15", "2019-06-20"])

warnings.filterwarnings("ignore")
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--quality", type=int, default=5)
p.add_argument("--size", type=int, default=256)
args = p.parse_args()
for dates in CHUNKS:
    arrays = []
    for d in dates:
        with rasterio.open(SERIES / f"{d}.tif") as src:
            arrays.append(src.read(window=((0, args.size), (0, args.size))))
            bands = list(src.descriptions)
    chunk = np.ascontiguousarray(np.stack(arrays))
    for temporal in (True, False):
        codec = TerraCodec(quality=args.quality, bands=bands, temporal=temporal)
        start = time.perf_counter()
        data = codec.encode(chunk)
        seconds = time.perf_counter() - start
        out = np.asarray(codec.decode(data)).reshape(chunk.shape)
        mse = np.mean((out.astype(np.float64) - chunk) ** 2)
        print(f"{dates[0]} .. {dates[-1]}, {'temporal' if temporal else 'each date alone'}: {len(data)} bytes, "
              f"{10 * np.log10(1e8 / mse):.2f} dB, encode {seconds:.1f} s", flush=True)
