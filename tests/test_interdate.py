# SPDX-License-Identifier: Apache-2.0
"""Kind 5 (predicted) tiles: a date coded as the residual to a prediction from an earlier date.

The tile tests use the real 12-band crop of tests/data as the earlier date and, as the later date,
the same crop with its radiometry changed band by band and one field changed (no torch needed). The
stack tests code real dense dates of ../shared/data/timeseries (skipped when absent)."""
from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

import terracodec
from terracodec import interdate, stack, tilecodec
from terracodec.errors import TecChecksumError, TecDecodeError, TecFormatError
from terracodec.format import ContainerReader

from conftest import DATA, REPO, needs_tt, psnr10000

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def pair():
    """(reference pixels as decoded, later date): the 64 x 80 x 12 bigearthnet crop and a change of it."""
    from terracodec.geotiff import read_geotiff

    ref = read_geotiff(DATA / "l2a_12band_bigearthnet.tif")[0]
    gain = np.linspace(0.8, 1.3, ref.shape[0])[:, None, None]
    target = ref * gain + 40.0
    target[:, 10:30, 20:50] += 300.0                        # one field changed
    rng = np.random.default_rng(5)
    target += rng.normal(0, 20, target.shape)               # the later date's own noise
    target = np.clip(np.rint(target), 0, 30000).astype(np.int16)
    lam = tilecodec.rd_lambda(4)
    ref_decoded = tilecodec.decode_tile(tilecodec.encode_classical(ref, None, lam)[0])
    return ref_decoded, target


def test_predicted_tile_roundtrip_and_cost(pair):
    ref, target = pair
    lam = tilecodec.rd_lambda(4)
    payload, j, decoded = interdate.encode(target, None, ref, 1, lam)
    assert tilecodec.TileHeader(tilecodec.unseal(payload)).kind == tilecodec.KIND_PREDICTED
    np.testing.assert_array_equal(interdate.decode(payload, ref), decoded)
    assert decoded.dtype == target.dtype and decoded.shape == target.shape
    assert psnr10000(decoded, target) > 40
    assert interdate.reference(payload) == 1
    # the prediction carries the change between the dates: cheaper than the date coded alone
    _, j_alone = tilecodec.encode_classical(target, None, lam)
    assert j < 0.8 * j_alone
    # deterministic bytes
    assert interdate.encode(target, None, ref, 1, lam)[0] == payload


def test_nodata_pixels_stay_exact():
    """The rsgislib crop (clouds zeroed = nodata 0) and a later date with other clouds."""
    from terracodec.geotiff import read_geotiff

    ref = read_geotiff(DATA / "sref_10band_nodata_rsgislib.tif")[0]
    target = np.where(ref == 0, 0, np.clip(ref * 1.1 + 30, 1, 30000)).astype(np.int16)
    target[:, 5:15, 60:80] = 0                                       # a new cloud
    ref[:, 40:50, 0:20] = np.where(ref[:, 40:50, 0:20] == 0, 777, ref[:, 40:50, 0:20])   # one that left
    lam = tilecodec.rd_lambda(4)
    payload, j, decoded = interdate.encode(target, 0, ref, 1, lam)
    head = tilecodec.TileHeader(tilecodec.unseal(payload))
    assert head.mask is not None
    np.testing.assert_array_equal(decoded == 0, target == 0)
    np.testing.assert_array_equal(interdate.decode(payload, ref), decoded)
    assert psnr10000(decoded, target, target != 0) > 40
    assert j < tilecodec.encode_classical(target, 0, lam)[1]


def test_prediction_is_integer_exact_on_any_size():
    rng = np.random.default_rng(1)
    for h, w in ((1, 1), (2, 3), (5, 17), (33, 9)):
        ref = rng.integers(0, 10000, (2, h, w)).astype(np.uint16)
        target = (ref * 0.9 + 100).astype(np.uint16)
        coefs, sse, p = interdate.fit(ref, target)
        np.testing.assert_array_equal(p, interdate.predict(ref, coefs))
        assert p.shape == ref.shape and p.dtype == np.int64
        assert sse == float(np.sum((target.astype(np.int64) - p).astype(np.float64) ** 2))
        payload, _, decoded = interdate.encode(target, None, ref, 2, tilecodec.rd_lambda(5))
        np.testing.assert_array_equal(interdate.decode(payload, ref), decoded)


def test_box_mean_matches_a_direct_window_mean():
    x = np.arange(35, dtype=np.int64).reshape(5, 7) ** 2
    p = np.pad(x, 1, mode="symmetric")
    direct = np.array([[p[i:i + 3, j:j + 3].sum() / 9.0 for j in range(7)] for i in range(5)])
    np.testing.assert_array_equal(interdate._box_mean(x, 3), direct)


def test_residual_out_of_int16_is_not_predicted():
    lam = tilecodec.rd_lambda(4)
    ref = np.zeros((1, 8, 8), np.uint16)
    target = np.full((1, 8, 8), 60000, np.uint16)
    zero = np.zeros((1, 4), np.int64)                      # predicts the mean, 0: the residual is 60000
    assert interdate.encode(target, None, ref, 1, lam, (zero, None, interdate.predict(ref, zero))) is None
    assert interdate.fit(ref, target) is None              # the constant, 60000 - 0, is not an int16
    assert interdate.encode(target, None, ref, 1, lam) is None
    ref[:] = 30000                                         # 60000 - 30000 is
    payload, _, decoded = interdate.encode(target, None, ref, 1, lam)
    np.testing.assert_array_equal(decoded, target)


def test_bad_predicted_payloads_raise_documented_errors(pair):
    ref, target = pair
    payload, _, _ = interdate.encode(target, None, ref, 1, tilecodec.rd_lambda(4))
    with pytest.raises(TecDecodeError, match="earlier dates"):
        tilecodec.decode_tile(payload)                      # needs its reference
    with pytest.raises(TecChecksumError):
        interdate.decode(payload[:-9] + payload[-8:], ref)
    with pytest.raises(TecFormatError, match="shape"):
        interdate.decode(payload, ref[:, :10])
    raw = bytearray(tilecodec.unseal(payload))
    body = tilecodec.TileHeader(bytes(raw)).body
    for offset, value, what in ((2, 9, "predictor"), (3, tilecodec.KIND_LEARNED, "residual kind")):
        bad = bytearray(raw)
        bad[body + offset] = value
        with pytest.raises(TecFormatError, match="unknown predictor"):
            interdate.decode(tilecodec.seal(bytes(bad)), ref)
    bad = bytearray(raw)
    struct.pack_into("<H", bad, body, 0)
    with pytest.raises(TecFormatError, match="0 dates back"):
        interdate.reference(tilecodec.seal(bytes(bad)))
    with pytest.raises(TecFormatError, match="truncated"):
        interdate.decode(tilecodec.seal(bytes(raw[:body + 12])), ref)


# -- in stacks ---------------------------------------------------------------------------------------
def _dense_clear(shared_data):
    """Three clear dates 5 days apart (rsgislib T37MEM, train), a 96 x 120 crop over two tiles of 64."""
    import rasterio

    folder = shared_data / "timeseries" / "rsgislib_T37MEM"
    if not folder.exists():
        pytest.skip(f"time series rsgislib_T37MEM not in {shared_data}")
    dates = ["2019-06-10", "2019-06-15", "2019-06-20"]
    arrays = []
    for d in dates:
        with rasterio.open(folder / f"{d}.tif") as src:
            arrays.append(src.read(window=((100, 196), (150, 270))))
            bands = list(src.descriptions)
    return np.ascontiguousarray(np.stack(arrays)), bands, dates


def _write_dense(shared_data, tmp_path, quality):
    """The dense stack written with the default stack coder: (array, bands, dates, path, header fields)."""
    arr, bands, dates = _dense_clear(shared_data)
    path = tmp_path / "dense.tec"
    fields = stack.write_stack(path, arr, bands, quality=quality, dates=dates, tile_size=64)
    return arr, bands, dates, path, fields


@needs_tt
def test_stack_uses_predicted_tiles_on_dense_clear_dates(shared_data, tmp_path):
    arr, bands, dates, path, fields = _write_dense(shared_data, tmp_path, 4)
    assert fields["stats"].get("predicted_tiles", 0) >= 2, fields["stats"]
    alone = stack.encode_stack(arr, bands, quality=4, dates=dates, tile_size=64, temporal=False)
    assert path.stat().st_size < 0.9 * len(alone)
    # the reader gives the encoder's pixels, for every date, the last one first (random access)
    model = stack.load_temporal()
    with terracodec.open(path) as ds:
        last = ds.read(date=2)
        decoded = [ds.read(date=d) for d in range(3)]
        kinds = [e.kind for e in ds._reader.entries]
    assert tilecodec.KIND_PREDICTED in kinds
    lam = tilecodec.rd_lambda(4)
    for ty, tx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        tiles = arr[:, :, ty * 64:(ty + 1) * 64, tx * 64:(tx + 1) * 64]
        coded = stack.encode_tile_stack(tiles, model, dates=dates, lam=lam)
        for d, (_, _, recon) in enumerate(coded):
            np.testing.assert_array_equal(decoded[d][:, ty * 64:(ty + 1) * 64, tx * 64:(tx + 1) * 64], recon)
    np.testing.assert_array_equal(last, decoded[2])
    for d in range(3):
        assert psnr10000(decoded[d], arr[d]) > 40
    # the same bytes again, whatever the number of coding threads
    for workers in (1, 2):
        assert stack.encode_stack(arr, bands, quality=4, dates=dates, tile_size=64,
                                  workers=workers) == path.read_bytes()


@needs_tt
def test_one_position_stack_codes_dates_alone_ahead_in_the_pool(shared_data, monkeypatch):
    """With one tile position the writer's idle threads code the dates alone while the caller codes
    the predicted tiles; the bytes are those of one thread."""
    import threading

    arr, bands, dates = _dense_clear(shared_data)
    size = max(arr.shape[2:])
    real = stack._alone_classical
    threads = []

    def spy(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(stack, "_alone_classical", spy)
    out = {}
    for workers in (1, 2):
        threads.clear()
        out[workers] = stack.encode_stack(arr, bands, quality=4, dates=dates, tile_size=size, workers=workers)
        in_pool = [name.startswith("tec-encode-stack") for name in threads]
        assert len(in_pool) == len(dates) and all(in_pool) == (workers == 2) and any(in_pool) == (workers == 2)
    assert out[1] == out[2]
    with terracodec.open(out[2]) as ds:
        assert tilecodec.KIND_PREDICTED in [e.kind for e in ds._reader.entries]


_DECODE = """
import hashlib, sys
import terracodec
with terracodec.open(sys.argv[1]) as ds:
    print(hashlib.sha256(b"".join(ds.read(date=d).tobytes() for d in reversed(ds.dates))).hexdigest())
    print(int("torch" in sys.modules))
"""


@needs_tt
def test_predicted_stack_decodes_the_same_in_a_fresh_process_without_torch(shared_data, tmp_path):
    import hashlib

    path = _write_dense(shared_data, tmp_path, 2)[3]
    with terracodec.open(path) as ds:
        want = hashlib.sha256(b"".join(ds.read(date=d).tobytes() for d in reversed(ds.dates))).hexdigest()
        kinds = {e.kind for e in ds._reader.entries}
    assert tilecodec.KIND_PREDICTED in kinds
    out = subprocess.run([sys.executable, "-c", _DECODE, str(path)], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()
    assert out[0] == want
    if not kinds & {tilecodec.KIND_LEARNED, tilecodec.KIND_TEMPORAL}:
        assert out[1] == "0", "reading classical and predicted tiles should not load torch"


@needs_tt
def test_corrupt_reference_of_a_predicted_tile_names_it(shared_data, tmp_path):
    path = _write_dense(shared_data, tmp_path, 4)[3]
    with terracodec.open(path) as ds:
        decoded = [ds.read(date=d) for d in range(3)]
    with ContainerReader(path) as r:
        n = r.header.tiles_x * r.header.tiles_y
        hits = [(d, i) for d in (1, 2) for i in range(n) if r.entries[d * n + i].kind == tilecodec.KIND_PREDICTED]
        assert hits
        d, i = hits[0]
        back = interdate.reference(r.read_tile(d * n + i))
        entry = r.entries[(d - back) * n + i]
        ty, tx = divmod(i, r.header.tiles_x)
    raw = bytearray(path.read_bytes())
    raw[entry.offset + entry.length // 2] ^= 0x5A
    bad = tmp_path / "bad.tec"
    bad.write_bytes(bytes(raw))
    with terracodec.open(bad) as ds:
        with pytest.raises(TecChecksumError, match=f"reference date {d - back}"):
            ds.read(date=d, window=((ty * 64, ty * 64 + 1), (tx * 64, tx * 64 + 1)))
        # the tiles that do not depend on it still read
        other = [(y, x) for y in range(2) for x in range(2) if (y, x) != (ty, tx)]
        for y, x in other:
            win = ((y * 64, min(96, y * 64 + 64)), (x * 64, min(120, x * 64 + 64)))
            np.testing.assert_array_equal(ds.read(date=d, window=win),
                                          decoded[d][:, win[0][0]:win[0][1], win[1][0]:win[1][1]])


@needs_tt
def test_stack_dates_reach_the_quality_floor(shared_data):
    """encode_tile_stack recodes a date under ``floor_db`` alone (the writers pass the quality's
    floor); here a floor far above quality 1's own PSNR."""
    arr, bands, dates = _dense_clear(shared_data)
    tiles = np.ascontiguousarray(arr[:, :, :64, :64])
    model = stack.load_temporal()
    lam = tilecodec.rd_lambda(1)
    plain = stack.encode_tile_stack(tiles, model, dates=dates, lam=lam)
    assert min(psnr10000(recon, tile) for (_, _, recon), tile in zip(plain, tiles)) < 45
    floored = stack.encode_tile_stack(tiles, model, dates=dates, lam=lam, floor_db=45.0)
    for (payload, kind, recon), tile in zip(floored, tiles):
        assert psnr10000(recon, tile) >= 45.0
        assert kind in (tilecodec.KIND_CLASSICAL, tilecodec.KIND_MULTIRES, tilecodec.KIND_LOSSLESS,
                        tilecodec.KIND_PREDICTED)
        if kind != tilecodec.KIND_PREDICTED:
            np.testing.assert_array_equal(tilecodec.decode_tile(payload), recon)


@needs_tt
def test_zarr_chunk_of_dense_dates_is_smaller_with_temporal_coding(shared_data):
    from terracodec.numcodecs import TerraCodec

    arr, bands, _ = _dense_clear(shared_data)
    temporal = TerraCodec(quality=4, bands=bands)
    alone = TerraCodec(quality=4, bands=bands, temporal=False)
    chunk, chunk_alone = temporal.encode(arr), alone.encode(arr)
    assert len(chunk) < 0.9 * len(chunk_alone)
    out = np.asarray(temporal.decode(chunk)).reshape(arr.shape)
    for d in range(len(arr)):
        assert psnr10000(out[d], arr[d]) >= tilecodec.QUALITY_FLOOR_DB[4]
    assert temporal.encode(arr) == chunk
