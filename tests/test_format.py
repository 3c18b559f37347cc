# SPDX-License-Identifier: Apache-2.0
"""The .tec container (terracodec.format): round trips, corruption, truncation, atomic writes."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from terracodec import tilecodec
from terracodec.errors import TecChecksumError, TecFormatError, TecInputError, TecVersionError
from terracodec.format import (FLAG_HEADER_DEFLATE, INDEX_ENTRY_SIZE, MAGIC, PREFIX_SIZE, VERSION, ContainerReader,
                               ContainerWriter, TecHeader, TileEntry, peek, write_container_bytes)

REPO = Path(__file__).resolve().parents[1]
KIND_LOSSLESS = tilecodec.KIND_LOSSLESS


def make_header(**kw) -> TecHeader:
    args = dict(width=300, height=200, count=2, dtype="uint16", bands=["B02", "B03"], tile_size=128,
                nodata=0, crs_wkt='PROJCS["WGS 84 / UTM zone 36S"]',
                geotransform=[500000.0, 10.0, 0.0, 7000000.0, 0.0, -10.0],
                model={"name": "tec-small", "sha256": "ab" * 32}, quality=6,
                stats={"fallback_tiles": 0}, metadata={"AREA_OR_POINT": "Area"},
                created_by="terracodec test")
    args.update(kw)
    return TecHeader(**args)


def raster(header: TecHeader) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 3000, (header.count, header.height, header.width)).astype(header.dtype)


def lossless_payloads(header: TecHeader, image: np.ndarray) -> list[tuple[bytes, int]]:
    out = []
    for i in range(header.index_count):
        r, c, h, w = header.tile_window(i)
        out.append((tilecodec.encode_lossless(image[:, r:r + h, c:c + w], header.nodata), KIND_LOSSLESS))
    return out


@pytest.fixture
def sample():
    """(header, image, format 1 container bytes) for a 3x2 grid with cropped edge tiles (small:
    ~4 kB). Format 1 files must stay readable; the tests that edit their bytes know its layout."""
    header = make_header(width=40, height=20, tile_size=16)
    image = raster(header)
    return header, image, write_container_bytes(header, lossless_payloads(header, image), format_version=1)


def regions(data: bytes):
    """(prefix fields, header slice, index slice) of a container."""
    f = struct.unpack_from("<8sHHIQIIQII", data)
    hoff, hlen, ioff, icount = f[4], f[5], f[7], f[8]
    return f, slice(hoff, hoff + hlen), slice(ioff, ioff + icount * INDEX_ENTRY_SIZE)


def refresh_crcs(data: bytearray) -> bytearray:
    """Recompute header, index and prefix CRCs after a deliberate edit (to test later checks)."""
    _, hs, is_ = regions(bytes(data))
    struct.pack_into("<I", data, 28, zlib.crc32(data[hs]))
    struct.pack_into("<I", data, 44, zlib.crc32(data[is_]))
    struct.pack_into("<I", data, 60, zlib.crc32(data[:60]))
    return data


def replace_header(data: bytes, obj, deflate: bool = True) -> bytes:
    """Rewrite the header (appended after the index; a dict as JSON, or raw bytes) and fix offsets,
    flags and CRCs. ``deflate`` as writers do (prefix flags bit 0), else plain JSON."""
    _, hs, is_ = regions(data)
    head = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    if deflate:
        head = zlib.compress(head)
    out = bytearray(data[:hs.start]) + data[is_] + head
    struct.pack_into("<I", out, 12, FLAG_HEADER_DEFLATE if deflate else 0)
    struct.pack_into("<QII", out, 16, hs.start + (is_.stop - is_.start), len(head), 0)
    struct.pack_into("<Q", out, 32, hs.start)
    return bytes(refresh_crcs(out))


# -- round trips ------------------------------------------------------------------------------------
def test_round_trip_bytes_and_decode(sample):
    header, image, data = sample
    assert data[:8] == MAGIC and PREFIX_SIZE == 64 and VERSION == (2, 0)
    r = ContainerReader(data)
    assert r.header == header and r.version == (1, 0) and r.flags == FLAG_HEADER_DEFLATE | 2
    assert len(r.entries) == header.index_count == 6
    assert all(isinstance(e, TileEntry) and e.kind == KIND_LOSSLESS for e in r.entries)
    out = np.zeros_like(image)
    for i in range(len(r.entries)):
        row, col, h, w = header.tile_window(i)
        out[:, row:row + h, col:col + w] = tilecodec.decode_tile(r.read_tile(i))
    np.testing.assert_array_equal(out, image)
    assert r.read_tiles([0, 5]) == [r.read_tile(0), r.read_tile(5)]


def test_round_trip_path_memoryview_and_peek(sample, tmp_path):
    header, image, data = sample
    path = tmp_path / "scene.tec"
    with ContainerWriter(path, format_version=1) as w:
        for i, (payload, kind) in enumerate(lossless_payloads(header, image)):
            assert w.add_tile(payload, kind, index=i) == i
        w.finish(header)
    assert path.read_bytes() == data                       # deterministic, same as in memory
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tec"]   # no temp file left
    assert peek(path) == peek(str(path)) == peek(data) == peek(memoryview(data)) == header
    with ContainerReader(bytearray(data)) as a, ContainerReader(path) as b:
        assert [a.read_tile(i) for i in range(6)] == [b.read_tile(i) for i in range(6)]
    assert b.closed
    with pytest.raises(TecInputError):
        b.read_tile(0)


def test_writer_on_file_object_at_an_offset(sample):
    import io

    header, image, data = sample
    buf = io.BytesIO()
    buf.write(b"junk")
    w = ContainerWriter(buf, format_version=1)
    for payload, kind in lossless_payloads(header, image):
        w.add_tile(payload, kind)
    w.finish(header)
    assert buf.getvalue()[4:] == data                       # offsets are relative to the start
    assert buf.tell() == len(buf.getvalue())


def test_arbitrary_payloads_and_empty_payload():
    header = make_header(width=5, height=3, tile_size=2, count=1, bands=["B04"], nodata=None)
    tiles = [(bytes([i]) * i, i % 3) for i in range(header.index_count)]     # tile 0 is empty
    r = ContainerReader(write_container_bytes(header, tiles))
    assert [r.read_tile(i) for i in range(len(tiles))] == [p for p, _ in tiles]
    assert [e.kind for e in r.entries] == [k for _, k in tiles]


def test_thread_safe_reads(sample, tmp_path):
    header, image, data = sample
    path = tmp_path / "t.tec"
    path.write_bytes(data)
    want = [ContainerReader(data).read_tile(i) for i in range(6)]
    errors = []
    with ContainerReader(path) as r:
        def work(k):
            try:
                for j in range(60):
                    i = (j + k) % 6
                    assert r.read_tile(i) == want[i]
            except Exception as exc:            # pragma: no cover
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_window_reads_only_the_needed_tiles(sample, tmp_path, monkeypatch):
    header, _, data = sample
    path = tmp_path / "w.tec"
    path.write_bytes(data)
    reads = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append((off, n)) or real(fd, n, off))
    r = ContainerReader(path)
    reads.clear()
    want = header.tiles_for_window(17, 2, 3, 10)            # second tile row, first tile column
    assert want == [3]
    r.read_tiles(want)
    assert reads == [(r.entries[3].offset, r.entries[3].length)]


# -- header -----------------------------------------------------------------------------------------
def test_header_geometry():
    h = make_header()
    assert (h.tiles_x, h.tiles_y, h.tile_count, h.index_count) == (3, 2, 6, 6)
    assert h.tile_window(0) == (0, 0, 128, 128)
    assert h.tile_window(2) == (0, 256, 128, 44)
    assert h.tile_window(5) == (128, 256, 72, 44)
    assert h.tiles_for_window(0, 0, 200, 300) == list(range(6))
    assert h.tiles_for_window(127, 127, 2, 2) == [0, 1, 3, 4]
    assert h.tiles_for_window(199, 299, 1, 1) == [5]
    for bad in [(0, 0, 0, 1), (0, 0, 201, 1), (-1, 0, 1, 1), (0, 299, 1, 2)]:
        with pytest.raises(TecInputError):
            h.tiles_for_window(*bad)
    with pytest.raises(IndexError):
        h.tile_window(6)
    stack = make_header(dates=["2019-04-24", None, "2019-05-04"])
    assert stack.index_count == 18
    assert stack.tiles_for_window(0, 0, 1, 1, date=2) == [12]
    assert stack.tile_position(13) == (2, 0, 0, 1) and stack.tile_window(13) == (0, 128, 128, 128)
    with pytest.raises(TecInputError):
        stack.tiles_for_window(0, 0, 1, 1, date=3)


def test_header_json_round_trip_and_unknown_keys():
    h = make_header(dates=["2019-04-24"])
    obj = json.loads(h.to_json())
    assert list(obj)[:6] == ["width", "height", "count", "dtype", "bands", "tile_size"]
    obj["future_key"] = {"anything": [1, 2]}
    assert TecHeader.from_json(json.dumps(obj)) == h
    assert TecHeader.from_json(json.dumps(obj).encode()) == h
    minimal = {k: obj[k] for k in ("width", "height", "count", "dtype", "bands", "tile_size",
                                   "tiles_x", "tiles_y", "model", "quality")}
    m = TecHeader.from_json(json.dumps(minimal))
    assert m.dates == [None] and m.levels == 1 and m.nodata is None and m.created_by == ""


def test_header_tiles_computed():
    h = TecHeader(width=1, height=1, count=1, dtype="uint8", bands=["B01"], tile_size=256)
    assert (h.tiles_x, h.tiles_y, h.index_count) == (1, 1, 1)


@pytest.mark.parametrize("change, field", [
    ({"width": 0}, "width"), ({"height": -3}, "height"), ({"width": 1.5}, "width"),
    ({"width": True}, "width"), ({"count": 14}, "count"), ({"dtype": "float32"}, "dtype"),
    ({"bands": ["B02"]}, "bands"), ({"bands": ["B02", "B02"]}, "bands"), ({"bands": "B02B03"}, "bands"),
    ({"nodata": -1}, "nodata"), ({"nodata": 0.5}, "nodata"), ({"nodata": "0"}, "nodata"),
    ({"nodata": 70000}, "nodata"), ({"crs_wkt": 4326}, "crs_wkt"),
    ({"geotransform": [1, 2, 3]}, "geotransform"), ({"geotransform": [0, 1, 0, 0, 0, "x"]}, "geotransform"),
    ({"tile_size": 0}, "tile_size"), ({"tile_size": 70000}, "tile_size"),
    ({"tiles_x": 2}, "tiles_x"), ({"tiles_y": 0}, "tiles_y"),
    ({"dates": []}, "dates"), ({"dates": None}, "dates"), ({"dates": [20190424]}, "dates"),
    ({"levels": 0}, "levels"), ({"model": "tec-small"}, "model"), ({"model": {"name": "x"}}, "model"),
    ({"model": {"name": "x", "sha256": "xyz"}}, "model"), ({"quality": 9}, "quality"),
    ({"quality": 0}, "quality"), ({"stats": []}, "stats"), ({"metadata": {"a": 1}}, "metadata"),
    ({"created_by": None}, "created_by"),
])
def test_header_rejects_bad_fields(change, field):
    obj = json.loads(make_header().to_json())
    obj.update(change)
    with pytest.raises(TecFormatError, match=field.split("/")[0]):
        TecHeader.from_json(json.dumps(obj))


def test_header_rejects_missing_and_non_object():
    obj = json.loads(make_header().to_json())
    del obj["tile_size"]
    with pytest.raises(TecFormatError, match="missing 'tile_size'"):
        TecHeader.from_json(json.dumps(obj))
    for text in ["[1, 2]", "{", b"\xff\xfe", '{"width": NaN}']:
        with pytest.raises(TecFormatError, match="header"):
            TecHeader.from_json(text)


def test_zero_tile_grid_rejected():
    with pytest.raises(TecFormatError, match="width"):
        make_header(width=0)
    obj = json.loads(make_header().to_json())
    obj.update(width=0, height=0, tiles_x=0, tiles_y=0)
    with pytest.raises(TecFormatError):
        TecHeader.from_json(json.dumps(obj))
    # a container whose index is empty does not open either
    header = make_header(width=1, height=1, tile_size=1)
    data = write_container_bytes(header, [(b"x", 1)])
    with pytest.raises(TecFormatError):
        ContainerReader(replace_header(data, {**json.loads(header.to_json()), "width": 0, "tiles_x": 0}))


# -- writer -----------------------------------------------------------------------------------------
def test_writer_checks_tile_count_and_order(tmp_path):
    header = make_header()
    target = tmp_path / "x.tec"
    w = ContainerWriter(target)
    w.add_tile(b"a", 1)
    with pytest.raises(TecInputError, match="order"):
        w.add_tile(b"b", 1, index=5)
    with pytest.raises(TecInputError, match="1 tiles were added"):
        w.finish(header)
    assert not target.exists() and list(tmp_path.iterdir()) == []      # failed finish aborts
    with pytest.raises(TecInputError):
        w.add_tile(b"c", 1)
    with pytest.raises(TecInputError, match="kind"):
        ContainerWriter(tmp_path / "y.tec").add_tile(b"a", 7)
    payload = tilecodec.encode_lossless(np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(TecInputError, match="kind"):
        write_container_bytes(make_header(width=2, height=2, count=1, bands=["B01"]), [(payload, 1)])
    with pytest.raises(TecInputError, match="levels"):
        write_container_bytes(make_header(width=1, height=1, levels=2), [(b"", 2)] * 2)


def test_atomic_write_exception_keeps_existing_target(tmp_path):
    target = tmp_path / "scene.tec"
    target.write_bytes(b"precious")
    with pytest.raises(RuntimeError, match="boom"):
        with ContainerWriter(target) as w:
            w.add_tile(b"payload", 1)
            assert len(list(tmp_path.iterdir())) == 2         # the hidden temp file
            raise RuntimeError("boom")
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tec"]


def test_atomic_write_exception_leaves_no_file(tmp_path):
    target = tmp_path / "new.tec"
    with pytest.raises(KeyboardInterrupt):
        with ContainerWriter(target) as w:
            w.add_tile(b"payload", 1)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TecInputError, match="without finish"):      # forgetting finish() is loud
        with ContainerWriter(target) as w:
            w.add_tile(b"payload", 1)
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_existing_target(sample, tmp_path):
    header, image, data = sample
    target = tmp_path / "scene.tec"
    target.write_bytes(b"old")
    with ContainerWriter(target, format_version=1) as w:
        for payload, kind in lossless_payloads(header, image):
            w.add_tile(payload, kind)
        w.finish(header)
    assert target.read_bytes() == data


def test_writer_to_directory_or_missing_folder(tmp_path):
    with pytest.raises(IsADirectoryError):
        ContainerWriter(tmp_path)
    with pytest.raises(FileNotFoundError):
        ContainerWriter(tmp_path / "missing" / "x.tec")


# -- reader: bad files ------------------------------------------------------------------------------
def test_open_missing_directory_empty(tmp_path):
    with pytest.raises(FileNotFoundError):
        ContainerReader(tmp_path / "nope.tec")
    with pytest.raises((TecFormatError, IsADirectoryError)):
        ContainerReader(tmp_path)
    empty = tmp_path / "empty.tec"
    empty.write_bytes(b"")
    with pytest.raises(TecFormatError, match="empty"):
        ContainerReader(empty)
    with pytest.raises(TecFormatError, match="empty"):
        ContainerReader(b"")


def test_truncated_at_every_cut_point(sample, tmp_path):
    _, _, data = sample
    _, hs, is_ = regions(data)
    assert PREFIX_SIZE < hs.start < hs.stop == is_.start < is_.stop == len(data)
    for cut in range(1, len(data)):
        with pytest.raises(TecFormatError, match="truncated") as info:
            ContainerReader(data[:cut])
        assert type(info.value) is TecFormatError, cut
    path = tmp_path / "cut.tec"
    path.write_bytes(data[:PREFIX_SIZE + 10])                # inside the first tile payload
    with pytest.raises(TecFormatError, match="truncated"):
        ContainerReader(path)


def test_tile_entry_beyond_end_of_file(sample):
    _, _, data = sample
    _, _, is_ = regions(data)
    bad = bytearray(data)
    entry = is_.start + 4 * INDEX_ENTRY_SIZE                # tile 4 = row 1, col 1
    struct.pack_into("<Q", bad, entry, len(data) - 3)
    with pytest.raises(TecFormatError, match=r"truncated: tile 4 \(row 1, col 1\)"):
        ContainerReader(bytes(refresh_crcs(bad)))
    struct.pack_into("<Q", bad, entry, 10)                  # inside the prefix
    with pytest.raises(TecFormatError, match="tile 4"):
        ContainerReader(bytes(refresh_crcs(bad)))


def test_flipped_bit_in_header_and_index(sample):
    _, _, data = sample
    _, hs, is_ = regions(data)
    for region, what in [(hs, "header"), (is_, "tile index")]:
        for pos in range(region.start, region.stop):
            for bit in (0, 5):
                bad = bytearray(data)
                bad[pos] ^= 1 << bit
                with pytest.raises(TecChecksumError, match=f"{what} CRC32"):
                    ContainerReader(bytes(bad))


def test_flipped_bit_in_prefix(sample):
    _, _, data = sample
    for pos in range(PREFIX_SIZE):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(TecFormatError) as info:
                ContainerReader(bytes(bad))
            if pos < 8:
                assert "magic" in str(info.value)
            elif pos in (8, 9) and bad[8] | bad[9] << 8 > 1:
                assert isinstance(info.value, TecVersionError)
            else:
                assert isinstance(info.value, TecChecksumError) or pos in (8, 9), (pos, bit)


def test_flipped_bit_in_tile_payload_names_the_tile(sample):
    _, _, data = sample
    r = ContainerReader(data)
    for index, e in enumerate(r.entries):
        for pos in (e.offset, e.offset + e.length // 2, e.offset + e.length - 1):
            bad = bytearray(data)
            bad[pos] ^= 0x10
            rb = ContainerReader(bytes(bad))                 # opening does not read payloads
            row, col = divmod(index, 3)
            with pytest.raises(TecChecksumError, match=fr"tile {index} \(row {row}, col {col}\)"):
                rb.read_tile(index)
            others = [i for i in range(len(r.entries)) if i != index]
            assert rb.read_tiles(others) == r.read_tiles(others)


def test_every_single_bit_flip_is_detected(sample):
    """No one-bit corruption anywhere goes unnoticed: it fails at open or at reading its tile."""
    _, _, data = sample
    want = ContainerReader(data).read_tiles(range(6))
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        try:
            r = ContainerReader(bytes(bad))
        except TecFormatError:
            continue
        got = []
        for i in range(6):
            try:
                got.append(r.read_tile(i))
            except TecChecksumError:
                got.append(None)
        assert None in got and all(g is None or g == w for g, w in zip(got, want)), pos


def test_wrong_magic_and_not_a_tec_file(sample, tmp_path):
    _, _, data = sample
    for bad in [b"GIF89a" + data[6:], b"II*\x00" + bytes(100), b"\x89TEC\r\n\x1a\x0b" + data[8:]]:
        with pytest.raises(TecFormatError, match="magic"):
            ContainerReader(bad)
    tif = REPO / "examples" / "scene_l2a.tif"
    if tif.exists():
        with pytest.raises(TecFormatError, match="magic"):
            ContainerReader(tif)


def _with_version(data: bytes, major: int, minor: int) -> bytes:
    bad = bytearray(data)
    struct.pack_into("<HH", bad, 8, major, minor)
    return bytes(refresh_crcs(bad))


def test_future_major_version_rejected(sample):
    _, _, data = sample
    with pytest.raises(TecVersionError, match=r"3\.0"):
        ContainerReader(_with_version(data, 3, 0))
    with pytest.raises(TecVersionError, match=r"3\.1"):           # shorter than a format 1 prefix
        ContainerReader(_with_version(data, 3, 1)[:40])
    with pytest.raises(TecFormatError, match="version 0"):
        ContainerReader(_with_version(data, 0, 9))


def test_future_minor_version_with_unknown_keys_is_readable(sample):
    header, _, data = sample
    obj = json.loads(header.to_json())
    obj["new_in_1_3"] = {"x": 1}
    newer = _with_version(replace_header(data, obj), 1, 3)
    r = ContainerReader(newer)
    assert r.version == (1, 3) and r.header == header
    assert r.read_tiles(range(6)) == ContainerReader(data).read_tiles(range(6))


def test_header_not_json_and_index_count_mismatch(sample):
    header, _, data = sample
    _, hs, is_ = regions(data)
    bad = bytearray(data)
    bad[hs.start + 1] ^= 0x40                    # breaks the zlib stream of the deflated header
    with pytest.raises(TecFormatError, match="deflated header"):
        ContainerReader(bytes(refresh_crcs(bad)))
    for deflate in (True, False):
        with pytest.raises(TecFormatError, match="JSON"):
            ContainerReader(replace_header(data, b'["not", "an object"', deflate=deflate))
    # a plain (not deflated) JSON header, prefix flags 0, is read as well
    plain = replace_header(data, json.loads(header.to_json()), deflate=False)
    assert ContainerReader(plain).header == header and ContainerReader(plain).flags == 0
    bigger = {**json.loads(header.to_json()), "width": 80, "tiles_x": 5}
    with pytest.raises(TecFormatError, match="index has 6 entries"):
        ContainerReader(replace_header(data, bigger))


def test_kind_mismatch_between_index_and_payload(sample):
    _, _, data = sample
    _, _, is_ = regions(data)
    bad = bytearray(data)
    struct.pack_into("<H", bad, is_.start + INDEX_ENTRY_SIZE + 16, 1)     # tile 1 now says classical
    r = ContainerReader(bytes(refresh_crcs(bad)))
    with pytest.raises(TecFormatError, match="tile 1.*kind 1"):
        r.read_tile(1)


def test_import_does_not_pull_in_torch():
    code = ("import sys, terracodec.format, terracodec.errors; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_headers_deflate_against_the_preset_dictionary(sample):
    """Writers deflate the header with HEADER_DICTIONARY (prefix flags 3): a georeferenced chip's
    header takes about 100 bytes. Plain-deflate headers (flags 1) still read; unknown flags do not."""
    import re

    from terracodec import format as fmt

    header, _, data = sample
    r = ContainerReader(data)
    assert r.flags == fmt.FLAG_HEADER_DEFLATE | fmt.FLAG_HEADER_DICTIONARY
    plain = replace_header(data, json.loads(header.to_json()))
    assert ContainerReader(plain).flags == fmt.FLAG_HEADER_DEFLATE and ContainerReader(plain).header == header
    bad = bytearray(data)
    struct.pack_into("<I", bad, 12, 4 | fmt.FLAG_HEADER_DEFLATE)
    with pytest.raises(TecFormatError, match="prefix flags"):
        ContainerReader(bytes(refresh_crcs(bad)))
    # a UTM chip (WKT as GDAL writes it, model record, stats) compresses to a small header
    wkt = ('PROJCS["WGS 84 / UTM zone 35N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
           '298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY['
           '"EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]],'
           'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",27],'
           'PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],'
           'UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",EAST],AXIS["Northing",NORTH],'
           'AUTHORITY["EPSG","32635"]]')
    text = json.dumps({**json.loads(header.to_json()), "crs_wkt": wkt}, separators=(",", ":")).encode()
    deflater = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=fmt.HEADER_DICTIONARY)
    assert len(deflater.compress(text) + deflater.flush()) < 0.3 * len(zlib.compress(text, 9))
    # the GDAL plugin (C++) holds the same dictionary, byte for byte
    cpp = (Path(__file__).resolve().parent.parent / "gdal_plugin" / "tecdataset.cpp").read_text()
    block = cpp[cpp.index("kHeaderDictionary[] ="):cpp.index(";", cpp.index("kHeaderDictionary[] ="))]
    assert "".join(re.findall(r'R"TECDICT\((.*?)\)TECDICT"', block)).encode("ascii") == fmt.HEADER_DICTIONARY


def test_format_spec_lists_the_header_dictionary():
    """docs/FORMAT.md gives the preset dictionary byte for byte (its code block, lines joined)."""
    from terracodec.format import HEADER_DICTIONARY

    spec = (REPO / "docs" / "FORMAT.md").read_text()
    start = spec.index("```\n", spec.index("preset dictionary")) + 4
    block = spec[start:spec.index("\n```", start)]
    assert "".join(block.split("\n")).encode("ascii") == HEADER_DICTIONARY


# -- format 2 ------------------------------------------------------------------------------------------
@pytest.fixture
def sample2():
    """(header, image, format 2 container bytes) of the same grid, with nodata pixels (mask mode
    1) in one tile."""
    header = make_header(width=40, height=20, tile_size=16)
    image = raster(header)
    image[:, 0, :5] = 0
    return header, image, write_container_bytes(header, lossless_payloads(header, image))


def test_format2_round_trip_is_smaller_and_bare(sample2):
    header, image, data = sample2
    payloads = lossless_payloads(header, image)
    v1 = write_container_bytes(header, payloads, format_version=1)
    r = ContainerReader(data)
    assert data[:8] == MAGIC and r.version == (2, 0)
    assert all(e.bare and e.kind == KIND_LOSSLESS for e in r.entries)
    assert [r.read_tile(i) for i in range(6)] == [p for p, _ in payloads]      # payloads come back whole
    assert r.header == ContainerReader(v1).header
    # 64-byte prefix -> 25 bytes with the trailer; 24-byte entries -> 7; about 27 header bytes per tile
    assert len(v1) - len(data) >= (64 - 25) + 6 * (24 - 7) + 6 * 25
    assert tilecodec.TileHeader(r.read_tile(0)).mask is not None


def test_format2_arbitrary_payloads_are_stored_as_given():
    header = make_header(width=5, height=3, tile_size=2, count=1, bands=["B04"], nodata=None)
    tiles = [(bytes([i]) * i, i % 3) for i in range(header.index_count)]     # tile 0 is empty
    r = ContainerReader(write_container_bytes(header, tiles))
    assert [r.read_tile(i) for i in range(len(tiles))] == [p for p, _ in tiles]
    assert [(e.kind, e.bare) for e in r.entries] == [(k, False) for _, k in tiles]


def test_format2_payload_that_disagrees_with_the_header_is_refused(tmp_path):
    header = make_header(width=4, height=4, tile_size=4, count=1, bands=["B04"], nodata=None)
    for tile, nodata in ((np.ones((1, 4, 3), np.uint16), None),          # wrong width
                         (np.ones((1, 4, 4), np.uint8), None),           # wrong dtype
                         (np.ones((1, 4, 4), np.uint16), 7)):            # wrong nodata
        target = tmp_path / "x.tec"
        with pytest.raises(TecInputError, match="does not match the header"):
            with ContainerWriter(target) as w:
                w.add_tile(tilecodec.encode_lossless(tile, nodata), KIND_LOSSLESS)
                w.finish(header)
        assert list(tmp_path.iterdir()) == []


def test_format2_truncated_at_every_cut_point(sample2):
    _, _, data = sample2
    for cut in range(len(data)):
        with pytest.raises(TecFormatError):
            ContainerReader(data[:cut])


def test_format2_every_single_bit_flip_is_detected(sample2):
    """A flipped bit anywhere gives a TecFormatError (or subclass) at open or when its tile is
    read, never wrong pixels."""
    header, image, data = sample2
    payloads = [p for p, _ in lossless_payloads(header, image)]
    for pos in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            try:
                r = ContainerReader(bytes(bad))
                tiles = [r.read_tile(i) for i in range(6)]
            except TecFormatError:
                continue
            assert tiles == payloads and r.header == header, (pos, bit)
            raise AssertionError(f"flip at byte {pos} bit {bit} went unnoticed")


def test_format2_bad_index_is_a_format_error(sample2):
    header, _, data = sample2
    r = ContainerReader(data)
    head_len, index_len, _ = struct.unpack_from("<III", data, len(data) - 12)
    start = len(data) - 12 - index_len
    index = bytearray(data[start:len(data) - 12])

    def rebuilt(new_index: bytes) -> bytes:
        body = data[:start] + new_index
        lengths = struct.pack("<II", head_len, len(new_index))
        return body + lengths + struct.pack("<I", zlib.crc32(data[:13] + body[len(body) - len(new_index) - head_len:] + lengths))

    assert ContainerReader(rebuilt(bytes(index))).header == header        # the helper itself is right
    longer = bytearray(index)
    longer[1] += 1                                          # tile 0 one byte longer: payloads overrun
    with pytest.raises(TecFormatError, match="corrupt tile index"):
        ContainerReader(rebuilt(bytes(longer)))
    with pytest.raises(TecFormatError, match="corrupt tile index"):
        ContainerReader(rebuilt(bytes(index) + b"\x00"))   # bytes left over
    with pytest.raises(TecFormatError):
        ContainerReader(rebuilt(bytes(index[:-3])))         # an entry short
    assert len(r.entries) == 6


def test_format2_header_is_raw_deflate(sample2):
    """Format 2 writers store the header as a raw deflate stream against the preset dictionary
    (prefix flags 7: no zlib wrapper, its dictionary id and Adler-32 are 10 bytes the CRC32 makes
    moot). Format 1 files do not take flag bit 2."""
    from terracodec import format as fmt

    header, _, data = sample2
    r = ContainerReader(data)
    assert r.flags == fmt.FLAG_HEADER_DEFLATE | fmt.FLAG_HEADER_DICTIONARY | fmt.FLAG_HEADER_RAW == 7
    text = header.to_json().encode()
    assert len(fmt.deflate_header(text)) == len(fmt.deflate_header(text, raw=False)) - 10
    assert zlib.decompressobj(-15, zdict=fmt.HEADER_DICTIONARY).decompress(fmt.deflate_header(text)) == text
    # the same file with flag bit 2 cleared (and its CRC made right again) does not inflate
    bad = bytearray(data)
    bad[12] = fmt.FLAG_HEADER_DEFLATE | fmt.FLAG_HEADER_DICTIONARY
    head_len, index_len, _ = struct.unpack_from("<III", bad, len(bad) - 12)
    start = len(bad) - 12 - index_len - head_len
    struct.pack_into("<I", bad, len(bad) - 4, zlib.crc32(bytes(bad[:13]) + bytes(bad[start:len(bad) - 4])))
    with pytest.raises(TecFormatError, match="deflated header"):
        ContainerReader(bytes(bad))
    # a format 1 file with flag bit 2 is refused
    v1 = write_container_bytes(header, lossless_payloads(header, raster(header)), format_version=1)
    bad1 = bytearray(v1)
    struct.pack_into("<I", bad1, 12, 7)
    with pytest.raises(TecFormatError, match="prefix flags"):
        ContainerReader(bytes(refresh_crcs(bad1)))
