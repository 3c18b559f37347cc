# SPDX-License-Identifier: Apache-2.0
"""examples/dask_archive.py in small: a 2-worker LocalCluster compresses two scenes and a 2-date series
from ../shared/data into one zarr store; the chunks are byte-identical to the single-process run and
read back at the same PSNR and compression ratio."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import MIN_PSNR

pytest.importorskip("zarr", minversion="3.1")
pytest.importorskip("rasterio")
distributed = pytest.importorskip("dask.distributed")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dask_archive.py"


@pytest.fixture(scope="module")
def archive():
    spec = importlib.util.spec_from_file_location("dask_archive", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dask_archive"] = module               # run_dask ships it to the workers by value
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.shared_data
def test_two_workers_match_single_process(tmp_path, shared_data, archive):
    items = archive.build_items(shared_data, archive.SCENES[:2], archive.SERIES, dates=2, crop=96)
    assert [len(i["shape"]) for i in items] == [3, 3, 4]
    kw = {"quality": 5, "chunk": 48}
    archive.tune_dask()
    local = archive.run_local(tmp_path / "local.zarr", items, **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = archive.run_dask(tmp_path / "dask.zarr", items, client, **kw)
    assert res["workers"] == 2
    assert res["chunks"] == local["chunks"] == 2 * 4 + 2 * 4
    a = archive.evaluate(tmp_path / "local.zarr", items)
    b = archive.evaluate(tmp_path / "dask.zarr", items)
    assert len(a["digests"]) == res["chunks"]
    assert a["digests"] == b["digests"]                 # deterministic: identical chunk bytes
    assert a["stored_bytes"] == b["stored_bytes"] and a["ratio"] > 2
    assert a["psnr"] == b["psnr"] >= MIN_PSNR
    assert all(p >= MIN_PSNR for p in b["per_array"].values())
