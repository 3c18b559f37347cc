# SPDX-License-Identifier: Apache-2.0
"""Files written by earlier versions still decode to the same pixels.

tests/data/golden/ holds small .tec files, each written once by the terracodec of its day and never
rewritten (tests/data/golden/make_golden.py; manifest.json records the sha256 of the decoded array
and the writer's commit). A decoder change that alters any of their pixels fails here: an archive
must read back the same in ten years.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import terracodec
from terracodec import multires, tilecodec
from terracodec.format import ContainerReader

GOLDEN = Path(__file__).parent / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _kind4_groups(path) -> list[tuple]:
    """The groups (tilecodec.kind4_groups) of every tile of the file, in tile order."""
    with ContainerReader(path) as reader:
        return [group for i in range(len(reader.entries)) for group in tilecodec.kind4_groups(reader.read_tile(i))]


def _coefficient_counts(path) -> list[int]:
    """Prediction coefficients per group of every kind 4 tile of the file."""
    return [group[2].size for group in _kind4_groups(path)]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_file_decodes_to_the_recorded_pixels(name):
    facts = MANIFEST[name]
    data = (GOLDEN / name).read_bytes()
    out = terracodec.decode(data)
    assert list(out.shape) == facts["shape"] and str(out.dtype) == facts["dtype"]
    assert _digest(out) == facts["sha256"], f"{name} (written by {facts['written_by']}) decodes differently"
    with terracodec.open(GOLDEN / name) as ds:                     # the file reader, date by date
        read = np.stack([ds.read(date=d) for d in ds.dates]) if len(ds.dates) > 1 else ds.read()
        assert _digest(read) == facts["sha256"]
        assert int(ds.stats.get("av1_tiles", 0)) == facts["av1_tiles"]
        assert int(ds.stats.get("temporal_tiles", 0)) == facts["temporal_tiles"]
        assert int(ds.stats.get("predicted_tiles", 0)) == facts.get("predicted_tiles", 0)


def test_golden_files_cover_both_coefficient_codes(monkeypatch):
    """One golden kind 4 file stores its prediction coefficients as float16 (written before coded
    coefficients existed), another as coded integers (interp bit 6)."""
    used = {}
    for name, coded in (("kind4_f16_bigearthnet_q4.tec", False), ("kind4_coded_bigearthnet_q3.tec", True)):
        assert MANIFEST[name]["coded_coefficients"] is coded
        calls = []
        original = multires.decode_coefficients
        monkeypatch.setattr(multires, "decode_coefficients", lambda *a: calls.append(1) or original(*a))
        terracodec.decode((GOLDEN / name).read_bytes())
        monkeypatch.undo()
        used[name] = bool(calls)
        assert any(_coefficient_counts(GOLDEN / name)), f"{name} has no predicted coarse group"
    assert used == {"kind4_f16_bigearthnet_q4.tec": False, "kind4_coded_bigearthnet_q3.tec": True}


def test_golden_stack_and_av1_files_use_those_tools():
    assert MANIFEST["stack_eolearn_3dates_q5.tec"]["temporal_tiles"] > 0
    assert MANIFEST["stack_eolearn_3dates_q5.tec"]["learned_tiles"] > 0
    assert MANIFEST["av1_majortom_q6.tec"]["av1_tiles"] > 0
    assert MANIFEST["predicted_stack_rsgislib_3dates_q4.tec"]["predicted_tiles"] > 0
    assert MANIFEST["lossless_openeo.tec"]["psnr10000"] is None          # exact


def _groups(path) -> list[tuple[int, bool]]:
    """(factor, AV1 stream?) of every group of every kind 4 tile of the file."""
    return [(group[0][0], isinstance(group[-1], multires.Av1Stream)) for group in _kind4_groups(path)]


def test_golden_av1_group_files_hold_those_groups():
    """One golden kind 4 tile is a single full-resolution AV1 group (a tile without coarse
    grids), another has its 20 m group as an AV1 stream (effort "best")."""
    assert _groups(GOLDEN / "av1_one_group_s2cloudless_q5.tec") == [(1, True)]
    assert (2, True) in _groups(GOLDEN / "av1_coarse_bigearthnet_q7.tec")


def test_golden_sparse_basis_file_stores_a_sparse_basis(monkeypatch):
    seen = []
    real = tilecodec.parse_basis

    def spy(*args):
        seen.append(args[3])                                         # the sparse flag
        return real(*args)

    monkeypatch.setattr(tilecodec, "parse_basis", spy)
    monkeypatch.setattr(multires, "parse_basis", spy)
    terracodec.decode((GOLDEN / "sparse_basis_bigearthnet_q1.tec").read_bytes())
    assert any(seen) and MANIFEST["sparse_basis_bigearthnet_q1.tec"]["sparse_basis"]


def test_golden_files_cover_both_container_formats():
    """Format 1 files (64-byte prefix) and format 2 files (bare tiles) are both in the set, and
    each opens as the version it was written in."""
    versions = {name: tuple(ContainerReader(GOLDEN / name).version) for name in MANIFEST}
    assert versions["stack_eolearn_3dates_q5.tec"] == versions["kind4_f16_bigearthnet_q4.tec"] == (1, 0)
    assert versions["format2_nodata_10band_rsgislib_q4.tec"] == (2, 0)
    assert versions["format2_stack_eolearn_3dates_q5.tec"] == (2, 0)
    with ContainerReader(GOLDEN / "format2_nodata_10band_rsgislib_q4.tec") as r:
        assert len(r.entries) > 1 and all(e.bare for e in r.entries) and r.header.tile_overlap > 0
    assert MANIFEST["format2_nodata_10band_rsgislib_q4.tec"]["format_version"] == [2, 0]
    # format 2 headers deflated with the zlib wrapper (the first files) and without (flag bit 2)
    flags = {name: ContainerReader(GOLDEN / name).flags for name in MANIFEST}
    assert flags["format2_nodata_10band_rsgislib_q4.tec"] == 3 and flags["raw_header_eurosat_q2.tec"] == 7


def test_golden_point_grid_file_has_point_grids():
    """Kind 4 groups on grids whose samples sit on pixels (interp 2, Earth Engine exports)."""
    point = []
    with ContainerReader(GOLDEN / "point_grid_bigearthnet_q6.tec") as reader:
        for i, entry in enumerate(reader.entries):
            if entry.kind == tilecodec.KIND_MULTIRES:
                raw = tilecodec.unseal(reader.read_tile(i))
                raw, head, _ = tilecodec.split_restoration(raw, tilecodec.TileHeader(raw))
                point += [g[0][:2] for g in multires._parse_groups(raw[head.body:], head.count, head.height, head.width)
                          if g[0][1] == multires.MODES["point"]]
    assert sorted(point) == [(2, 2), (6, 2)] and MANIFEST["point_grid_bigearthnet_q6.tec"]["point_grids"]
