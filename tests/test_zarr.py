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
                      "nodata": 0, "tile_size": 256}
    again = numcodecs.get_codec(config)
    assert isinstance(again, TerraCodec) and again == codec
    v3 = TerraCodecV3.from_dict(json.loads(json.dumps(TerraCodecV3(quality=6, nodata=0).to_dict())))
    assert v3 == TerraCodecV3(quality=6, nodata=0)
    assert v3.to_dict() == {"name": "terracodec", "configuration": {
        "quality": 6, "model": None, "bands": None, "nodata": 0, "tile_size": None}}


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
