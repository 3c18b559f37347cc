# SPDX-License-Identifier: Apache-2.0
"""Tile seams: squared error within 4 px of the inner tile borders vs the tile interiors (>= 16 px).

    .venv/bin/python examples/measure_seams.py [../shared/data/s2l1c/dsen2_T49JGM_2017-10-22.tif]

Uses a 512 x 512 crop (2 x 2 tiles of 256) of a val scene and prints, per quality and tile overlap
(0 = tiles coded edge to edge; 4 = the default cross-fade), bits per pixel per band, PSNR_10000 and
the border/interior MSE ratio (1.0 = no seam penalty).
"""
import sys
from pathlib import Path

import numpy as np
import rasterio

import terracodec as tec

path = Path(sys.argv[1]) if len(sys.argv) > 1 else \
    Path(__file__).resolve().parents[2] / "shared" / "data" / "s2l1c" / "dsen2_T49JGM_2017-10-22.tif"
with rasterio.open(path) as src:
    scene = src.read(window=((0, 512), (0, 512)))
offset = np.abs(np.arange(512) - 255.5)
dist = np.minimum(offset[:, None], offset[None, :])          # distance to the inner seam lines
for quality in (2, 4, 6):
    for overlap in (0, tec.api.DEFAULT_TILE_OVERLAP):
        data = tec.encode(scene, quality=quality, tile_size=256, tile_overlap=overlap)
        decoded = tec.decode(data)
        err = ((scene.astype(np.float64) - decoded) ** 2).mean(axis=0)
        border, interior = err[dist < 4].mean(), err[dist >= 16].mean()
        print(f"q{quality} overlap {overlap}: {len(data) * 8 / scene.size:.4f} bpppb, "
              f"PSNR_10000 {10 * np.log10(1e8 / err.mean()):.2f} dB, MSE near seams {border:.1f}, "
              f"interior {interior:.1f}, ratio {border / interior:.2f}", flush=True)
