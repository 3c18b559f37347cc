# SPDX-License-Identifier: Apache-2.0
"""The ``tec`` command line: compress/decompress keep georeferencing, bands, nodata and tags; info;
models; pass-through commands; one-line errors with exit status 1."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA, LOSSLESS, TEST_MODEL, assert_decoded_matches, read_tif

from terracodec import open as tec_open
from terracodec.cli import cli

TEC = Path(sys.executable).with_name("tec")


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def model_args():
    return ["--model", TEST_MODEL] if TEST_MODEL else []


@pytest.fixture(scope="module")
def nodata_pair(tmp_path_factory):
    """sref_10band_nodata_rsgislib.tif compressed and decompressed with the CLI."""
    tmp = tmp_path_factory.mktemp("cli")
    src = DATA / "sref_10band_nodata_rsgislib.tif"
    run("compress", src, tmp / "a.tec", "-q", "5", "--tile-size", "48", "--no-progress", *model_args())
    run("decompress", tmp / "a.tec", tmp / "b.tif", "--no-progress")
    return src, tmp / "a.tec", tmp / "b.tif"


def test_compress_decompress_keeps_georeferencing(nodata_pair):
    src, tec_path, out = nodata_pair
    a, ma = read_tif(src)
    b, mb = read_tif(out)
    assert mb["crs"] == ma["crs"] and mb["crs"] is not None
    assert mb["transform"] == ma["transform"]
    assert mb["bands"] == ma["bands"] == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    assert mb["nodata"] == ma["nodata"] == 0
    assert mb["tags"]["ACQUISITION_DATE"] == ma["tags"]["ACQUISITION_DATE"]
    assert mb["tags"]["SOURCE"] == ma["tags"]["SOURCE"]
    assert_decoded_matches(b, a, 0)


def test_compress_streams_the_same_bytes_as_the_api(nodata_pair, tmp_path):
    """tec compress reads the GeoTIFF strip by strip (never whole): same file as terracodec.write."""
    import terracodec
    from terracodec.geotiff import read_geotiff

    src, tec_path, _ = nodata_pair
    array, meta = read_geotiff(src)
    whole = tmp_path / "whole.tec"
    terracodec.write(whole, array, meta["bands"], quality=5, model=TEST_MODEL, nodata=meta["nodata"],
                     tile_size=48, crs_wkt=meta["crs_wkt"], geotransform=meta["geotransform"],
                     metadata=meta["tags"], date=meta["tags"]["ACQUISITION_DATE"])
    assert tec_path.read_bytes() == whole.read_bytes()


def test_compress_out_dir_writes_each_file_and_reports_the_ones_that_fail(nodata_pair, tmp_path):
    """tec compress --out-dir: every GeoTIFF in one process, each file the same as a single compress;
    a file that fails is named, leaves nothing, and the others are still written (exit status 1)."""
    src, tec_path, _ = nodata_pair
    bad = tmp_path / "in" / "broken.tif"
    bad.parent.mkdir()
    bad.write_bytes(b"II*\x00 not really a tiff")
    out = tmp_path / "out"
    r = run("compress", "--out-dir", out, src, bad, DATA / "l2a_4band_openeo.tif", "-q", "5", "--tile-size", "48",
            "--no-progress", *model_args(), ok=False)
    assert r.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["l2a_4band_openeo.tec", "sref_10band_nodata_rsgislib.tec"]
    assert (out / "sref_10band_nodata_rsgislib.tec").read_bytes() == tec_path.read_bytes()
    assert f"tec: error: {bad}:" in r.output and "2 of 3 files compressed" in r.output
    single = tmp_path / "single.tec"
    run("compress", DATA / "l2a_4band_openeo.tif", single, "-q", "5", "--tile-size", "48", "--no-progress",
        *model_args())
    assert (out / "l2a_4band_openeo.tec").read_bytes() == single.read_bytes()
    # two inputs with one name would overwrite each other: refused before anything is written
    r = run("compress", "--out-dir", tmp_path / "o2", src, tmp_path / "x" / src.name, ok=False)
    assert r.exit_code == 2 and "would both be written" in r.output and not (tmp_path / "o2").exists()
    r = run("compress", "--out-dir", tmp_path / "o3", "--stack", src, src, ok=False)
    assert r.exit_code == 2 and "--out-dir and --stack" in r.output


def test_compress_workers_sets_the_writers_tile_threads(nodata_pair, tmp_path, monkeypatch):
    """--workers N reaches the writer (tiles coded in N threads), with the same file for any N."""
    from terracodec import api

    src, tec_path, _ = nodata_pair
    seen, real = [], api.Writer.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        seen.append(self.workers)

    monkeypatch.setattr(api.Writer, "__init__", spy)
    for n in (1, 3):
        run("compress", src, tmp_path / f"w{n}.tec", "-q", "5", "--tile-size", "48", "--no-progress",
            "--workers", n, *model_args())
        assert (tmp_path / f"w{n}.tec").read_bytes() == tec_path.read_bytes()
    assert seen == [1, 3]
    assert run("compress", src, tmp_path / "w0.tec", "--workers", "0", ok=False).exit_code == 2


def test_decompress_overview_level_is_a_quicklook_of_the_same_extent(nodata_pair, tmp_path):
    import terracodec

    src, tec_path, _ = nodata_pair
    run("decompress", tec_path, tmp_path / "q.tif", "--level", "2", "--no-progress")
    q, mq = read_tif(tmp_path / "q.tif")
    _, ma = read_tif(src)
    np.testing.assert_array_equal(q, terracodec.open(tec_path).read(level=2))
    assert q.shape == (10, 18, 23)                      # ceil(72 / 4), ceil(90 / 4)
    ta, tq = ma["transform"], mq["transform"]
    assert (tq.c, tq.f) == (ta.c, ta.f) and mq["crs"] == ma["crs"] and mq["bands"] == ma["bands"]
    # the quicklook covers the same ground: 90 pixels of ta.a = 23 pixels of tq.a
    assert tq.a * 23 == pytest.approx(ta.a * 90) and tq.e * 18 == pytest.approx(ta.e * 72)
    assert "LEVEL" in run("decompress", "--help").output.upper()


@pytest.mark.parametrize("level", [0, 1])
def test_decompress_writes_strip_by_strip_with_the_same_pixels(tmp_path, monkeypatch, level):
    """tec decompress decodes and writes the raster in strips of whole GeoTIFF blocks (never the
    whole raster at once); strips that cut through tile seams give the pixels of a full read."""
    import terracodec
    from terracodec import api

    src = DATA / "sref_10band_nodata_rsgislib.tif"
    run("compress", src, tmp_path / "s.tec", "-q", "4", "--tile-size", "16", "--no-progress", *model_args())
    windows = []
    real_read = api.TecDataset.read
    monkeypatch.setattr(api.TecDataset, "read", lambda self, window=None, **kw: windows.append(window)
                        or real_read(self, window, **kw))
    run("decompress", tmp_path / "s.tec", tmp_path / "s.tif", "--level", level, "--no-progress")
    monkeypatch.undo()
    out, meta = read_tif(tmp_path / "s.tif")
    with terracodec.open(tmp_path / "s.tec") as ds:
        np.testing.assert_array_equal(out, ds.read(level=level))
        height, width = ds.level_shape(level)
    assert len(windows) >= 2 and all(w[1] == (0, width) for w in windows)
    rows = [w[0] for w in windows]
    assert rows[0][0] == 0 and rows[-1][1] == height and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert meta["bands"] == read_tif(src)[1]["bands"]


def test_decompressed_geotiff_is_tiled_deflate(nodata_pair):
    import rasterio

    with rasterio.open(nodata_pair[2]) as ds:
        assert ds.profile["compress"].lower() == "deflate"
        assert ds.profile.get("tiled") is True


def test_info_json(nodata_pair):
    src, tec_path, _ = nodata_pair
    d = json.loads(run("info", "--json", tec_path).output)
    assert d["shape"] == [10, 72, 90] and (d["count"], d["height"], d["width"]) == (10, 72, 90)
    assert d["dtype"] == "int16" and d["nodata"] == 0
    assert d["bands"][0] == "B02" and len(d["bands"]) == 10
    assert d["crs"] == "EPSG:32737" and d["crs_wkt"].startswith(("PROJCS", "PROJCRS"))
    assert d["geotransform"] == list(read_tif(src)[1]["geotransform"])
    assert d["quality"] == 5 and d["tile_size"] == 48
    assert (d["tiles_x"], d["tiles_y"], d["tiles"]) == (2, 2, 4)
    assert isinstance(d["fallback_tiles"], int) and 0 <= d["fallback_tiles"] <= 4
    assert d["compression_ratio"] == pytest.approx(10 * 72 * 90 * 2 / d["size_bytes"], rel=1e-3)
    assert d["size_bytes"] == tec_path.stat().st_size
    assert d["model"]["name"] == (TEST_MODEL or __import__("terracodec.weights").weights.default_model())
    assert d["dates"] == ["2016-07-20"]
    assert d["stats"]["fallback_tiles"] == d["fallback_tiles"]


def test_info_text(nodata_pair):
    out = run("info", nodata_pair[1]).output
    for key in ("shape:", "bands:", "crs:", "model:", "quality:", "tiles:", "classical", "learned", "overlap", "ratio"):
        assert key in out
    assert "EPSG:32737" in out and "2 x 2 of 48 px" in out


@pytest.mark.parametrize("name", ["l2a_12band_bigearthnet.tif", "l1c_13band_eurosat.tif",
                                  "l2a_4band_openeo.tif", "l1c_13band_cloudy_s2cloudless.tif"])
def test_round_trip_files(name, tmp_path):
    src = DATA / name
    run("compress", src, tmp_path / "x.tec", "--model", "lossless")
    run("decompress", tmp_path / "x.tec", tmp_path / "x.tif")
    a, ma = read_tif(src)
    b, mb = read_tif(tmp_path / "x.tif")
    np.testing.assert_array_equal(b, a)                    # noted: lossless model
    assert (mb["crs"], mb["transform"], mb["bands"]) == (ma["crs"], ma["transform"], ma["bands"])


def test_bands_override_for_undescribed_file(tmp_path):
    import rasterio

    a, m = read_tif(DATA / "l2a_4band_openeo.tif")
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=4,
                       dtype="int16", crs=m["crs"], transform=m["transform"]) as dst:
        dst.write(a)
    r = run("compress", plain, tmp_path / "p.tec", ok=False)
    assert r.exit_code == 1
    assert r.output.startswith("tec: error:") and "--bands" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "p.tec").exists()
    run("compress", plain, tmp_path / "p.tec", "--bands", "B2,B3,B4,B8", "--model", "lossless")
    d = json.loads(run("info", "--json", tmp_path / "p.tec").output)
    assert d["bands"] == ["B02", "B03", "B04", "B08"]
    r = run("compress", plain, tmp_path / "q.tec", "--bands", "B02,B03,B04,B99", ok=False)
    assert r.exit_code == 1 and "B99" in r.output


def test_errors_are_one_line(tmp_path):
    r = run("compress", tmp_path / "missing.tif", tmp_path / "o.tec", ok=False)
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and r.output.startswith("tec: error:")
    bad = tmp_path / "bad.tec"
    bad.write_bytes(b"\x89TEC\r\n\x1a\n" + bytes(20))
    for cmd in (["info", bad], ["decompress", bad, tmp_path / "o.tif"]):
        r = run(*cmd, ok=False)
        assert r.exit_code == 1 and "truncated" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.tif").exists()
    r = run("compress", DATA / "l2a_4band_openeo.tif", tmp_path / "o.tec", "-q", "9", ok=False)
    assert r.exit_code == 2                                 # click usage error
    r = run("compress", DATA / "l2a_4band_openeo.tif", tmp_path / "o.tec", "--model", "nope", ok=False)
    assert r.exit_code == 1 and "unknown model" in r.output


def test_float_geotiff_is_refused(tmp_path):
    import rasterio

    a, m = read_tif(DATA / "l2a_4band_openeo.tif")
    f = tmp_path / "float.tif"
    with rasterio.open(f, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=4,
                       dtype="float32", nodata=float("nan")) as dst:
        x = a.astype(np.float32) / 10000
        x[:, :3, :3] = np.nan
        dst.write(x)
        for i, b in enumerate(m["bands"], 1):
            dst.set_band_description(i, b)
    r = run("compress", f, tmp_path / "f.tec", ok=False)
    assert r.exit_code == 1 and "float32" in r.output and "NaN" in r.output
    assert not (tmp_path / "f.tec").exists()


def test_verbose_shows_traceback(tmp_path):
    bad = tmp_path / "bad.tec"
    bad.write_bytes(b"not a tec file at all, just some bytes to be long enough for a prefix" * 2)
    r = CliRunner().invoke(cli, ["-v", "info", str(bad)])
    assert r.exit_code == 1 and "Traceback" in r.output and "tec: error:" in r.output


@pytest.mark.skipif(not TEC.exists(), reason="console script tec not installed (pip install -e .)")
def test_console_script_exit_status(tmp_path):
    p = subprocess.run([str(TEC), "info", str(tmp_path / "nope.tec")], capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.strip().startswith("tec: error:") and "Traceback" not in p.stderr
    assert p.stdout == ""


def test_models():
    try:
        from terracodec.weights import list_models

        expected = [m["name"] for m in list_models()]
    except Exception as exc:
        pytest.skip(f"no model registry: {exc}")
    d = json.loads(run("models", "--json").output)
    assert [m["name"] for m in d] == expected
    assert sum(bool(m.get("default")) for m in d) == 1
    text = run("models").output
    assert all(name in text for name in expected) and "lossless" in text


def test_train_passes_arguments_through():
    r = run("train", "--help")
    assert "usage: tec train" in r.output


def test_bench_passes_arguments_through(monkeypatch):
    import types

    seen = {}
    fake = types.ModuleType("terracodec.bench")
    fake.main = lambda args: seen.setdefault("args", args) and 0
    monkeypatch.setitem(sys.modules, "terracodec.bench", fake)
    run("bench", "--quality", "3", "--out", "x", "extra")
    assert seen["args"] == ["--quality", "3", "--out", "x", "extra"]


def test_bench_temporal_runs_the_time_series_benchmark():
    r = run("bench", "--temporal", "--help")
    assert "usage: tec bench --temporal" in r.output and "--seasonal" in r.output


@pytest.mark.skipif(LOSSLESS, reason="needs a learned model")
def test_compress_learned_default_reports(tmp_path):
    r = run("compress", DATA / "l2a_4band_openeo.tif", tmp_path / "d.tec", "-q", "3")
    assert "ratio" in r.output and "bits/pixel/band" in r.output
    with tec_open(tmp_path / "d.tec") as ds:          # the tile counts of the header
        assert (f"tiles: {ds.stats['learned_tiles']} learned, {ds.fallback_tiles} classical, "
                f"{ds.stats['lossless_tiles']} lossless") in r.output
    a, _ = read_tif(DATA / "l2a_4band_openeo.tif")
    out = tmp_path / "d.tif"
    run("decompress", tmp_path / "d.tec", out)
    b, _ = read_tif(out)
    assert_decoded_matches(b, a)
