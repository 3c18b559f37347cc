# SPDX-License-Identifier: Apache-2.0
"""GDAL driver plugin `TEC`: gdal tools, rasterio and osgeo against the Python API.

Needs the GDAL command line tools and the installed plugin (`make -C gdal_plugin install`);
skipped with a reason otherwise. Every GDAL/rasterio/osgeo call runs in a subprocess with
GDAL_DRIVER_PATH set, so a crash would show as a failed test, not a dead pytest.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = Path(os.environ.get("TEC_GDAL_PLUGIN_DIR", Path(sys.prefix) / "lib" / "gdalplugins"))
if not (PLUGIN_DIR / "gdal_TEC.so").exists():
    PLUGIN_DIR = REPO / ".venv" / "lib" / "gdalplugins"

# (path, crop xoff yoff xsize ysize, tile size): several tiles with cropped edge tiles, and overviews
SOURCES = [
    (REPO.parent / "shared" / "data" / "s2l2a" / "oceanecowatch_durban_2019-04-24.tif", (100, 120, 300, 260), 128),
    (REPO / "examples" / "scene_l2a.tif", (5, 10, 150, 130), 64),
]
GEOM = {"crop": SOURCES[0][1], "tile": SOURCES[0][2]}

pytestmark = [
    pytest.mark.skipif(shutil.which("gdalinfo") is None or shutil.which("gdal_translate") is None,
                       reason="GDAL command line tools (gdal-bin) not installed"),
    pytest.mark.skipif(not (PLUGIN_DIR / "gdal_TEC.so").exists(),
                       reason=f"TEC plugin not built: run `make -C gdal_plugin install` ({PLUGIN_DIR})"),
]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["GDAL_DRIVER_PATH"] = str(PLUGIN_DIR)
    env.pop("CPL_DEBUG", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(*args, check=True, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=_env(**env),
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def run_python(code: str, *args) -> dict:
    """Run ``code`` in a fresh interpreter of this environment; it prints one JSON line last."""
    proc = run(sys.executable, "-c", textwrap.dedent(code), *args)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def api_read(path) -> np.ndarray:
    import terracodec

    return np.asarray(terracodec.open(str(path)).read())


def api_stats(path) -> dict:
    import terracodec

    return terracodec.open(str(path)).stats


def gtiff_read(path) -> np.ndarray:
    """Read a GeoTIFF written by gdal_translate without GDAL in this process (fresh interpreter)."""
    out = Path(str(path) + ".npy")
    run_python("""
        import sys, json, numpy as np, rasterio
        with rasterio.open(sys.argv[1]) as ds:
            np.save(sys.argv[2], ds.read())
        print(json.dumps({}))
    """, path, out)
    return np.load(out)


def _core_api_missing() -> str | None:
    try:
        import terracodec

        terracodec.open, terracodec.Writer                   # noqa: B018
    except (ImportError, AttributeError) as exc:
        return f"core API terracodec.open/Writer not available ({exc})"
    return None


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    if _core_api_missing():
        pytest.skip(_core_api_missing())
    found = next((s for s in SOURCES if s[0].exists()), None)
    if found is None:
        pytest.skip("no Sentinel-2 scene in ../shared/data or examples/")
    src, GEOM["crop"], GEOM["tile"] = found
    out = tmp_path_factory.mktemp("tec_gdal") / "src.tif"
    run("gdal_translate", "-q", "-srcwin", *GEOM["crop"], src, out)
    return out


@pytest.fixture(scope="module")
def encoded(source) -> Path:
    """gdal_translate -of TEC -co QUALITY=6 (the default learned codec)."""
    out = source.with_name("out.tec")
    t0 = time.perf_counter()
    run("gdal_translate", "-q", "-of", "TEC", "-co", "QUALITY=6", "-co", f"BLOCKSIZE={GEOM['tile']}",
        source, out)
    print(f"\n[timing] gdal_translate -of TEC {GEOM['crop'][2]}x{GEOM['crop'][3]}: {time.perf_counter() - t0:.2f} s")
    assert out.exists()
    return out


@pytest.fixture(scope="module")
def decoded(encoded) -> np.ndarray:
    return api_read(encoded)


# -- driver registration ------------------------------------------------------------------------------
def test_formats_lists_tec():
    out = run("gdalinfo", "--formats").stdout
    line = next((ln for ln in out.splitlines() if ln.strip().startswith("TEC ")), None)
    assert line is not None, out
    assert "-raster-" in line and "(rw" in line and "v)" in line
    fmt = run("gdalinfo", "--format", "TEC").stdout
    for opt in ("QUALITY", "MODEL", "BLOCKSIZE", "BANDS", "NUM_THREADS"):
        assert f'name="{opt}"' in fmt
    assert "CreateCopy()" in fmt and "Create()" not in fmt.replace("CreateCopy()", "")


# -- gdalinfo: metadata only, Python never started ----------------------------------------------------
def test_gdalinfo_metadata_without_python(source, encoded):
    src = json.loads(run("gdalinfo", "-json", source).stdout)
    t0 = time.perf_counter()
    proc = run("gdalinfo", "-json", "-mdd", "TEC", encoded, CPL_DEBUG="TEC")
    elapsed = time.perf_counter() - t0
    print(f"\n[timing] gdalinfo out.tec: {elapsed:.3f} s")
    assert "Python" not in proc.stderr, proc.stderr          # the bridge logs when Python starts
    assert elapsed < 5.0
    info = json.loads(proc.stdout)
    assert info["driverShortName"] == "TEC"
    assert info["size"] == [GEOM["crop"][2], GEOM["crop"][3]]
    assert info["geoTransform"] == pytest.approx(src["geoTransform"])
    assert [b["description"] for b in info["bands"]] == [b["description"] for b in src["bands"]]
    assert all(b["type"] == src["bands"][0]["type"] for b in info["bands"])
    assert all(b["block"] == [GEOM["tile"]] * 2 for b in info["bands"])
    assert [b.get("noDataValue") for b in info["bands"]] == [b.get("noDataValue") for b in src["bands"]]
    assert info["coordinateSystem"]["wkt"].split("\n")[-1] == src["coordinateSystem"]["wkt"].split("\n")[-1]
    tec = info["metadata"]["TEC"]
    assert tec["QUALITY"] == "6" and tec["MODEL"] and float(tec["COMPRESSION_RATIO"]) > 1
    stats = api_stats(encoded)
    assert (int(tec["FALLBACK_TILES"]), int(tec["FLOOR_TILES"])) == (stats["fallback_tiles"], stats["floor_tiles"])
    assert len(info["bands"][0]["overviews"]) >= 1
    # the human-readable form shows the same
    text = run("gdalinfo", encoded).stdout
    assert "Driver: TEC" in text and f"Size is {GEOM['crop'][2]}, {GEOM['crop'][3]}" in text and "Description = B" in text


# -- pixels -----------------------------------------------------------------------------------------------
def test_translate_roundtrip_matches_python_api(source, encoded, decoded):
    back = encoded.with_name("back.tif")
    t0 = time.perf_counter()
    run("gdal_translate", "-q", encoded, back)
    print(f"\n[timing] gdal_translate out.tec back.tif: {time.perf_counter() - t0:.2f} s")
    got = gtiff_read(back)
    assert got.dtype == decoded.dtype and got.shape == decoded.shape
    assert np.array_equal(got, decoded)                      # bit-exact with terracodec.open().read()
    src_info = json.loads(run("gdalinfo", "-json", source).stdout)
    back_info = json.loads(run("gdalinfo", "-json", back).stdout)
    assert back_info["geoTransform"] == pytest.approx(src_info["geoTransform"])
    assert back_info["coordinateSystem"]["wkt"] == src_info["coordinateSystem"]["wkt"]
    assert [b["description"] for b in back_info["bands"]] == [b["description"] for b in src_info["bands"]]
    assert [b.get("noDataValue") for b in back_info["bands"]] == [b.get("noDataValue") for b in src_info["bands"]]
    ref = gtiff_read(source).astype(np.float64)
    mse = float(np.mean((ref - got.astype(np.float64)) ** 2))
    psnr = 10 * np.log10(10000.0 ** 2 / mse) if mse else float("inf")
    print(f"[quality] PSNR_10000 of the GDAL round trip at QUALITY=6: {psnr:.2f} dB")
    assert psnr > 30


def test_srcwin(encoded, decoded):
    out = encoded.with_name("win.tif")
    _, h, w = decoded.shape
    x, y, xs, ys = w // 4, h // 8, w // 2, (3 * h) // 4
    run("gdal_translate", "-q", "-srcwin", x, y, xs, ys, encoded, out)
    assert np.array_equal(gtiff_read(out), decoded[:, y:y + ys, x:x + xs])


def api_overview(path, level: int) -> np.ndarray:
    import terracodec

    return np.asarray(terracodec.open(str(path)).read(level=level))


def test_outsize_served_by_driver_overviews(encoded, decoded):
    out = encoded.with_name("half.tif")
    w, h = (GEOM["crop"][2] + 1) // 2, (GEOM["crop"][3] + 1) // 2
    proc = run("gdal_translate", "-outsize", w, h, encoded, out, CPL_DEBUG="TEC")
    # read from the driver's overview, which decodes tiles at reduced resolution
    assert "overview 1/2" in proc.stderr and "decoded at reduced resolution" in proc.stderr
    assert "from full-resolution tiles" not in proc.stderr
    got = gtiff_read(out)
    assert np.array_equal(got, api_overview(encoded, 1))
    # a low-pass of the full-resolution pixels: close to their 2x2 means
    c, rows, cols = decoded.shape
    box = decoded[:, :rows // 2 * 2, :cols // 2 * 2].astype(float)
    box = box.reshape(c, rows // 2, 2, cols // 2, 2).mean(axis=(2, 4))
    part = got[:, :box.shape[1], :box.shape[2]].astype(float)
    assert np.allclose(part.mean(axis=(1, 2)), box.mean(axis=(1, 2)), rtol=0.01, atol=5)
    assert np.corrcoef(part.ravel(), box.ravel())[0, 1] > 0.99


def test_read_through_gdal_virtual_file_systems(encoded, decoded):
    """A .tec inside a zip (/vsizip/; /vsicurl/ and /vsis3/ take the same path): overlapping
    tiles and overviews are decoded by Python, which reads the file through GDAL's VSI (osgeo)."""
    import zipfile

    if subprocess.run([sys.executable, "-c", "import osgeo.gdal"], capture_output=True).returncode:
        pytest.skip("GDAL's Python bindings (osgeo) are not installed in this environment")
    zipped = encoded.with_name("scene.zip")
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:
        z.write(encoded, "inner/scene.tec")
    vsi = f"/vsizip/{zipped}/inner/scene.tec"
    full, half = encoded.with_name("vsi_full.tif"), encoded.with_name("vsi_half.tif")
    run("gdal_translate", "-q", vsi, full)
    np.testing.assert_array_equal(gtiff_read(full), decoded)
    _, h, w = decoded.shape
    run("gdal_translate", "-q", "-outsize", (w + 1) // 2, (h + 1) // 2, vsi, half)
    np.testing.assert_array_equal(gtiff_read(half), api_overview(encoded, 1))
    # a missing member is GDAL's own clean failure, not a crash
    proc = run("gdal_translate", "-q", f"/vsizip/{zipped}/nope.tec", full.with_name("x.tif"), check=False)
    assert proc.returncode != 0 and "nope.tec" in proc.stderr


def test_gdalwarp_multithreaded_to_other_crs(encoded):
    back = encoded.with_name("back_ref.tif")
    run("gdal_translate", "-q", encoded, back)
    a, b = encoded.with_name("warp_tec.tif"), encoded.with_name("warp_ref.tif")
    for src, dst in ((encoded, a), (back, b)):
        run("gdalwarp", "-q", "-multi", "-wo", "NUM_THREADS=2", "-t_srs", "EPSG:4326", "-r", "near",
            src, dst, GDAL_NUM_THREADS=2)
    assert np.array_equal(gtiff_read(a), gtiff_read(b))


# -- rasterio ------------------------------------------------------------------------------------------------
def test_rasterio_read_window_overview_write(encoded, decoded, tmp_path):
    pytest.importorskip("rasterio")
    arrays = tmp_path / "rio.npz"
    written = tmp_path / "rio_written.tec"
    res = run_python("""
        import sys, json, numpy as np, rasterio
        from rasterio.windows import Window
        src, arrays, written = sys.argv[1:4]
        if rasterio.__gdal_version__.split(".")[:2] != ["3", "6"] and "TEC" not in rasterio.drivers.raster_driver_extensions().values():
            print(json.dumps({"skip": "rasterio " + rasterio.__gdal_version__ + " cannot load the plugin"})); sys.exit()
        with rasterio.open(src) as ds:
            full = ds.read()
            win = ds.read(window=Window(40, 25, ds.width - 60, ds.height - 50))
            meta = dict(driver=ds.driver, crs=ds.crs.to_wkt() if ds.crs else None,
                        transform=list(ds.transform)[:6], nodata=ds.nodata, descriptions=list(ds.descriptions),
                        overviews=ds.overviews(1), block=list(ds.block_shapes[0]))
            profile = ds.profile
        with rasterio.open(src, overview_level=0) as ov:
            ovr = ov.read()
        with rasterio.open(written, "w", driver="TEC", width=full.shape[2], height=full.shape[1],
                           count=full.shape[0], dtype=full.dtype, crs=profile["crs"],
                           transform=profile["transform"], nodata=profile["nodata"], quality=4) as dst:
            dst.descriptions = meta["descriptions"]
            dst.write(full)
        with rasterio.open(written) as ds:
            re = ds.read()
            meta["written"] = dict(driver=ds.driver, crs_same=ds.crs == profile["crs"],
                                   descriptions=list(ds.descriptions), nodata=ds.nodata)
        np.savez(arrays, full=full, win=win, ovr=ovr, re=re)
        print(json.dumps(meta))
    """, encoded, arrays, written)
    if "skip" in res:
        pytest.skip(res["skip"])
    got = np.load(arrays)
    assert res["driver"] == "TEC" and res["block"] == [GEOM["tile"]] * 2 and res["overviews"][:1] == [2]
    assert np.array_equal(got["full"], decoded)
    assert np.array_equal(got["win"], decoded[:, 25:-25, 40:-20])
    assert np.array_equal(got["ovr"], api_overview(encoded, 1))
    w = res["written"]
    assert w["driver"] == "TEC" and w["crs_same"] and w["descriptions"] == res["descriptions"]
    assert w["nodata"] == res["nodata"]
    assert np.array_equal(got["re"], api_read(written))      # rasterio read == Python API, again


# -- osgeo ------------------------------------------------------------------------------------------------------
def test_osgeo_api(encoded, decoded, tmp_path):
    probe = subprocess.run([sys.executable, "-c", "from osgeo import gdal_array"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("osgeo (GDAL Python bindings with gdal_array) not installed in this environment")
    arr_file = tmp_path / "osgeo.npy"
    res = run_python("""
        import sys, json, numpy as np
        from osgeo import gdal
        gdal.UseExceptions()
        src, arr_file, out = sys.argv[1:4]
        ds = gdal.Open(src)
        np.save(arr_file, ds.ReadAsArray())
        drv = gdal.GetDriverByName("TEC")
        meta = dict(createcopy=drv.GetMetadataItem("DCAP_CREATECOPY"), create=drv.GetMetadataItem("DCAP_CREATE"),
                    tec=ds.GetMetadata("TEC"), desc=ds.GetRasterBand(1).GetDescription())
        mem = gdal.GetDriverByName("MEM").Create("", 64, 48, 4, gdal.GDT_UInt16)
        mem.WriteArray((np.arange(4 * 48 * 64) % 3000 + 100).reshape(4, 48, 64).astype("uint16"))
        try:
            gdal.Translate(out, mem, format="TEC", creationOptions=["BANDS=B02,B03,B04,B08", "QUALITY=7"])
            tds = gdal.Open(out)          # keep the dataset alive while using its band (GDAL < 3.8)
            meta["translated"] = tds.GetRasterBand(4).GetDescription()
            tds = None
        except RuntimeError as exc:
            meta["translated"] = "error: " + str(exc)
        ds = None
        print(json.dumps(meta))
    """, encoded, arr_file, tmp_path / "osgeo.tec")
    assert np.array_equal(np.load(arr_file), decoded)
    assert res["createcopy"] == "YES" and res["create"] is None
    assert res["tec"]["QUALITY"] == "6" and res["desc"].startswith("B")
    assert res["translated"] == "B08"


# -- errors -------------------------------------------------------------------------------------------------------
_TILE_1_1 = re.compile(r"tile \(1,1\)|\(row 1, col 1\)")


def _assert_clean_failure(proc, *needles):
    """rc > 0 with an ERROR line holding every needle (a str, or a compiled regex)."""
    assert proc.returncode > 0, f"rc={proc.returncode} (negative = killed by a signal)\n{proc.stderr}"
    assert "ERROR" in proc.stderr
    for n in needles:
        assert (n.search(proc.stderr) if isinstance(n, re.Pattern) else n in proc.stderr), proc.stderr


def _with_stored_payload(data: bytes, index: int, edit) -> bytes:
    """The format 2 file ``data`` with tile ``index``'s stored payload replaced by ``edit(stored)``
    (same length), and its index CRC and the trailer's CRC recomputed: a file whose checksums are
    right but whose payload is not."""
    import struct
    import zlib

    from terracodec.format import ContainerReader, TileEntry

    entries = ContainerReader(data).entries
    hlen, ilen, _ = struct.unpack_from("<III", data, len(data) - 12)
    hoff = len(data) - 12 - ilen - hlen
    e = entries[index]
    stored = edit(data[e.offset:e.offset + e.length])
    assert len(stored) == e.length
    entries[index] = TileEntry(e.offset, e.length, zlib.crc32(stored), e.kind, e.bare)
    index_bytes = b"".join(x.pack2() for x in entries)
    body = data[:e.offset] + stored + data[e.offset + e.length:hoff + hlen] + index_bytes
    lengths = struct.pack("<II", hlen, len(index_bytes))
    return body + lengths + struct.pack("<I", zlib.crc32(body[:13] + body[hoff:] + lengths))


def test_corrupt_truncated_and_foreign_files(encoded, tmp_path):
    from terracodec.format import ContainerReader

    data = encoded.read_bytes()
    trunc = tmp_path / "trunc.tec"
    trunc.write_bytes(data[: len(data) // 2])
    _assert_clean_failure(run("gdalinfo", trunc, check=False), "TEC", "truncated")
    short = tmp_path / "short.tec"
    short.write_bytes(data[:40])
    _assert_clean_failure(run("gdalinfo", short, check=False), "truncated")
    badhdr = tmp_path / "badhdr.tec"
    hlen, ilen = int.from_bytes(data[-12:-8], "little"), int.from_bytes(data[-8:-4], "little")
    b = bytearray(data)
    b[len(data) - 12 - ilen - hlen + 3] ^= 0x55              # a header byte
    badhdr.write_bytes(bytes(b))
    _assert_clean_failure(run("gdalinfo", badhdr, check=False), "CRC")
    foreign = tmp_path / "random.tec"
    foreign.write_bytes(np.random.default_rng(0).bytes(5000))
    _assert_clean_failure(run("gdalinfo", foreign, check=False), "not recognized")
    # a corrupt tile payload: the CRC check names the tile
    e = ContainerReader(data).entries[4]
    b = bytearray(data)
    b[e.offset + e.length // 2] ^= 0xFF
    bad = tmp_path / "badtile.tec"
    bad.write_bytes(bytes(b))
    assert run("gdalinfo", bad).returncode == 0              # metadata still fine
    # overlapping tiles (the writer's default) are read through the Python reader, which names
    # the tile "(row 1, col 1)"; the C++ tile reader (no overlap) says "tile (1,1)" (col,row)
    _assert_clean_failure(run("gdal_translate", bad, tmp_path / "x.tif", check=False), "CRC32",
                          _TILE_1_1)


def test_python_decoder_error_names_the_tile(encoded, tmp_path):
    """A payload whose CRCs are right but which the decoder rejects: the Python exception surfaces."""
    def garble(stored: bytes) -> bytes:            # a bad param byte (kind 1), bad groups (kind 4)
        return bytes([0x0F, stored[1]]) + b"\xff" * 8 + stored[10:]

    bad = tmp_path / "baddecode.tec"
    bad.write_bytes(_with_stored_payload(encoded.read_bytes(), 4, garble))
    proc = run("gdal_translate", bad, tmp_path / "y.tif", check=False)
    _assert_clean_failure(proc, _TILE_1_1, "TecFormatError")


def test_createcopy_rejects_unsupported_input(source, tmp_path):
    f32 = tmp_path / "f32.tif"
    run("gdal_translate", "-q", "-ot", "Float32", source, f32)
    out = tmp_path / "f32.tec"
    proc = run("gdal_translate", "-of", "TEC", f32, out, check=False)
    _assert_clean_failure(proc, "Float32", "not supported")
    assert not list(tmp_path.glob("f32.tec*"))
    # three bands without descriptions: no default band set, so the bands cannot be identified
    nodesc = tmp_path / "nodesc.tif"
    run_python("""
        import sys, json, numpy as np, rasterio
        arr = (np.arange(3 * 40 * 50) % 4000 + 200).reshape(3, 40, 50).astype("uint16")
        with rasterio.open(sys.argv[1], "w", driver="GTiff", width=50, height=40, count=3,
                           dtype="uint16") as d:
            d.write(arr)
        print(json.dumps({}))
    """, nodesc)
    out2 = tmp_path / "nodesc.tec"
    proc = run("gdal_translate", "-of", "TEC", nodesc, out2, check=False)
    _assert_clean_failure(proc, "band")
    assert not list(tmp_path.glob("nodesc.tec*"))
    # ... and BANDS names them
    run("gdal_translate", "-q", "-of", "TEC", "-co", "BANDS=B02,B03,B04", nodesc, out2)
    assert "Description = B04" in run("gdalinfo", out2).stdout


@pytest.mark.parametrize("width, height", [(1100, 20), (20, 800), (300, 17)])
def test_createcopy_default_blocksize_equals_python_default(source, tmp_path, width, height):
    from terracodec import api

    src = tmp_path / f"{width}x{height}.tif"
    run("gdal_translate", "-q", "-outsize", width, height, source, src)
    out = src.with_suffix(".tec")
    run("gdal_translate", "-q", "-of", "TEC", "-co", "MODEL=lossless", src, out)
    assert f"TILE_SIZE={api.default_tile_size(width, height)}" in run("gdalinfo", "-mdd", "TEC", out).stdout
    np.testing.assert_array_equal(api_read(out), gtiff_read(src))


def test_createcopy_with_the_classical_model(source, tmp_path):
    """-co MODEL=classical writes a file that names it, with the Python API's bytes both in process
    and through a worker process. In process, gdal_translate has Debian's libaom and OpenJPEG
    loaded through libgdal; terracodec loads imagecodecs' codec modules with RTLD_DEEPBIND so that
    they call their own copies (with the host's libaom the AV1 10 m groups came out different)."""
    import terracodec as tec

    src = gtiff_read(source)
    outs = {}
    for worker in ("YES", "NO"):
        out = tmp_path / f"c_{worker}.tec"
        run("gdal_translate", "-q", "-of", "TEC", "-co", "MODEL=classical", "-co", "QUALITY=3", source, out,
            TEC_PYTHON_WORKER=worker)
        assert "MODEL=classical" in run("gdalinfo", "-mdd", "TEC", out).stdout
        outs[worker] = out
    with tec.open(outs["YES"]) as ds:
        assert ds.model == "classical" and ds.stats["learned_tiles"] == 0
        # the tiles whose reader needs an AV1 decoder (this crop's 10 m bands are AV1)
        assert ds.stats["av1_tiles"] > 0
        assert f"AV1_TILES={ds.stats['av1_tiles']}" in run("gdalinfo", "-mdd", "TEC", outs["YES"]).stdout
        reference = tec.decode(tec.encode(src, bands=ds.bands, quality=3, model="classical"))
        np.testing.assert_array_equal(ds.read(), reference)
    assert outs["NO"].read_bytes() == outs["YES"].read_bytes()
    back = tmp_path / "back.tif"
    run("gdal_translate", "-q", "-of", "GTiff", outs["NO"], back)
    np.testing.assert_array_equal(gtiff_read(back), reference)


def test_createcopy_num_threads_sets_the_tile_threads(source, tmp_path):
    """-co NUM_THREADS (an integer or ALL_CPUS) is the writer's tile threads: the same file for any
    count; anything else fails cleanly and leaves no file."""
    outs = []
    for value in ("1", "ALL_CPUS", "3"):
        out = tmp_path / f"t{value}.tec"
        run("gdal_translate", "-q", "-of", "TEC", "-co", "MODEL=classical", "-co", "QUALITY=3",
            "-co", "BLOCKSIZE=64", "-co", f"NUM_THREADS={value}", source, out)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    for bad in ("many", "0"):
        proc = run("gdal_translate", "-of", "TEC", "-co", f"NUM_THREADS={bad}", source, tmp_path / "bad.tec",
                   check=False)
        _assert_clean_failure(proc, "NUM_THREADS")
        assert not list(tmp_path.glob("bad.tec*"))


def test_createcopy_effort(source, tmp_path):
    """-co EFFORT=BEST reaches the encoder (through a worker process: the Python API's bytes) and is
    shown as TEC metadata; an unknown effort fails cleanly and leaves no file."""
    import terracodec as tec

    out = tmp_path / "best.tec"
    run("gdal_translate", "-q", "-of", "TEC", "-co", "MODEL=classical", "-co", "QUALITY=3", "-co", "EFFORT=BEST",
        source, out, TEC_PYTHON_WORKER="YES")
    assert "EFFORT=best" in run("gdalinfo", "-mdd", "TEC", out).stdout
    with tec.open(out) as ds:
        assert ds.stats["effort"] == "best"
        src = gtiff_read(source)
        expected = tec.decode(tec.encode(src, bands=ds.bands, quality=3, model="classical", effort="best"))
        np.testing.assert_array_equal(ds.read(), expected)
    proc = run("gdal_translate", "-of", "TEC", "-co", "EFFORT=quick", source, tmp_path / "bad.tec", check=False)
    _assert_clean_failure(proc, "EFFORT")
    fast = tmp_path / "fast.tec"
    run("gdal_translate", "-q", "-of", "TEC", "-co", "MODEL=classical", "-co", "EFFORT=FAST", source, fast)
    assert "EFFORT=fast" in run("gdalinfo", "-mdd", "TEC", fast).stdout
    assert not list(tmp_path.glob("bad.tec*"))


# -- QGIS (headless PyQGIS under Debian's python3, the plugin attached to QGIS' interpreter) --------------
QGIS_PYTHON = "/usr/bin/python3"


def test_qgis_layer_stats_and_render(encoded, decoded, tmp_path):
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("PyQGIS not installed (apt-get install python3-qgis qgis-providers)")
    png = Path(os.environ.get("TEC_QGIS_PNG", tmp_path / "qgis_render.png"))
    script = textwrap.dedent("""
        import sys, json
        from qgis.core import (QgsApplication, QgsRasterLayer, QgsMapSettings, QgsRasterBandStats,
                               QgsMapRendererSequentialJob, QgsMultiBandColorRenderer, QgsContrastEnhancement)
        from qgis.PyQt.QtCore import QSize
        app = QgsApplication([], False)
        app.initQgis()
        path, png = sys.argv[1:3]
        lyr = QgsRasterLayer(path, "tec", "gdal")
        res = dict(valid=lyr.isValid(), bands=lyr.bandCount(), crs=lyr.crs().authid(), w=lyr.width(),
                   h=lyr.height(), stats=[])
        prov = lyr.dataProvider()
        for b in range(1, lyr.bandCount() + 1):
            s = prov.bandStatistics(b, QgsRasterBandStats.All)
            res["stats"].append([s.minimumValue, s.maximumValue, s.mean, s.elementCount])
        names = [prov.generateBandName(b) for b in range(1, lyr.bandCount() + 1)]
        rgb = [next((i + 1 for i, n in enumerate(names) if want in n), k) for k, want in ((1, "B04"), (2, "B03"), (3, "B02"))]
        ren = QgsMultiBandColorRenderer(prov, *rgb)
        for setter, band in ((ren.setRedContrastEnhancement, rgb[0]), (ren.setGreenContrastEnhancement, rgb[1]),
                             (ren.setBlueContrastEnhancement, rgb[2])):
            ce = QgsContrastEnhancement(prov.dataType(band))
            ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
            ce.setMinimumValue(0)
            ce.setMaximumValue(2500)
            setter(ce)
        lyr.setRenderer(ren)
        ms = QgsMapSettings()
        ms.setLayers([lyr])
        ms.setDestinationCrs(lyr.crs())
        ms.setExtent(lyr.extent())
        ms.setOutputSize(QSize(lyr.width(), lyr.height()))
        job = QgsMapRendererSequentialJob(ms)
        job.start()
        job.waitForFinished()
        img = job.renderedImage()
        img.save(png)
        colors = {img.pixel(x, y) for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)}
        res["colors"] = len(colors)
        print(json.dumps(res), flush=True)
        del img, job, ms, ren, prov, lyr
        app.exitQgis()
    """)
    proc = run(QGIS_PYTHON, "-c", script, encoded, png, QT_QPA_PLATFORM="offscreen")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["valid"] and res["bands"] == decoded.shape[0]
    assert (res["w"], res["h"]) == (decoded.shape[2], decoded.shape[1])
    info = json.loads(run("gdalinfo", "-json", encoded).stdout)
    epsg = re.findall(r'ID\["EPSG",(\d+)\]', info["coordinateSystem"]["wkt"])[-1]
    assert res["crs"] == f"EPSG:{epsg}"
    nodata = info["bands"][0].get("noDataValue")
    # QGIS skips blocks whose read failed (logging only): a pixel count short of the valid pixels means
    # tiles failed to decode in QGIS' interpreter (e.g. the host's site-packages shadowing the venv's).
    assert "IReadBlock failed" not in proc.stderr, proc.stderr[-2000:]
    for b, (mn, mx, mean, count) in enumerate(res["stats"]):
        band = decoded[b].astype(np.float64)
        valid = band[band != nodata] if nodata is not None else band.ravel()
        assert count == valid.size
        assert (mn, mx) == (valid.min(), valid.max())
        assert mean == pytest.approx(valid.mean(), rel=1e-9)
    assert png.exists() and res["colors"] > 50               # a real scene, not a blank image
