# SPDX-License-Identifier: Apache-2.0
"""Write the golden .tec files of tests/test_golden.py and record what they decode to.

    .venv/bin/python tests/data/golden/make_golden.py [CASE ...] [--force]

A golden file is written once, by the terracodec of its time, and kept: later decoders must give
the same pixels (manifest.json: sha256 of the decoded array, its shape and dtype, the writer's
version and which coding tools the file uses); existing files are left alone unless --force. To
add a file written by an older version, run this script with that version's package first on the
path, e.g. from a `git worktree` at that commit:
`PYTHONPATH=/path/to/worktree .venv/bin/python tests/data/golden/make_golden.py kind4_f16`.

The sources are the crops of tests/data (PROVENANCE.md) and, for the AV1 and stack cases, crops of
train files of ../shared/data (named below).
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
SHARED = HERE.parents[2].parent / "shared" / "data"


def read(path, window=None):
    from terracodec.geotiff import read_geotiff

    array, meta = read_geotiff(path)
    if window is not None:
        (r0, r1), (c0, c1) = window
        array = array[:, r0:r1, c0:c1]
    return np.ascontiguousarray(array), meta


def _image(name, quality, **kw):
    def build():
        import terracodec as tec

        array, meta = read(DATA / name)
        return tec.encode(array, meta["bands"], quality=quality, nodata=meta["nodata"], **kw), array
    return build


def _point_grid():
    """The 12-band train crop with its 20 m / 60 m bands resampled as Earth Engine exports them
    (samples on pixels, linear between: interp 2), so that the file has point grids."""
    import terracodec as tec

    sys.path.insert(0, str(HERE.parents[1]))
    from test_multires import point_interpolated           # the tests' own, np.interp-based

    array, meta = read(DATA / "l2a_12band_bigearthnet.tif")
    array = array.astype(np.float64)
    for b, name in enumerate(meta["bands"]):
        if name in ("B05", "B06", "B07", "B8A", "B11", "B12"):
            array[b] = point_interpolated(array[b], 2, (1, 0))
        elif name in ("B01", "B09"):
            array[b] = point_interpolated(array[b], 6, (3, 1))
    array = array.astype(np.int16)
    return tec.encode(array, meta["bands"], quality=6), array


def _av1():
    import terracodec as tec

    array, meta = read(SHARED / "s2l2a" / "majortom_T33NZA-0U199R_2022-07-06.tif", ((200, 392), (200, 392)))
    return tec.encode(array, meta["bands"], quality=6), array


def _stack():
    """Three dates of the train series eolearn_TestEOPatch-33T (B10 dropped), learned tiles only
    (kind 0 keyframe, kind 3 TEC-TT dates)."""
    from terracodec import stack

    folder = SHARED / "timeseries" / "eolearn_TestEOPatch-33T"
    dates = ["2015-07-11", "2015-08-30", "2015-09-09"]
    arrays = []
    for d in dates:
        array, meta = read(folder / f"{d}.tif", ((7, 55), (11, 59)))
        keep = [i for i, b in enumerate(meta["bands"]) if b != "B10"]
        arrays.append(array[keep])
    bands = [b for b in meta["bands"] if b != "B10"]
    array = np.stack(arrays)
    return stack.encode_stack(array, bands, quality=5, dates=dates, tile_size=32, classical=False), array


def _predicted_stack():
    """Three clear dates 5 days apart of the train series rsgislib_T37MEM (nodata 0), the default
    stack encoder: kind 5 (predicted) tiles for the later dates."""
    from terracodec import stack

    folder = SHARED / "timeseries" / "rsgislib_T37MEM"
    dates = ["2019-06-10", "2019-06-15", "2019-06-20"]
    arrays = []
    for d in dates:
        array, meta = read(folder / f"{d}.tif", ((100, 148), (150, 214)))
        arrays.append(array)
    array = np.stack(arrays)
    return stack.encode_stack(array, meta["bands"], quality=4, nodata=0, dates=dates, tile_size=32), array


CASES = {
    # name: (file, builder); kind4_f16 was written at b7e8dbc, before coded coefficients
    "kind4_f16": ("kind4_f16_bigearthnet_q4.tec", _image("l2a_12band_bigearthnet.tif", 4)),
    "kind4_coded": ("kind4_coded_bigearthnet_q3.tec", _image("l2a_12band_bigearthnet.tif", 3)),
    "sparse_basis": ("sparse_basis_bigearthnet_q1.tec", _image("l2a_12band_bigearthnet.tif", 1)),
    "l1c_13band": ("l1c_13band_eurosat_q6.tec", _image("l1c_13band_eurosat.tif", 6)),
    "nodata_10band": ("nodata_10band_rsgislib_q4.tec", _image("sref_10band_nodata_rsgislib.tif", 4)),
    "four_band": ("four_band_openeo_q5.tec", _image("l2a_4band_openeo.tif", 5)),
    "lossless": ("lossless_openeo.tec", _image("l2a_4band_openeo.tif", 5, model="lossless")),
    "av1": ("av1_majortom_q6.tec", _av1),
    "stack": ("stack_eolearn_3dates_q5.tec", _stack),
    # format 2 (bare tiles, compact index): a 2 x 2 grid with overlap and nodata, and a stack
    "format2_nodata": ("format2_nodata_10band_rsgislib_q4.tec",
                       _image("sref_10band_nodata_rsgislib.tif", 4, tile_size=32)),
    "format2_stack": ("format2_stack_eolearn_3dates_q5.tec", _stack),
    "point_grid": ("point_grid_bigearthnet_q6.tec", _point_grid),
    # format 2 with the header as a raw deflate stream (prefix flags 7)
    "raw_header": ("raw_header_eurosat_q2.tec", _image("l1c_13band_eurosat.tif", 2)),
    # kind 4 without coarse grids: one full-resolution AV1 group of all 13 bands
    "av1_one_group": ("av1_one_group_s2cloudless_q5.tec", _image("l1c_13band_cloudy_s2cloudless.tif", 5)),
    # effort "best": the 20 m group as an AV1 stream on its grid
    "av1_coarse": ("av1_coarse_bigearthnet_q7.tec", _image("l2a_12band_bigearthnet.tif", 7, effort="best")),
    # kind 5: dates predicted from an earlier date's decoded pixels
    "predicted_stack": ("predicted_stack_rsgislib_3dates_q4.tec", _predicted_stack),
}


def _sparse_basis(data: bytes) -> bool:
    """Whether a tile stores a sparse KLT basis (kind 1 param bit 5, kind 4 interp bit 5)."""
    from terracodec import multires, tilecodec

    real = getattr(tilecodec, "parse_basis", None)                 # absent before sparse bases
    if real is None:
        return False
    seen = []
    tilecodec.parse_basis = multires.parse_basis = lambda *a: seen.append(a[3]) or real(*a)
    try:
        import terracodec as tec
        tec.decode(data)
    finally:
        tilecodec.parse_basis = multires.parse_basis = real
    return any(seen)


def _point_grids(data: bytes) -> bool:
    """Whether a kind 4 tile has a point grid (interp 2)."""
    from terracodec import multires, tilecodec
    from terracodec.format import ContainerReader

    point = multires.MODES.get("point")                            # absent before point grids
    if point is None:
        return False
    with ContainerReader(data) as reader:
        for i, entry in enumerate(reader.entries):
            if entry.kind == tilecodec.KIND_MULTIRES:
                raw = tilecodec.unseal(reader.read_tile(i))
                raw, head, _ = tilecodec.split_restoration(raw, tilecodec.TileHeader(raw))
                groups = multires._parse_groups(raw[head.body:], head.count, head.height, head.width)
                if any(group[0][1] == point for group in groups):
                    return True
    return False


def decoded_facts(data: bytes) -> dict:
    """What a file decodes to, and which tools its decoding used (coded coefficients: interp bit 6)."""
    import terracodec as tec
    from terracodec import multires

    calls = []
    original = getattr(multires, "decode_coefficients", None)     # absent before coded coefficients
    if original is not None:
        multires.decode_coefficients = lambda *a: calls.append(1) or original(*a)
    try:
        out = tec.decode(data)
    finally:
        if original is not None:
            multires.decode_coefficients = original
    with tec.open(data) as ds:
        stats = ds.stats
    from terracodec.format import ContainerReader

    return {"format_version": list(ContainerReader(data).version), "prefix_flags": ContainerReader(data).flags,"sha256": hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest(), "shape": list(out.shape),
            "dtype": str(out.dtype), "coded_coefficients": bool(calls), "sparse_basis": _sparse_basis(data),
            "point_grids": _point_grids(data),
            "av1_tiles": int(stats.get("av1_tiles", 0)), "coarse_grid_tiles": int(stats.get("coarse_grid_tiles", 0)),
            "temporal_tiles": int(stats.get("temporal_tiles", 0)), "learned_tiles": int(stats.get("learned_tiles", 0)),
            "predicted_tiles": int(stats.get("predicted_tiles", 0))}


def _writer(tec) -> str:
    """terracodec's version and the git commit of the package that wrote the file."""
    import subprocess

    package = Path(tec.__file__).resolve().parent
    commit = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return f"terracodec {tec.__version__} ({commit or 'no git'})"


def main(names, force: bool = False) -> None:
    import terracodec as tec
    from terracodec.metrics import psnr10000

    manifest_path = HERE / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in names:
        file, build = CASES[name]
        if (HERE / file).exists() and not force:
            # a golden file is the record of what an older writer wrote: rewriting it hides a break
            sys.exit(f"{file} exists; golden files are not rewritten (--force to replace it anyway)")
        data, source = build()
        facts = decoded_facts(data)
        out = tec.decode(data)
        psnr = psnr10000(source.astype(np.float64), out.astype(np.float64))
        facts["psnr10000"] = None if np.isinf(psnr) else round(float(psnr), 2)     # None: exact
        facts["written_by"] = _writer(tec)
        (HERE / file).write_bytes(data)
        manifest[file] = facts
        print(file, len(data), "bytes", facts)
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")


if __name__ == "__main__":
    force = "--force" in sys.argv
    names = [a for a in sys.argv[1:] if a != "--force"]
    main(names or [n for n in CASES if n != "kind4_f16"], force)
