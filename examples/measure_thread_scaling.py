# SPDX-License-Identifier: Apache-2.0
"""How well do the encoder's steps run in two threads at once?

    .venv/bin/python examples/measure_thread_scaling.py [--default-blas]

On a 544 x 544 x 12 tile of the throughput scene of `tec bench`, at quality 4: each step runs 3 times
in one thread, then 3 times in each of two threads at once. Speedup = 2 x (one-thread time) / (two-
thread time); 2.0 = the step scales perfectly. Run it on an idle machine with 2 or more cores.
BLAS is held at one thread, as the writer holds it while its tile threads run (terracodec.workers);
``--default-blas`` leaves numpy's BLAS threads as they are, which is how the steps ran before.
"""
import argparse
import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import rasterio

from terracodec import multires, workers
from terracodec import tilecodec as tc
from terracodec.anchors import _j2k_encode
from terracodec.weights import load_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--default-blas", action="store_true", help="do not hold BLAS at one thread")
args = parser.parse_args()

SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "s2l2a" / \
    "majortom_T48QUE-199U1099R_2020-02-23.tif"

with rasterio.open(SCENE) as src:
    tile = np.ascontiguousarray(src.read(window=((0, 544), (0, 544))))
lam = tc.rd_lambda(4)
tc.encode_tile(tile[:, :64, :64], quality=4)                # loads the model
loaded = load_model(None)
crop, _ = tc.central_crop(tile, None)
ten_m = np.ascontiguousarray(tile[[1, 2, 3, 7]])            # B02, B03, B04, B08
steps = {
    "whole tile (encode_tile)": lambda: tc.encode_tile(tile, quality=4),
    "OpenJPEG coding, 4 x 544²": lambda: _j2k_encode(ten_m, 76, 1),
    "kind 1 crop probe (start_level)": lambda: tc.start_level(tile, None, None, lam),
    "kind 4 crop probe": lambda: tc.encode_multires(crop, None, lam, 76),
    "kind 4 on the tile": lambda: tc.encode_multires(tile, None, lam, 76),
    "grid detection": lambda: multires.detect_grids(tile),
    "learned screening estimate": lambda: tc._estimate_learned_cost(crop, loaded, tc.network_level(lam), None, lam),
    "restoration fit": lambda: tc.fit_restoration(tile, tile, None),
}
hold = contextlib.ExitStack()
if not args.default_blas:
    hold.enter_context(workers.single_threaded_blas())
for name, step in steps.items():
    start = time.perf_counter()
    for _ in range(3):
        step()
    one = time.perf_counter() - start
    threads = [threading.Thread(target=lambda: [step() for _ in range(3)]) for _ in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    two = time.perf_counter() - start
    print(f"{name}: {one / 3:.3f} s, speedup in two threads {2 * one / two:.2f}", flush=True)
