# SPDX-License-Identifier: Apache-2.0
"""One stack file against one file per date: the seasonal 4-date val stacks of `tec bench --temporal`.

    .venv/bin/python examples/measure_stack_files.py [--qualities 1,2,3,4,5,6,7,8] [LOCATION --dates D1,D2,... ...]

For each stack (dates <= 10 % cloud, 25-60 days apart, from worldcereal_37MBS_TZA-1101950, as
terracodec.bench_temporal picks them) and quality, codes the four dates as four files
(`terracodec.encode` per date), as one stack file with TEC-TT (the default), and as one stack file
with `temporal=False`. Rates are whole-file bytes x 8 / band-pixels of the stack; PSNR_10000 is over
all band-pixels of the four dates (pooled MSE). Prints the BD-rates (35-50 dB) of the three curves.
It separates what writing dates together saves through the container (one header and index for the
stack) from what the temporal coding saves. With a LOCATION of ../shared/data/timeseries and
``--dates``, codes those stacks instead (e.g. ``rsgislib_T37MEM --dates 2019-06-10,2019-06-15,2019-06-20``).
Also prints the encode time of the two stack files, summed over the qualities.
"""
import argparse
import time
from pathlib import Path

import numpy as np

import terracodec as tec
from terracodec.bench_temporal import DENSE, seasonal_stacks
from terracodec.geotiff import read_geotiff
from terracodec.metrics import bd_rate
from terracodec.train_temporal import load_location

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries" / DENSE


def pooled_psnr(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = np.mean((diff if valid is None else diff[valid]) ** 2)
    return float(10 * np.log10(1e8 / mse))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qualities", default="1,2,3,4,5,6,7,8")
    p.add_argument("location", nargs="?", default=DENSE)
    p.add_argument("--dates", nargs="+", metavar="D1,D2,...", help="stacks of LOCATION's dates")
    p.add_argument("--nodata", type=int, default=None, help="the stack's nodata value (e.g. 0 for rsgislib's "
                   "zeroed clouds); PSNR is then over valid pixels")
    args = p.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    series = SERIES.parent / args.location
    full, _, bands, rows = load_location(series)
    meta = read_geotiff(series / rows[0]["file"])[1]
    keys = [r["key"] for r in rows]
    if args.dates:
        stacks = [[keys.index(d) for d in s.split(",")] for s in args.dates]
    else:
        stacks = seasonal_stacks(rows, 5)                   # the stacks of tec bench --temporal
    results = []
    for stack in stacks:
        arr, dates = full[stack], [rows[i]["key"] for i in stack]
        geo = dict(crs_wkt=meta["crs_wkt"], geotransform=meta["geotransform"], nodata=args.nodata)
        valid = None if args.nodata is None else arr != args.nodata
        curves = {"files": ([], []), "stack": ([], []), "stack_no_temporal": ([], [])}
        seconds = {"stack": 0.0, "stack_no_temporal": 0.0}
        for q in qualities:
            files = [tec.encode(arr[t], bands, quality=q, date=dates[t], **geo) for t in range(len(dates))]
            decoded = np.stack([tec.decode(d) for d in files])
            curves["files"][0].append(8 * sum(map(len, files)) / arr.size)
            curves["files"][1].append(pooled_psnr(arr, decoded, valid))
            for name, temporal in (("stack", True), ("stack_no_temporal", False)):
                start = time.perf_counter()
                data = tec.encode(arr, bands, quality=q, dates=dates, temporal=temporal, **geo)
                seconds[name] += time.perf_counter() - start
                with tec.open(data) as ds:
                    decoded = np.stack([ds.read(date=t) for t in range(len(dates))])
                curves[name][0].append(8 * len(data) / arr.size)
                curves[name][1].append(pooled_psnr(arr, decoded, valid))
        bd = (bd_rate(*curves["stack"], *curves["files"]), bd_rate(*curves["stack_no_temporal"], *curves["files"]),
              bd_rate(*curves["stack"], *curves["stack_no_temporal"]))
        results.append(bd)
        print(f"{', '.join(dates)}: stack vs files {bd[0]:+.1f} %, stack without temporal coding vs files "
              f"{bd[1]:+.1f} %, stack vs stack without temporal coding {bd[2]:+.1f} %; encode "
              f"{seconds['stack']:.1f} s / {seconds['stack_no_temporal']:.1f} s without temporal coding")
    mean = np.mean(results, axis=0)
    print(f"mean: stack vs files {mean[0]:+.1f} %, without temporal coding {mean[1]:+.1f} %, "
          f"temporal coding {mean[2]:+.1f} %")


if __name__ == "__main__":
    main()
