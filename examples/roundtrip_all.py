# SPDX-License-Identifier: Apache-2.0
"""Round trip of every image in ../shared/data through the Python API: a robustness sweep.

    .venv/bin/python examples/roundtrip_all.py [--qualities 1,8] [--model NAME] [--dates 4] [--effort fast|best] [--stacks-only]

Every single-date image (s2l2a, s2l1c, partial_bands, other_sensors) and a few dates spread over each
time series are encoded and decoded at each quality; each line gives bits per pixel per band,
PSNR_10000 over valid pixels against the quality's floor (tilecodec.QUALITY_FLOOR_DB), and whether
the nodata pixels came back exactly. The picked dates of each series, and as many consecutive dates
from its middle, are then written as one stack at each quality: every date must reach the floor with
its nodata exact, and the last date read alone must equal the full decode.
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
p.add_argument("--stacks-only", action="store_true", help="only the time stacks")
args = p.parse_args()


def images(folder):
    return sorted(f for f in folder.glob("*.tif") if not f.stem.endswith(("_cloudmask", "_scl")))


singles = [f for sub in ("s2l2a", "s2l1c", "partial_bands", "other_sensors") for f in images(DATA / sub)]
series = []
for location in sorted(d for d in (DATA / "timeseries").iterdir() if d.is_dir()):
    dates = images(location)
    series.append(dates[::max(1, len(dates) // args.dates)][:args.dates])
failures = 0
for path in [] if args.stacks_only else singles + [f for picked in series for f in picked]:
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
def check_stack(label, picked):
    """Write ``picked`` dates as one stack at each quality; every date must read back at or above the
    quality's floor with nodata exact, and the last date alone (random access) as in the full decode."""
    arrays = [read_geotiff(f) for f in picked]
    if len({a.shape for a, _ in arrays}) != 1:
        print(f"stack {label}: dates differ in shape, skipped")
        return 0
    stack = np.stack([a for a, _ in arrays])
    nodata = arrays[0][1]["nodata"]
    bad = 0
    for quality in (int(q) for q in args.qualities.split(",")):
        try:
            data = tec.encode(stack, bands=arrays[0][1]["bands"], quality=quality, nodata=nodata,
                              dates=[f.stem[:10] for f in picked], model=args.model, effort=args.effort)
            out = tec.decode(data)
            with tec.open(data) as ds:
                last = ds.read(date=len(picked) - 1)
                predicted = ds.stats.get("predicted_tiles", 0)
        except Exception as exc:                                  # any failure is a finding
            bad += 1
            print(f"FAILED stack {label} q{quality}: {type(exc).__name__}: {exc}")
            continue
        psnrs, exact = [], True
        for t in range(len(picked)):
            mask = tc.nodata_mask(stack[t], nodata)
            if mask is None or not mask.all():
                psnrs.append(tc.tile_psnr(stack[t], out[t], mask))
            exact &= mask is None or np.array_equal(mask, out[t] == nodata)
        ok = (out.shape == stack.shape and exact and min(psnrs) >= tc.QUALITY_FLOOR_DB[quality]
              and np.array_equal(last, out[-1]))
        bad += not ok
        print(f"{'ok' if ok else 'FAILED'} stack {label}: {len(picked)} dates, q{quality}, "
              f"{8 * len(data) / stack.size:.4f} bpppb, worst date {min(psnrs):.2f} dB "
              f"(floor {tc.QUALITY_FLOOR_DB[quality]}), nodata {'exact' if exact else 'CHANGED'}, "
              f"{predicted} predicted tile(s)")
    return bad


for picked in series:
    location = picked[0].parent
    failures += check_stack(f"{location.name} (spread)", picked)
    dates = images(location)                                      # consecutive dates: predicted tiles
    middle = max(0, len(dates) // 2 - args.dates // 2)
    failures += check_stack(f"{location.name} (consecutive)", dates[middle:middle + args.dates])
print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
