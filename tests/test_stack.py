# SPDX-License-Identifier: Apache-2.0
"""Time stacks and TEC-TT: round trips (12 and 10 bands, odd sizes, several tiles), random access,
keyframes, dates, corruption of one date, thread-count determinism in a fresh process, CLI.

Stacks are real crops of the time series in ../shared/data/timeseries (skipped when absent):
eo-learn (L1C, 13 bands -> the 12 without B10, 4 dates) and rsgislib T37MEM (10 bands, clouds
zeroed = nodata 0, 3 dates).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import terracodec
from terracodec import stack, tilecodec
from terracodec.errors import TecChecksumError, TecError, TecInputError
from terracodec.format import ContainerReader

from conftest import REPO, needs_tt, psnr10000

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _series(shared_data, location, n, bands_drop=(), crop=None, start=0):
    import rasterio

    folder = shared_data / "timeseries" / location
    if not folder.exists():
        pytest.skip(f"time series {location} not in {shared_data}")
    from terracodec.train_temporal import read_index

    rows = read_index(folder)[start:start + n]
    arrays, names = [], None
    for r in rows:
        with rasterio.open(folder / r["file"]) as src:
            a = src.read()
            names = list(src.descriptions)
        keep = [i for i, b in enumerate(names) if b not in bands_drop]
        arrays.append(a[keep])
    names = [names[i] for i in keep]
    arr = np.stack(arrays)
    if crop is not None:
        (r0, r1), (c0, c1) = crop
        arr = arr[:, :, r0:r1, c0:c1]
    return np.ascontiguousarray(arr), names, [r["key"] for r in rows]


@pytest.fixture(scope="module")
def stack12(shared_data):
    """4 dates, 12 bands (L1C without B10), 67 x 81 pixels."""
    return _series(shared_data, "eolearn_TestEOPatch-33T", 4, bands_drop=("B10",), crop=((7, 74), (11, 92)))


@pytest.fixture(scope="module")
def stack10(shared_data):
    """3 dates, 10 bands, 45 x 39 pixels, with nodata 0 (clouds zeroed in the source)."""
    return _series(shared_data, "rsgislib_T37MEM", 3, crop=((101, 146), (203, 242)), start=0)


Q12 = 5


@pytest.fixture(scope="module")
def coded12(stack12, tmp_path_factory):
    arr, bands, dates = stack12
    path = tmp_path_factory.mktemp("stack") / "s12.tec"
    # classical=False: every tile keeps the model's code, so the temporal machinery is exercised
    # (with the classical candidate, JPEG 2000 wins most tiles of this crop)
    stack.write_stack(path, arr, bands, quality=Q12, dates=dates, tile_size=48, keyframe_interval=2,
                      classical=False)
    with terracodec.open(path) as ds:
        decoded = np.stack([ds.read(date=d) for d in ds.dates])
    return path, decoded


@needs_tt
def test_roundtrip_12_bands_odd_size(stack12, coded12):
    arr, bands, dates = stack12
    path, decoded = coded12
    assert decoded.shape == arr.shape and decoded.dtype == arr.dtype
    nominal = tilecodec.QUALITY_NOMINAL_DB[Q12]
    for t in range(len(dates)):
        assert psnr10000(decoded[t], arr[t]) >= nominal - 8
    with terracodec.open(path) as ds:
        assert ds.dates == dates and list(ds.bands) == bands
        assert ds.model == stack.default_temporal_model()
        assert ds.keyframe_interval == 2
        assert ds.stats["temporal_tiles"] + ds.stats["fallback_tiles"] + ds.stats["learned_tiles"] \
            + ds.stats["lossless_tiles"] == 4 * ds.tiles_x * ds.tiles_y
    # decode() of the whole stack's bytes gives (dates, bands, rows, cols)
    np.testing.assert_array_equal(terracodec.decode(Path(path).read_bytes()), decoded)


@needs_tt
def test_roundtrip_10_bands_nodata(stack10):
    arr, bands, dates = stack10
    assert (arr == 0).any(), "the crop should contain nodata (zeroed clouds)"
    data = stack.encode_stack(arr, bands, quality=5, nodata=0, dates=dates, tile_size=32, classical=False)
    out = terracodec.decode(data)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    for t in range(len(dates)):
        np.testing.assert_array_equal(out[t] == 0, arr[t] == 0, err_msg="nodata footprint changed")
        valid = arr[t] != 0
        assert psnr10000(out[t], arr[t], valid) >= tilecodec.QUALITY_NOMINAL_DB[5] - 8
    with terracodec.open(data) as ds:
        kinds = {e.kind for e in ds._reader.entries}
        assert tilecodec.KIND_TEMPORAL in kinds


@needs_tt
def test_temporal_beats_per_date_on_a_dense_series(shared_data):
    """Bits of the same stack coded with and without TEC-TT at one fixed level (same transforms;
    a train location: this checks the mechanism, the val numbers are in docs/temporal_bench.md)."""
    arr, bands, dates = _series(shared_data, "worldcereal_31UDS_00002806639B424A", 6, start=60)
    model = stack.load_temporal()
    tt = stack.encode_tile_stack(arr, model, dates=dates, level=3, temporal=True)
    hp = stack.encode_tile_stack(arr, model, dates=dates, level=3, temporal=False)
    assert tt[0][0] == hp[0][0]                            # the first date is the same keyframe
    assert any(k == tilecodec.KIND_TEMPORAL for _, k, _ in tt)
    for t in range(1, len(tt)):                            # mode decision: never larger than alone
        assert len(tt[t][0]) <= len(hp[t][0])
    assert sum(len(p) for p, _, _ in tt[1:]) < sum(len(p) for p, _, _ in hp[1:])


@needs_tt
def test_keyframes(stack12, coded12):
    path, decoded = coded12
    with ContainerReader(path) as r:
        h = r.header
        n = h.tiles_x * h.tiles_y
        latent = (tilecodec.KIND_LEARNED, tilecodec.KIND_TEMPORAL)
        n_temporal = 0
        for d in range(len(h.dates)):
            for i in range(n):
                kind = r.entries[d * n + i].kind
                if d % 2 == 0:                               # keyframes: never temporal
                    assert kind != tilecodec.KIND_TEMPORAL
                elif kind == tilecodec.KIND_TEMPORAL:        # refers to its keyframe, which has a latent
                    assert r.entries[(d - 1) * n + i].kind in latent
                n_temporal += kind == tilecodec.KIND_TEMPORAL
        assert n_temporal > 0
        # a keyframe tile is an ordinary learned tile: the image codec decodes it alone
        i = 2 * n                                            # date 2, tile (0, 0)
        if r.entries[i].kind == tilecodec.KIND_LEARNED:
            tile = tilecodec.decode_tile(r.read_tile(i), model=h.model["name"])
            np.testing.assert_array_equal(tile, decoded[2][:, :48, :48])
        j = 3 * n
        if r.entries[j].kind == tilecodec.KIND_TEMPORAL:
            with pytest.raises(TecError, match="stack"):
                tilecodec.decode_tile(r.read_tile(j))


@needs_tt
def test_random_access_last_date(coded12, monkeypatch):
    path, decoded = coded12
    with terracodec.open(path) as ds:
        fetched = []
        orig = ds._reader.read_tile
        monkeypatch.setattr(ds._reader, "read_tile", lambda i: fetched.append(i) or orig(i))
        window = ((50, 67), (40, 81))
        part = ds.read(window=window, date=ds.dates[-1], bands=["B04", "B08"])
        n = ds.tiles_x * ds.tiles_y
        dates_touched = {i // n for i in fetched}
        assert dates_touched <= {2, 3}, "reading the last date decoded dates before its keyframe"
        tiles_touched = {i % n for i in fetched}
        assert tiles_touched == {ds.tiles_x * 1 + 0, ds.tiles_x * 1 + 1}
        idx = [list(ds.bands).index("B04"), list(ds.bands).index("B08")]
        np.testing.assert_array_equal(part, decoded[-1][idx, 50:67, 40:81])


@needs_tt
def test_dates_preserved_and_selected(stack12, coded12):
    arr, bands, dates = stack12
    path, decoded = coded12
    with terracodec.open(path) as ds:
        assert ds.dates == dates
        np.testing.assert_array_equal(ds.read(date=dates[1]), decoded[1])
        np.testing.assert_array_equal(ds.read(date=1), decoded[1])
        import datetime as dt

        np.testing.assert_array_equal(ds.read(date=dt.date.fromisoformat(dates[3][:10])), decoded[3])
        with pytest.raises(TecInputError, match="dates"):
            ds.read()                                        # a stack needs date=
        with pytest.raises(TecInputError, match="not in this file"):
            ds.read(date="1999-01-01")
    info = json.loads(_cli("info", path, "--json").output)
    assert info["dates"] == dates and info["keyframe_interval"] == 2


def test_bad_dates_rejected():
    arr = np.zeros((2, 4, 16, 16), np.int16)
    with pytest.raises(TecInputError, match="distinct"):
        terracodec.encode(arr, dates=["2021-01-01", "2021-01-01"], model="lossless")
    with pytest.raises(TecInputError, match="ISO"):
        terracodec.encode(arr, dates=["2021-01-01", "June"], model="lossless")
    with pytest.raises(TecInputError, match="2 dates"):
        terracodec.encode(arr, dates=["2021-01-01"], model="lossless")


def test_lossless_stack_is_exact():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 5000, (3, 4, 21, 35)).astype(np.uint16)
    dates = ["2021-06-01", "2021-06-06", "2021-06-11T10:30:00"]
    data = terracodec.encode(arr, dates=dates, model="lossless", tile_size=16)
    np.testing.assert_array_equal(terracodec.decode(data), arr)
    with terracodec.open(data) as ds:
        assert ds.dates == dates
        np.testing.assert_array_equal(ds.read(date="2021-06-11"), arr[2])


@needs_tt
def test_no_temporal_codes_each_date_alone(stack10):
    arr, bands, dates = stack10
    data = terracodec.encode(arr, bands, quality=3, nodata=0, dates=dates, temporal=False, tile_size=32)
    with terracodec.open(data) as ds:
        assert tilecodec.KIND_TEMPORAL not in {e.kind for e in ds._reader.entries}
        assert not stack.is_temporal_model(ds.model)
        for t in range(len(dates)):
            out = ds.read(date=t)
            valid = arr[t] != 0
            assert psnr10000(out, arr[t], valid) >= tilecodec.QUALITY_NOMINAL_DB[3] - 8


@needs_tt
def test_corrupt_date_is_reported_and_others_stay_readable(coded12, tmp_path):
    path, decoded = coded12
    raw = bytearray(Path(path).read_bytes())
    with ContainerReader(path) as r:
        n = r.header.tiles_x * r.header.tiles_y
        entry = r.entries[1 * n + 0]                        # date 1, tile (0, 0): a temporal tile
    raw[entry.offset + entry.length // 2] ^= 0xFF
    bad = tmp_path / "bad.tec"
    bad.write_bytes(bytes(raw))
    with terracodec.open(bad) as ds:
        with pytest.raises(TecChecksumError) as exc:
            ds.read(date=1)
        assert ds.dates[1] in str(exc.value) and "row 0, col 0" in str(exc.value)
        # other tiles of the same date, and the other dates, are intact
        np.testing.assert_array_equal(ds.read(date=1, window=((48, 67), (0, 81))), decoded[1][:, 48:])
        for d in (0, 2, 3):
            np.testing.assert_array_equal(ds.read(date=d), decoded[d])


@needs_tt
def test_corrupt_reference_names_it(coded12, tmp_path):
    path, decoded = coded12
    raw = bytearray(Path(path).read_bytes())
    with ContainerReader(path) as r:
        n = r.header.tiles_x * r.header.tiles_y
        # a temporal tile of date 1 or 3 (its reference is the keyframe before it, same tile position)
        hits = [(d, i) for d in (3, 1) for i in range(n) if r.entries[d * n + i].kind == tilecodec.KIND_TEMPORAL]
        assert hits, "no temporal tile in dates 1 and 3"
        d, i = hits[0]
        entry = r.entries[(d - 1) * n + i]
        ty, tx = divmod(i, r.header.tiles_x)
    raw[entry.offset + entry.length - 10] ^= 0x55
    bad = tmp_path / "badref.tec"
    bad.write_bytes(bytes(raw))
    T = 48
    with terracodec.open(bad) as ds:
        with pytest.raises(TecChecksumError, match=f"reference date {d - 1}"):
            ds.read(date=d, window=((ty * T, ty * T + 1), (tx * T, tx * T + 1)))
        other = 1 if d == 3 else 3                       # the other key/temporal pair is intact
        np.testing.assert_array_equal(ds.read(date=other), decoded[other])


_DECODE_SCRIPT = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[2]))
import terracodec
with terracodec.open(sys.argv[1]) as ds:
    h = hashlib.sha256()
    for d in ds.dates:
        h.update(ds.read(date=d).tobytes())
print(h.hexdigest())
"""


@needs_tt
def test_decode_identical_in_fresh_process_with_other_thread_count(coded12):
    import torch

    path, decoded = coded12
    assert torch.get_num_threads() != 3
    here = hashlib.sha256(b"".join(decoded[t].tobytes() for t in range(decoded.shape[0]))).hexdigest()
    env = dict(os.environ, OMP_NUM_THREADS="3", MKL_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _DECODE_SCRIPT, str(path), "3"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == here


# -- CLI ----------------------------------------------------------------------------------------------
def _cli(*args, ok=True):
    from click.testing import CliRunner

    from terracodec.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@needs_tt
def test_cli_stack_commands(stack10, tmp_path):
    from terracodec.geotiff import write_geotiff

    arr, bands, dates = stack10
    gt = [500000.0, 10.0, 0.0, 9000000.0, 0.0, -10.0]
    srcs = []
    for a, d in zip(arr, dates):
        p = tmp_path / f"s2_{d}.tif"                         # the date comes from the file name
        write_geotiff(p, a, bands, crs_wkt=None, geotransform=gt, nodata=0, tags={})
        srcs.append(p)
    out = tmp_path / "stack.tec"
    r = _cli("compress", "--stack", *srcs, out, "-q", "4", "--tile-size", "32", "--no-progress")
    assert "3 dates" in r.output
    # the CLI streams the GeoTIFFs one row of tiles at a time: the same bytes as the whole stack
    # through the Python API
    whole = tmp_path / "whole.tec"
    stack.write_stack(whole, arr, bands, 4, None, 0, dates=dates, tile_size=32, geotransform=gt,
                      created_by=f"terracodec {terracodec.api._version()}")
    assert out.read_bytes() == whole.read_bytes()
    info = _cli("info", out).output
    assert all(d in info for d in dates) and "keyframe interval 8" in info
    x = tmp_path / "x.tif"
    _cli("decompress", out, "--date", dates[-1], x, "--no-progress")
    from conftest import read_tif

    got, meta = read_tif(x)
    with terracodec.open(out) as ds:
        np.testing.assert_array_equal(got, ds.read(date=dates[-1]))
        assert ds.transform == tuple(gt)
    assert meta["tags"].get("ACQUISITION_DATE") == dates[-1]
    folder = tmp_path / "all"
    _cli("decompress", out, folder, "--no-progress")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{d}.tif" for d in dates)
    # --no-temporal: no temporal tiles
    out2 = tmp_path / "nt.tec"
    _cli("compress", "--stack", *srcs, out2, "-q", "4", "--tile-size", "32", "--no-temporal", "--no-progress")
    with terracodec.open(out2) as ds:
        assert tilecodec.KIND_TEMPORAL not in {e.kind for e in ds._reader.entries}
    # a stack without a date, or a missing --stack, are one-line errors
    r = _cli("decompress", out, tmp_path / "one.tif", "--date", "1999-01-01", ok=False)
    assert r.exit_code == 1 and "not in this file" in r.output
    r = _cli("compress", *srcs, out, ok=False)
    assert r.exit_code != 0 and "--stack" in r.output


@needs_tt
def test_stack_writer_takes_strips_and_gives_the_same_bytes(stack12, coded12, tmp_path):
    """StackWriter (used by the GDAL driver's TEMPORAL=YES) codes each row of tiles as its rows
    arrive: strips of any height give the bytes of write_stack on the whole array."""
    arr, names, dates = stack12
    T, B, H, W = arr.shape
    out = tmp_path / "strips.tec"
    w = stack.StackWriter(out, W, H, B, arr.dtype, names, quality=Q12, dates=dates, tile_size=48,
                          keyframe_interval=2, classical=False)
    r = 0
    for n in (1, 30, 2, 40, 1000):
        w.write(np.ascontiguousarray(arr[:, :, r:r + n]))
        r += n
        if r >= H:
            break
    w.close()
    assert out.read_bytes() == coded12[0].read_bytes()
    w = stack.StackWriter(tmp_path / "short.tec", W, H, B, arr.dtype, names, dates=dates, tile_size=32)
    w.write(arr[:, :, :10])
    with pytest.raises(TecInputError, match="rows"):
        w.close()
    assert not (tmp_path / "short.tec").exists()
    with pytest.raises(TecInputError, match="does not fit"):
        stack.StackWriter(out, W, H, B, arr.dtype, names, dates=dates).write(arr[:2])


@needs_tt
@pytest.mark.parametrize("temporal", [True, False])
def test_stack_writer_threads_give_the_same_bytes(stack12, tmp_path, temporal):
    """StackWriter codes tile positions (TEC-TT) or (position, date) pairs (each date alone) in
    parallel threads with one BLAS thread; the file equals a one-thread write, and the caller's BLAS
    thread count comes back at close."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import threading

    from terracodec import workers as workers_module

    arr, names, dates = stack12
    T, B, H, W = arr.shape
    real = tilecodec.encode_tile
    seen = []

    def spy(tile, **kw):
        seen.append((threading.current_thread().name.startswith("tec-encode-stack"),
                     {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}))
        return real(tile, **kw)

    out = {}
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        for n in (1, 2):
            seen.clear()
            path = tmp_path / f"w{n}.tec"
            tilecodec.encode_tile = spy
            try:
                w = stack.StackWriter(path, W, H, B, arr.dtype, names, quality=3, dates=dates, tile_size=48,
                                      keyframe_interval=2, temporal=temporal, workers=n)
                w.write(arr)
                w.close()
            finally:
                tilecodec.encode_tile = real
            out[n] = path.read_bytes()
            if not temporal:                     # each date alone: every tile goes through encode_tile
                assert len(seen) == T * 4
                assert all(in_pool == (n == 2) for in_pool, _ in seen)
                assert all(b == ({1} if n == 2 else {2}) for _, b in seen if b)
            assert {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"} == {2}
    assert out[1] == out[2] and workers_module._blas_users == 0
    with pytest.raises(TecInputError, match="workers"):
        stack.StackWriter(tmp_path / "x.tec", W, H, B, arr.dtype, names, dates=dates, workers=0)
