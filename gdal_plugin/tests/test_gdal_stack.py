# SPDX-License-Identifier: Apache-2.0
"""GDAL driver `TEC` and time stacks: subdatasets (listing, by date, by index, DATE metadata, bad
dates), rasterio, `gdal_translate -co TEMPORAL=YES`, images with overlapping tiles, and `tec vrt`
read by the system GDAL without the plugin.

The stack is built from the real crop tests/data/l2a_4band_openeo.tif (see tests/data/PROVENANCE.md):
date 1 is the crop, date 2 the crop shifted by one column, date 3 the crop 4 % brighter, so that
the temporal model finds something to predict. Every GDAL/rasterio/osgeo call runs in a
subprocess (helpers from test_gdal_driver.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from test_gdal_driver import PLUGIN_DIR, REPO, _assert_clean_failure, gtiff_read, run, run_python

CROP = REPO / "tests" / "data" / "l2a_4band_openeo.tif"
DATES = ["2023-10-22", "2023-10-27", "2023-11-01"]
TILE = 32

pytestmark = [
    pytest.mark.skipif(shutil.which("gdalinfo") is None or shutil.which("gdal_translate") is None,
                       reason="GDAL command line tools (gdal-bin) not installed"),
    pytest.mark.skipif(not (PLUGIN_DIR / "gdal_TEC.so").exists(),
                       reason=f"TEC plugin not built: run `make -C gdal_plugin install` ({PLUGIN_DIR})"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]


def api_read(path, date=None) -> np.ndarray:
    import terracodec

    with terracodec.open(str(path)) as ds:
        return np.asarray(ds.read(date=date))


def sub(path, spec) -> str:
    return f'TEC:"{path}":{spec}'


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three dated GeoTIFFs of one grid (4 bands, 52 x 46), their stack and georeferencing."""
    if not CROP.exists():
        pytest.skip(f"{CROP} missing")
    d = tmp_path_factory.mktemp("tec_stack")
    meta = run_python("""
        import sys, json, numpy as np, rasterio
        src, out = sys.argv[1:3]
        with rasterio.open(src) as s:
            a, profile, desc = s.read(), s.profile, list(s.descriptions)
            meta = dict(crs=s.crs.to_wkt(), gt=list(s.transform.to_gdal()), bands=desc)
        dates = [a, np.roll(a, 1, axis=2), np.clip(a * 1.04, 1, 20000).astype(a.dtype)]
        profile.update(driver="GTiff", compress="deflate", nodata=0)
        for i, arr in enumerate(dates):
            with rasterio.open(f"{out}/d{i}.tif", "w", **profile) as dst:
                dst.write(arr)
                dst.descriptions = desc
        np.save(f"{out}/stack.npy", np.stack(dates))
        print(json.dumps(meta))
    """, CROP, d)
    meta["dir"] = d
    meta["stack"] = np.load(d / "stack.npy")
    return meta


def write_vrt(series, path: Path, names_per_date=None, dates=DATES) -> Path:
    """A VRT stacking the dated GeoTIFFs: bands date by date, each with DATE metadata and an S2 name."""
    t, b, h, w = series["stack"].shape
    bands, n = [], 0
    for i, date in enumerate(dates):
        names = (names_per_date or {}).get(i, series["bands"])
        for k in range(b):
            n += 1
            mdi = f'<Metadata><MDI key="DATE">{date}</MDI></Metadata>' if date else ""
            bands.append(f"""  <VRTRasterBand dataType="Int16" band="{n}">
    <Description>{names[k]}</Description><NoDataValue>0</NoDataValue>{mdi}
    <SimpleSource><SourceFilename relativeToVRT="0">{series['dir'] / f'd{i}.tif'}</SourceFilename>
      <SourceBand>{k + 1}</SourceBand></SimpleSource>
  </VRTRasterBand>""")
    path.write_text(f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">\n'
                    f'  <SRS>{series["crs"].replace("&", "&amp;").replace("<", "&lt;")}</SRS>\n'
                    f'  <GeoTransform>{", ".join(map(repr, series["gt"]))}</GeoTransform>\n'
                    + "\n".join(bands) + "\n</VRTDataset>\n")
    return path


@pytest.fixture(scope="module")
def lossless_stack(series) -> Path:
    """The stack written by the Python API (exact tiles: fast), nodata 0."""
    import terracodec

    path = series["dir"] / "lossless.tec"
    terracodec.write(path, series["stack"], series["bands"], model="lossless", nodata=0, tile_size=TILE,
                     crs_wkt=series["crs"], geotransform=series["gt"], dates=DATES)
    return path


@pytest.fixture(scope="module")
def tt_stack(series) -> Path:
    """gdal_translate -of TEC -co TEMPORAL=YES (TEC-TT, quality 3) from the dated VRT."""
    vrt = write_vrt(series, series["dir"] / "stack.vrt")
    out = series["dir"] / "tt.tec"
    run("gdal_translate", "-q", "-of", "TEC", "-co", "TEMPORAL=YES", "-co", "QUALITY=3",
        "-co", f"BLOCKSIZE={TILE}", vrt, out)
    return out


@pytest.fixture(scope="module")
def tt_learned_stack(series) -> Path:
    """The stack written by the Python API with TEC-TT and no classical fallback, so that it holds
    temporal (kind 3) tiles: on this small crop the classical code is cheaper than the network's,
    and the encoder's own choice keeps no kind 3 tile."""
    from terracodec import stack as tec_stack

    path = series["dir"] / "tt_learned.tec"
    tec_stack.write_stack(path, series["stack"], series["bands"], quality=3, model="tec-tt-v1", nodata=0,
                          dates=DATES, tile_size=TILE, crs_wkt=series["crs"], geotransform=series["gt"],
                          classical=False)
    return path


# -- subdatasets ----------------------------------------------------------------------------------
def test_creation_options_list_temporal():
    fmt = run("gdalinfo", "--format", "TEC").stdout
    assert 'name="TEMPORAL"' in fmt and 'name="KEYFRAME_INTERVAL"' in fmt


def test_stack_lists_subdatasets_without_bands_or_python(series, lossless_stack):
    proc = run("gdalinfo", "-json", "-mdd", "all", lossless_stack, CPL_DEBUG="TEC")
    assert "Python" not in proc.stderr, proc.stderr          # header parsed in C++ only
    info = json.loads(proc.stdout)
    assert info["bands"] == []
    sds = info["metadata"]["SUBDATASETS"]
    assert len(sds) == 2 * len(DATES)
    for i, date in enumerate(DATES, start=1):
        assert sds[f"SUBDATASET_{i}_NAME"] == sub(lossless_stack, date)
        desc = sds[f"SUBDATASET_{i}_DESC"]
        assert date in desc and "46x52" in desc and "4 bands" in desc and "B02,B03,B04,B08" in desc
    assert info["metadata"]["TEC"]["DATES"] == "3"
    # gdal_translate of the stack itself points to the subdatasets
    proc = run("gdal_translate", lossless_stack, series["dir"] / "whole.tif", check=False)
    assert proc.returncode != 0 and "subdatasets" in proc.stderr.lower()


def test_open_subdataset_by_date_and_index(series, lossless_stack):
    for spec, d in (("2023-10-27", 1), ("2", 2), ("0", 0)):
        info = json.loads(run("gdalinfo", "-json", "-mdd", "all", sub(lossless_stack, spec)).stdout)
        assert info["size"] == [46, 52]
        assert info["geoTransform"] == pytest.approx(series["gt"])
        assert 'ID["EPSG",32631]' in info["coordinateSystem"]["wkt"]
        assert info["metadata"][""]["DATE"] == DATES[d]
        assert info["metadata"]["TEC"]["DATE_INDEX"] == str(d)
        assert [b["description"] for b in info["bands"]] == series["bands"]
        assert all(b["noDataValue"] == 0 for b in info["bands"])
        assert all(b["metadata"][""]["DATE"] == DATES[d] for b in info["bands"])
        out = series["dir"] / f"date_{spec}.tif"
        run("gdal_translate", "-q", sub(lossless_stack, spec), out)
        got = gtiff_read(out)
        assert np.array_equal(got, api_read(lossless_stack, DATES[d]))
        assert np.array_equal(got, series["stack"][d])           # lossless: the source itself


def test_bad_subdataset_names_fail_clearly(lossless_stack):
    for spec in ("2023-10-23", "3"):
        proc = run("gdalinfo", sub(lossless_stack, spec), check=False)
        _assert_clean_failure(proc, f"date '{spec}' is not in this file", "2023-10-22, 2023-10-27, 2023-11-01")
    proc = run("gdalinfo", 'TEC:"/nonexistent/x.tec":2023-10-22', check=False)
    _assert_clean_failure(proc, "/nonexistent/x.tec")


def test_date_times_and_undated_dates(series, tmp_path):
    """Dates with ':' (date-times) in unquoted names, an undated date named by its index, and a day
    that matches two date-times (ambiguous: fails)."""
    import terracodec

    path = tmp_path / "times.tec"
    dates = [None, "2023-10-27T10:30:00", "2023-10-27T11:00:00"]
    terracodec.write(path, series["stack"], series["bands"], model="lossless", tile_size=TILE, dates=dates)
    info = json.loads(run("gdalinfo", "-json", path).stdout)
    names = [info["metadata"]["SUBDATASETS"][f"SUBDATASET_{i}_NAME"] for i in (1, 2, 3)]
    assert names == [sub(path, 0), sub(path, dates[1]), sub(path, dates[2])]
    for i, spec in ((2, dates[2]), (0, "0")):
        info = json.loads(run("gdalinfo", "-json", f"TEC:{path}:{spec}").stdout)   # unquoted
        assert info["metadata"].get("", {}).get("DATE") == dates[i]
        out = tmp_path / f"t{i}.tif"
        run("gdal_translate", "-q", f"TEC:{path}:{spec}", out)
        assert np.array_equal(gtiff_read(out), series["stack"][i])
    _assert_clean_failure(run("gdalinfo", sub(path, "2023-10-27"), check=False), "matches 2 date-times")


def test_single_date_file_unchanged(series, tmp_path):
    """One date: bands on the file itself, no SUBDATASETS, no DATE (as before); TEC:"x":0 works too.
    Written with the default tile overlap, so blocks are cross-faded through the Python reader."""
    import terracodec

    path = tmp_path / "one.tec"
    terracodec.write(path, series["stack"][0], series["bands"], model="lossless", tile_size=TILE,
                     crs_wkt=series["crs"], geotransform=series["gt"], date=DATES[0])
    with terracodec.open(path) as ds:
        assert ds.tile_overlap > 0
    info = json.loads(run("gdalinfo", "-json", path).stdout)
    assert len(info["bands"]) == 4 and "SUBDATASETS" not in info.get("metadata", {})
    assert "DATE" not in info.get("metadata", {}).get("", {})
    out = tmp_path / "one.tif"
    run("gdal_translate", "-q", path, out)
    assert np.array_equal(gtiff_read(out), series["stack"][0])
    info = json.loads(run("gdalinfo", "-json", sub(path, 0)).stdout)
    assert info["metadata"][""]["DATE"] == DATES[0] and len(info["bands"]) == 4


# -- rasterio ---------------------------------------------------------------------------------------
def test_rasterio_reads_each_subdataset(series, tt_learned_stack, tmp_path):
    import terracodec

    pytest.importorskip("rasterio")
    tt_stack = tt_learned_stack
    with terracodec.open(tt_stack) as ds:
        assert ds.stats["temporal_tiles"] >= 1, ds.stats           # kind 3 tiles read through GDAL
    arrays = tmp_path / "rio.npz"
    res = run_python("""
        import sys, json, numpy as np, rasterio
        path, arrays = sys.argv[1:3]
        with rasterio.open(path) as ds:
            out = dict(count=ds.count, subdatasets=ds.subdatasets)
        got, tags = {}, {}
        for i, name in enumerate(out["subdatasets"]):
            with rasterio.open(name) as ds:
                got[f"d{i}"] = ds.read()
                tags[name] = dict(ds=ds.tags(), band=ds.tags(1), desc=list(ds.descriptions), nodata=ds.nodata)
        with rasterio.open('TEC:"%s":1' % path) as ds:          # by 0-based index
            got["index1"] = ds.read()
        np.savez(arrays, **got)
        out["tags"] = tags
        print(json.dumps(out))
    """, tt_stack, arrays)
    assert res["count"] == 0 and len(res["subdatasets"]) == 3
    assert all(DATES[i] in name for i, name in enumerate(res["subdatasets"]))
    got = np.load(arrays)
    for i, date in enumerate(DATES):
        ref = api_read(tt_stack, date)
        assert np.array_equal(got[f"d{i}"], ref), date        # bit-exact with terracodec.open().read()
        t = res["tags"][res["subdatasets"][i]]
        assert t["ds"]["DATE"] == date and t["band"]["DATE"] == date
        assert t["desc"] == series["bands"] and t["nodata"] == 0
    assert np.array_equal(got["index1"], api_read(tt_stack, DATES[1]))


# -- writing a stack ----------------------------------------------------------------------------------
def psnr10000(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(10000.0 ** 2 / mse) if mse else float("inf")


def test_temporal_createcopy_roundtrip(series, tt_stack):
    import terracodec
    from terracodec import stack as tec_stack

    with terracodec.open(tt_stack) as ds:
        assert ds.dates == DATES and list(ds.bands) == series["bands"] and ds.nodata == 0
        assert tec_stack.is_temporal_model(ds.model), ds.model     # TEC-TT
        assert ds.crs and ds.transform == pytest.approx(series["gt"])
        # every tile of every date is accounted for (on this crop the encoder keeps the cheaper
        # classical or predicted code; kind 3 tiles through GDAL: test_rasterio_reads_each_subdataset)
        kinds = ("fallback_tiles", "lossless_tiles", "learned_tiles", "temporal_tiles", "predicted_tiles")
        assert sum(ds.stats[k] for k in kinds) == len(DATES) * 4, ds.stats
        for i, date in enumerate(DATES):
            assert psnr10000(ds.read(date=date), series["stack"][i]) > 30
    info = json.loads(run("gdalinfo", "-json", tt_stack).stdout)
    names = [v for k, v in info["metadata"]["SUBDATASETS"].items() if k.endswith("_NAME")]
    assert names == [sub(tt_stack, d) for d in DATES]


def test_temporal_createcopy_lossless_is_exact(series):
    import terracodec

    vrt = write_vrt(series, series["dir"] / "stack_ll.vrt")
    out = series["dir"] / "ll.tec"
    run("gdal_translate", "-q", "-of", "TEC", "-co", "TEMPORAL=YES", "-co", "MODEL=lossless",
        "-co", f"BLOCKSIZE={TILE}", vrt, out)
    with terracodec.open(out) as ds:
        assert ds.dates == DATES and list(ds.bands) == series["bands"] and ds.nodata == 0
        for i, date in enumerate(DATES):
            assert np.array_equal(ds.read(date=date), series["stack"][i])


def test_temporal_createcopy_with_effort(series):
    """-co EFFORT=BEST reaches the stack writer too: recorded in the header and shown by gdalinfo."""
    import terracodec

    vrt = write_vrt(series, series["dir"] / "stack_best.vrt")
    out = series["dir"] / "best.tec"
    run("gdal_translate", "-q", "-of", "TEC", "-co", "TEMPORAL=YES", "-co", "MODEL=classical", "-co", "QUALITY=3",
        "-co", "EFFORT=BEST", "-co", f"BLOCKSIZE={TILE}", vrt, out)
    with terracodec.open(out) as ds:
        assert ds.dates == DATES and ds.stats["effort"] == "best"
        for i, date in enumerate(DATES):
            assert psnr10000(ds.read(date=date), series["stack"][i]) > 30
    assert "EFFORT=best" in run("gdalinfo", "-mdd", "TEC", out).stdout


def test_temporal_createcopy_rejects_bad_band_groups(series, tmp_path):
    cases = {
        "mismatch": (dict(names_per_date={2: ["B02", "B03", "B04", "B8A"]}), ("same bands", "B8A", "2023-11-01")),
        "nodate": (dict(dates=DATES[:2] + [""]), ("band 9 has no metadata item DATE",)),
        "split": (dict(dates=[DATES[0], DATES[1], DATES[0]]), ("not consecutive",)),
    }
    for name, (kw, needles) in cases.items():
        vrt = write_vrt(series, tmp_path / f"{name}.vrt", **kw)
        out = tmp_path / f"{name}.tec"
        proc = run("gdal_translate", "-of", "TEC", "-co", "TEMPORAL=YES", "-co", "MODEL=lossless", vrt, out,
                   check=False)
        _assert_clean_failure(proc, "TEMPORAL=YES", *needles)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith((f"{name}.tec", f".{name}.tec"))]


# -- tec vrt: the system GDAL without the plugin ---------------------------------------------------------
def _no_plugin_env(tmp_path, **extra) -> dict:
    env = dict(os.environ)
    empty = tmp_path / "no_plugins"
    empty.mkdir(exist_ok=True)
    env["GDAL_DRIVER_PATH"] = str(empty)                   # the TEC plugin cannot be found
    env.pop("CPL_DEBUG", None)
    env.update(extra)
    return env


def test_tec_vrt_read_by_gdal_without_plugin(series, lossless_stack, tmp_path):
    import terracodec

    probe = subprocess.run([sys.executable, "-c", "from osgeo import gdal_array"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("osgeo (GDAL Python bindings with gdal_array) not installed in this environment")
    tec = [sys.executable, "-m", "terracodec.cli"]
    # a learned single image (low quality, overlapping tiles) and one date of the stack
    image = tmp_path / "image.tec"
    terracodec.write(image, series["stack"][1], series["bands"], quality=1, tile_size=TILE,
                     crs_wkt=series["crs"], geotransform=series["gt"])
    cases = [(image, None, []), (lossless_stack, DATES[2], ["--date", DATES[2]])]
    for path, date, opts in cases:
        vrt = tmp_path / f"{path.stem}.vrt"
        proc = subprocess.run(tec + ["vrt", str(path)] + opts, capture_output=True, text=True, check=True)
        vrt.write_text(proc.stdout)
        ref = api_read(path, date)
        # osgeo in a fresh interpreter of this environment (GDAL uses it for the pixel function)
        arr_file = tmp_path / f"{path.stem}_osgeo.npz"
        code = """
            import sys, json, numpy as np
            from osgeo import gdal
            gdal.UseExceptions()
            assert gdal.GetDriverByName("TEC") is None, "the plugin must not be loaded here"
            ds = gdal.Open(sys.argv[1])
            full, win = ds.ReadAsArray(), ds.ReadAsArray(5, 7, 30, 20)
            np.savez(sys.argv[2], full=full, win=win)
            b = ds.GetRasterBand(1)
            print(json.dumps(dict(size=[ds.RasterXSize, ds.RasterYSize], gt=list(ds.GetGeoTransform()),
                                  wkt=ds.GetProjection(), desc=[ds.GetRasterBand(i + 1).GetDescription()
                                  for i in range(ds.RasterCount)], nodata=b.GetNoDataValue(),
                                  date=ds.GetMetadataItem("DATE"), driver=ds.GetDriver().ShortName)))
        """
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(vrt), str(arr_file)],
                              capture_output=True, text=True,
                              env=_no_plugin_env(tmp_path, GDAL_VRT_ENABLE_PYTHON="YES"))
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        got = np.load(arr_file)
        assert res["driver"] == "VRT" and res["size"] == [46, 52]
        assert res["gt"] == pytest.approx(series["gt"]) and "32631" in res["wkt"]
        assert res["desc"] == series["bands"] and res["date"] == date
        assert res["nodata"] == (0 if path == lossless_stack else None)
        assert np.array_equal(got["full"], ref)
        assert np.array_equal(got["win"], ref[:, 7:27, 5:35])
        # gdal_translate (a C program: GDAL starts Python itself) with `tec vrt --env`
        lines = subprocess.run(tec + ["vrt", "--env"], capture_output=True, text=True, check=True).stdout
        extra = {}
        for line in lines.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            extra[key] = value.strip('"').split("${")[0]
        assert extra["GDAL_VRT_ENABLE_PYTHON"] == "YES"
        out = tmp_path / f"{path.stem}_vrt.tif"
        proc = subprocess.run(["gdal_translate", "-q", str(vrt), str(out)], capture_output=True, text=True,
                              env=_no_plugin_env(tmp_path, **extra))
        assert proc.returncode == 0 and "ERROR" not in proc.stderr, proc.stderr
        assert np.array_equal(gtiff_read(out), ref)
    # a stack needs --date
    proc = subprocess.run(tec + ["vrt", str(lossless_stack)], capture_output=True, text=True)
    assert proc.returncode == 1 and "--date" in proc.stderr


def test_predicted_dates_read_through_gdal(tmp_path):
    """Kind 5 tiles (a date predicted from an earlier date's pixels): the golden stack's dates read
    through gdal_translate as through the Python API."""
    import terracodec

    golden = REPO / "tests" / "data" / "golden" / "predicted_stack_rsgislib_3dates_q4.tec"
    with terracodec.open(golden) as ds:
        assert ds.stats["predicted_tiles"] > 0
        dates = ds.dates
    for date in reversed(dates):                     # the last date first: its references are decoded
        out = tmp_path / f"{date}.tif"
        run("gdal_translate", "-q", sub(golden, date), out)
        assert np.array_equal(gtiff_read(out), api_read(golden, date)), date
