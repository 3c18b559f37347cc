# SPDX-License-Identifier: Apache-2.0
"""Does a transform across dates pay? (issue 5; a measurement, not a codec mode)

    .venv/bin/python examples/measure_joint_dates.py [LOCATION] [--stacks seasonal|all]

Codes each stack of dates of a val time series in ../shared/data/timeseries twice with the core's
classical tile encoder (one thread), at qualities 1-8: every date as its own tile, and all dates
as one tile whose bands are the dates' bands (so the per-tile KLT and the coarse-grid prediction
run across dates too). Prints both RD curves (bits per pixel per band of the real payloads, PSNR_10000
of the pooled error) and the BD-rate of the joint code against the per-date codes over 35-50 dB
(negative = the joint code needs fewer bits). ``seasonal``: the 4-date stacks of clear dates 25-60
days apart that `tec bench --temporal` uses (default location worldcereal_37MBS_TZA-1101950);
``all``: every date of the location as one stack (e.g. ssl4eo_0000200-T43RCP, 2 dates).
"""
import argparse
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from terracodec import tilecodec as tc
from terracodec.bench import bd_rate
from terracodec.bench_temporal import seasonal_stacks
from terracodec.train_temporal import load_location

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"
QUALITIES = range(1, 9)


def rd_point(tiles: list[np.ndarray], quality: int, n: int) -> tuple[float, float]:
    """(bpppb, PSNR_10000) of coding each of ``tiles`` on its own; ``n`` band-pixels in all."""
    nbytes, sse = 0, 0.0
    for tile in tiles:
        payload, _ = tc.encode_tile(tile, quality=quality, model="classical")
        nbytes += len(payload)
        sse += tc.tile_sse(tile, tc.decode_tile(payload), None)
    return 8 * nbytes / n, 10 * np.log10(1e8 * n / sse)


p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("location", nargs="?", default="worldcereal_37MBS_TZA-1101950")
p.add_argument("--stacks", choices=["seasonal", "all"], default="seasonal")
args = p.parse_args()

array, _, names, rows = load_location(DATA / args.location)
print(f"{args.location}: {array.shape[0]} dates, bands {','.join(names)}, {array.shape[2]}x{array.shape[3]}")
stacks = seasonal_stacks(rows, 5) if args.stacks == "seasonal" else [list(range(len(rows)))]
with threadpool_limits(1):
    for seq in stacks:
        stack = np.ascontiguousarray(array[seq])
        T, B, h, w = stack.shape
        alone = np.array([rd_point(list(stack), q, stack.size) for q in QUALITIES])
        joint = np.array([rd_point([stack.reshape(T * B, h, w)], q, stack.size) for q in QUALITIES])
        bd = bd_rate(joint[:, 0], joint[:, 1], alone[:, 0], alone[:, 1], (35.0, 50.0))
        print(f"{', '.join(rows[i]['key'][:10] for i in seq)}: joint vs per date BD-rate {float(bd):+.1f} %")
        for q, (ba, pa), (bj, pj) in zip(QUALITIES, alone, joint):
            print(f"  q{q}: per date {ba:.4f} bpppb {pa:.2f} dB | joint {bj:.4f} bpppb {pj:.2f} dB")
