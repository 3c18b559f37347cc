# SPDX-License-Identifier: Apache-2.0
"""Kind 4 tiles: bands interpolated from Sentinel-2's 20 m / 60 m grids are coded on those grids."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from terracodec import multires as mr  # noqa: E402
from terracodec import tilecodec as tc  # noqa: E402
from terracodec.errors import TecFormatError  # noqa: E402

DATA = Path(__file__).parent / "data"
BILINEAR, NEAREST, POINT = mr.MODES["bilinear"], mr.MODES["nearest"], mr.MODES["point"]


def read(name):
    with rasterio.open(DATA / name) as src:
        return src.read(), list(src.descriptions)


@pytest.fixture(scope="module")
def bigearthnet():
    return read("l2a_12band_bigearthnet.tif")


def test_upsampling_matrices():
    u = mr.upsample_matrix(8, 2, 0, BILINEAR)
    assert np.allclose(u.sum(axis=1), 1)
    # pixel 2 sits a quarter cell before the centre of cell 1 (its own cell)
    assert np.allclose(u[2], [0, 0.25, 0.75, 0, 0, 0][:u.shape[1]])
    n = mr.upsample_matrix(7, 3, 1, NEAREST)
    assert n.shape == (7, 3) and np.array_equal(n.argmax(axis=1), [0, 1, 1, 1, 2, 2, 2])
    assert np.array_equal(mr.upsample_matrix(5, 1, 0, BILINEAR), np.eye(5))


def point_interpolated(band: np.ndarray, factor: int, phase: tuple[int, int]) -> np.ndarray:
    """``band`` brought to a grid ``factor`` times coarser whose samples sit on pixels (rows and
    columns ``phase + factor * j``) and back by linear interpolation between them, as Earth
    Engine exports (e.g. SSL4EO-S12) show: written with np.interp, independently of
    multires.upsample_matrix (past the last sample np.interp repeats it)."""
    h, w = band.shape
    ys, xs = np.arange(phase[0], h, factor), np.arange(phase[1], w, factor)
    samples = band[np.ix_(ys, xs)].astype(np.float64)
    rows = np.stack([np.interp(np.arange(h), ys, samples[:, j]) for j in range(len(xs))], axis=1)
    return np.rint(np.stack([np.interp(np.arange(w), xs, rows[i]) for i in range(h)]))


def test_point_grid_matches_linear_interpolation_between_samples():
    u = mr.upsample_matrix(9, 2, 1, POINT)
    # pixel 1 is sample 0 itself; pixel 2 lies halfway to sample 1 (pixel 3); pixel 0 halfway
    # from the cell before (centred on pixel -1)
    assert np.allclose(u.sum(axis=1), 1)
    assert np.allclose(u[1], np.eye(u.shape[1])[1]) and np.allclose(u[2, 1:3], [0.5, 0.5])
    assert np.allclose(u[0, :2], [0.5, 0.5])
    rng = np.random.default_rng(5)
    band = rng.uniform(300, 5000, (40, 52))
    fine = point_interpolated(band, 6, (2, 5))
    uy, ux = mr.upsample_matrix(40, 6, 2, POINT), mr.upsample_matrix(52, 6, 5, POINT)
    cells = mr._fit_matrix(40, 6, 2, POINT) @ fine @ mr._fit_matrix(52, 6, 5, POINT).T
    assert np.sqrt(np.mean((uy @ cells @ ux.T - fine) ** 2)) < 0.5      # rounding only


def test_point_grids_are_found_and_coded_on_their_grid(bigearthnet):
    """The 20 m and 60 m bands of a train crop, resampled as Earth Engine does (samples on pixels),
    are detected as "point" grids and coded on them: fewer bytes than treating them as other
    grids or full resolution, and the decoder gives the encoder's pixels."""
    tile, names = bigearthnet
    tile = tile.astype(np.float64)
    for b, name in enumerate(names):
        if name in ("B05", "B06", "B07", "B8A", "B11", "B12"):
            tile[b] = point_interpolated(tile[b], 2, (1, 0))
        elif name in ("B01", "B09"):
            tile[b] = point_interpolated(tile[b], 6, (3, 1))
    tile = tile.astype(np.int16)
    grids = dict(zip(names, mr.detect_grids(tile)))
    assert {b for b, g in grids.items() if g == (2, POINT, 1, 0)} == {"B05", "B06", "B07", "B8A", "B11", "B12"}
    assert grids["B01"] == grids["B09"] == (6, POINT, 3, 1)
    lam = tc.rd_lambda(6)
    payload, j, decoded = tc.encode_multires(tile, None, lam, 60)
    np.testing.assert_array_equal(tc.decode_tile(payload), decoded)
    k1, j1 = tc.encode_classical(tile, None, lam, multires=False)
    assert j < 0.9 * j1


@pytest.mark.parametrize("h,w,factor,mode,py,px", [(544, 530, 2, BILINEAR, 0, 1), (93, 100, 6, BILINEAR, 3, 2),
                                                   (64, 66, 2, NEAREST, 1, 0), (50, 47, 6, NEAREST, 0, 5),
                                                   (60, 71, 2, POINT, 1, 1), (50, 47, 6, POINT, 4, 0)])
def test_grid_error_equals_the_error_on_pixels(h, w, factor, mode, py, px):
    # the encoder compares a coarse group's codes on its grid: ||U_y e U_x.T||^2 from tridiagonal Gram matrices
    uy, ux = mr.upsample_matrix(h, factor, py, mode), mr.upsample_matrix(w, factor, px, mode)
    e = np.random.default_rng(3).normal(size=(3, uy.shape[1], ux.shape[1]))
    on_pixels = sum(float(np.sum((uy @ band @ ux.T) ** 2)) for band in e)
    on_grid = mr._grid_sse(e, mr._gram_bands(h, factor, mode, py), mr._gram_bands(w, factor, mode, px))
    assert on_grid == pytest.approx(on_pixels, rel=1e-12)


@pytest.mark.parametrize("factor,mode,phase", [(2, BILINEAR, (1, 0)), (6, BILINEAR, (4, 2)),
                                               (2, NEAREST, (0, 1)), (6, NEAREST, (3, 5)),
                                               (2, POINT, (1, 1)), (6, POINT, (0, 4))])
def test_detects_a_synthetic_coarse_grid(factor, mode, phase):
    rng = np.random.default_rng(factor + mode)
    h, w = 70, 90
    uy = mr.upsample_matrix(h, factor, phase[0], mode)
    ux = mr.upsample_matrix(w, factor, phase[1], mode)
    coarse = rng.uniform(200, 6000, (uy.shape[1], ux.shape[1]))
    band = np.rint(uy @ coarse @ ux.T)
    sharp = rng.uniform(200, 6000, (h, w))
    grids = mr.detect_grids(np.stack([sharp, band]).astype(np.int16))
    assert grids == [(1, 0, 0, 0), (factor, mode, *phase)]


def test_sentinel2_native_resolutions_are_found(bigearthnet):
    """The harmonized data upsampled 20 m and 60 m bands bilinearly (../shared/data/README.md);
    the crop starts at row 20, column 16 of its source, hence the 60 m phase (4, 2)."""
    tile, names = bigearthnet
    grids = dict(zip(names, mr.detect_grids(tile)))
    assert {b for b, g in grids.items() if g[0] == 1} == {"B02", "B03", "B04", "B08"}
    assert {b for b, g in grids.items() if g[:2] == (2, BILINEAR)} == {"B05", "B06", "B07", "B8A", "B11", "B12"}
    assert grids["B01"] == grids["B09"] == (6, BILINEAR, 4, 2)


@pytest.mark.parametrize("quality", [3, 8])
def test_kind4_roundtrip_matches_the_encoder(bigearthnet, quality):
    tile, _ = bigearthnet
    lam = tc.rd_lambda(quality)
    payload, j, _ = tc.encode_multires(tile, None, lam, 60)
    assert tc.TileHeader(tc.unseal(payload)).kind == tc.KIND_MULTIRES
    out = tc.decode_tile(payload)
    assert out.shape == tile.shape and out.dtype == tile.dtype
    # J is computed by the encoder on its own reconstruction: the decoder must give the same pixels
    assert tc.rd_cost(tile, out, None, len(payload), lam) == pytest.approx(j, rel=1e-12)


def test_kind4_beats_kind1_at_high_quality(bigearthnet):
    """At quality 8 coding 8 of 12 bands on 4x / 36x fewer samples saves bits at equal slope."""
    tile, _ = bigearthnet
    lam = tc.rd_lambda(8)
    k1, j1 = tc.encode_classical(tile, None, lam, multires=False)
    best, j = tc.encode_classical(tile, None, lam)
    assert tc.TileHeader(tc.unseal(best)).kind == tc.KIND_MULTIRES
    assert j < j1
    assert len(best) < len(k1)
    assert tc.tile_psnr(tile, tc.decode_tile(best), None) >= tc.tile_psnr(tile, tc.decode_tile(k1), None) - 0.5


def test_coarse_groups_after_all_zero_bands(bigearthnet):
    """The prediction of a coarse group from earlier bands that are all zero (a least-squares system
    of zeros) gives no prediction instead of a singular-matrix error."""
    tile, _ = bigearthnet
    tile = tile.copy()
    tile[[1, 2, 3, 7]] = 0                  # the 10 m bands, coded first
    for quality in (2, 8):
        payload, kind = tc.encode_tile(tile, quality=quality, model="classical")
        assert tc.tile_psnr(tile, tc.decode_tile(payload), None) >= tc.QUALITY_FLOOR_DB[quality]


def test_tile_without_coarse_grids_is_one_av1_group():
    """The s2cloudless crop has no band on a coarse grid: its kind 4 code is one full-resolution
    group of all bands, in AV1 (its JPEG 2000 code would be kind 1's), decoded exactly as the
    encoder measured it; the tile's code is the cheaper of that and kind 1."""
    tile, _ = read("l1c_13band_cloudy_s2cloudless.tif")
    tile = np.ascontiguousarray(tile[:, :96, :96])
    assert all(g[0] == 1 for g in mr.detect_grids(tile))
    lam = tc.rd_lambda(5)
    payload, j, decoded = tc.encode_multires(tile, None, lam, 60)
    groups = tc.kind4_groups(payload)
    assert len(groups) == 1 and groups[0][0][0] == 1 and groups[0][1] == list(range(13))
    assert isinstance(groups[0][-1], mr.Av1Stream)
    assert np.array_equal(tc.decode_tile(payload), decoded)
    assert j == pytest.approx(tc.rd_cost(tile, decoded, None, len(payload), lam))
    chosen, j_chosen = tc.encode_classical(tile, None, lam)
    assert j_chosen <= min(j, tc.encode_classical(tile, None, lam, multires=False)[1])
    assert tc.uses_av1(groups) and not tc.uses_coarse_grid(groups)


def test_file_stats_count_coarse_grid_and_av1_tiles_apart(tmp_path, bigearthnet):
    """A file's stats count the tiles with bands on coarser grids and those that need an AV1
    decoder: the s2cloudless chip's one tile is AV1 without coarse grids at quality 5."""
    import terracodec as tec

    cloudy, names = read("l1c_13band_cloudy_s2cloudless.tif")
    tec.write(tmp_path / "cloudy.tec", cloudy, bands=names, quality=5)
    with tec.open(tmp_path / "cloudy.tec") as ds:
        assert ds.stats["av1_tiles"] == 1 and ds.stats["coarse_grid_tiles"] == 0
    chip, names = bigearthnet
    tec.write(tmp_path / "chip.tec", chip, bands=names, quality=5)
    with tec.open(tmp_path / "chip.tec") as ds:
        assert ds.stats["coarse_grid_tiles"] == 1


def test_coarse_groups_may_be_av1_with_effort_best(bigearthnet):
    """With effort "best", a coarse group of at least AV1_MIN_CELLS cells a side is also coded in
    AV1 (the 20 m group of this 64 x 80 crop, 32 x 40 cells; not the 60 m group, 11 x 14 cells),
    and AV1 wins it at quality 7; full and reduced decodes read it, and the bytes repeat. The
    default effort codes coarse groups with JPEG 2000 only."""
    tile, _ = bigearthnet
    lam = tc.rd_lambda(7)

    def av1_groups(payload):
        return [(g[0][0], isinstance(g[-1], mr.Av1Stream)) for g in tc.kind4_groups(payload)]

    payload, j, decoded = tc.encode_multires(tile, None, lam, 66, effort="best")
    assert av1_groups(payload) == [(1, True), (2, True), (6, False)]
    assert np.array_equal(tc.decode_tile(payload), decoded)
    reduced = tc.decode_tile_reduced(payload, 1)
    assert np.sqrt(np.mean((reduced - tc.reduce_pixels(decoded, 1).astype(float)) ** 2)) < 0.25 * tile.std()
    assert tc.encode_multires(tile, None, lam, 66, effort="best")[0] == payload
    default = tc.encode_multires(tile, None, lam, 66)
    assert [av1 for factor, av1 in av1_groups(default[0]) if factor > 1] == [False, False]
    assert j <= default[1]


def test_tiles_with_nodata_are_coded_on_coarse_grids(bigearthnet):
    """Nodata pixels are filled before the grids are found and fitted, and come back exactly from
    the tile's mask: the crop with a nodata corner in every band and a nodata block in one band
    still finds the Sentinel-2 grids and costs less than kind 1."""
    tile, names = bigearthnet
    tile = tile.copy()
    tile[:, :20, :24] = 0
    tile[names.index("B11"), 40:, 56:] = 0
    mask = tile == 0
    grids = dict(zip(names, mr.detect_grids(mr.fill_nodata(tile.astype(np.float64), mask), mask)))
    assert {b for b, g in grids.items() if g[0] == 1} == {"B02", "B03", "B04", "B08"}
    assert {b for b, g in grids.items() if g[:2] == (2, BILINEAR)} == {"B05", "B06", "B07", "B8A", "B11", "B12"}
    lam = tc.rd_lambda(8)
    _, j1 = tc.encode_classical(tile, 0, lam, multires=False)
    payload, j = tc.encode_classical(tile, 0, lam)
    assert tc.TileHeader(tc.unseal(payload)).kind == tc.KIND_MULTIRES and j < j1
    out = tc.decode_tile(payload)
    assert np.array_equal(out == 0, mask)
    assert tc.rd_cost(tile, out, mask, len(payload), lam) == pytest.approx(j, rel=1e-12)
    small = tc.decode_tile_reduced(payload, 2)                # nodata where a whole block is
    assert np.array_equal(small == 0, tc.reduce_pixels(tile, 2, 0) == 0)


def test_fill_grows_valid_pixels_into_nodata():
    x = np.arange(100, dtype=np.float64).reshape(1, 10, 10)
    mask = np.zeros_like(x, bool)
    mask[0, :, 6:] = True
    filled = mr.fill_nodata(x, mask)
    assert np.array_equal(filled[~mask], x[~mask])
    assert np.allclose(filled[0, :, 6:], x[0, :, 5:6])        # clamped: each row's last valid value


def _same_pixels_in_a_one_thread_process(tmp_path, payload):
    (tmp_path / "tile.bin").write_bytes(payload)
    code = ("import sys, numpy as np, torch; torch.set_num_threads(1); "
            "from terracodec import tilecodec as tc; "
            "np.save(sys.argv[2], tc.decode_tile(open(sys.argv[1], 'rb').read()))")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "tile.bin"), str(tmp_path / "out.npy")],
                   check=True, env=env)
    assert np.array_equal(np.load(tmp_path / "out.npy"), tc.decode_tile(payload))


def test_same_bytes_twice_and_same_pixels_in_a_fresh_process(tmp_path, bigearthnet):
    tile, _ = bigearthnet
    lam = tc.rd_lambda(6)
    payload = tc.encode_multires(tile, None, lam, 66)[0]
    assert tc.encode_multires(tile, None, lam, 66)[0] == payload
    _same_pixels_in_a_one_thread_process(tmp_path, payload)


@pytest.mark.shared_data
def test_neighbour_prediction_decodes_alike_in_one_thread(tmp_path, shared_data):
    """A 256 x 256 tile whose coarse groups use the neighbourhood prediction with selected blocks
    (some earlier bands without their shifts, quadratic terms; matrix products large enough for
    OpenBLAS to use threads) decodes to the same pixels in a one-thread process."""
    with rasterio.open(shared_data / "s2l2a" / "majortom_T48QUE-199U1099R_2020-02-23.tif") as src:
        tile = src.read(window=((400, 656), (400, 656)))
    payload = tc.encode_multires(tile, None, tc.rd_lambda(4), 60)[0]
    assert any(_spatial_groups(payload)) and any(_quadratic_groups(payload))
    done, partial = 0, False
    for g in _groups(payload):
        partial |= bool(g[5] & mr.SELECTED) and len(mr._shifted_bands(done, g[5])) < done
        done += len(g[1])
    assert partial
    _same_pixels_in_a_one_thread_process(tmp_path, payload)


def _body_offset(payload):
    return tc.TileHeader(tc.unseal(payload)).body


def test_damaged_kind4_bodies_give_format_errors(bigearthnet):
    tile, _ = bigearthnet
    payload = tc.unseal(tc.encode_multires(tile, None, tc.rd_lambda(5), 60)[0])
    body = _body_offset(tc.seal(payload))
    cases = {
        "truncated": payload[:body + 20],
        "group count": payload[:body] + bytes([payload[body] + 1]) + payload[body + 1:],
        "factor 0": payload[:body + 1] + b"\x00" + payload[body + 2:],
        "unknown interpolation 3": payload[:body + 2] + bytes([payload[body + 2] & 0xE0 | 3]) + payload[body + 3:],
        "band out of range": payload[:body + 7] + b"\x63" + payload[body + 8:],
        "extra bytes": payload + b"\x00",
        "neighbour prediction in the first group": payload[:body + 6] + bytes([payload[body + 6] | mr.SPATIAL])
        + payload[body + 7:],
        "block mask without the neighbourhood": payload[:body + 6]
        + bytes([payload[body + 6] | mr.SELECTED]) + payload[body + 7:],
    }
    for what, bad in cases.items():
        with pytest.raises(TecFormatError):
            tc.decode_tile(tc.seal(bad))


def _groups(payload):
    raw = tc.unseal(payload)
    head = tc.TileHeader(raw)
    raw, head, _ = tc.split_restoration(raw, head)
    return list(mr._parse_groups(raw[head.body:], head.count, head.height, head.width))


def _spatial_groups(payload):
    return [g[5] & mr.SPATIAL for g in _groups(payload)]


def _quadratic_groups(payload):
    """Per group: whether its prediction has the quadratic terms (block mask bit e)."""
    out, earlier = [], 0
    for g in _groups(payload):
        out.append(mr._has_quadratic(earlier, g[5]))
        earlier += len(g[1])
    return out


def test_block_selection_keeps_what_pays():
    """The greedy block selection adds a block only when its error reduction pays for its side
    bits: on a coarse band that is an exact linear map of one earlier band's shifts, that band's
    block is chosen at any slope, and nothing else at a large one."""
    rng = np.random.default_rng(5)
    means = rng.normal(1000, 300, size=(3, 40, 40))
    shifted = np.pad(means[1], 1, mode="edge")[2:, 1:-1]          # cell (i, j) takes (i + 1, j)
    cells = (0.5 * means[0] + 0.8 * shifted)[None]
    param = mr._select_blocks(means, cells, 2, lam=1e6)
    assert param & mr.SPATIAL and param & mr.SELECTED
    assert mr._shifted_bands(3, param) == [1] and not mr._has_quadratic(3, param)
    feats = mr.prediction_features(means, param)
    assert len(feats) == mr.feature_count(3, param) == 3 + 8 + 1


def _decodes_as_encoded(tile, payload, j, lam):
    """The decoder gives the encoder's own view (its J), and the 1/2 overview is near block means."""
    from terracodec import openjpeg

    out = tc.decode_tile(payload)
    assert tc.rd_cost(tile, out, None, len(payload), lam) == pytest.approx(j, rel=1e-12)
    if openjpeg.available():
        ref = tc.reduce_pixels(out, 1).astype(float)
        got = tc.decode_tile_reduced(payload, 1).astype(float)
        assert np.sqrt(np.mean((got - ref) ** 2)) < 0.25 * ref.std()


@pytest.mark.shared_data
def test_quadratic_prediction_round_trips_and_pays(shared_data, monkeypatch):
    """On a 256 x 256 crop of a val scene with water and cloud, the encoder adds the quadratic terms
    (block mask bit e, gparam bit 4) to the 20 m group's prediction; the tile decodes to the
    encoder's own view, in full and at 1/2, and costs less than without quadratic terms."""
    with rasterio.open(shared_data / "s2l2a" / "oceanecowatch_durban_2019-04-24.tif") as src:
        tile = src.read(window=((100, 356), (100, 356)))
    lam = tc.rd_lambda(3)
    payload, j, _ = tc.encode_multires(tile, None, lam, 70)
    assert any(_quadratic_groups(payload))
    _decodes_as_encoded(tile, payload, j, lam)
    monkeypatch.setattr(mr, "QUADRATIC_BANDS", 0)        # no quadratic terms (an empty block)
    linear, j_linear, _ = tc.encode_multires(tile, None, lam, 70)
    assert not any(_quadratic_groups(linear))
    assert j < j_linear


def test_neighbour_prediction_round_trips():
    """A coarse group predicted from the earlier bands' 3 x 3 cell neighbourhoods (gparam bit 7)
    decodes to the encoder's own view, in full and at reduced resolution."""
    tile, _ = read("l1c_13band_eurosat.tif")
    lam = tc.rd_lambda(8)
    payload, j, _ = tc.encode_multires(tile, None, lam, 60)
    assert any(_spatial_groups(payload)) and not _spatial_groups(payload)[0]
    _decodes_as_encoded(tile, payload, j, lam)


@pytest.mark.shared_data
def test_neighbour_prediction_pays_on_a_large_scene(shared_data, monkeypatch):
    """On a 256 x 256 crop of the val scene of the throughput benchmark, predicting the 20 m and
    60 m groups from cell neighbourhoods lowers the kind 4 cost at quality 4 (by 4 % here; it halves
    the 20 m group's bits on the full scene)."""
    path = shared_data / "s2l2a" / "majortom_T48QUE-199U1099R_2020-02-23.tif"
    with rasterio.open(path) as src:
        tile = src.read(window=((400, 656), (400, 656)))
    lam = tc.rd_lambda(4)
    # both codes start their walks at the same levels (a crop probe's plan), so that only the
    # prediction differs
    plan = [("av1", 0), ("j2k", 74), ("j2k", 80)]
    payload, j, _ = tc.encode_multires(tile, None, lam, 60, plan=plan)
    assert any(_spatial_groups(payload))
    monkeypatch.setattr(mr, "PREDICTIONS", (0,))
    plain, j_plain, _ = tc.encode_multires(tile, None, lam, 60, plan=plan)
    assert not any(_spatial_groups(plain))
    assert j < 0.98 * j_plain and len(payload) < len(plain)


def test_api_files_use_kind4_and_read_back(bigearthnet, tmp_path):
    import terracodec

    tile, names = bigearthnet
    path = tmp_path / "x.tec"
    terracodec.write(path, tile, bands=names, quality=8)
    ds = terracodec.open(path)
    kinds = [e.kind for e in ds._reader.entries]
    assert kinds == [tc.KIND_MULTIRES]
    out = ds.read()
    assert out.shape == tile.shape
    assert 10 * np.log10(1e8 / np.mean((out.astype(float) - tile) ** 2)) >= tc.QUALITY_FLOOR_DB[8]
    assert ds.read(level=1).shape == (12, 32, 40)


@pytest.mark.parametrize("reduce", [1, 2])
def test_kind4_overview_skips_the_full_size_decode(bigearthnet, reduce, monkeypatch):
    """A reduced decode of a kind 4 tile decodes its 10 m group's codestream at reduced size and
    never works at full resolution; the result stays close to block means of the full decode (the
    JPEG 2000 low-pass is a smoother filter than a block mean) and is the same bytes' view twice."""
    from terracodec import anchors, openjpeg

    if not openjpeg.available():
        pytest.skip("libopenjp2 not loadable: reduced decodes fall back to full decode + block means")
    tile, _ = bigearthnet
    payload, _, _ = tc.encode_multires(tile, None, tc.rd_lambda(8), 70)
    ref = tc.reduce_pixels(tc.decode_tile(payload), reduce).astype(float)
    full_size = []
    real = anchors._j2k_decode
    monkeypatch.setattr(anchors, "_j2k_decode",
                        lambda data, t: (lambda out: full_size.append(out.shape[1:] == tile.shape[1:]) or out)(real(data, t)))
    got = tc.decode_tile_reduced(payload, reduce)
    assert got.shape == ref.shape and got.dtype == tile.dtype
    assert full_size and not any(full_size)          # only the coarse groups, at their own size
    err = np.sqrt(np.mean((got - ref) ** 2))
    assert err < 0.25 * ref.std()
    assert np.array_equal(got, tc.decode_tile_reduced(payload, reduce))


def test_low_pass_samples_move_to_block_centres():
    """A ramp sampled at 2**r * i (JPEG 2000 low-pass positions) lands on the block centres."""
    x = np.arange(64, dtype=float)
    ramp = np.broadcast_to(x[None, :, None] + x[None, None, :], (1, 64, 64))
    for r in (1, 2, 3):
        f = 1 << r
        low = ramp[:, ::f, ::f]
        moved = tc.low_pass_to_blocks(low, r)
        blocks = tc.box_reduce(ramp, f)[0]
        assert np.allclose(moved[:, :-1, :-1], blocks[:, :-1, :-1])


def test_rice_code_round_trips_and_rejects_damage():
    """The coefficients' adaptive Golomb-Rice code gives its integers back, escapes included, and a
    truncated or padded stream is a format error, not other integers."""
    rng = np.random.default_rng(2)
    values = np.concatenate([[0, -1, 1, 2 ** 31 - 1, -(2 ** 31) + 1],
                             np.rint(rng.standard_cauchy(400) * 300).clip(-1e9, 1e9)]).astype(np.int64)
    data = mr.rice_encode(values.tolist())
    assert np.array_equal(mr.rice_decode(data, len(values)), values)
    assert len(mr.rice_encode([0] * 64)) <= 16                 # under 2 bits each: k adapts down to 0
    for bad in (data[:-3], data + b"\x00"):
        with pytest.raises(TecFormatError):
            mr.rice_decode(bad, len(values))


def test_rice_code_follows_the_format_text():
    """docs/FORMAT.md "Coded coefficients", by hand: 0 -> u 0, k 4: 0 0000; -1 -> u 1, k 3: 0 001;
    5 -> u 10, k 3: 10 010; 40 -> u 80, k 3: ten 1s, 0, 000; then 4 zero bits of padding."""
    assert mr.rice_encode([0, -1, 5, 40]) == bytes.fromhex("00cbff00")
    assert mr.rice_decode(bytes.fromhex("00cbff00"), 4).tolist() == [0, -1, 5, 40]


def test_rice_decoder_on_random_bytes_gives_integers_or_a_format_error():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        data = rng.integers(0, 256, rng.integers(0, 40)).astype(np.uint8).tobytes()
        n = int(rng.integers(0, 60))
        try:
            assert len(mr.rice_decode(data, n)) == n
        except TecFormatError:
            pass


def test_coefficient_steps_are_exact_powers():
    for t in (0, 1, 2, 3, 63, 64, 65, 66, 67, 100, 255):
        assert mr.coefficient_step(t) == 2.0 ** ((t - 64) / 4)


def test_coded_coefficients_round_trip_and_pay(bigearthnet, monkeypatch):
    """At quality 2 the coarse groups' prediction coefficients are coded as integers (interp bit 6):
    the tile decodes to the encoder's own view, in full and at 1/2, and costs less than with
    float16 coefficients."""
    tile, _ = bigearthnet
    lam = tc.rd_lambda(2)
    plan = [("j2k", 60), ("j2k", 66), ("j2k", 70)]       # same start levels for both codes
    payload, j, _ = tc.encode_multires(tile, None, lam, 60, plan=plan)
    decoded = []
    original = mr.decode_coefficients
    monkeypatch.setattr(mr, "decode_coefficients", lambda *a: decoded.append(1) or original(*a))
    _decodes_as_encoded(tile, payload, j, lam)
    assert decoded
    monkeypatch.setattr(mr, "_code_coefficients", lambda *a: None)
    half, j_half, _ = tc.encode_multires(tile, None, lam, 60, plan=plan)
    assert j < j_half and len(payload) < len(half)


def test_coded_coefficients_in_the_first_group_are_a_format_error(bigearthnet):
    tile, _ = bigearthnet
    payload = tc.unseal(tc.encode_multires(tile, None, tc.rd_lambda(5), 60)[0])
    body = _body_offset(tc.seal(payload))
    bad = payload[:body + 2] + bytes([payload[body + 2] | mr.CODED_COEF]) + payload[body + 3:]
    with pytest.raises(TecFormatError):
        tc.decode_tile(tc.seal(bad))


def test_groups_keep_no_basis_column_for_components_that_decode_to_zero(bigearthnet, monkeypatch):
    """At quality 1 some components of a kind 4 group decode to all zeros (or the group has no
    codestream): its basis is stored sparse (interp bit 5), and the tile decodes as encoded."""
    tile, _ = bigearthnet
    lam = tc.rd_lambda(1)
    payload, j, _ = tc.encode_multires(tile, None, lam, 60)
    sparse = []
    real = mr.parse_basis
    monkeypatch.setattr(mr, "parse_basis", lambda body, pos, n, is_sparse, what: sparse.append(is_sparse)
                        or real(body, pos, n, is_sparse, what))
    _decodes_as_encoded(tile, payload, j, lam)
    assert any(sparse)
