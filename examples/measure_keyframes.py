# SPDX-License-Identifier: Apache-2.0
"""Keyframe interval: bytes against the cost of reading one date, on a whole real series.

    .venv/bin/python examples/measure_keyframes.py [LOCATION] [--quality 4] [--nodata 0] [--intervals 1,2,4,8,16]

Writes every date of a time series of ../shared/data/timeseries (default: rsgislib_T37MEM, 21 dates
2016-2020, clouds zeroed by the source = nodata 0) as one stack with each keyframe interval, and
prints the file size against the same stack written with ``temporal=False``, the number of
predicted (kind 5) tiles, and the slowest read of a single date (opening the file and reading that
date, every date tried): a predicted date also decodes the earlier dates it is predicted from.
"""
import argparse
import time
import warnings
from pathlib import Path

import terracodec as tec
from terracodec.train_temporal import load_location

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"

warnings.filterwarnings("ignore")
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("location", nargs="?", default="rsgislib_T37MEM")
p.add_argument("--quality", type=int, default=4)
p.add_argument("--nodata", type=int, default=0)
p.add_argument("--intervals", default="1,2,4,8,16")
args = p.parse_args()
stack, _, bands, rows = load_location(SERIES / args.location)
dates = [r["key"] for r in rows]
kw = dict(quality=args.quality, nodata=args.nodata, dates=dates)
alone = tec.encode(stack, bands, temporal=False, **kw)
print(f"{args.location}: {len(dates)} dates, {stack.shape[1]} bands, {stack.shape[2]} x {stack.shape[3]}, "
      f"q{args.quality}; temporal=False: {len(alone)} bytes")
for interval in (int(k) for k in args.intervals.split(",")):
    data = tec.encode(stack, bands, keyframe_interval=interval, **kw)
    slowest = 0.0
    for d in range(len(dates)):
        start = time.perf_counter()
        with tec.open(data) as ds:
            ds.read(date=d)
        slowest = max(slowest, time.perf_counter() - start)
    with tec.open(data) as ds:
        predicted = ds.stats["predicted_tiles"]
    print(f"keyframe_interval {interval}: {len(data)} bytes ({len(data) / len(alone) - 1:+.1%}), "
          f"{predicted} predicted tile(s), slowest single-date read {slowest:.2f} s", flush=True)
