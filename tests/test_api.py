# SPDX-License-Identifier: Apache-2.0
"""terracodec's Python API: encode/decode/write/open/Writer on real Sentinel-2 crops.

Pixel comparisons go through conftest.assert_decoded_matches (PSNR for the lossy learned codec,
exact for 'lossless'); shapes, dtypes, nodata, metadata and determinism are always exact. Tests
that pass ``model="lossless"`` explicitly test structure (tiling, windows, corruption), not the codec.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CROPS, LOSSLESS, MIN_PSNR, assert_decoded_matches, psnr10000, read_tif

import terracodec as tec
from terracodec import api
from terracodec import tilecodec as tc
from terracodec.bands import resolve_bands
from terracodec.format import PREFIX_SIZE

LL = "lossless"


def tiled(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """A real crop repeated (mirrored) to h x w, so large tests still see real spectra."""
    a = np.concatenate([arr, arr[:, ::-1]], axis=1)
    a = np.concatenate([a, a[:, :, ::-1]], axis=2)
    reps = (1, -(-h // a.shape[1]), -(-w // a.shape[2]))
    return np.ascontiguousarray(np.tile(a, reps)[:, :h, :w])


@pytest.fixture(scope="module")
def encoded(crops, model):
    """name -> .tec bytes of every crop, encoded once (quality 5, the test model)."""
    out = {}
    for name, (arr, meta) in crops.items():
        out[name] = tec.encode(arr, meta["bands"], quality=5, model=model, nodata=meta["nodata"],
                               crs_wkt=meta["crs_wkt"], geotransform=meta["geotransform"],
                               metadata=meta["tags"])
    return out


# -- round trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CROPS))
def test_round_trip_real_crops(name, crops, encoded):
    arr, meta = crops[name]
    data = encoded[name]
    back = tec.decode(data)
    assert_decoded_matches(back, arr, meta["nodata"])
    with api.TecDataset(data) as ds:
        assert ds.shape == arr.shape and ds.count == arr.shape[0]
        assert ds.bands == tuple(meta["bands"])
        assert ds.dtype == np.int16
        assert ds.nodata == meta["nodata"]
        assert ds.crs == meta["crs_wkt"]
        assert ds.transform == (tuple(meta["geotransform"]) if meta["geotransform"] else None)
        assert ds.metadata == meta["tags"]
        assert ds.quality == 5
    assert len(data) < arr.nbytes                       # it compresses (even losslessly)


@pytest.mark.parametrize("name,count", [("l2a12", 12), ("l1c13", 13), ("sref10_nodata", 10), ("l2a4", 4)])
def test_band_counts_use_default_names(name, count, crops, model):
    arr, meta = crops[name]
    assert arr.shape[0] == count
    if count != 10:   # the 10-band default is B02..B12 without B01/B09, which this crop also is
        assert tuple(meta["bands"]) == resolve_bands(None, count)
    data = tec.encode(arr, model=LL, nodata=meta["nodata"])          # bands=None -> defaults
    with api.TecDataset(data) as ds:
        assert ds.bands == resolve_bands(None, count)


def test_quality_is_recorded_and_monotonic_in_size(l2a12, model):
    arr, meta = l2a12
    sizes = {}
    for q in (1, 8):
        data = tec.encode(arr, meta["bands"], quality=q, model=model)
        with api.TecDataset(data) as ds:
            assert ds.quality == q
        sizes[q] = len(data)
        assert_decoded_matches(tec.decode(data), arr, min_psnr=MIN_PSNR)
    if not LOSSLESS:
        assert sizes[1] < sizes[8]


@pytest.mark.parametrize("h,w,tile", [(1, 1, 256), (17, 300, 256),
                                      pytest.param(300, 530, 256, marks=pytest.mark.slow), (33, 47, 32)])
def test_odd_sizes(h, w, tile, l2a12, model):
    arr = tiled(l2a12[0][[1, 2, 3, 7]], h, w)                  # B02 B03 B04 B08
    data = tec.encode(arr, ["B02", "B03", "B04", "B08"], model=model, tile_size=tile)
    with api.TecDataset(data) as ds:
        assert (ds.tiles_x, ds.tiles_y) == (-(-w // tile), -(-h // tile))
        assert len(ds._reader.entries) == ds.tiles_x * ds.tiles_y
    back = tec.decode(data)
    if h * w == 1:   # one pixel: PSNR of a single value is noisy; still within 1 % of reflectance
        assert back.shape == arr.shape and back.dtype == arr.dtype
        assert np.abs(back.astype(int) - arr).max() <= 100 or LOSSLESS
    else:
        assert_decoded_matches(back, arr)


def test_two_dimensional_array_is_one_band(l2a12, model):
    band = l2a12[0][3]
    with pytest.raises(tec.TecBandError):
        tec.encode(band, model=LL)                             # one band has no default name
    data = tec.encode(band, ["B04"], model=model)
    back = tec.decode(data)
    assert back.shape == (1,) + band.shape
    assert_decoded_matches(back[0], band)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_other_dtypes(dtype, l2a12, model):
    arr = l2a12[0][:4].astype(np.int32)
    arr = (arr // 40).clip(0, 255) if dtype == "uint8" else arr + 1000
    arr = arr.astype(dtype)
    back = tec.decode(tec.encode(arr, model=LL))
    np.testing.assert_array_equal(back, arr)                   # noted: lossless model
    back = tec.decode(tec.encode(arr, model=model))
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape


# -- nodata ---------------------------------------------------------------------------------------------
def test_nodata_real_clouds_exact(crops, encoded):
    arr, meta = crops["sref10_nodata"]
    assert meta["nodata"] == 0 and (arr == 0).mean() > 0.1
    back = tec.decode(encoded["sref10_nodata"])
    np.testing.assert_array_equal(back == 0, arr == 0)
    assert_decoded_matches(back, arr, 0)


@pytest.mark.parametrize("nodata", [-9999, 0, 32767])
def test_nodata_per_band_and_block(nodata, l2a12, model):
    arr = l2a12[0].copy()
    arr[:, 10:30, 5:40] = nodata                               # all bands
    arr[3, 40:50, 50:70] = nodata                              # one band only
    arr[7, ::7, ::5] = nodata                                  # scattered pixels
    data = tec.encode(arr, model=model, nodata=nodata, tile_size=48)
    back = tec.decode(data)
    np.testing.assert_array_equal(back == nodata, arr == nodata)
    assert_decoded_matches(back, arr, nodata)
    with api.TecDataset(data) as ds:
        assert ds.nodata == nodata and ds.profile["nodata"] == nodata


def test_all_nodata_tile(l2a12, model):
    arr = l2a12[0].copy()
    arr[:, :32, :32] = 0
    back = tec.decode(tec.encode(arr, model=model, nodata=0, tile_size=32))
    assert (back[:, :32, :32] == 0).all()
    assert_decoded_matches(back, arr, 0)


# -- windows --------------------------------------------------------------------------------------------
WINDOWS = [((0, 64), (0, 80)), ((5, 6), (7, 8)), ((10, 50), (30, 79)), ((31, 33), (0, 80)), ((63, 64), (79, 80))]


@pytest.fixture(scope="module")
def small_tiles(l2a12, model, tmp_path_factory):
    """The 12-band crop in 32-pixel tiles (2 x 3 grid) with the test model."""
    arr, meta = l2a12
    path = tmp_path_factory.mktemp("win") / "w.tec"
    tec.write(path, arr, meta["bands"], model=model, tile_size=32, crs_wkt=meta["crs_wkt"],
              geotransform=meta["geotransform"])
    return path


@pytest.mark.parametrize("window", WINDOWS)
def test_window_equals_crop_of_full_read(window, small_tiles):
    with tec.open(small_tiles) as ds:
        full = ds.read()
        (r0, r1), (c0, c1) = window
        part = ds.read(window=window)
        np.testing.assert_array_equal(part, full[:, r0:r1, c0:c1])    # exact: same tiles decoded


def test_tiles_of_one_read_decode_in_parallel_threads_to_the_same_pixels(small_tiles, monkeypatch):
    """read() decodes the tiles it needs in worker threads; the pixels equal a one-thread read."""
    import threading

    from terracodec import tilecodec

    real, names = tilecodec.decode_tile_reduced, []
    monkeypatch.setattr(tilecodec, "decode_tile_reduced",
                        lambda *a, **k: names.append(threading.current_thread().name) or real(*a, **k))
    reads = {}
    for workers in (1, 3):
        monkeypatch.setattr(api, "READ_WORKERS", workers)
        with tec.open(small_tiles, tile_cache=0) as ds:
            reads[workers] = ds.read(progress=True)
    assert len(names) == 12 and sum(n.startswith("tec-decode") for n in names) == 6
    np.testing.assert_array_equal(reads[1], reads[3])


def test_window_forms_and_band_selection(small_tiles):
    from rasterio.windows import Window

    with tec.open(small_tiles) as ds:
        full = ds.read()
        np.testing.assert_array_equal(ds.read(window=Window(30, 10, 49, 40)), full[:, 10:50, 30:79])
        np.testing.assert_array_equal(ds.read(window=((10, 50), (30, 79)), bands=["B04", "b2"]),
                                      full[[3, 1], 10:50, 30:79])
        np.testing.assert_array_equal(ds.read(bands=[4, 2]), full[[3, 1]])
        np.testing.assert_array_equal(ds.read(bands=4), full[3])           # int -> 2-D, like rasterio
        for bad in [((0, 65), (0, 10)), ((5, 5), (0, 10)), ((-1, 3), (0, 3)), "x", ((0.5, 3), (0, 3))]:
            with pytest.raises(tec.TecInputError):
                ds.read(window=bad)
        with pytest.raises(tec.TecBandError):
            ds.read(bands=["B10"])
        with pytest.raises(tec.TecBandError):
            ds.read(bands=[13])


def test_decode_with_window_bytes(l2a12):
    arr = l2a12[0]
    data = tec.encode(arr, model=LL, tile_size=32)
    np.testing.assert_array_equal(tec.decode(data, window=((3, 40), (20, 70))), arr[:, 3:40, 20:70])


@pytest.fixture(scope="module")
def big_lossless(l2a12, tmp_path_factory):
    """300 x 530, 4 bands, 64-pixel tiles (5 x 9 grid), lossless: a structural fixture."""
    arr = tiled(l2a12[0][[1, 2, 3, 7]], 300, 530)
    path = tmp_path_factory.mktemp("big") / "big.tec"
    tec.write(path, arr, ["B02", "B03", "B04", "B08"], model=LL, tile_size=64)
    return path, arr


def test_window_decodes_only_touched_tiles(big_lossless, monkeypatch):
    path, arr = big_lossless
    calls = []
    real = api.tilecodec.decode_tile

    def counting(payload, **kw):
        calls.append(len(payload))
        return real(payload, **kw)

    monkeypatch.setattr(api.tilecodec, "decode_tile", counting)
    with tec.open(path) as ds:
        assert (ds.tiles_x, ds.tiles_y) == (9, 5)
        part = ds.read(window=((70, 120), (120, 200)))           # rows in tile row 1, cols in tiles 1..3
        assert len(calls) == 3
        np.testing.assert_array_equal(part, arr[:, 70:120, 120:200])
        calls.clear()
        ds.read(window=((0, 1), (0, 1)))
        assert len(calls) == 1
        calls.clear()
        ds.read(window=((0, 1), (0, 1)))                        # decoded tiles are cached
        assert len(calls) == 0
    with tec.open(path) as ds:
        calls.clear()
        ds.read()
        assert len(calls) == 45


def _flip_byte_in_tile(src, dst, tile_index):
    from terracodec.format import ContainerReader

    with ContainerReader(str(src)) as r:
        e = r.entries[tile_index]
    raw = bytearray(open(src, "rb").read())
    raw[e.offset + e.length // 2] ^= 0x10
    open(dst, "wb").write(bytes(raw))


def test_corrupt_untouched_tile_does_not_break_window_read(big_lossless, tmp_path):
    path, arr = big_lossless
    bad = tmp_path / "bad.tec"
    _flip_byte_in_tile(path, bad, tile_index=44)                   # last tile (row 4, col 8)
    with tec.open(bad) as ds:
        np.testing.assert_array_equal(ds.read(window=((0, 200), (0, 300))), arr[:, :200, :300])
        with pytest.raises(tec.TecChecksumError, match="tile 44"):
            ds.read()
        with pytest.raises(tec.TecChecksumError):
            ds.read(window=((290, 300), (520, 530)))


# -- determinism and the streaming writer ---------------------------------------------------------------
def test_same_bytes_for_two_encodes(l2a12, model):
    arr, meta = l2a12
    kw = dict(model=model, quality=4, tile_size=48, crs_wkt=meta["crs_wkt"], geotransform=meta["geotransform"])
    assert tec.encode(arr, **kw) == tec.encode(arr.copy(), **kw)


def test_writer_strips_equal_encode(crops, model, tmp_path):
    arr, meta = crops["sref10_nodata"]
    arr = np.ascontiguousarray(arr[:, :, :40])                   # 72 x 40: two 36-row tile rows
    want = tec.encode(arr, meta["bands"], model=model, nodata=0, tile_size=36)
    path = tmp_path / "s.tec"
    c, h, w = arr.shape
    with tec.Writer(path, w, h, c, arr.dtype, meta["bands"], model=model, nodata=0, tile_size=36) as wr:
        for r0, r1 in [(0, 7), (7, 40), (40, 41), (41, 72)]:      # strips of any height
            wr.write(arr[:, r0:r1])
    assert path.read_bytes() == want
    path2 = tmp_path / "t.tec"
    with tec.Writer(path2, w, h, c, "int16", meta["bands"], model=LL, nodata=0, tile_size=36) as wr:
        for r0 in range(0, h, 36):
            wr.write_tiles(r0, arr[:, r0:r0 + 36])
    assert path2.read_bytes() == tec.encode(arr, meta["bands"], model=LL, nodata=0, tile_size=36)


def test_writer_errors_leave_no_file(l2a12, tmp_path):
    arr = l2a12[0]
    c, h, w = arr.shape
    path = tmp_path / "x.tec"
    with pytest.raises(RuntimeError):
        with tec.Writer(path, w, h, c, "int16", model=LL) as wr:
            wr.write(arr[:, :40])
            raise RuntimeError("boom")
    with pytest.raises(tec.TecInputError, match="rows not written"):
        with tec.Writer(path, w, h, c, "int16", model=LL) as wr:
            wr.write(arr[:, :40])
    wr = tec.Writer(path, w, h, c, "int16", model=LL)
    with pytest.raises(tec.TecInputError, match="top to bottom"):
        wr.write_tiles(32, arr[:, 32:])
    wr = tec.Writer(path, w, h, c, "int16", model=LL)
    with pytest.raises(tec.TecInputError):
        wr.write(arr[:5])                                          # wrong band count
    wr = tec.Writer(path, w, h, c, "int16", model=LL)
    with pytest.raises(tec.TecInputError):
        wr.write(arr.astype(np.float32))
    assert sorted(os.listdir(tmp_path)) == []                      # no file, no temporary


def test_failed_write_keeps_existing_file(l2a12, tmp_path):
    path = tmp_path / "keep.tec"
    path.write_bytes(b"old")
    with pytest.raises(tec.TecInputError):
        tec.write(path, l2a12[0].astype(np.float32))
    with pytest.raises(RuntimeError):
        with tec.Writer(path, 80, 64, 12, "int16", model=LL) as wr:
            wr.write(l2a12[0][:, :10])
            raise RuntimeError
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.tec"]


# -- the dataset object ---------------------------------------------------------------------------------
def test_dataset_properties_and_profile(l2a12, model, tmp_path):
    import rasterio
    from affine import Affine

    arr, meta = l2a12
    path = tmp_path / "p.tec"
    tec.write(path, arr, meta["bands"], quality=6, model=model, crs_wkt=meta["crs_wkt"],
              geotransform=meta["geotransform"], metadata={"A": "b"}, date="2017-06-17")
    with tec.open(path) as ds:
        assert ds.width == 80 and ds.height == 64 and ds.count == 12 and ds.shape == (12, 64, 80)
        assert ds.dtype == np.int16 and ds.quality == 6 and ds.dates == ["2017-06-17"]
        assert ds.model == (model or __import__("terracodec.weights").weights.default_model())
        assert ds.header["model"]["name"] == ds.model
        assert isinstance(ds.crs, str) and rasterio.crs.CRS.from_wkt(ds.crs) == meta["crs"]
        assert ds.transform == tuple(meta["geotransform"])
        assert ds.affine == meta["transform"] and isinstance(ds.affine, Affine)
        assert ds.metadata == {"A": "b"}
        stats = ds.header["stats"]
        assert stats["fallback_tiles"] == sum(e.kind in (1, 4) for e in ds._reader.entries)
        coarse = [tc.uses_coarse_grid(tc.kind4_groups(ds._reader.read_tile(i)))
                  for i in range(len(ds._reader.entries))]
        assert stats.get("coarse_grid_tiles", 0) == sum(coarse) > 0
        assert "compression_ratio" not in stats             # format 2: measured on the file
        assert 0 not in stats.values() and "lossless_tiles" not in stats   # counts of 0 are left out
        assert ds.stats["lossless_tiles"] == ds.stats["learned_tiles"] == 0 and "temporal_tiles" not in ds.stats
        assert {k: v for k, v in ds.stats.items() if v} == stats
        assert ds.compression_ratio == pytest.approx(arr.nbytes / path.stat().st_size)
        data = ds.read()
        profile = ds.profile
    assert ds.closed
    assert set(profile) >= {"driver", "width", "height", "count", "dtype", "crs", "transform", "nodata"}
    out = tmp_path / "p.tif"
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    back, m2 = read_tif(out)
    np.testing.assert_array_equal(back, data)
    assert m2["crs"] == meta["crs"] and m2["transform"] == meta["transform"]


def test_no_georeferencing(crops, encoded):
    arr, meta = crops["cloudy13"]
    assert meta["crs_wkt"] is None
    with api.TecDataset(encoded["cloudy13"]) as ds:
        assert ds.crs is None and ds.transform is None and ds.affine is None
        assert ds.profile["crs"] is None


def test_bright_and_cloudy_quality(crops, encoded):
    """Values above 10000 (thick cloud) and cloudy L1C decode at a sane PSNR."""
    for name in ("bright10", "cloudy13"):
        arr, meta = crops[name]
        back = tec.decode(encoded[name])
        assert_decoded_matches(back, arr, meta["nodata"])
    assert crops["bright10"][0].max() > 15000


def test_cloudy_crop_matches_its_mask(crops):
    mask, _ = read_tif(os.path.join(os.path.dirname(__file__), "data", "l1c_13band_cloudy_s2cloudless_cloudmask.tif"))
    assert mask.shape[1:] == crops["cloudy13"][0].shape[1:]
    assert 0.2 < mask[0].mean() < 0.8


# -- bad inputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,exc,match", [
    ([[[1, 2]]], tec.TecInputError, "numpy array"),
    (np.zeros((2, 3, 4, 5), np.int16), tec.TecInputError, "3-D"),
    (np.zeros((4,), np.int16), tec.TecInputError, "3-D"),
    (np.zeros((4, 0, 5), np.int16), tec.TecInputError, "empty"),
    (np.zeros((0, 4, 5), np.int16), tec.TecInputError, "empty"),
    (np.zeros((4, 8, 8), np.float32), tec.TecInputError, "float32"),
    (np.zeros((4, 8, 8), np.float64), tec.TecInputError, "float64"),
    (np.zeros((4, 8, 8), np.int32), tec.TecInputError, "int32"),
    (np.zeros((4, 8, 8), np.int8), tec.TecInputError, "int8"),
    (np.zeros((4, 8, 8), bool), tec.TecInputError, "bool"),
    (np.zeros((14, 8, 8), np.int16), tec.TecBandError, "14 bands"),
    (np.zeros((5, 8, 8), np.int16), tec.TecBandError, "explicit band names"),
])
def test_bad_arrays(bad, exc, match):
    with pytest.raises(exc, match=match):
        tec.encode(bad, model=LL)


def test_nan_is_named():
    a = np.full((4, 8, 8), 0.1, np.float32)
    a[0, 0, 0] = np.nan
    with pytest.raises(tec.TecInputError, match="NaN"):
        tec.encode(a)


@pytest.mark.parametrize("kw,exc", [
    ({"bands": ["B02", "B03", "B04", "BXX"]}, tec.TecBandError),
    ({"bands": ["B02", "B03", "B04"]}, tec.TecBandError),
    ({"bands": ["B02", "B02", "B04", "B08"]}, tec.TecBandError),
    ({"quality": 0}, tec.TecInputError), ({"quality": 9}, tec.TecInputError),
    ({"quality": 5.0}, tec.TecInputError), ({"quality": True}, tec.TecInputError),
    ({"nodata": 40000}, tec.TecInputError), ({"nodata": 0.5}, tec.TecInputError),
    ({"nodata": float("nan")}, tec.TecInputError), ({"nodata": "zero"}, tec.TecInputError),
    ({"tile_size": 8}, tec.TecInputError), ({"tile_size": 100.0}, tec.TecInputError),
    ({"geotransform": (1, 2, 3)}, tec.TecInputError), ({"crs_wkt": 4326}, tec.TecInputError),
    ({"model": "no-such-model"}, tec.TecModelError),
])
def test_bad_arguments(kw, exc, l2a12):
    arr = l2a12[0][[1, 2, 3, 7]]
    kw = {"model": LL, **kw}
    with pytest.raises(exc):
        tec.encode(arr, **kw)


def test_error_hierarchy():
    assert issubclass(tec.TecBandError, tec.TecInputError)
    assert issubclass(tec.TecChecksumError, tec.TecFormatError)
    for e in (tec.TecFormatError, tec.TecInputError, tec.TecModelError, tec.TecDecodeError):
        assert issubclass(e, tec.TecError)


@pytest.fixture(scope="module")
def good_file(l2a12, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.tec"
    tec.write(path, l2a12[0], model=LL, tile_size=32)
    return path


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        tec.open(tmp_path / "nope.tec")


def test_truncated_file(good_file, tmp_path):
    raw = good_file.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, PREFIX_SIZE, 10, 0):
        p = tmp_path / f"t{cut}.tec"
        p.write_bytes(raw[:cut])
        with pytest.raises(tec.TecFormatError):
            tec.open(p)
        with pytest.raises(tec.TecFormatError):
            tec.decode(raw[:cut])


def test_wrong_magic(good_file, tmp_path):
    raw = bytearray(good_file.read_bytes())
    raw[1:4] = b"TIF"
    with pytest.raises(tec.TecFormatError, match="magic"):
        tec.decode(bytes(raw))
    p = tmp_path / "x.tif"
    p.write_bytes(open(os.path.join(os.path.dirname(__file__), "data", CROPS["l2a4"]), "rb").read())
    with pytest.raises(tec.TecFormatError, match="not a .tec"):
        tec.open(p)


def test_flipped_bit_in_tile(good_file, tmp_path):
    bad = tmp_path / "bad.tec"
    _flip_byte_in_tile(good_file, bad, tile_index=0)
    with tec.open(bad) as ds:
        with pytest.raises(tec.TecChecksumError):
            ds.read()
        ds.read(window=((40, 64), (40, 80)))                      # other tiles still fine


def test_flipped_bit_in_header(good_file):
    from terracodec.format import ContainerReader

    raw = bytearray(good_file.read_bytes())
    with ContainerReader(bytes(raw)) as r:
        off = r.entries[-1].offset + r.entries[-1].length        # header follows the payloads
    raw[off + 3] ^= 0x01
    with pytest.raises(tec.TecChecksumError):
        tec.decode(bytes(raw))


def test_decode_rejects_non_bytes(good_file):
    with pytest.raises(tec.TecInputError):
        tec.decode(str(good_file))


# -- packaging ------------------------------------------------------------------------------------------
def test_import_is_light():
    code = "import sys, terracodec; print('torch' in sys.modules, terracodec.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    torch_loaded, version = out.split()
    assert torch_loaded == "False" and version
    for name in ("encode", "decode", "open", "write", "Writer", "TecError", "TecFormatError",
                 "TecChecksumError", "TecInputError", "TecBandError", "TecModelError", "TecDecodeError"):
        assert hasattr(tec, name)


def test_model_record_fallback(monkeypatch):
    assert api._model_record("lossless") == {"name": "lossless", "sha256": ""}
    import terracodec

    monkeypatch.setitem(sys.modules, "terracodec.weights", None)   # as if the module did not exist
    monkeypatch.delattr(terracodec, "weights", raising=False)
    assert api._model_record(None) == {"name": "lossless", "sha256": ""}


def test_classical_model_codes_without_torch_and_as_the_default_does(crops, tmp_path):
    """model="classical": no weights and no torch in the process, a header naming it, no learned
    tiles, and the default model's pixels where that coded no learned tile."""
    arr, meta = crops["l2a12"]
    code = ("import sys, numpy as np, terracodec as tec; a = np.load(sys.argv[1]); "
            "data = tec.encode(a, quality=3, model='classical'); open(sys.argv[2], 'wb').write(data); "
            "back = tec.decode(data); print('torch' in sys.modules, back.shape == a.shape)")
    np.save(tmp_path / "a.npy", arr)
    out = subprocess.run([sys.executable, "-c", code, tmp_path / "a.npy", tmp_path / "c.tec"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    with tec.open(tmp_path / "c.tec") as ds:
        assert ds.model == "classical" and ds.stats["learned_tiles"] == 0
        classical = ds.read()
    default = tec.encode(arr, quality=3)
    with tec.open(io.BytesIO(default)) as ds:      # the shipped model codes no learned tile here
        assert ds.stats["learned_tiles"] == 0
        np.testing.assert_array_equal(ds.read(), classical)
    assert api._model_record("classical") == {"name": "classical", "sha256": ""}


# -- full files from the shared data set -----------------------------------------------------------------
@pytest.mark.shared_data
def test_full_train_scene(shared_data, model):
    arr, meta = read_tif(shared_data / "s2l2a" / "bigearthnet_S2B-41-4_2018-04-21.tif")
    data = tec.encode(arr, meta["bands"], model=model, tile_size=64, crs_wkt=meta["crs_wkt"],
                      geotransform=meta["geotransform"])
    back = tec.decode(data)
    assert_decoded_matches(back, arr)
    assert psnr10000(back, arr) >= MIN_PSNR


# -- tile overlap (seams) ---------------------------------------------------------------------------------
def _seam_ratio(original, decoded, tile_size):
    """MSE within 2 px of the inner tile seams / MSE >= 8 px away from them."""
    err = ((original.astype(np.float64) - decoded) ** 2).mean(axis=0)
    def dist(n):
        d = np.full(n, np.inf)
        for s in range(tile_size, n, tile_size):
            d = np.minimum(d, np.abs(np.arange(n) + 0.5 - s))
        return d
    d = np.minimum(dist(err.shape[0])[:, None], dist(err.shape[1])[None, :])
    return err[d < 2].mean() / err[d >= 8].mean()


def test_tile_overlap_hides_seams_on_a_real_scene(model):
    if LOSSLESS:
        pytest.skip("seams need a lossy codec")
    arr, meta = read_tif(os.path.join(os.path.dirname(__file__), "..", "examples", "scene_l2a.tif"))
    ratios = {}
    for overlap in (0, api.DEFAULT_TILE_OVERLAP):
        data = tec.encode(arr, meta["bands"], quality=2, model=model, tile_size=64, tile_overlap=overlap)
        with api.TecDataset(data) as ds:
            assert ds.tile_overlap == overlap
            full = ds.read()
            # windows across seams and corners decode exactly as the full read
            for win in (((60, 70), (0, 160)), ((0, 160), (120, 135)), ((59, 133), (61, 67)), ((159, 160), (0, 1))):
                np.testing.assert_array_equal(ds.read(win), full[:, win[0][0]:win[0][1], win[1][0]:win[1][1]])
        assert_decoded_matches(full, arr)
        ratios[overlap] = _seam_ratio(arr, full, 64)
    assert ratios[api.DEFAULT_TILE_OVERLAP] < ratios[0], ratios
    assert ratios[api.DEFAULT_TILE_OVERLAP] < 1.25, ratios


@pytest.mark.parametrize("overlap", [-1, 17, 2.0, True])
def test_bad_tile_overlap(overlap, crops):
    arr, meta = crops["l2a4"]
    with pytest.raises(tec.TecInputError, match="tile_overlap"):
        tec.encode(arr, meta["bands"], model=LL, tile_size=64, tile_overlap=overlap)


def test_overlap_writer_takes_strips_of_any_height(crops):
    arr, meta = crops["sref10_nodata"]
    import io

    buf = io.BytesIO()
    with tec.Writer(buf, arr.shape[2], arr.shape[1], arr.shape[0], arr.dtype, meta["bands"], model=LL,
                    nodata=meta["nodata"], tile_size=16, tile_overlap=4) as w:
        r = 0
        for n in (1, 5, 17, 3, 1000):
            w.write(arr[:, r:r + n])
            r += n
            if r >= arr.shape[1]:
                break
    np.testing.assert_array_equal(tec.decode(buf.getvalue()), arr)


def test_parallel_tile_workers_give_the_same_bytes(crops, model):
    import io

    arr, meta = crops["l2a12"]
    out = []
    for workers in (1, 2, 3):
        buf = io.BytesIO()
        with tec.Writer(buf, arr.shape[2], arr.shape[1], arr.shape[0], arr.dtype, meta["bands"], quality=3,
                        model=model, tile_size=32, workers=workers) as w:
            w.write(arr)
        out.append(buf.getvalue())
    assert out[0] == out[1] == out[2]
    with pytest.raises(tec.TecInputError, match="workers"):
        tec.Writer(io.BytesIO(), 8, 8, 1, "int16", ["B02"], workers=0)


def test_parallel_writer_holds_blas_at_one_thread_and_restores_it(crops, model, monkeypatch):
    """Tiles coded in worker threads run BLAS with one thread (terracodec.workers: two BLAS threads per
    coding thread oversubscribe the cores); the caller's setting comes back at close and after an
    aborted write, and the bytes equal a one-worker write, which leaves BLAS alone."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from terracodec import tilecodec, workers

    def blas_threads():
        return {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}

    if not blas_threads():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    arr, meta = crops["l2a12"]
    real, seen = tilecodec.encode_tile, []
    monkeypatch.setattr(tilecodec, "encode_tile", lambda tile, **kw: seen.append(blas_threads()) or real(tile, **kw))

    def write(workers, fail=False):
        buf = io.BytesIO()
        with tec.Writer(buf, arr.shape[2], arr.shape[1], arr.shape[0], arr.dtype, meta["bands"], quality=3,
                        model=model, tile_size=32, workers=workers) as w:
            w.write(arr[:, :40])
            if fail:
                raise KeyError("stop")
            w.write(arr[:, 40:])
        return buf.getvalue()

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        one = write(1)
        assert seen and all(s == {2} for s in seen)
        seen.clear()
        two = write(2)
        assert seen and all(s == {1} for s in seen)
        assert blas_threads() == {2}
        with pytest.raises(KeyError):
            write(2, fail=True)
        assert blas_threads() == {2} and workers._blas_users == 0
    assert one == two


@pytest.mark.skipif(LOSSLESS, reason="the lossless model codes no JPEG 2000")
def test_a_single_tile_gives_openjpeg_the_spare_threads_and_the_same_bytes(crops, model, monkeypatch):
    import io

    from terracodec import anchors

    arr, meta = crops["l2a12"]
    threads, real = [], anchors._j2k_encode
    monkeypatch.setattr(anchors, "_j2k_encode", lambda c, lv, t: threads.append(t) or real(c, lv, t))
    out = []
    for workers in (1, 2):
        buf = io.BytesIO()
        with tec.Writer(buf, arr.shape[2], arr.shape[1], arr.shape[0], arr.dtype, meta["bands"], quality=5,
                        model=model, workers=workers) as w:
            w.write(arr)
        out.append(buf.getvalue())
    assert out[0] == out[1]
    assert set(threads) == {1, 2}


def test_a_tile_that_fails_in_a_worker_aborts_the_write(crops, model, tmp_path, monkeypatch):
    """Tiles are coded in worker threads, several rows in flight: an error in one reaches the
    caller, and no file is left."""
    from terracodec import tilecodec

    arr, meta = crops["l2a12"]
    real, calls = tilecodec.encode_tile, []

    def failing(tile, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("simulated")
        return real(tile, **kw)

    monkeypatch.setattr(tilecodec, "encode_tile", failing)
    path = tmp_path / "x.tec"
    with pytest.raises(MemoryError):
        with tec.Writer(path, arr.shape[2], arr.shape[1], arr.shape[0], arr.dtype, meta["bands"], quality=3,
                        model=model, tile_size=32, workers=2) as w:
            w.write(arr)
    assert not path.exists() and list(tmp_path.iterdir()) == []


# -- overviews: read(level=k) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def overview_files(crops, model, tmp_path_factory):
    """A real crop (with nodata) tiled to 203 x 229, written with and without tile overlap."""
    arr, meta = crops["sref10_nodata"]
    big = tiled(arr, 203, 229)
    out = {}
    for overlap in (0, 4):
        path = tmp_path_factory.mktemp("ovr") / f"o{overlap}.tec"
        tec.write(path, big, meta["bands"], quality=6, model=model, nodata=meta["nodata"], tile_size=64,
                  tile_overlap=overlap)
        out[overlap] = path
    return big, meta["nodata"], out


@pytest.mark.parametrize("overlap", [0, 4])
def test_overview_levels_shape_window_and_nodata(overview_files, overlap):
    big, nodata, paths = overview_files
    ds = tec.open(paths[overlap])
    full = ds.read()
    for level in (1, 2, 3, 5):
        ovr = ds.read(level=level)
        rows, cols = ds.level_shape(level)
        assert ovr.shape == (big.shape[0], rows, cols) == (big.shape[0], -(-203 // 2 ** level), -(-229 // 2 ** level))
        assert ovr.dtype == big.dtype
        # nodata exactly where a whole 2**level block of the decoded raster is nodata
        ref = tec.tilecodec.reduce_pixels(full, level, nodata)
        np.testing.assert_array_equal(ovr == nodata, ref == nodata)
        # a low-pass of the full-resolution pixels, close to the block means on blocks without
        # nodata (the wavelet low-pass is sharper than a box and reaches a few pixels further)
        clean = tec.tilecodec.box_reduce((full == nodata).astype(float), 2 ** level)[0] == 0
        for b in range(ovr.shape[0] if level <= 3 else 0):      # level 5: a few blocks per tile
            got, want = ovr[b][clean[b]].astype(float), ref[b][clean[b]].astype(float)
            assert abs(got.mean() - want.mean()) < 0.05 * abs(want.mean()), (level, b)
            assert np.corrcoef(got, want)[0, 1] > (0.97 if level == 1 else 0.8), (level, b)
        win = ((rows // 3, rows - 1), (1, cols // 2 + 1))
        np.testing.assert_array_equal(ds.read(window=win, level=level), ovr[:, win[0][0]:win[0][1], win[1][0]:win[1][1]])
        np.testing.assert_array_equal(ds.read(bands=[2], level=level), ovr[1:2])


def test_overview_does_not_decode_full_resolution(overview_files, monkeypatch):
    """An overview read decodes classical (kind 1) and grouped (kind 4) tiles at reduced size, never
    through the full decode (decode_tile), which only the other kinds take."""
    from terracodec import openjpeg, tilecodec

    if not openjpeg.available():
        pytest.skip("the system OpenJPEG library (libopenjp2) is not installed: overviews decode in full")
    _, _, paths = overview_files
    ds = tec.open(paths[4])
    kinds = [tilecodec.TileHeader(tilecodec.unseal(bytes(ds._reader.read_tile(i)))).kind
             for i in range(ds.tiles_x * ds.tiles_y)]
    reduced = kinds.count(tilecodec.KIND_CLASSICAL) + kinds.count(tilecodec.KIND_MULTIRES)
    assert reduced > 0
    calls = []
    real = tilecodec.decode_tile
    monkeypatch.setattr(tilecodec, "decode_tile", lambda *a, **k: calls.append(1) or real(*a, **k))
    ovr = ds.read(level=2)
    assert len(calls) == len(kinds) - reduced
    assert ovr.shape[1:] == ds.level_shape(2)


def test_overview_of_lossless_file_is_the_block_mean(crops):
    arr, meta = crops["l2a12"]
    for overlap in (0, 4):
        ds = api.TecDataset(tec.encode(arr, meta["bands"], model=LL, tile_size=16, tile_overlap=overlap))
        for level in (1, 3):
            got = ds.read(level=level).astype(int)
            want = tec.tilecodec.reduce_pixels(arr, level).astype(int)
            # with overlap 4, tiles reduce by 4 at most and the rest is a second (rounded) mean
            assert np.abs(got - want).max() <= (0 if overlap == 0 or level <= 2 else 1)


@pytest.mark.parametrize("level", [-1, 1.5, True, 31])
def test_bad_overview_level(level, good_file):
    with pytest.raises(tec.TecInputError, match="level"):
        tec.open(good_file).read(level=level)


def test_open_a_binary_file_object(overview_files):
    """terracodec.open takes seekable file objects (fsspec, GDAL VSI through the bridge): only
    the bytes a read needs are fetched."""
    import io

    _, _, paths = overview_files
    ref = tec.open(paths[4])
    reads = []

    class Counting(io.BytesIO):
        def read(self, n=-1):
            reads.append(n)
            return super().read(n)

    with open(paths[4], "rb") as f:
        ds = tec.open(f)
        np.testing.assert_array_equal(ds.read(), ref.read())
        assert ds.bands == ref.bands and ds.shape == ref.shape
    data = paths[4].read_bytes()
    ds = tec.open(Counting(data))
    opened = sum(reads)
    win = ((0, 10), (0, 10))                     # one corner tile
    np.testing.assert_array_equal(ds.read(window=win), ref.read(window=win))
    assert sum(reads) - opened < len(data) / 4   # one tile's payload, not the file
    np.testing.assert_array_equal(ds.read(level=2), ref.read(level=2))
    with pytest.raises(tec.TecFormatError):
        tec.open(io.BytesIO(data[:100]))


@pytest.mark.parametrize("width, height, expected", [
    (1, 1, 16), (17, 300, 304), (600, 600, 608), (767, 10, 768), (768, 768, 384),
    (1068, 1068, 544), (1068, 600, 608), (10980, 10980, 528)])
def test_default_tile_size_splits_evenly(width, height, expected):
    assert api.default_tile_size(width, height) == expected


def test_default_tile_size_is_used(crops):
    arr, meta = crops["l2a4"]
    wide = np.concatenate([arr] * (800 // arr.shape[2] + 1), axis=2)[:, :20, :800]
    import io

    data = tec.encode(wide, meta["bands"], model=LL)
    with tec.open(io.BytesIO(data)) as ds:
        assert ds.tile_size == 400 and (ds.tiles_x, ds.tiles_y) == (2, 1)
    np.testing.assert_array_equal(tec.decode(data), wide)
