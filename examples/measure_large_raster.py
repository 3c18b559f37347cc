# SPDX-License-Identifier: Apache-2.0
"""Peak memory and wall time of `tec compress` and `tec decompress` on a large raster.

    .venv/bin/python examples/measure_large_raster.py [--repeat 4] [--quality 4] [--model NAME] [--keep DIR]

The raster is the val scene of `tec bench` (1068 x 1068 x 12) mirrored REPEAT x REPEAT times
(4: 4272 x 4272 x 12, 438 MB of int16), written as a tiled GeoTIFF into a temporary folder. Each
command runs in its own process, which reports its own peak resident memory at exit
(/proc/self/status VmHWM, as `tec bench` does; Linux). Prints one line per command.
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "s2l2a" / \
    "majortom_T48QUE-199U1099R_2020-02-23.tif"
# `tec` with its peak memory printed at exit (ru_maxrss would include this parent's RSS, which a
# forked child inherits)
TEC_REPORTING = """
import atexit, sys
def report():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    sys.stderr.write(f"VmHWM {peak}\\n")
atexit.register(report)
from terracodec.cli import cli
sys.argv[0] = "tec"
cli()
"""

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--repeat", type=int, default=4)
p.add_argument("--quality", type=int, default=4)
p.add_argument("--model", help="tec compress --model (default: the default model)")
p.add_argument("--keep", type=Path, help="write the files here instead of a temporary folder")
args = p.parse_args()


def mosaic(path: Path) -> tuple:
    with rasterio.open(SCENE) as src:
        a = src.read()
        profile, names = src.profile.copy(), src.descriptions
    row = np.concatenate([a if i % 2 == 0 else a[:, :, ::-1] for i in range(args.repeat)], axis=2)
    big = np.concatenate([row if i % 2 == 0 else row[:, ::-1] for i in range(args.repeat)], axis=1)
    profile.update(width=big.shape[2], height=big.shape[1], tiled=True, blockxsize=512, blockysize=512,
                   compress=None, BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(big)
        dst.descriptions = names
    return big.shape


def measured(*args) -> tuple[float, float]:
    """-> (seconds, peak RSS in MiB) of one `tec` command."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", TEC_REPORTING, *map(str, args)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"tec {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.rsplit("VmHWM ", 1)[1].split()[0])
    return seconds, peak_kib / 1024


with tempfile.TemporaryDirectory() as tmp:
    folder = args.keep or Path(tmp)
    folder.mkdir(parents=True, exist_ok=True)
    tif, tec, back = folder / "mosaic.tif", folder / "mosaic.tec", folder / "back.tif"
    shape = mosaic(tif)
    band_pixels = shape[0] * shape[1] * shape[2]
    print(f"raster {shape[0]} bands x {shape[1]} x {shape[2]} int16 ({2 * band_pixels / 1e6:.0f} MB)")
    model = ["--model", args.model] if args.model else []
    s, mib = measured("compress", tif, tec, "--quality", args.quality, "--no-progress", *model)
    print(f"tec compress -q {args.quality}{' --model ' + args.model if model else ''}: {s:.1f} s ({band_pixels / s / 1e6:.2f} Mpx-band/s), "
          f"peak RSS {mib:.0f} MiB, {tec.stat().st_size} bytes")
    s, mib = measured("decompress", tec, back, "--no-progress")
    print(f"tec decompress: {s:.1f} s ({band_pixels / s / 1e6:.2f} Mpx-band/s), peak RSS {mib:.0f} MiB")
