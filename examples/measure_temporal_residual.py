# SPDX-License-Identifier: Apache-2.0
"""Does classical temporal prediction pay? (issue 5; a measurement, not a codec mode)

    .venv/bin/python examples/measure_temporal_residual.py [LOCATION] [--gap MIN MAX] [--qualities 2,5]

For pairs of clear dates (cloud fraction < 0.05, or not given) of a val time series in ../shared/data/timeseries,
the reference date is coded with the core's classical tile encoder and decoded; the target date is
predicted from it per band (target_b ~ a_b * ref_decoded_b + c_b, least squares, the 2 coefficients
counted as 2 float16 each) and the residual is coded with the same encoder. Printed per pair: the
rate-distortion cost J = SSE + lambda * bits of the target coded alone, and its change when coded
as a residual (negative = the temporal mode pays). Default: worldcereal_37MBS_TZA-1101950, gaps of
25-60 days, up to 6 pairs spread over the series.
"""
import argparse
import csv
import datetime as dt
from pathlib import Path

import numpy as np
import rasterio

from terracodec import tilecodec as tc

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("location", nargs="?", default="worldcereal_37MBS_TZA-1101950")
p.add_argument("--gap", nargs=2, type=int, default=(25, 60), metavar=("MIN", "MAX"))
p.add_argument("--qualities", default="2,5")
p.add_argument("--pairs", type=int, default=6)
args = p.parse_args()

folder = DATA / args.location
with open(folder / "index.csv", newline="") as index:
    rows = [r for r in csv.DictReader(index)
            if (not r["cloud_fraction"] or float(r["cloud_fraction"]) < 0.05) and not float(r["nodata_fraction"] or 0)]
dates = [dt.date.fromisoformat(r["date"]) for r in rows]
pairs = []
for i in range(len(rows)):                       # the first later date within the gap range
    j = next((j for j in range(i + 1, len(rows)) if args.gap[0] <= (dates[j] - dates[i]).days <= args.gap[1]), None)
    if j is not None:
        pairs.append((i, j))
pairs = pairs[::max(1, len(pairs) // args.pairs)][:args.pairs]
if not pairs:
    raise SystemExit(f"no pair of clear dates {args.gap[0]}-{args.gap[1]} days apart in {folder}")


def read(row) -> np.ndarray:
    with rasterio.open(folder / row["file"]) as src:
        return src.read()


for quality in (int(q) for q in args.qualities.split(",")):
    lam = tc.rd_lambda(quality)
    for i, j in pairs:
        ref, target = read(rows[i]), read(rows[j])
        ref_decoded = tc.decode_tile(tc.encode_classical(ref, None, lam)[0]).astype(np.float64)
        alone, j_alone = tc.encode_classical(target, None, lam)
        prediction = np.empty(target.shape)
        for b in range(target.shape[0]):
            x = np.stack([ref_decoded[b].ravel(), np.ones(ref_decoded[b].size)], 1)
            coef = np.linalg.lstsq(x, target[b].ravel().astype(np.float64), rcond=None)[0]
            prediction[b] = (x @ coef.astype(np.float16).astype(np.float64)).reshape(target.shape[1:])
        residual = (target - np.rint(prediction)).astype(np.int16)   # target = rint(prediction) + residual
        _, j_residual = tc.encode_classical(residual, None, lam)
        j_residual += lam * 8 * 4 * target.shape[0]
        print(f"q{quality} {dates[i]} -> {dates[j]} ({(dates[j] - dates[i]).days} days): alone {len(alone)} bytes, "
              f"J {j_alone:.4g}; as a residual: J {j_residual:.4g} ({j_residual / j_alone - 1:+.1%})", flush=True)
