# SPDX-License-Identifier: Apache-2.0
"""TerraCodec in numcodecs / zarr (v3 and v2 format) / xarray, on the real crops of tests/data.

Round trips are decoded in a fresh interpreter. Partial reads decode only the chunks they touch
(counted, and checked by corrupting the other chunks). Bad input raises terracodec errors that say
which chunk and what is wrong; nothing is zero-filled.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_decoded_matches

zarr = pytest.importorskip("zarr", minversion="3.1")
numcodecs = pytest.importorskip("numcodecs")

from terracodec.errors import (TecBandError, TecChecksumError, TecFormatError,  # noqa: E402
                               TecInputError)
from terracodec.numcodecs import TerraCodec  # noqa: E402
from terracodec.zarr_codec import TerraCodecV3  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _has_entry_point(group: str, name: str) -> bool:
    return any(ep.name == name for ep in entry_points(group=group))


NUMCODECS_EP = _has_entry_point("numcodecs.codecs", "terracodec")
ZARR_EP = _has_entry_point("zarr.codecs", "terracodec")
ENTRY_POINT_REASON = ("the terracodec entry points are not installed (pyproject "
                      "[project.entry-points.\"numcodecs.codecs\"] / [\"zarr.codecs\"], then pip install -e .)")

if not NUMCODECS_EP:                       # until the entry point is installed, register by hand
    numcodecs.register_codec(TerraCodec)


def run_fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (cwd = the repo); it prints one JSON line, returned."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- numcodecs -------------------------------------------------------------------------------------------
def test_config_is_json_and_round_trips():
    codec = TerraCodec(quality=6, bands=["b2", "B3", "B4", "B08"], nodata=0, tile_size=256)
    config = json.loads(json.dumps(codec.get_config()))
    assert config == {"id": "terracodec", "quality": 6, "model": None, "bands": ["B02", "B03", "B04", "B08"],
                      "nodata": 0, "tile_size": 256, "temporal": True, "keyframe_interval": None}
    again = numcodecs.get_codec(config)
    assert isinstance(again, TerraCodec) and again == codec
    v3 = TerraCodecV3.from_dict(json.loads(json.dumps(TerraCodecV3(quality=6, nodata=0).to_dict())))
    assert v3 == TerraCodecV3(quality=6, nodata=0)
    assert v3.to_dict() == {"name": "terracodec", "configuration": {
        "quality": 6, "model": None, "bands": None, "nodata": 0, "tile_size": None, "temporal": True,
        "keyframe_interval": None}}
    # the time-axis options round-trip, and configs written before they existed still load
    per_date = TerraCodec(quality=4, temporal=False, keyframe_interval=3)
    config = json.loads(json.dumps(per_date.get_config()))
    assert config["temporal"] is False and config["keyframe_interval"] == 3
    assert numcodecs.get_codec(config) == per_date and numcodecs.get_codec(config) != TerraCodec(quality=4)
    v3 = TerraCodecV3(quality=4, temporal=False, keyframe_interval=3)
    assert TerraCodecV3.from_dict(json.loads(json.dumps(v3.to_dict()))) == v3
    assert v3.numcodec == per_date
    old = numcodecs.get_codec({"id": "terracodec", "quality": 6, "model": None, "bands": None, "nodata": 0,
                               "tile_size": None})
    assert old.temporal is True and old.keyframe_interval is None
    with pytest.raises(TecInputError, match="temporal"):
        TerraCodec(temporal="yes")
    with pytest.raises(TecInputError, match="keyframe_interval"):
        TerraCodec(keyframe_interval=0)


def test_chunk_is_one_tile_payload_and_round_trips(l2a12, model):
    arr, _ = l2a12
    codec = TerraCodec(quality=5, model=model)
    payload = codec.encode(arr)
    assert payload[:4] == b"TECT"                       # the .tec tile payload itself, no second format
    assert len(payload) < arr.nbytes / 2
    out = codec.decode(payload)
    assert_decoded_matches(out, arr)
    into = np.zeros_like(arr)
    assert codec.decode(payload, out=into) is into
    np.testing.assert_array_equal(into, out)
    assert codec.encode(arr) == payload                 # deterministic


def test_tiled_chunk_and_time_stack(crops, model):
    arr, meta = crops["sref10_nodata"]                  # 10 bands, nodata 0 (clouds masked by the source)
    codec = TerraCodec(quality=5, model=model, nodata=meta["nodata"], tile_size=32)
    payload = codec.encode(arr)
    assert payload[:4] == b"TECZ"
    assert_decoded_matches(codec.decode(payload), arr, nodata=meta["nodata"])
    stack = np.stack([arr, arr[:, ::-1, ::-1].copy()])  # (time, bands, y, x)
    tpayload = TerraCodec(quality=5, model=model, nodata=0).encode(stack)
    back = TerraCodec(model=model).decode(tpayload)
    assert_decoded_matches(back, stack, nodata=0)


# -- zarr v3 and v2 format, decoded in a fresh process ----------------------------------------------------
def _write(path, arr, fmt, model, chunks=(12, 32, 40)):
    if fmt == 3:
        z = zarr.create_array(str(path), shape=arr.shape, chunks=chunks, dtype=arr.dtype,
                              serializer=TerraCodecV3(quality=5, model=model), compressors=None)
    else:
        z = zarr.create_array(str(path), shape=arr.shape, chunks=chunks, dtype=arr.dtype, zarr_format=2,
                              compressors=TerraCodec(quality=5, model=model), filters=None)
    z[:] = arr
    return z


@pytest.mark.parametrize("fmt", [3, 2])
def test_zarr_round_trip_in_fresh_process(tmp_path, l2a12, model, fmt):
    arr, _ = l2a12
    store = tmp_path / f"v{fmt}.zarr"
    _write(store, arr, fmt, model)
    local = zarr.open_array(str(store))[:]
    assert_decoded_matches(local, arr)
    np.save(tmp_path / "local.npy", local)
    # v3 needs the zarr.codecs entry point to find "terracodec" without an import, v2 the numcodecs one
    registered = ZARR_EP if fmt == 3 else NUMCODECS_EP
    res = run_fresh(f"""
        import json, sys
        import numpy as np
        {'' if registered else 'import terracodec.zarr_codec, numcodecs, terracodec.numcodecs as t; numcodecs.register_codec(t.TerraCodec)'}
        import zarr
        z = zarr.open_array({str(store)!r}, mode="r")
        a = z[:]
        print(json.dumps({{"shape": list(a.shape), "dtype": str(a.dtype), "format": z.metadata.zarr_format,
                          "same": bool((a == np.load({str(tmp_path / 'local.npy')!r})).all())}}))
    """)
    assert res == {"shape": list(arr.shape), "dtype": "int16", "format": fmt, "same": True}


@pytest.mark.skipif(not NUMCODECS_EP, reason=ENTRY_POINT_REASON)
def test_get_codec_in_fresh_process_without_importing_terracodec():
    res = run_fresh("""
        import json, sys
        import numcodecs
        before = any(m == "terracodec" or m.startswith("terracodec.") for m in sys.modules)
        codec = numcodecs.get_codec({"id": "terracodec", "quality": 6})
        print(json.dumps({"before": before, "cls": type(codec).__module__ + "." + type(codec).__name__,
                          "config": codec.get_config()}))
    """)
    assert res["before"] is False
    assert res["cls"] == "terracodec.numcodecs.TerraCodec"
    assert res["config"]["quality"] == 6


def test_v2_and_v3_chunks_are_the_same_bytes(tmp_path, l2a12, model):
    arr, _ = l2a12
    _write(tmp_path / "a.zarr", arr, 3, model)
    _write(tmp_path / "b.zarr", arr, 2, model)
    assert (tmp_path / "a.zarr/c/0/1/1").read_bytes() == (tmp_path / "b.zarr/0.1.1").read_bytes()


# -- partial reads ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [3, 2])
def test_partial_read_decodes_only_the_touched_chunk(tmp_path, l2a12, model, fmt, monkeypatch):
    arr, _ = l2a12
    store = tmp_path / "p.zarr"
    _write(store, arr, fmt, model)                     # 2 x 2 chunks of 32 x 40
    full = zarr.open_array(str(store))[:]
    calls = []
    real = TerraCodec.decode_chunk

    def counting(self, buf, where=None):
        calls.append(where)
        return real(self, buf, where)

    monkeypatch.setattr(TerraCodec, "decode_chunk", counting)
    part = zarr.open_array(str(store))[:, 40:50, 5:20]   # inside chunk (0, 1, 0)
    np.testing.assert_array_equal(part, full[:, 40:50, 5:20])
    assert len(calls) == 1
    monkeypatch.undo()

    # corrupt every other chunk: the slice still reads, and a read touching them fails loudly
    keys = ["c/0/0/0", "c/0/0/1", "c/0/1/1"] if fmt == 3 else ["0.0.0", "0.0.1", "0.1.1"]
    for key in keys:
        f = store / key
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    np.testing.assert_array_equal(zarr.open_array(str(store))[:, 40:50, 5:20], part)
    with pytest.raises(TecChecksumError) as err:
        zarr.open_array(str(store))[:, 0:10, 0:10]
    msg = str(err.value)
    assert "corrupt" in msg and "bytes" in msg
    if fmt == 3:
        assert "c/0/0/0" in msg                         # v3: the chunk key is named


# -- xarray ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [3, 2])
def test_xarray_to_zarr_and_back(tmp_path, l2a12, model, fmt):
    xr = pytest.importorskip("xarray")
    arr, meta = l2a12
    t = meta["transform"]
    ds = xr.Dataset(
        {"reflectance": (("band", "y", "x"), arr, {"crs_wkt": meta["crs_wkt"], "scale_factor_note": "x10000"})},
        coords={"band": np.array(meta["bands"], dtype=object),
                "y": t.f + t.e * (np.arange(arr.shape[1]) + 0.5),
                "x": t.c + t.a * (np.arange(arr.shape[2]) + 0.5)},
        attrs={"crs": meta["crs"].to_string()})
    enc = ({"serializer": TerraCodecV3(quality=6, model=model), "compressors": None} if fmt == 3
           else {"compressors": [TerraCodec(quality=6, model=model)]})
    store = tmp_path / "x.zarr"
    ds.to_zarr(store, zarr_format=fmt, consolidated=False,
               encoding={"reflectance": {**enc, "chunks": (12, 32, 40)}})
    back = xr.open_zarr(store, consolidated=False)
    assert back.reflectance.dims == ("band", "y", "x")
    assert list(back.band.values) == list(meta["bands"])
    np.testing.assert_allclose(back.x.values, ds.x.values)
    np.testing.assert_allclose(back.y.values, ds.y.values)
    assert back.attrs["crs"] == meta["crs"].to_string()
    assert back.reflectance.attrs["crs_wkt"] == meta["crs_wkt"]
    assert_decoded_matches(back.reflectance.values, arr)


# -- bad input -----------------------------------------------------------------------------------------------
def test_wrong_dtype_is_rejected(l2a12):
    arr, _ = l2a12
    with pytest.raises(TecInputError, match=r"float32.*\(12, 64, 80\).*integer"):
        TerraCodec().encode(arr.astype(np.float32))
    with pytest.raises(TecInputError, match="int32"):
        TerraCodec().encode(arr.astype(np.int32))
    with pytest.raises(TecInputError, match="byte order"):
        TerraCodec().encode(arr.astype(">i2"))
    with pytest.raises(TecInputError, match="dtype"):
        zarr.create_array({}, shape=arr.shape, chunks=arr.shape, dtype="float32",
                          serializer=TerraCodecV3(), compressors=None)


def test_chunk_without_band_information_is_rejected(l2a12):
    arr, _ = l2a12
    with pytest.raises(TecBandError, match="no band axis"):
        TerraCodec().encode(arr[0])
    with pytest.raises(TecBandError, match=r"5 bands.*bands=\[\.\.\.\]"):
        TerraCodec().encode(arr[:5])                     # no default band set for 5 bands
    assert TerraCodec(bands=["B02", "B03", "B04", "B08", "B11"], model="lossless").encode(arr[:5])
    with pytest.raises(TecBandError, match="all bands"):
        TerraCodec(bands=list("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12".split())).encode(arr[:4])
    with pytest.raises(TecBandError, match="split the band axis"):
        zarr.create_array({}, shape=arr.shape, chunks=(4, 32, 32), dtype="int16",
                          serializer=TerraCodecV3(), compressors=None)
    with pytest.raises(TecInputError, match="flat buffer"):
        TerraCodec().encode(arr.tobytes())


def test_bad_config_is_rejected():
    with pytest.raises(TecInputError, match="quality"):
        TerraCodec(quality=9)
    with pytest.raises(TecBandError, match="unknown band"):
        TerraCodec(bands=["B99"])
    with pytest.raises(TecInputError, match="tile_size"):
        TerraCodec(tile_size=3)
    with pytest.raises(TecInputError, match="nodata"):
        TerraCodec(nodata=0.5)


def test_corrupt_chunks_raise_with_context(l2a12, model):
    arr, _ = l2a12
    codec = TerraCodec(model=model)
    payload = codec.encode(arr)
    flipped = bytearray(payload)
    flipped[40] ^= 0x01
    with pytest.raises(TecChecksumError, match=rf"chunk of {len(payload)} bytes \(int16 12x64x80\) is corrupt"):
        codec.decode(bytes(flipped))
    with pytest.raises(TecFormatError, match="chunk of 20 bytes"):
        codec.decode(payload[:20])
    with pytest.raises(TecFormatError, match="not a TerraCodec chunk"):
        codec.decode(b"\x28\xb5\x2f\xfd" + payload[4:])  # e.g. a zstd chunk
    framed = TerraCodec(model=model, tile_size=32).encode(arr)
    with pytest.raises(TecFormatError, match="truncated"):
        codec.decode(framed[:-10])
    bad = bytearray(framed)
    bad[-30] ^= 0x10                                     # inside the last tile of the frame
    with pytest.raises(TecChecksumError, match=r"tile \(1, 2\)"):
        codec.decode(bytes(bad))


# -- time axis: TEC-TT chunks ------------------------------------------------------------------------------
# Real multi-date crops of the time series in ../shared/data/timeseries (tests/data has single dates
# only; skipped when the shared set is absent, as in tests/test_stack.py). Crops are small (48 px):
# the learned encoder runs at seconds per tile on this CPU.
from terracodec import stack, tilecodec  # noqa: E402
from terracodec import numcodecs as tec_numcodecs  # noqa: E402
from terracodec.errors import TecDecodeError  # noqa: E402

from conftest import needs_tt, psnr10000  # noqa: E402


def _series(shared_data, location, n, window, bands_drop=()):
    """(n, bands, h, w) of the first n dates of a time series, cropped to window ((r0, r1), (c0, c1))."""
    import rasterio

    from terracodec.train_temporal import read_index

    folder = shared_data / "timeseries" / location
    if not folder.exists():
        pytest.skip(f"time series {location} not in {shared_data}")
    (r0, r1), (c0, c1) = window
    arrays = []
    for row in read_index(folder)[:n]:
        with rasterio.open(folder / row["file"]) as src:
            keep = [i + 1 for i, b in enumerate(src.descriptions) if b not in bands_drop]
            arrays.append(src.read(keep)[:, r0:r1, c0:c1])
    return np.ascontiguousarray(np.stack(arrays))


@pytest.fixture(scope="module")
def tchunk(shared_data):
    """3 dates x 10 bands x 48 x 48 of rsgislib T37MEM (the window of tests/data's sref crop), nodata 0
    (clouds and shadows zeroed by the source)."""
    return _series(shared_data, "rsgislib_T37MEM", 3, ((80, 128), (248, 296)))


def _frame(payload):
    return tec_numcodecs._unpack_frame(payload, "test chunk")


def _kinds(frame):
    return [tilecodec.TileHeader(p).kind for p in frame.payloads]


def _v1_frame(shape, tile_size, payloads, ndim=4, version=1, mode_block=b""):
    """A frame built from the documented layout: version 1 is what terracodec wrote before TEC-TT;
    version 2 has the coding-mode block after the payload lengths."""
    import struct
    import zlib

    t, b, h, w = shape
    head = struct.pack("<4sBBHIIIIII", b"TECZ", version, ndim, 0, t, b, h, w, tile_size, len(payloads))
    head += struct.pack(f"<{len(payloads)}I", *map(len, payloads)) + mode_block
    head += struct.pack("<I", zlib.crc32(head))
    return head + b"".join(payloads)


def _assert_stack_ok(out, arr, nodata=0):
    assert out.shape == arr.shape and out.dtype == arr.dtype
    for t in range(arr.shape[0]):
        np.testing.assert_array_equal(out[t] == nodata, arr[t] == nodata, err_msg="nodata footprint changed")
        assert psnr10000(out[t], arr[t], arr[t] != nodata) >= 30


@pytest.fixture(scope="module")
def tt_coded(tchunk):
    """The chunk coded with TEC-TT (default config) and per date; each decoded."""
    tt = TerraCodec(quality=5, nodata=0).encode(tchunk)
    per_date = TerraCodec(quality=5, nodata=0, temporal=False).encode(tchunk)
    return tt, per_date


@needs_tt
def test_time_chunk_tec_tt_and_per_date(tchunk, tt_coded):
    tt, per_date = tt_coded
    f = _frame(tt)
    assert tt[:5] == b"TECZ\x02"                        # version 2: says how it was coded
    assert f.mode == tec_numcodecs.MODE_TEMPORAL and f.model == stack.default_temporal_model()
    assert f.keyframe_interval == stack.DEFAULT_KEYFRAME_INTERVAL and f.shape == tchunk.shape
    assert _kinds(f)[0] != tilecodec.KIND_TEMPORAL       # the chunk's first date is a keyframe
    g = _frame(per_date)
    assert per_date[:5] == b"TECZ\x01" and g.mode == tec_numcodecs.MODE_PER_DATE
    assert tilecodec.KIND_TEMPORAL not in _kinds(g)
    # mode decision: TEC-TT costs at most the frame's few extra header bytes more than per date
    assert len(tt) <= len(per_date) + 16 + len(f.model)
    _assert_stack_ok(TerraCodec().decode(tt), tchunk)  # the frame, not the reader's config, decides
    _assert_stack_ok(TerraCodec(temporal=False).decode(tt), tchunk)
    _assert_stack_ok(TerraCodec().decode(per_date), tchunk)
    # deterministic: the same chunk gives the same bytes
    assert TerraCodec(quality=5, nodata=0).encode(tchunk) == tt


@needs_tt
def test_per_date_frames_are_the_old_format_and_still_decode(tchunk, tt_coded, model):
    _, per_date = tt_coded
    # temporal=False writes exactly the version-1 frame of per-date tile payloads
    payloads = [tilecodec.encode_tile(np.ascontiguousarray(d), quality=5, nodata=0)[0] for d in tchunk]
    old = _v1_frame(tchunk.shape, 0, payloads)
    assert per_date == old
    back = TerraCodec().decode(old)
    for t in range(3):
        np.testing.assert_array_equal(back[t], tilecodec.decode_tile(payloads[t]))
    # one date, and model="lossless", behave as before: version-1 frames, whatever `temporal` says
    one = tchunk[:1]
    assert TerraCodec(quality=5, nodata=0).encode(one) == _v1_frame(one.shape, 0, payloads[:1])
    lossless = TerraCodec(model="lossless", nodata=0).encode(tchunk)
    assert lossless[:5] == b"TECZ\x01" and lossless == TerraCodec(model="lossless", temporal=False,
                                                                  nodata=0).encode(tchunk)
    np.testing.assert_array_equal(TerraCodec().decode(lossless), tchunk)
    # model="classical" codes each date alone too (a version-1 frame of its tile payloads)
    classical = TerraCodec(model="classical", quality=5, nodata=0).encode(tchunk)
    mine = [tilecodec.encode_tile(np.ascontiguousarray(d), quality=5, model="classical", nodata=0)[0] for d in tchunk]
    assert classical == _v1_frame(tchunk.shape, 0, mine)
    back = TerraCodec(model="classical").decode(classical)
    for t in range(3):
        np.testing.assert_array_equal(back[t], tilecodec.decode_tile(mine[t]))


@needs_tt
def test_image_model_codes_each_date(tchunk):
    """A named image (non-temporal) model codes each date alone (version-1 frame), as before."""
    from terracodec.weights import default_model

    arr = tchunk[:2, :, :24, :24]
    name = default_model()
    assert not stack.is_temporal_model(name)
    payload = TerraCodec(quality=5, model=name, nodata=0).encode(arr)
    assert payload[:5] == b"TECZ\x01"
    assert payload == TerraCodec(quality=5, model=name, nodata=0, temporal=False).encode(arr)


@pytest.fixture(scope="module")
def tt_temporal_tiles(tchunk):
    """The chunk coded with TEC-TT in tiles of 32 px (2 x 2 positions), the classical candidate off
    (as tests/test_stack.py does) so that temporal tiles (kind 3) are written: on 48 px crops JPEG 2000
    has the lower rate-distortion cost and would win every tile."""
    import functools

    real = stack.encode_tile_stack
    stack.encode_tile_stack = functools.partial(real, classical=False)
    try:
        codec = TerraCodec(quality=5, nodata=0, tile_size=32, keyframe_interval=2)
        return codec.encode(tchunk), codec.encode(tchunk)
    finally:
        stack.encode_tile_stack = real


@needs_tt
def test_temporal_tiles_round_trip(tchunk, tt_temporal_tiles):
    payload, again = tt_temporal_tiles
    assert payload == again                                # deterministic
    f = _frame(payload)
    kinds = np.array(_kinds(f)).reshape(3, 4)              # (date, tile position)
    assert f.mode == tec_numcodecs.MODE_TEMPORAL and f.keyframe_interval == 2 and f.tile_size == 32
    assert (kinds[0] != tilecodec.KIND_TEMPORAL).all()     # keyframes: the chunk's dates 0 and 2
    assert (kinds[2] != tilecodec.KIND_TEMPORAL).all()
    assert (kinds[1] == tilecodec.KIND_TEMPORAL).any()
    _assert_stack_ok(TerraCodec().decode(payload), tchunk)


_DECODE_SCRIPT = """
import hashlib, sys
import torch
torch.set_num_threads(int(sys.argv[2]))
from terracodec.numcodecs import TerraCodec
out = TerraCodec().decode(open(sys.argv[1], "rb").read())
print(torch.get_num_threads(), hashlib.sha256(out.tobytes()).hexdigest())
"""


@needs_tt
def test_temporal_chunk_decodes_identically_in_fresh_process_with_other_threads(tmp_path, tt_temporal_tiles):
    import hashlib
    import os

    import torch

    payload, _ = tt_temporal_tiles
    here = hashlib.sha256(TerraCodec().decode(payload).tobytes()).hexdigest()
    threads = 3 if torch.get_num_threads() != 3 else 1
    (tmp_path / "chunk").write_bytes(payload)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", _DECODE_SCRIPT, str(tmp_path / "chunk"),
                           str(threads)], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"{threads} {here}"


@needs_tt
def test_corrupt_temporal_chunk_raises(tt_temporal_tiles):
    payload, _ = tt_temporal_tiles
    f = _frame(payload)
    kinds = _kinds(f)
    k3 = kinds.index(tilecodec.KIND_TEMPORAL)                 # a temporal tile of date 1
    date, pos = divmod(k3, 4)
    starts = np.cumsum([len(payload) - sum(map(len, f.payloads))] + [len(p) for p in f.payloads])
    codec = TerraCodec()
    for k in (k3, k3 - 4):                                      # a temporal tile, then its keyframe
        bad = bytearray(payload)
        bad[starts[k] + len(f.payloads[k]) // 2] ^= 0x20
        where = rf"date {k // 4}, tile \({pos // 2}, {pos % 2}\)"
        with pytest.raises(TecChecksumError, match=where + ".*corrupt"):
            codec.decode(bytes(bad))
    bad = bytearray(payload)
    bad[32 + 4 * len(f.payloads)] = 7                          # the coding mode: covered by the header CRC32
    with pytest.raises(TecChecksumError, match="frame header CRC32"):
        codec.decode(bytes(bad))
    with pytest.raises(TecFormatError, match="truncated"):
        codec.decode(payload[:-5])
    # a payload that passes its CRC32 but cannot be decoded (here: a temporal tile whose reference is a
    # date without a latent) is a documented error too, never garbage
    swapped = list(f.payloads)
    lossless = tilecodec.encode_lossless(np.zeros(tilecodec.TileHeader(f.payloads[k3 - 4]).shape, np.int16))
    swapped[k3 - 4] = lossless
    crafted = tec_numcodecs._pack_frame(4, f.shape, 32, swapped, mode=tec_numcodecs.MODE_TEMPORAL,
                                        model=f.model, keyframe_interval=2)
    with pytest.raises((TecFormatError, TecDecodeError), match=rf"date {date}"):
        codec.decode(crafted)


def test_unknown_frame_version_and_mode_are_refused():
    arr = np.arange(2 * 4 * 16 * 16, dtype=np.int16).reshape(2, 4, 16, 16)
    frame = bytearray(TerraCodec(model="lossless").encode(arr))
    frame[4] = 9
    with pytest.raises(TecFormatError, match="frame version 9.*upgrade"):
        TerraCodec().decode(bytes(frame))
    payloads = _frame(TerraCodec(model="lossless").encode(arr)).payloads
    crafted = tec_numcodecs._pack_frame(4, arr.shape, 0, payloads, mode=5, model="x", keyframe_interval=1)
    with pytest.raises(TecFormatError, match="coding mode 5"):
        TerraCodec().decode(crafted)
    # a version-2 frame in mode 0 (per date; not written today) is read like version 1
    v2 = _v1_frame(arr.shape, 0, payloads, version=2, mode_block=bytes([0, 0, 0, 0]))
    np.testing.assert_array_equal(TerraCodec().decode(v2), arr)
    # and a version-2 frame as documented: mode 1, model name length, keyframe interval, name
    name = b"tec-tt-v1"
    tt = _v1_frame(arr.shape, 0, payloads, version=2, mode_block=bytes([1, len(name), 8, 0]) + name)
    frame = _frame(tt)
    assert (frame.mode, frame.model, frame.keyframe_interval) == (1, "tec-tt-v1", 8)
    assert tt == tec_numcodecs._pack_frame(4, arr.shape, 0, payloads, mode=1, model="tec-tt-v1",
                                           keyframe_interval=8)


@needs_tt
def test_zarr_array_chunked_over_time(tmp_path, shared_data, monkeypatch):
    """A (4, 12, 40, 48) L1C series in zarr v3, chunks of 2 dates: each chunk is a TEC-TT frame that
    decodes alone; a one-date read decodes only its chunk."""
    arr = _series(shared_data, "eolearn_TestEOPatch-33T", 4, ((20, 60), (30, 78)), bands_drop=("B10",))
    store = tmp_path / "t.zarr"
    z = zarr.create_array(str(store), shape=arr.shape, chunks=(2, 12, 40, 48), dtype=arr.dtype,
                          serializer=TerraCodecV3(quality=5), compressors=None)
    z[:] = arr
    assert json.loads((store / "zarr.json").read_text())["codecs"][0]["configuration"]["temporal"] is True
    back = zarr.open_array(str(store))[:]
    assert back.shape == arr.shape and back.dtype == arr.dtype
    for t in range(4):
        assert psnr10000(back[t], arr[t]) >= 30
    for i in range(2):
        raw = (store / f"c/{i}/0/0/0").read_bytes()
        assert raw[:5] == b"TECZ\x02" and _frame(raw).mode == tec_numcodecs.MODE_TEMPORAL
        np.testing.assert_array_equal(TerraCodec().decode(raw), back[2 * i:2 * i + 2])
    calls = []
    real = TerraCodec.decode_chunk
    monkeypatch.setattr(TerraCodec, "decode_chunk", lambda self, buf, where=None: calls.append(where)
                        or real(self, buf, where))
    np.testing.assert_array_equal(zarr.open_array(str(store))[3, :, 5:9], back[3, :, 5:9])
    assert len(calls) == 1
