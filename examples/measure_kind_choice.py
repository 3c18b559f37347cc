# SPDX-License-Identifier: Apache-2.0
"""Does the central crop tell which classical kind a tile should walk? (tilecodec.KIND4_ALONE, KIND1_ALONE)

    .venv/bin/python examples/measure_kind_choice.py [--split train] [--qualities 2,4,6,8]

For every tile (default tile size) of the split's images of 256 px or more a side in
../shared/data (time series: every 5th date), and each quality: the cost J = SSE + lambda * bits of
kind 4 (coarse grids) against kind 1 (one KLT + JPEG 2000 codestream), on the tile's central
128 x 128 crop and on the whole tile, both walked in full. Prints one line per tile, then how many
tiles the thresholds send to one kind only and the mean J lost by doing so (0 = the crop always
chose the cheaper kind). Takes about 6 minutes on the train split.
"""
import argparse
import csv
from pathlib import Path

import numpy as np

from terracodec import tilecodec as tc
from terracodec.api import default_tile_size
from terracodec.errors import TecError
from terracodec.geotiff import read_geotiff

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--split", default="train")
p.add_argument("--qualities", default="2,4,6,8")
args = p.parse_args()

with open(DATA / "splits.csv", newline="") as f:
    files = [r["file"] for r in csv.DictReader(f) if r["split"] == args.split and r["kind"] == "image"]
records, dates_seen = [], 0
for rel in files:
    try:
        array, meta = read_geotiff(DATA / rel)
    except TecError:                  # no Sentinel-2 band names (other sensors)
        continue
    if min(array.shape[1:]) < 256:
        continue
    if rel.startswith("timeseries"):
        dates_seen += 1
        if dates_seen % 5:
            continue
    nodata = meta["nodata"]
    size = default_tile_size(array.shape[2], array.shape[1])
    for y in range(0, array.shape[1], size):
        for x in range(0, array.shape[2], size):
            tile = np.ascontiguousarray(array[:, y:y + size, x:x + size])
            mask = tc.nodata_mask(tile, nodata)
            for quality in (int(q) for q in args.qualities.split(",")):
                lam = tc.rd_lambda(quality)
                start, step, crop_j1 = tc.start_level(tile, nodata, mask, lam)
                if crop_j1 is None:   # no probe (small, mostly nodata or flat tile)
                    continue
                crop, crop_mask = tc.central_crop(tile, mask)
                crop_4 = tc.encode_multires(crop, nodata, lam, start)
                if crop_4 is None:    # an all-nodata crop: kind 1 only
                    continue
                plain = tc._plain_walk(tile, nodata, mask, lam, start, step)
                coarse = tc.encode_multires(tile, nodata, lam, start)
                if coarse is None:
                    continue
                rec = (crop_4[1] / crop_j1, plain[1], coarse[1])
                records.append(rec)
                print(f"{rel} y={y} x={x} q{quality}: kind 4 / kind 1 cost on the crop {rec[0]:.3f}, "
                      f"on the tile {coarse[1] / plain[1]:.3f}", flush=True)

only_4 = [r for r in records if r[0] < tc.KIND4_ALONE]
only_1 = [r for r in records if r[0] > tc.KIND1_ALONE]
loss = sum(r[2] / min(r[1:]) - 1 for r in only_4) + sum(r[1] / min(r[1:]) - 1 for r in only_1)
print(f"{len(records)} tiles x qualities: {len(only_4)} walk kind 4 only (crop ratio < {tc.KIND4_ALONE}), "
      f"{len(only_1)} kind 1 only (> {tc.KIND1_ALONE}); mean J lost {100 * loss / max(len(records), 1):.3f} %")
