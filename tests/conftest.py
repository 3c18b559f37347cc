# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: the real Sentinel-2 crops in tests/data (see tests/data/PROVENANCE.md), the codec
model the tests run with, and quality helpers that know the codec is lossy.

The model under test is the default learned model; set ``TEC_TEST_MODEL`` to test another one
(``TEC_TEST_MODEL=lossless`` runs everything with exact tiles). When no learned model is installed
the tests fall back to ``lossless`` and say so in the report header.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"

# crop name -> file in tests/data
CROPS = {
    "l2a12": "l2a_12band_bigearthnet.tif",
    "l1c13": "l1c_13band_eurosat.tif",
    "sref10_nodata": "sref_10band_nodata_rsgislib.tif",
    "l2a4": "l2a_4band_openeo.tif",
    "cloudy13": "l1c_13band_cloudy_s2cloudless.tif",
    "bright10": "l2a_10band_bright_worldcereal.tif",
}

# Quality the lossy comparisons accept: PSNR_10000 over valid pixels (quality 5 aims at ~45 dB).
MIN_PSNR = 30.0


def _resolve_test_model() -> tuple[str | None, str]:
    env = os.environ.get("TEC_TEST_MODEL")
    if env:
        return env, f"TEC_TEST_MODEL={env}"
    try:
        from terracodec import weights

        name = weights.describe(None)["name"]
        return None, f"default model ({name})"
    except Exception as exc:                               # no weights installed
        return "lossless", f"lossless (no learned model available: {exc})"


TEST_MODEL, TEST_MODEL_DESCRIPTION = _resolve_test_model()
LOSSLESS = TEST_MODEL == "lossless"


def _temporal_available() -> bool:
    try:
        from terracodec import stack

        stack.default_temporal_model()
        return True
    except Exception:
        return False


# tests of TEC-TT (stacks, zarr time chunks) need its weights
needs_tt = pytest.mark.skipif(not _temporal_available(), reason="no TEC-TT weights (weights/manifest.json "
                              "has no temporal model; python -m terracodec.train_temporal --export)")


def pytest_report_header(config):
    return f"terracodec tests run with model: {TEST_MODEL_DESCRIPTION}"


# -- quality helpers (the learned codec is lossy: only these know about it) -----------------------------
def psnr10000(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    """PSNR with peak 10000 (reflectance x 10000) over ``valid`` pixels (all when None)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    if valid is not None:
        diff = diff[valid]
    mse = float(np.mean(diff * diff)) if diff.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(10000.0 ** 2 / mse)


def assert_decoded_matches(decoded: np.ndarray, original: np.ndarray, nodata=None, *,
                           min_psnr: float = MIN_PSNR, lossless: bool | None = None) -> None:
    """Exact: shape, dtype and the nodata footprint. Pixel values: equal when the codec is lossless
    (``lossless=True`` or the test model is 'lossless'), else PSNR_10000 >= ``min_psnr`` over valid
    pixels. This is the one place to change when the codec's guarantees change."""
    assert decoded.shape == original.shape
    assert decoded.dtype == original.dtype
    valid = np.ones(original.shape, bool)
    if nodata is not None:
        is_nd = original == np.asarray(nodata).astype(original.dtype)
        np.testing.assert_array_equal(decoded == nodata, is_nd, err_msg="nodata footprint changed")
        valid = ~is_nd
    if LOSSLESS if lossless is None else lossless:
        np.testing.assert_array_equal(decoded, original)
    else:
        assert psnr10000(decoded, original, valid) >= min_psnr


# -- data -------------------------------------------------------------------------------------------------
def read_tif(path) -> tuple[np.ndarray, dict]:
    """(array, meta) straight from rasterio (independent of terracodec.geotiff)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            arr = ds.read()
            georef = ds.crs is not None
            meta = {"bands": list(ds.descriptions), "nodata": ds.nodata,
                    "crs": ds.crs, "crs_wkt": ds.crs.to_wkt() if georef else None,
                    "transform": ds.transform,
                    "geotransform": ds.transform.to_gdal() if georef else None,
                    "tags": ds.tags()}
    if meta["nodata"] is not None:
        meta["nodata"] = int(meta["nodata"])
    return arr, meta


@pytest.fixture(scope="session")
def crops() -> dict:
    pytest.importorskip("rasterio")
    return {name: read_tif(DATA / fname) for name, fname in CROPS.items()}


@pytest.fixture(scope="session")
def l2a12(crops):
    return crops["l2a12"]


@pytest.fixture(scope="session")
def model() -> str | None:
    """The model name to pass to encode()/write() (None = the default learned model)."""
    return TEST_MODEL


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (the full Sentinel-2 set); skips when it is absent."""
    if not (SHARED_DATA / "splits.csv").exists():
        pytest.skip(f"shared data set not available at {SHARED_DATA}")
    return SHARED_DATA
