# SPDX-License-Identifier: Apache-2.0
"""One stack file against one file per date: the seasonal 4-date val stacks of `tec bench --temporal`.

    .venv/bin/python examples/measure_stack_files.py [--qualities 1,2,3,4,5,6,7,8]

For each stack (dates <= 10 % cloud, 25-60 days apart, from worldcereal_37MBS_TZA-1101950, as
terracodec.bench_temporal picks them) and quality, codes the four dates as four files
(`terracodec.encode` per date), as one stack file with TEC-TT (the default), and as one stack file
with `temporal=False`. Rates are whole-file bytes x 8 / band-pixels of the stack; PSNR_10000 is over
all band-pixels of the four dates (pooled MSE). Prints the BD-rates (35-50 dB) of the three curves.
It separates what writing dates together saves through the container (one header and index for the
stack) from what the temporal coding saves.
"""
import argparse
from pathlib import Path

import numpy as np

import terracodec as tec
from terracodec.bench_temporal import DENSE, seasonal_stacks
from terracodec.geotiff import read_geotiff
from terracodec.metrics import bd_rate
from terracodec.train_temporal import load_location

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries" / DENSE


def pooled_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(1e8 / mse))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qualities", default="1,2,3,4,5,6,7,8")
    args = p.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    full, _, bands, rows = load_location(SERIES)
    meta = read_geotiff(SERIES / rows[0]["file"])[1]
    results = []
    for stack in seasonal_stacks(rows, 5):                  # the stacks of tec bench --temporal
        arr, dates = full[stack], [rows[i]["key"] for i in stack]
        geo = dict(crs_wkt=meta["crs_wkt"], geotransform=meta["geotransform"])
        curves = {"files": ([], []), "stack": ([], []), "stack_no_temporal": ([], [])}
        for q in qualities:
            files = [tec.encode(arr[t], bands, quality=q, date=dates[t], **geo) for t in range(len(dates))]
            decoded = np.stack([tec.decode(d) for d in files])
            curves["files"][0].append(8 * sum(map(len, files)) / arr.size)
            curves["files"][1].append(pooled_psnr(arr, decoded))
            for name, temporal in (("stack", True), ("stack_no_temporal", False)):
                data = tec.encode(arr, bands, quality=q, dates=dates, temporal=temporal, **geo)
                with tec.open(data) as ds:
                    decoded = np.stack([ds.read(date=t) for t in range(len(dates))])
                curves[name][0].append(8 * len(data) / arr.size)
                curves[name][1].append(pooled_psnr(arr, decoded))
        bd = (bd_rate(*curves["stack"], *curves["files"]), bd_rate(*curves["stack_no_temporal"], *curves["files"]),
              bd_rate(*curves["stack"], *curves["stack_no_temporal"]))
        results.append(bd)
        print(f"{', '.join(dates)}: stack vs files {bd[0]:+.1f} %, stack without temporal coding vs files "
              f"{bd[1]:+.1f} %, stack vs stack without temporal coding {bd[2]:+.1f} %")
    mean = np.mean(results, axis=0)
    print(f"mean: stack vs files {mean[0]:+.1f} %, without temporal coding {mean[1]:+.1f} %, "
          f"temporal coding {mean[2]:+.1f} %")


if __name__ == "__main__":
    main()
