# SPDX-License-Identifier: Apache-2.0
"""Classical anchors (true byte round trips on real Sentinel-2 crops) and the benchmark end to end."""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from terracodec import anchors, bench
from terracodec.metrics import psnr10000

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DSEN2 = "s2l1c/dsen2_T49JGM_2017-10-22.tif"          # val, 12 bands, 600x600, no nodata
DURBAN = "s2l2a/oceanecowatch_durban_2019-04-24.tif"  # val, 12 bands, 500x500, nodata 0 in rows 462-499


def _read(rel):
    rasterio = pytest.importorskip("rasterio", reason="rasterio is needed to read the GeoTIFF crops")
    from rasterio.errors import NotGeoreferencedWarning

    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data set not available ({path} missing)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.read(), ds.nodata, list(ds.descriptions)


@pytest.fixture(scope="module")
def dsen2_crop():
    a, _, names = _read(DSEN2)
    return np.ascontiguousarray(a[:, 100:292, 200:392]), names          # 12 x 192 x 192


@pytest.fixture(scope="module")
def durban_crop():
    a, nodata, names = _read(DURBAN)
    return np.ascontiguousarray(a[:, 400:496, 0:96]), int(nodata), names  # includes nodata rows


def _available(name):
    ok, why = anchors.get_anchor(name).available()
    if not ok:
        pytest.skip(f"{name}: {why}")
    return anchors.get_anchor(name)


MID = {"jpeg2000": 62, "jpeg2000_klt": 62, "jpegxl": 1.0}         # about 45 dB
LOW_HIGH = {"jpeg2000": (54, 72), "jpeg2000_klt": (54, 72), "jpegxl": (4.5, 0.25)}


@pytest.mark.parametrize("name", list(anchors.ANCHORS))
def test_anchor_round_trip_real_crop(name, dsen2_crop):
    an = _available(name)
    a, _ = dsen2_crop
    data = an.encode(a, MID[name])
    assert isinstance(data, bytes) and 100 < len(data) < a.nbytes
    out = an.decode(data)
    assert out.shape == a.shape and out.dtype == np.int16
    assert 38.0 < psnr10000(a, out) < 60.0
    # decoding uses nothing but the bytes; it is deterministic
    np.testing.assert_array_equal(an.decode(bytearray(data)), out)
    # the parameter moves rate and quality in the right direction
    lo, hi = (an.encode(a, p) for p in LOW_HIGH[name])
    assert len(lo) < len(data) < len(hi)
    assert psnr10000(a, an.decode(lo)) < psnr10000(a, out) < psnr10000(a, an.decode(hi))


def test_klt_beats_per_band_j2k_at_equal_level(dsen2_crop):
    _available("jpeg2000")
    a, _ = dsen2_crop
    for level in (58, 64):
        j = anchors.get_anchor("jpeg2000").encode(a, level)
        k = anchors.get_anchor("jpeg2000_klt").encode(a, level)
        pj = psnr10000(a, anchors.get_anchor("jpeg2000").decode(j))
        pk = psnr10000(a, anchors.get_anchor("jpeg2000_klt").decode(k))
        # same level = same squared-error target: similar PSNR, fewer bytes with the KLT
        assert abs(pj - pk) < 1.0, (level, pj, pk)
        assert len(k) < 0.9 * len(j), (level, len(k), len(j))


def test_klt_side_info_is_in_the_bytes(dsen2_crop):
    _available("jpeg2000_klt")
    a, _ = dsen2_crop
    B = a.shape[0]
    data = anchors.klt_encode(a, 60)
    head = 4 + 4 * B + 4 * B * B
    # the J2K codestream starts right after header, means and matrix
    assert data[head:head + 2] == b"\xff\x4f"
    mu = np.frombuffer(data, np.float32, B, 4)
    np.testing.assert_allclose(mu, a.reshape(B, -1).mean(axis=1), rtol=1e-6)
    v = np.frombuffer(data, np.float32, B * B, 4 + 4 * B).reshape(B, B).astype(np.float64)
    np.testing.assert_allclose(v.T @ v, np.eye(B), atol=1e-5)


@pytest.mark.parametrize("name", list(anchors.ANCHORS))
def test_anchor_negative_values_and_single_band(name, dsen2_crop):
    an = _available(name)
    a, _ = dsen2_crop
    neg = (a[:4, :64, :64].astype(np.int32) - 2000).clip(-32768, 32767).astype(np.int16)
    assert neg.min() < 0
    out = an.decode(an.encode(neg, LOW_HIGH[name][1]))
    assert out.dtype == np.int16 and out.shape == neg.shape
    assert psnr10000(neg, out) > 45.0
    one = a[3:4, :64, :64]
    out1 = an.decode(an.encode(one, MID[name]))
    assert out1.shape == (1, 64, 64)


@pytest.mark.parametrize("name", list(anchors.ANCHORS))
def test_anchor_nodata_is_excluded(name, durban_crop):
    an = _available(name)
    a, nodata, _ = durban_crop
    valid = a != nodata
    assert 0.2 < valid.mean() < 0.9
    data = an.encode(a, MID[name], nodata=nodata)
    out = an.decode(data)
    assert out.shape == a.shape
    assert psnr10000(a, out, valid) > 38.0
    # filling nodata with the band mean costs fewer bytes than coding the hard edge
    assert len(data) < len(an.encode(a, MID[name]))


def test_available_anchors_logs_skips(monkeypatch, caplog):
    import imagecodecs

    monkeypatch.setattr(imagecodecs.JPEGXL, "available", False, raising=False)
    with caplog.at_level("WARNING"):
        names = [an.name for an in anchors.available_anchors()]
    if not getattr(imagecodecs.JPEGXL, "available", True):
        assert "jpegxl" not in names
        assert "skipping anchor jpegxl" in caplog.text


# -- the benchmark end to end ---------------------------------------------------------------------
@pytest.fixture()
def small_data(tmp_path, dsen2_crop, durban_crop):
    """A data folder like shared/data with two small real val crops (one with nodata)."""
    from terracodec.geotiff import write_geotiff

    root = tmp_path / "data"
    (root / "s2l2a").mkdir(parents=True)
    a, names = dsen2_crop
    write_geotiff(root / "s2l2a/a_dsen2.tif", a[:, :64, :64], names)
    d, nodata, dnames = durban_crop
    write_geotiff(root / "s2l2a/b_durban.tif", d[:, 16:80, 0:64], dnames, nodata=nodata)
    write_geotiff(root / "s2l2a/c_train.tif", a[:, 64:96, 64:96], names)
    with open(root / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "location", "location_group", "kind"])
        w.writerow(["s2l2a/a_dsen2.tif", "val", "x", "x", "image"])
        w.writerow(["s2l2a/b_durban.tif", "val", "y", "y", "image"])
        w.writerow(["s2l2a/c_train.tif", "train", "z", "z", "image"])
        w.writerow(["timeseries/x/2020-01-01.tif", "val", "x", "x", "image"])
    return root


def test_list_images_single_date_val(small_data):
    assert bench.list_images(small_data, "val") == ["s2l2a/a_dsen2.tif", "s2l2a/b_durban.tif"]
    assert "timeseries/x/2020-01-01.tif" in bench.list_images(small_data, "val", timeseries=True)


def _run_rd_only(data, out, models: str, anchors: str, png: str, caplog) -> None:
    """tec bench on ``data`` in one thread, RD only, writing out/BENCH.md and out/``png``."""
    argv = ["--data", str(data), "--models", models, "--anchors", anchors,
            "--out-md", str(out / "BENCH.md"), "--out-png", str(out / png), "--threads", "1",
            "--no-throughput", "--no-memory", "--no-progress"]
    with caplog.at_level("WARNING"):
        assert bench.main(argv) == 0


def test_bench_main_anchors_only(small_data, tmp_path, caplog):
    _available("jpeg2000")
    out = tmp_path / "out"
    _run_rd_only(small_data, out, "tec-does-not-exist", "jpeg2000,jpeg2000_klt,jpegxl", "docs/rd.png", caplog)
    assert "skipping TEC model tec-does-not-exist" in caplog.text
    md = (out / "BENCH.md").read_text()
    png = (out / "docs/rd.png").read_bytes()
    rep = json.loads((out / "docs/bench_val.json").read_text())
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "python -m terracodec.bench --data" in md and "s2l2a/b_durban.tif" in md
    assert [im["file"] for im in rep["images"]] == ["s2l2a/a_dsen2.tif", "s2l2a/b_durban.tif"]
    assert rep["images"][1]["valid_fraction"] < 1.0
    assert "tec-does-not-exist" in rep["skipped"]
    avail = [n for n in ("jpeg2000", "jpeg2000_klt", "jpegxl") if anchors.get_anchor(n).available()[0]]
    assert sorted(rep["results"]) == sorted(avail)
    for name, points in rep["results"].items():
        assert len(points) == len(anchors.get_anchor(name).params)
        for p in points:
            assert len(p["per_image"]) == 2
            for r in p["per_image"]:
                assert r["bytes"] > 0 and (r["psnr"] is None or r["psnr"] > 20)
            assert p["mean_bpppb"] == pytest.approx(np.mean([r["bpppb"] for r in p["per_image"]]))
    pairs = {(b["a_name"], b["b_name"]) for b in rep["bd_rates"]}
    assert ("jpeg2000_klt", "jpeg2000") in pairs
    assert "## BD-rate" in md and "## Rate at fixed PSNR" in md


def test_bench_skips_images_without_s2_band_names(small_data, tmp_path, caplog):
    """A split may hold another sensor's file without band descriptions (the train split does):
    the bench leaves it out with a warning and lists it, instead of stopping."""
    import rasterio

    _available("jpeg2000")
    with rasterio.open(small_data / "s2l2a/a_dsen2.tif") as src:
        array, profile = src.read(), src.profile
    profile.update(count=array.shape[0])
    with rasterio.open(small_data / "s2l2a/d_other_sensor.tif", "w", **profile) as dst:
        dst.write(array)                     # no band descriptions
    with open(small_data / "splits.csv", "a", newline="") as f:
        csv.writer(f).writerow(["s2l2a/d_other_sensor.tif", "val", "w", "w", "image"])
    out = tmp_path / "out"
    _run_rd_only(small_data, out, "none", "jpeg2000", "rd.png", caplog)
    assert "skipping image s2l2a/d_other_sensor.tif" in caplog.text
    rep = json.loads((out / "bench_val.json").read_text())
    assert [im["file"] for im in rep["images"]] == ["s2l2a/a_dsen2.tif", "s2l2a/b_durban.tif"]
    assert "no description" in rep["skipped_images"]["s2l2a/d_other_sensor.tif"]
    assert "Skipped images" in (out / "BENCH.md").read_text()


def test_bench_limit_throughput_and_memory(small_data, tmp_path, monkeypatch):
    _available("jpeg2000")
    monkeypatch.setattr(bench, "SCENE_SIZE", 100)         # tiled from the 64x64 crops: fast
    out = tmp_path / "o"
    argv = ["--data", str(small_data), "--models", "none", "--anchors", "jpeg2000", "--limit", "1",
            "--out-md", str(out / "b.md"), "--out-png", str(out / "rd.png"), "--out-json", str(out / "r.json"),
            "--threads", "1", "--throughput-reps", "1", "--no-progress"]
    assert bench.main(argv) == 0
    rep = json.loads((out / "r.json").read_text())
    assert len(rep["images"]) == 1
    th = rep["throughput"]
    assert "tiled" in th["scene"] and th["height"] == th["width"] == 100
    t = th["codecs"]["jpeg2000"]
    assert t["encode_mpxb_s"] > 0 and t["decode_mpxb_s"] > 0 and t["bytes"] > 0
    m = rep["memory"]["codecs"]["jpeg2000"]
    assert "error" not in m, m
    assert m["peak_mib"] >= m["baseline_mib"] > 10
    md = (out / "b.md").read_text()
    assert "## Throughput" in md and "## Peak memory" in md


def test_rate_at_psnr_interpolates_and_refuses_to_extrapolate():
    pts = [{"mean_bpppb": r, "mean_psnr": q} for r, q in [(0.1, 38.0), (0.2, 42.0), (0.4, 46.0), (0.8, 50.0)]]
    assert bench.rate_at_psnr(pts, 42.0) == pytest.approx(0.2)
    assert 0.2 < bench.rate_at_psnr(pts, 44.0) < 0.4
    assert math.isnan(bench.rate_at_psnr(pts, 55.0))


def test_resolve_model_prefixes(monkeypatch):
    from terracodec import weights

    names = ["tec-hp-v1", "tec-hp-v2", "tec-fp-v1", "tec-tt-v1"]
    monkeypatch.setattr(weights, "list_models", lambda: [{"name": n} for n in names])
    assert bench.resolve_model("tec-hp-v1") == ("tec-hp-v1", "")
    assert bench.resolve_model("tec-hp") == ("tec-hp-v2", "")        # latest version of a family
    assert bench.resolve_model("tec-fp") == ("tec-fp-v1", "")
    assert bench.resolve_model("nope")[0] is None
    resolved, why = bench.resolve_model("tec")                       # several families: ambiguous
    assert resolved is None and "ambiguous" in why
