# SPDX-License-Identifier: Apache-2.0
"""Per-image BD-rates from a `tec bench` JSON (default docs/bench_val.json).

    .venv/bin/python examples/per_image_bd.py [BENCH.json] [--codec tec-hp-v1] [--anchors jpeg2000_klt,jpeg2000]

The bench reports BD-rates of the mean and pooled curves; this prints the BD-rate of each image's
own curve (35-50 dB, the same PCHIP integration), which shows where the gains come from.
"""
import argparse
import json
from pathlib import Path

from terracodec import metrics

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("bench", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "bench_val.json")
p.add_argument("--codec", default="tec-hp-v1")
p.add_argument("--anchors", default="jpeg2000_klt,jpeg2000")
args = p.parse_args()

results = json.loads(args.bench.read_text())["results"]
anchors = args.anchors.split(",")


def curve(codec, name):
    points = sorted((img["bpppb"], img["psnr"]) for point in results[codec] for img in point["per_image"]
                    if img["file"] == name)
    return [r for r, _ in points], [q for _, q in points]


print(f"{'image':<48} {'band-pixels':>12} " + " ".join(f"{'vs ' + a:>16}" for a in anchors))
for img in results[args.codec][0]["per_image"]:
    name = img["file"]
    cells = []
    for anchor in anchors:
        bd = metrics.bd_rate(*curve(args.codec, name), *curve(anchor, name))
        cells.append(f"{bd:+.1f} %" if bd == bd else "n/a")       # NaN: the curves do not overlap
    print(f"{name:<48} {img['band_pixels']:>12} " + " ".join(f"{c:>16}" for c in cells))
