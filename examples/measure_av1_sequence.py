# SPDX-License-Identifier: Apache-2.0
"""Does AV1's inter prediction across dates pay? (issue 5; a measurement, not a codec mode)

    .venv/bin/python examples/measure_av1_sequence.py LOCATION [--dates D1,D2,... ...]
                                                      [--stacks seasonal] [--bands B02,B03,B04]

Codes three bands of each stack of dates of a time series in ../shared/data/timeseries two ways
with libaom through imagecodecs, with the sample format of the core's AV1 groups (12-bit 4:4:4,
identity matrix, one plane per band, libaom speed 6, one thread): every date as its own still
image, and all dates as one AV1 image sequence (the first date a key frame, the others inter
frames predicted from the decoded earlier ones). The bands are offset and divided by one integer
step to fit 12 bits. Prints both RD curves (bits per pixel per band of the whole AV1 files, PSNR_10000
of the pooled error over all dates) and the BD-rate of the sequence against the stills (negative
= the sequence needs fewer bits) over 35-50 dB and over the PSNR both curves cover up to 60 dB.
``--dates`` takes one stack per argument; without it, ``--stacks seasonal`` uses the 4-date
stacks of clear dates 25-60 days apart that `tec bench --temporal` builds. Raw bands, no KLT, no
coarse grids: it isolates what inter prediction buys, and is not a TEC file size.
"""
import argparse
from pathlib import Path

import numpy as np

from terracodec.anchors import codec_module
from terracodec.bench import bd_rate
from terracodec.bench_temporal import seasonal_stacks
from terracodec.train_temporal import load_location

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"
AVIF_QUALITIES = (20, 35, 50, 65, 80, 90)      # libavif quality 0-100 (100: finest quantizer)
OPTIONS = dict(speed=6, bitspersample=12, pixelformat="yuv444", matrix=0, numthreads=1)


def rd_points(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dates, 3, h, w) reflectances -> ([(bpppb, PSNR)] of the stills, [...] of the sequence)."""
    avif = codec_module("_avif")
    lo = int(stack.min())
    step = max(1, -(-(int(stack.max()) - lo) // 4095))
    samples = np.moveaxis((stack.astype(np.int64) - lo + step // 2) // step, 1, -1).astype(np.uint16)
    n = stack.size

    def sse(decoded: np.ndarray, ref: np.ndarray) -> float:
        values = np.moveaxis(decoded.astype(np.int64), -1, -3) * step + lo
        return float(np.sum((ref.astype(np.float64) - values) ** 2))

    stills, sequence = [], []
    for quality in AVIF_QUALITIES:
        nbytes, err = 0, 0.0
        for date, ref in zip(samples, stack):
            data = avif.avif_encode(date, level=quality, **OPTIONS)
            nbytes += len(data)
            err += sse(avif.avif_decode(data), ref)
        stills.append((8 * nbytes / n, 10 * np.log10(1e8 * n / err)))
        data = avif.avif_encode(samples, level=quality, **OPTIONS)
        sequence.append((8 * len(data) / n, 10 * np.log10(1e8 * n / sse(avif.avif_decode(data), stack))))
    return np.array(stills), np.array(sequence)


p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("location")
p.add_argument("--dates", nargs="*", default=None, help="stacks, each as comma-separated dates (YYYY-MM-DD)")
p.add_argument("--stacks", choices=["seasonal"], default="seasonal", help="the stacks when --dates is not given")
p.add_argument("--bands", default=None, help="three band names (default: B02,B03,B04 when present, "
                                                 "else the first three)")
args = p.parse_args()

array, _, names, rows = load_location(DATA / args.location)
bands = args.bands.split(",") if args.bands else \
    (["B02", "B03", "B04"] if {"B02", "B03", "B04"} <= set(names) else names[:3])
if len(bands) != 3 or not set(bands) <= set(names):
    p.error(f"--bands needs three of {','.join(names)}")
band_index = [names.index(b) for b in bands]
dates = [r["key"][:10] for r in rows]
if args.dates:
    stacks = []
    for text in args.dates:
        missing = [d for d in text.split(",") if d not in dates]
        if missing:
            p.error(f"no date {', '.join(missing)} in {args.location} (dates: {', '.join(dates)})")
        stacks.append([dates.index(d) for d in text.split(",")])
else:
    stacks = seasonal_stacks(rows, 5)
print(f"{args.location}: bands {','.join(bands)}, {array.shape[2]}x{array.shape[3]}")
for seq in stacks:
    stills, sequence = rd_points(np.ascontiguousarray(array[seq][:, band_index]))
    gaps = [(rows[b]["when"] - rows[a]["when"]).days for a, b in zip(seq, seq[1:])]
    clouds = ", ".join(f"{rows[i]['cloud']:.2f}" for i in seq)
    bd_50 = bd_rate(sequence[:, 0], sequence[:, 1], stills[:, 0], stills[:, 1], (35.0, 50.0))
    bd_60 = bd_rate(sequence[:, 0], sequence[:, 1], stills[:, 0], stills[:, 1], (35.0, 60.0))
    print(f"{', '.join(dates[i] for i in seq)} (gaps {gaps} days, cloud {clouds}): sequence vs stills "
          f"BD-rate {float(bd_50):+.1f} % (35-50 dB), {float(bd_60):+.1f} % (35-60 dB)")
    for q, (bs, ps), (bq, pq) in zip(AVIF_QUALITIES, stills, sequence):
        print(f"  avif quality {q}: stills {bs:.4f} bpppb {ps:.2f} dB | sequence {bq:.4f} bpppb {pq:.2f} dB")
