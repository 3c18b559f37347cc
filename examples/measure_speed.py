# SPDX-License-Identifier: Apache-2.0
"""Encode speed per quality and overview read times on one scene, in-process.

    .venv/bin/python examples/measure_speed.py [SCENE.tif] [--qualities 4,5,8] [--model NAME]
                                               [--efforts default,fast]

Defaults to the throughput scene of `tec bench` (val, 1068 x 1068 x 12). Prints, per quality, the
file size and the encode time of the whole scene per encoder effort (after a small warm-up
encode, so model loading is not counted), then writes the scene at quality 5 and reads it at full
resolution and at 1/2, 1/4 and 1/8 (no tile cache, best of 3). Run it on an idle machine.
"""
import argparse
import tempfile
import time
from pathlib import Path

import terracodec as tec
from terracodec.geotiff import read_geotiff

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "s2l2a" / \
    "majortom_T48QUE-199U1099R_2020-02-23.tif"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("scene", nargs="?", type=Path, default=DEFAULT)
parser.add_argument("--qualities", default="4,5,8")
parser.add_argument("--model", default=None, help="model name (default: the default model), e.g. classical")
parser.add_argument("--efforts", default="default", help="encoder efforts, comma separated (fast, default, best)")
args = parser.parse_args()

array, meta = read_geotiff(args.scene)
bands, nodata = meta["bands"], meta["nodata"]
tec.encode(array[:, :64, :64], bands=bands, quality=5, nodata=nodata, model=args.model)   # warm-up
print(f"{args.scene.name}: {array.shape[0]} bands x {array.shape[1]} x {array.shape[2]}")
for quality in (int(q) for q in args.qualities.split(",")):
    for effort in args.efforts.split(","):
        start = time.perf_counter()
        data = tec.encode(array, bands=bands, quality=quality, nodata=nodata, model=args.model, effort=effort)
        seconds = time.perf_counter() - start
        print(f"q{quality} {effort}: {len(data)} bytes, encode {seconds:.2f} s = "
              f"{array.size / seconds / 1e6:.2f} Mpx-band/s")

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "scene.tec"
    tec.write(path, array, bands=bands, quality=5, nodata=nodata, model=args.model)
    with tec.open(path, tile_cache=0) as ds:
        for level in range(4):
            times = []
            for _ in range(3):
                start = time.perf_counter()
                out = ds.read(level=level) if level else ds.read()
                times.append(time.perf_counter() - start)
            print(f"read 1/{1 << level}: {out.shape[1]} x {out.shape[2]} in {1000 * min(times):.0f} ms")
