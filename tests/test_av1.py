# SPDX-License-Identifier: Apache-2.0
"""AV1 streams: the full-resolution group of kind 4 tiles coded as AV1 still images."""
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from terracodec import av1  # noqa: E402
from terracodec import multires as mr  # noqa: E402
from terracodec import tilecodec as tc  # noqa: E402
from terracodec.errors import TecFormatError  # noqa: E402
from test_multires import _groups, _same_pixels_in_a_one_thread_process  # noqa: E402  (tests/ is on sys.path)

DATA = Path(__file__).parent / "data"


def read(name):
    with rasterio.open(DATA / name) as src:
        return src.read()


def _components(shape, seed=0):
    """Smooth int16 fields with a span above 12 bits (so the sample step is > 1)."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(np.cumsum(rng.normal(0, 40, shape), axis=1), axis=2)
    return np.clip(x - x.mean(), -32768, 32767).astype(np.int16)


def _images(stream, n):
    """(form, length) of each image of an AV1 stream."""
    pos, out = av1._HEAD.size + 2 * n, []
    for _ in range(0, n, av1.PLANES):
        form, length = av1._IMAGE.unpack_from(stream, pos)
        out.append((form, length))
        pos += av1._IMAGE.size + (4 if form == av1.BARE else 0) + length
    return out


@pytest.mark.parametrize("shape", [(4, 96, 80), (3, 17, 300), (5, 33, 47), (1, 8, 8)])
def test_streams_round_trip_with_bare_images(shape):
    comps = _components(shape)
    step = av1.sample_step(comps)
    fine = av1.encode(comps, av1.LEVELS - 1)
    assert av1.encode(comps, av1.LEVELS - 1) == fine                   # same bytes twice
    back = av1.decode(fine, shape)
    assert back.dtype == np.int16 and back.shape == shape
    assert np.abs(back.astype(float) - comps).mean() < 2 * step
    # each image is stored without its AVIF boxes, which rebuild to libavif's own file
    assert [form for form, _ in _images(fine, shape[0])] == [av1.BARE] * -(-shape[0] // av1.PLANES)
    coarse = av1.encode(comps, 20)
    assert len(coarse) < len(fine)
    err = [np.mean((av1.decode(s, shape).astype(float) - comps) ** 2) for s in (coarse, fine)]
    assert err[0] > err[1]


def test_rebuilt_avif_boxes_are_libavifs():
    import imagecodecs

    planes = np.zeros((40, 24, 3), np.uint16)
    planes[..., 0] = np.arange(24) * 100
    avif = bytes(imagecodecs.avif_encode(planes, level=60, speed=av1.SPEED, bitspersample=12,
                                         pixelformat="yuv444", matrix=0, numthreads=1))
    av1c, data = av1._bare(avif, 40, 24)
    assert len(av1c) == 4 and av1.avif_file(data, 40, 24, av1c) == avif
    assert av1._bare(avif, 40, 25) is None                                # another shape: kept whole


def test_damaged_streams_give_format_errors():
    shape = (4, 32, 32)
    stream = av1.encode(_components(shape), 40)
    first = av1._HEAD.size + 2 * shape[0]
    cases = {
        "empty": b"",
        "truncated header": stream[:5],
        "truncated image": stream[:len(stream) // 2],
        "unknown form": stream[:first] + b"\x07" + stream[first + 1:],
        "trailing bytes": stream + b"\x00",
        "step 0": b"\x00\x00" + stream[2:],
        "garbage data": stream[:first + av1._IMAGE.size + 4] + bytes(len(stream) - first - av1._IMAGE.size - 4),
        "fewer components": stream,
    }
    for what, bad in cases.items():
        with pytest.raises(TecFormatError):
            av1.decode(bad, (3, 32, 32) if what == "fewer components" else shape)


def test_kind4_tile_with_an_av1_group_decodes_alike_everywhere(tmp_path):
    """A tile whose 10 m group is AV1 (plan forces the codec) decodes to the encoder's own view (its
    J), at 1/2 near block means of that, and to the same pixels in a one-thread process."""
    tile = read("l2a_12band_bigearthnet.tif")
    lam = tc.rd_lambda(5)
    levels = []
    payload, j, _ = tc.encode_multires(tile, None, lam, 66, plan=[("av1", 0)], levels=levels)
    assert levels[0][0] == "av1" and isinstance(_groups(payload)[0][6], mr.Av1Stream)
    assert tc.encode_multires(tile, None, lam, 66, plan=[("av1", 0)])[0] == payload
    out = tc.decode_tile(payload)
    assert tc.rd_cost(tile, out, None, len(payload), lam) == pytest.approx(j, rel=1e-12)
    ref = tc.reduce_pixels(out, 1).astype(float)
    got = tc.decode_tile_reduced(payload, 1).astype(float)
    assert got.shape == ref.shape and np.sqrt(np.mean((got - ref) ** 2)) < 0.25 * ref.std()
    _same_pixels_in_a_one_thread_process(tmp_path, payload)


def test_av1_flag_with_a_jpeg2000_stream_is_a_format_error():
    tile = read("l2a_12band_bigearthnet.tif")
    payload = tc.unseal(tc.encode_multires(tile, None, tc.rd_lambda(5), 66, plan=[("j2k", 66)])[0])
    body = tc.TileHeader(payload).body
    assert payload[body + 6] & tc.BARE_J2K                # the 10 m group's bare JPEG 2000 stream
    bad = payload[:body + 2] + bytes([payload[body + 2] | mr.AV1_STREAM]) + payload[body + 3:]
    with pytest.raises(TecFormatError, match="bad group header"):
        tc.decode_tile(tc.seal(bad))


@pytest.mark.shared_data
def test_the_encoder_keeps_av1_where_it_pays(shared_data):
    """On a 256 x 256 crop of the val throughput scene at quality 4, the tile's 10 m group is AV1,
    and the tile costs less than with JPEG 2000 there (3-7 % on val tiles at qualities 3-6)."""
    with rasterio.open(shared_data / "s2l2a" / "majortom_T48QUE-199U1099R_2020-02-23.tif") as src:
        tile = src.read(window=((400, 656), (400, 656)))
    lam = tc.rd_lambda(4)
    levels = []
    both, j_both, _ = tc.encode_multires(tile, None, lam, 66, levels=levels)
    assert levels[0][0] == "av1"
    _, j_j2k, _ = tc.encode_multires(tile, None, lam, 66, plan=[("j2k", 66)])
    assert j_both < 0.97 * j_j2k


def test_files_count_their_av1_tiles(tmp_path):
    """The header's stats (and `tec info`, GDAL's AV1_TILES) count the tiles whose reader needs an
    AV1 decoder: here the bigearthnet chip's one tile at quality 5, none at quality 3."""
    import terracodec as tec
    from terracodec.format import ContainerReader

    with rasterio.open(DATA / "l2a_12band_bigearthnet.tif") as src:
        chip, names = src.read(), list(src.descriptions)
    for quality, expected in ((5, 1), (3, 0)):
        path = tmp_path / f"q{quality}.tec"
        tec.write(path, chip, bands=names, quality=quality)
        reader = ContainerReader(path)
        counted = sum(tc.uses_av1(tc.kind4_groups(reader.read_tile(i)))
                      for i in range(reader.header.tile_count))
        assert tec.open(path).stats["av1_tiles"] == counted == expected


@pytest.mark.parametrize("system_lib", ["libaom.so.3", "libopenjp2.so.7"])
def test_other_codec_libraries_in_the_process_do_not_change_the_bytes(tmp_path, system_lib):
    """A host that loaded another libaom or OpenJPEG globally first (gdal_translate, QGIS) gets the
    same AV1 and JPEG 2000 bytes as a plain process: imagecodecs' modules bind to their own copies."""
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL(system_lib)
    except OSError:
        pytest.skip(f"{system_lib} is not installed here")
    comps = _components((4, 96, 80), seed=3)
    np.save(tmp_path / "comps.npy", comps)
    script = (
        "import ctypes, sys, numpy as np\n"
        f"ctypes.CDLL({system_lib!r}, mode=ctypes.RTLD_GLOBAL)\n"
        "from terracodec import av1, tilecodec as tc\n"
        "c = np.load(sys.argv[1])\n"
        "sys.stdout.buffer.write(av1.encode(c, 40) + b'|' + tc.j2k_stream(c, 60))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "comps.npy")], capture_output=True,
                         check=True).stdout
    assert out == av1.encode(comps, 40) + b"|" + tc.j2k_stream(comps, 60)

