# SPDX-License-Identifier: Apache-2.0
"""Regenerate the small real test crops in tests/data and examples/ from ../shared/data (train files only).

    .venv/bin/python tests/data/make_crops.py

Windows are fixed (row_off, col_off, height, width) so the output is reproducible; PROVENANCE.md
lists the sources. Contains modified Copernicus Sentinel data.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

# name -> (source file relative to SHARED, (row_off, col_off, height, width))
CROPS = {
    "tests/data/l2a_12band_bigearthnet.tif": ("s2l2a/bigearthnet_S2A-36-85_2017-06-17.tif", (20, 16, 64, 80)),
    "tests/data/l1c_13band_eurosat.tif": ("s2l1c/eurosat_Highway-2_undated.tif", (8, 4, 48, 56)),
    "tests/data/sref_10band_nodata_rsgislib.tif": ("timeseries/rsgislib_T37MEM/2016-07-20.tif", (80, 248, 72, 90)),
    "tests/data/l2a_4band_openeo.tif": ("timeseries/openeo-gfmap_test-optical-cube/2023-10-22.tif", (0, 0, 52, 46)),
    "tests/data/l1c_13band_cloudy_s2cloudless.tif": ("s2l1c/s2cloudless_testinput_undated.tif", (640, 96, 64, 64)),
    "tests/data/l1c_13band_cloudy_s2cloudless_cloudmask.tif": ("s2l1c/s2cloudless_testinput_undated_cloudmask.tif", (640, 96, 64, 64)),
    "tests/data/l2a_10band_bright_worldcereal.tif": ("timeseries/worldcereal_31UDS_00002806639B424A/2017-11-05.tif", (0, 16, 48, 48)),
    "examples/scene_l2a.tif": ("s2l2a/oceanecowatch_manilabay-b_undated.tif", (20, 340, 160, 160)),
}


def write_crop(src_path: Path, dst_path: Path, window: tuple[int, int, int, int]) -> None:
    row, col, h, w = window
    with rasterio.open(src_path) as src:
        win = Window(col, row, w, h)
        data = src.read(window=win)
        profile = dict(driver="GTiff", width=w, height=h, count=src.count, dtype=src.dtypes[0],
                       nodata=src.nodata, compress="deflate", zlevel=9, predictor=2,
                       tiled=False, interleave="band")
        if src.crs is not None:
            profile.update(crs=src.crs, transform=src.window_transform(win))
        tags, descriptions = src.tags(), src.descriptions
    tmp = dst_path.with_name(dst_path.name + ".tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for i, d in enumerate(descriptions, 1):
            dst.set_band_description(i, d or "")
    os.replace(tmp, dst_path)


def main() -> None:
    split = {r["file"]: r["split"] for r in csv.DictReader(open(SHARED / "splits.csv"))}
    for dst, (src, window) in CROPS.items():
        if split.get(src) != "train":
            sys.exit(f"{src} is not a train file")
        write_crop(SHARED / src, REPO / dst, window)
        print(f"{dst}: {src} window (row, col, h, w) = {window}, {os.path.getsize(REPO / dst)} bytes")

if __name__ == "__main__":
    main()
