# SPDX-License-Identifier: Apache-2.0
"""Round trip of every image in ../shared/data through the Python API: a robustness sweep.

    .venv/bin/python examples/roundtrip_all.py [--qualities 1,8] [--model NAME] [--dates 4] [--effort fast|best]

Every single-date image (s2l2a, s2l1c, partial_bands, other_sensors) and a few dates spread over each
time series are encoded and decoded at each quality; each line gives bits per pixel per band,
PSNR_10000 over valid pixels against the quality's floor (tilecodec.QUALITY_FLOOR_DB), and whether
the nodata pixels came back exactly. The picked dates of each series are then written as one stack.
Files that cannot be read (no band names) are listed with the error, which is the point: every
failure must be a documented TecError. Exits with status 1 when any round trip fails or misses its floor.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import terracodec as tec
from terracodec import tilecodec as tc
from terracodec.errors import TecError
from terracodec.geotiff import read_geotiff

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--qualities", default="1,8")
p.add_argument("--model", default=None)
p.add_argument("--dates", type=int, default=4, help="dates per time series")
p.add_argument("--effort", default=None, help="encoder effort (fast, default, best)")
args = p.parse_args()


def images(folder):
    return sorted(f for f in folder.glob("*.tif") if not f.stem.endswith(("_cloudmask", "_scl")))


singles = [f for sub in ("s2l2a", "s2l1c", "partial_bands", "other_sensors") for f in images(DATA / sub)]
series = []
for location in sorted(d for d in (DATA / "timeseries").iterdir() if d.is_dir()):
    dates = images(location)
    series.append(dates[::max(1, len(dates) // args.dates)][:args.dates])
failures = 0
for path in singles + [f for picked in series for f in picked]:
    name = path.relative_to(DATA)
    try:
        array, meta = read_geotiff(path)
    except TecError as exc:
        print(f"unreadable {name}: {type(exc).__name__}: {exc}")
        continue
    for quality in (int(q) for q in args.qualities.split(",")):
        start = time.perf_counter()
        try:
            data = tec.encode(array, bands=meta["bands"], quality=quality, nodata=meta["nodata"], model=args.model,
                              effort=args.effort)
            out = tec.decode(data)
        except Exception as exc:                                  # any failure is a finding
            failures += 1
            print(f"FAILED {name} q{quality}: {type(exc).__name__}: {exc}")
            continue
        mask = tc.nodata_mask(array, meta["nodata"])
        psnr = tc.tile_psnr(array, out, mask)
        nodata_kept = mask is None or np.array_equal(mask, out == meta["nodata"])
        ok = psnr >= tc.QUALITY_FLOOR_DB[quality] and nodata_kept and out.shape == array.shape
        failures += not ok
        print(f"{'ok' if ok else 'FAILED'} {name} {array.dtype} {'x'.join(map(str, array.shape))} q{quality}: "
              f"{8 * len(data) / array.size:.4f} bpppb, {psnr:.2f} dB (floor {tc.QUALITY_FLOOR_DB[quality]}), "
              f"nodata {'exact' if nodata_kept else 'CHANGED'}, {time.perf_counter() - start:.1f} s")
for picked in series:
    arrays = [read_geotiff(f) for f in picked]
    if len({a.shape for a, _ in arrays}) != 1:
        print(f"stack {picked[0].parent.name}: dates differ in shape, skipped")
        continue
    stack = np.stack([a for a, _ in arrays])
    try:
        data = tec.encode(stack, bands=arrays[0][1]["bands"], quality=4, nodata=arrays[0][1]["nodata"],
                          dates=[f.stem[:10] for f in picked], model=args.model, effort=args.effort)
        out = tec.decode(data)
        ok = out.shape == stack.shape
    except Exception as exc:
        ok = False
        print(f"FAILED stack {picked[0].parent.name}: {type(exc).__name__}: {exc}")
    failures += not ok
    print(f"{'ok' if ok else 'FAILED'} stack {picked[0].parent.name}: {len(picked)} dates, q4"
          + (f", {8 * len(data) / stack.size:.4f} bpppb" if ok else ""))
print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
