"""AV1 still images for KLT components (the full-resolution group of kind 4 tiles).

On the 10 m bands of 512 x 512 val crops, libaom's intra coder (through libavif) needs 16-21 %
fewer bits than OpenJPEG at equal PSNR at speed 5, and 9-14 % at speed 6. AV1 codes at most 12 bits per
sample and 3 planes per image, so the int16 components are offset and divided by an integer step
to fit 12 bits, and coded 3 at a time as 4:4:4 images with the identity matrix (the planes are
coded as given, the first component as luma). A stored image is its AV1 data alone: the ~270 bytes of AVIF boxes around it
are rebuilt from the tile's shape and the 4-byte av1C record (:func:`avif_file`); an image whose
encoder output differs from that rebuild is stored whole. Layout in docs/FORMAT.md ("AV1 stream").

Pure numpy + imagecodecs (no torch).
"""
from __future__ import annotations

import struct

import numpy as np

from .anchors import codec_module
from .errors import TecFormatError

DEPTH = 12
PLANES = 3
# libaom speeds: the encoder walks the levels with fast codings (speed 8: 1-11 % more or fewer bits
# than JPEG 2000 on val 10 m groups, 1/4 the time of speed 6) and codes the chosen level again at
# SPEED (BEST_SPEED with effort "best": another 2-3 % off a tile's cost J for 1.6-2x the encode
# time).
WALK_SPEED = 8
SPEED = 6
BEST_SPEED = 5                   # the final codings with effort "best"
LEVELS = 63                      # level k codes with AV1 quantizer 63 - k (k = 0 coarsest, 62 finest)
# The quantizer step of each level in 12-bit samples, sqrt(12 x MSE) of uniform noise coded at that
# level (monotone; libaom speed 6). Only steers the encoder's level choice.
STEPS = (3999, 3998, 3995, 3954, 3769, 3283, 2842, 2419, 2140, 2040, 1715, 1590, 1590, 1369, 1369, 1156,
         1052, 1021, 905, 832, 832, 753, 680, 627, 585, 547, 519, 505, 430, 417, 417, 358, 327, 303, 303,
         277, 259, 252, 222, 206, 199, 190, 186, 167, 167, 166, 145, 135, 123, 119, 105, 95, 88, 78, 70,
         61, 51, 42, 31, 23, 16, 10, 5)
# With the identity matrix AV1's planes Y, U, V are the G, B, R of libavif's RGB: component 3i + k
# goes to plane k, so the first (largest) KLT component is luma, whose tools (chroma-from-luma
# prediction among them) serve the others (3 % fewer bits on a val crop than with it in V)
_RGB_OF_PLANE = np.array([1, 2, 0])
_HEAD = struct.Struct("<H")      # step; then int16 offsets, one per component
_IMAGE = struct.Struct("<BI")    # form (BARE or WHOLE), length; av1C before the data when BARE
BARE, WHOLE = 0, 1


def _quality(level: int) -> int:
    """libavif's quality (0-100) whose quantizer, ((100 - quality) * 63 + 50) // 100, is 63 - level."""
    for quality in range(101):
        if ((100 - quality) * 63 + 50) // 100 == LEVELS - level:
            return quality
    raise ValueError(f"AV1 level {level} out of range 0-{LEVELS - 1}")


def _box(kind: bytes, body: bytes, version_flags: int | None = None) -> bytes:
    if version_flags is not None:
        body = struct.pack(">I", version_flags) + body
    return struct.pack(">I", 8 + len(body)) + kind + body


def avif_file(data: bytes, h: int, w: int, av1c: bytes) -> bytes:
    """The AVIF file libavif writes around AV1 data ``data`` of one h x w 12-bit 4:4:4 image with
    identity matrix and the av1C record ``av1c``: ftyp, meta (hdlr, pitm, iloc, iinf, iprp with
    ispe, pixi, av1C, colr), mdat."""
    ftyp = _box(b"ftyp", b"avif" + bytes(4) + b"avifmif1miaf")
    hdlr = _box(b"hdlr", bytes(4) + b"pict" + bytes(13), 0)
    pitm = _box(b"pitm", struct.pack(">H", 1), 0)
    infe = _box(b"infe", struct.pack(">HH", 1, 0) + b"av01Color\x00", 2 << 24)
    iinf = _box(b"iinf", struct.pack(">H", 1) + infe, 0)
    ipco = _box(b"ipco", _box(b"ispe", struct.pack(">II", w, h), 0)
                + _box(b"pixi", bytes([PLANES]) + bytes([DEPTH]) * PLANES, 0)
                + _box(b"av1C", av1c)
                + _box(b"colr", b"nclx" + struct.pack(">HHHB", 2, 2, 0, 0x80)))
    ipma = _box(b"ipma", struct.pack(">IHB", 1, 1, 4) + bytes([0x01, 0x02, 0x83, 0x04]), 0)
    iprp = _box(b"iprp", ipco + ipma)

    def iloc(offset):
        return _box(b"iloc", struct.pack(">BBHHHHII", 0x44, 0, 1, 1, 0, 1, offset, len(data)), 0)

    # the extent offset is where mdat's data starts, which depends on the boxes before it
    head_len = len(ftyp) + len(_box(b"meta", hdlr + pitm + iloc(0) + iinf + iprp, 0)) + 8
    meta = _box(b"meta", hdlr + pitm + iloc(head_len) + iinf + iprp, 0)
    return ftyp + meta + struct.pack(">I", 8 + len(data)) + b"mdat" + data


def _bare(avif: bytes, h: int, w: int) -> tuple[bytes, bytes] | None:
    """-> (av1C record, AV1 data) when ``avif`` is exactly avif_file of them, else None."""
    at = avif.find(b"av1C")
    mdat = avif.find(b"mdat")
    if at < 4 or mdat < 4:
        return None
    av1c, data = avif[at + 4:at + 8], avif[mdat + 4:]
    return (av1c, data) if avif_file(data, h, w, av1c) == avif else None


def sample_step(comps: np.ndarray) -> int:
    """The integer divisor that fits every component's span (max - min) into DEPTH bits."""
    flat = comps.reshape(comps.shape[0], -1).astype(np.int64)
    span = int((flat.max(axis=1) - flat.min(axis=1)).max()) if flat.size else 0
    return max(1, -(-span // (2 ** DEPTH - 1)))


def encode(comps: np.ndarray, level: int, speed: int = SPEED) -> bytes:
    """int16 components (n, h, w) -> the AV1 stream at ``level`` (0-62, higher is finer), coded at
    libaom ``speed``."""
    codec = codec_module("_avif")
    n, h, w = comps.shape
    lo = comps.reshape(n, -1).min(axis=1).astype(np.int64)
    step = sample_step(comps)
    # round half up in integers: the same samples on every platform
    samples = (comps.astype(np.int64) - lo[:, None, None] + step // 2) // step
    parts = [_HEAD.pack(step), lo.astype("<i2").tobytes()]
    quality = _quality(level)
    for first in range(0, n, PLANES):
        planes = np.zeros((h, w, PLANES), np.uint16)
        group = samples[first:first + PLANES]
        planes[..., _RGB_OF_PLANE[:len(group)]] = np.moveaxis(group, 0, -1)
        avif = bytes(codec.avif_encode(planes, level=quality, speed=speed, bitspersample=DEPTH,
                                       pixelformat="yuv444", matrix=0, numthreads=1))
        bare = _bare(avif, h, w)
        if bare is None:
            parts.append(_IMAGE.pack(WHOLE, len(avif)) + avif)
        else:
            parts.append(_IMAGE.pack(BARE, len(bare[1])) + bare[0] + bare[1])
    return b"".join(parts)


def decode(stream: bytes, shape: tuple) -> np.ndarray:
    """The AV1 stream of ``shape`` = (n, h, w) components -> int16 components; TecFormatError when
    it is truncated, corrupt or of another shape."""
    codec = codec_module("_avif")
    n, h, w = shape
    pos = _HEAD.size + 2 * n
    if len(stream) < pos:
        raise TecFormatError("AV1 stream truncated in its header")
    (step,) = _HEAD.unpack_from(stream)
    lo = np.frombuffer(stream, "<i2", n, _HEAD.size).astype(np.int64)
    if step == 0:
        raise TecFormatError("AV1 stream has step 0")
    out = np.empty((n, h, w), np.int64)
    for first in range(0, n, PLANES):
        if len(stream) < pos + _IMAGE.size:
            raise TecFormatError("AV1 stream truncated in an image header")
        form, length = _IMAGE.unpack_from(stream, pos)
        pos += _IMAGE.size
        if form == BARE:
            av1c, pos = stream[pos:pos + 4], pos + 4
        elif form != WHOLE:
            raise TecFormatError(f"AV1 stream has an image of unknown form {form}")
        data = stream[pos:pos + length]
        pos += length
        if len(data) != length or (form == BARE and len(av1c) != 4):
            raise TecFormatError("AV1 stream truncated in an image")
        avif = avif_file(data, h, w, av1c) if form == BARE else data
        try:
            planes = codec.avif_decode(avif, numthreads=1)
        except Exception as exc:          # imagecodecs raises its own AvifError
            raise TecFormatError(f"corrupt AV1 image in a kind 4 tile: {exc}") from None
        if planes.shape != (h, w, PLANES) or planes.dtype != np.uint16:
            raise TecFormatError(f"AV1 image decoded to {planes.shape} {planes.dtype}, expected ({h}, {w}, {PLANES}) uint16")
        count = min(PLANES, n - first)
        out[first:first + count] = np.moveaxis(planes[..., _RGB_OF_PLANE[:count]], -1, 0)
    if pos != len(stream):
        raise TecFormatError("AV1 stream has trailing bytes")
    values = out * step + lo[:, None, None]
    return np.clip(values, -32768, 32767).astype(np.int16)
