# SPDX-License-Identifier: Apache-2.0
"""The ``.tec`` container (docs/FORMAT.md): prefix, opaque tile payloads, JSON header, tile index.

Writers write format 2 (a compact prefix and index, and tile payloads stored without the fields
of their common header that the container already holds); readers read formats 1 and 2.

Standard library + numpy only (through :mod:`terracodec.tilecodec`): reading a container needs no torch.

    header = TecHeader(width=..., height=..., count=..., dtype="uint16", bands=[...], tile_size=256)
    with ContainerWriter("out.tec") as w:           # temp file + rename: no partial file on failure
        for payload, kind in tiles:                 # in index order
            w.add_tile(payload, kind)
        w.finish(header)

    with ContainerReader("out.tec") as r:           # validates prefix, header, index on open
        for i in r.header.tiles_for_window(0, 0, 100, 100):
            payload = r.read_tile(i)                # reads and CRC-checks only this payload
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import secrets
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import TecChecksumError, TecFormatError, TecInputError, TecVersionError
from .tilecodec import COMMON_HEAD, KINDS, TILE_MAGIC, dtype_code, nodata_field

__all__ = [
    "MAGIC", "VERSION", "PREFIX_SIZE", "INDEX_ENTRY_SIZE", "MAX_HEADER_SIZE", "DTYPES", "KINDS",
    "TecHeader", "TileEntry", "ContainerWriter", "ContainerReader", "write_container_bytes", "peek",
]

MAGIC = b"\x89TEC\r\n\x1a\n"
VERSION = (2, 0)                        # what writers write; readers read majors 1 and 2
READ_MAJORS = (1, 2)
PREFIX_SIZE = 64                        # format 1: fixed prefix and index entry sizes
INDEX_ENTRY_SIZE = 24
MAX_HEADER_SIZE = 64 * 1024 * 1024      # readers reject larger headers (the GDAL driver does too)
FLAG_HEADER_DEFLATE = 1                  # prefix flags bit 0: the JSON header is zlib-compressed
FLAG_HEADER_DICTIONARY = 2               # prefix flags bit 1: ... with HEADER_DICTIONARY as preset dictionary
FLAG_HEADER_RAW = 4                      # prefix flags bit 2 (format 2): ... as raw deflate, without the zlib
                                         # wrapper (its dictionary id and Adler-32: 10 bytes the CRC32 makes moot)
HEADER_FLAGS_V2 = FLAG_HEADER_DEFLATE | FLAG_HEADER_DICTIONARY | FLAG_HEADER_RAW

# zlib preset dictionary of deflated headers (flag bit 1; frozen: docs/FORMAT.md lists it). A typical
# header, with the WKT GDAL writes for a UTM zone and the shipped models, so that a small file pays
# only for what differs from it (a chip's header: about 360 -> 55 bytes without CRS, 700 -> 100
# with a UTM one).
HEADER_DICTIONARY = (
    '"crs_wkt":"GEOGCS[\\"WGS 84\\",DATUM[\\"WGS_1984\\",SPHEROID[\\"WGS 84\\",6378137,298.257223563,'
    'AUTHORITY[\\"EPSG\\",\\"7030\\"]],AUTHORITY[\\"EPSG\\",\\"6326\\"]],PRIMEM[\\"Greenwich\\",0,'
    'AUTHORITY[\\"EPSG\\",\\"8901\\"]],UNIT[\\"degree\\",0.0174532925199433,AUTHORITY[\\"EPSG\\",\\"9122\\"]],'
    'AXIS[\\"Latitude\\",NORTH],AXIS[\\"Longitude\\",EAST],AUTHORITY[\\"EPSG\\",\\"4326\\"]]",'
    '"dates":["2021-06-01","2021-06-11","2021-06-21"],"keyframe_interval":8,"temporal_tiles":0,'
    '"model":{"name":"tec-tt-v1","sha256":"bfdba5c5488bd4518626ffceebd7d274bbfd4034a5671541e208edb6cd7e2b46"},'
    '"model":{"name":"lossless","sha256":null},"dtype":"uint16","nodata":0,'
    '{"width":1068,"height":1068,"count":12,"dtype":"int16",'
    '"bands":["B01","B02","B03","B04","B05","B06","B07","B08","B8A","B09","B10","B11","B12"],'
    '"tile_size":512,"tile_overlap":4,"nodata":null,'
    '"crs_wkt":"PROJCS[\\"WGS 84 / UTM zone 32N\\",GEOGCS[\\"WGS 84\\",DATUM[\\"WGS_1984\\",'
    'SPHEROID[\\"WGS 84\\",6378137,298.257223563,AUTHORITY[\\"EPSG\\",\\"7030\\"]],AUTHORITY[\\"EPSG\\",\\"6326\\"]],'
    'PRIMEM[\\"Greenwich\\",0,AUTHORITY[\\"EPSG\\",\\"8901\\"]],UNIT[\\"degree\\",0.0174532925199433,'
    'AUTHORITY[\\"EPSG\\",\\"9122\\"]],AUTHORITY[\\"EPSG\\",\\"4326\\"]],PROJECTION[\\"Transverse_Mercator\\"],'
    'PARAMETER[\\"latitude_of_origin\\",0],PARAMETER[\\"central_meridian\\",9],PARAMETER[\\"scale_factor\\",0.9996],'
    'PARAMETER[\\"false_easting\\",500000],PARAMETER[\\"false_northing\\",10000000],PARAMETER[\\"false_northing\\",0],'
    'UNIT[\\"metre\\",1,AUTHORITY[\\"EPSG\\",\\"9001\\"]],AXIS[\\"Easting\\",EAST],AXIS[\\"Northing\\",NORTH],'
    'AUTHORITY[\\"EPSG\\",\\"32632\\"]]","geotransform":[600000.0,10.0,0.0,5000000.0,0.0,-10.0],'
    '"tiles_x":1,"tiles_y":1,"dates":[null],"levels":1,"keyframe_interval":null,'
    '"model":{"name":"tec-hp-v1","sha256":"b0b0e93c9cbea97ef442665b8bb99253ab9d56a8d485eb94db1a829f49796836"},'
    '"quality":5,"stats":{"fallback_tiles":1,"lossless_tiles":0,"learned_tiles":0,"coarse_grid_tiles":1,'
    '"floor_tiles":0,"compression_ratio":100.0},"metadata":{},"created_by":"terracodec 0.1.0"}'
).encode("ascii")
DTYPES = ("uint8", "int16", "uint16")

_PREFIX = struct.Struct("<8sHHIQIIQII12x")     # bytes 0..59; bytes 60..63 hold its CRC32
_CRC = struct.Struct("<I")
_ENTRY = struct.Struct("<QIIH6x")
# Format 2: a prefix of magic, major, minor and u8 flags; at the end of the file a trailer of the
# header and index lengths and a CRC32 of prefix, header, index and those lengths (docs/FORMAT.md).
_PREFIX2_HEAD = struct.Struct("<8sHHB")
PREFIX2_SIZE = _PREFIX2_HEAD.size       # 13 bytes
_TRAILER = struct.Struct("<III")
BARE = 0x80                             # format 2 index kind bit 7: the payload is stored bare
assert _PREFIX.size == PREFIX_SIZE - 4 and _ENTRY.size == INDEX_ENTRY_SIZE

_DTYPE_RANGE = {"uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}
_MAX_BANDS = 13
_MAX_U32 = 2**32 - 1
_MAX_DIM = 2**31 - 1
_MAX_TILE = 65535                       # tile payload headers store height/width as u16
_REQUIRED = ("width", "height", "count", "dtype", "bands", "tile_size", "tiles_x", "tiles_y",
             "model", "quality")


def deflate_header(text: bytes, raw: bool = True) -> bytes:
    """A header's JSON as stored: deflated against HEADER_DICTIONARY, as a raw deflate stream (format 2,
    prefix flags 7) or a zlib stream (``raw=False``: format 1, flags 3). A small chip's header (band
    names, CRS WKT, model sha256) was ~40 % of its file with plain deflate."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15 if raw else 15, 9, zlib.Z_DEFAULT_STRATEGY,
                                zdict=HEADER_DICTIONARY)
    return deflater.compress(text) + deflater.flush()


def _crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


# -- format 2 pieces ---------------------------------------------------------------------------------
def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_leb128(buf, pos: int, what: str) -> tuple[int, int]:
    """-> (value, position after it); at most 5 bytes (a u32)."""
    value = 0
    for shift in range(0, 35, 7):
        if pos >= len(buf):
            raise TecFormatError(f"{what} truncated")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value > _MAX_U32:
                break
            return value, pos
    raise TecFormatError(f"{what}: a length does not fit 32 bits")


def bare_tile(payload) -> tuple[bytes, tuple] | None:
    """Format 2 storage of a TEC tile payload: ``(stored bytes, (kind, dtype code, count, height,
    width, nodata field))``, the stored bytes being its param byte, mask mode, LEB128 mask length
    (when the mode is not 0), mask and body; the rest of its common header and its CRC32 come back
    from the container (:func:`expand_tile`). None when ``payload`` is not a well-formed payload."""
    data = memoryview(payload).cast("B")
    if len(data) < COMMON_HEAD.size + 4 or data[:4] != TILE_MAGIC:
        return None
    _, kind, code, count, param, height, width, mode, _, mask_len = COMMON_HEAD.unpack_from(data)
    end = COMMON_HEAD.size + mask_len
    if (mode == 0 and mask_len) or end > len(data) - 4 or \
            _crc(data[:-4]) != _CRC.unpack_from(data, len(data) - 4)[0]:
        return None
    stored = bytes((param, mode)) + (_leb128(mask_len) if mode else b"") + bytes(data[COMMON_HEAD.size:-4])
    # the nodata field as bytes: NaN == NaN must hold when it is compared with the header's
    return stored, (kind, code, count, height, width, bytes(data[13:21]))


def expand_tile(stored, kind: int, dtype: str, count: int, height: int, width: int, nodata) -> bytes:
    """The payload (with its CRC32) of a bare tile: the inverse of :func:`bare_tile`."""
    if len(stored) < 2:
        raise TecFormatError(f"bare tile payload too short ({len(stored)} bytes)")
    param, mode = stored[0], stored[1]
    pos, mask_len = 2, 0
    if mode:
        mask_len, pos = _read_leb128(stored, 2, "bare tile payload")
        if pos + mask_len > len(stored):
            raise TecFormatError("bare tile payload truncated inside its nodata mask")
    payload = COMMON_HEAD.pack(TILE_MAGIC, kind, dtype_code(dtype), count, param, height, width, mode,
                               nodata_field(nodata), mask_len) + bytes(stored[pos:])
    return payload + _CRC.pack(_crc(payload))


def _default_created_by() -> str:
    try:
        from importlib.metadata import version

        return f"terracodec {version('terracodec')}"
    except Exception:                   # not installed (running from a checkout)
        return "terracodec"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _bad(name: str, why: str) -> TecFormatError:
    return TecFormatError(f"invalid .tec header: '{name}' {why}")


def _int_in(name: str, v, lo: int, hi: int) -> int:
    if not _is_int(v):
        raise _bad(name, f"must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise _bad(name, f"must be in {lo}..{hi}, got {v}")
    return v


@dataclass(kw_only=True)
class TecHeader:
    """The JSON header. Construction validates every field (:class:`TecFormatError` on a bad one);
    ``tiles_x``/``tiles_y`` are computed from width, height and tile_size when left out."""

    width: int
    height: int
    count: int
    dtype: str
    bands: list
    tile_size: int
    tile_overlap: int = 0
    nodata: int | float | None = None
    crs_wkt: str | None = None
    geotransform: list | None = None
    tiles_x: int | None = None
    tiles_y: int | None = None
    dates: list = field(default_factory=lambda: [None])
    levels: int = 1
    keyframe_interval: int | None = None
    model: dict = field(default_factory=lambda: {"name": "", "sha256": ""})
    quality: int = 5
    stats: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    created_by: str = field(default_factory=_default_created_by)

    def __post_init__(self):
        if _is_int(self.width) and _is_int(self.height) and _is_int(self.tile_size) and self.tile_size >= 1:
            if self.tiles_x is None:
                self.tiles_x = -(-self.width // self.tile_size)
            if self.tiles_y is None:
                self.tiles_y = -(-self.height // self.tile_size)
        self.validate()

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check types and ranges of every field (also normalizes lists/tuples); raises TecFormatError."""
        _int_in("width", self.width, 1, _MAX_DIM)
        _int_in("height", self.height, 1, _MAX_DIM)
        _int_in("count", self.count, 1, _MAX_BANDS)
        if self.dtype not in DTYPES:
            raise _bad("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.bands, (list, tuple)) or not all(isinstance(b, str) and b for b in self.bands):
            raise _bad("bands", f"must be a list of non-empty strings, got {self.bands!r}")
        self.bands = list(self.bands)
        if len(self.bands) != self.count:
            raise _bad("bands", f"lists {len(self.bands)} names for {self.count} bands")
        if len(set(self.bands)) != len(self.bands):
            raise _bad("bands", f"has duplicate names: {self.bands}")
        if self.nodata is not None:
            lo, hi = _DTYPE_RANGE[self.dtype]
            if not _is_number(self.nodata) or self.nodata != int(self.nodata) or not lo <= self.nodata <= hi:
                raise _bad("nodata", f"must be null or an integer value in {lo}..{hi} ({self.dtype}), "
                                     f"got {self.nodata!r}")
            self.nodata = int(self.nodata)
        if self.crs_wkt is not None and not isinstance(self.crs_wkt, str):
            raise _bad("crs_wkt", f"must be a string or null, got {type(self.crs_wkt).__name__}")
        if self.geotransform is not None:
            gt = self.geotransform
            if not isinstance(gt, (list, tuple)) or len(gt) != 6 or not all(_is_number(v) for v in gt):
                raise _bad("geotransform", f"must be null or 6 finite numbers, got {gt!r}")
            self.geotransform = [float(v) for v in gt]
        _int_in("tile_size", self.tile_size, 1, _MAX_TILE)
        _int_in("tile_overlap", self.tile_overlap, 0, self.tile_size // 4)
        want_x, want_y = -(-self.width // self.tile_size), -(-self.height // self.tile_size)
        if self.tiles_x != want_x or self.tiles_y != want_y or not (_is_int(self.tiles_x) and _is_int(self.tiles_y)):
            raise _bad("tiles_x/tiles_y", f"are {self.tiles_x!r}/{self.tiles_y!r}, but a {self.width}x"
                                          f"{self.height} raster in {self.tile_size}-pixel tiles has "
                                          f"{want_x}/{want_y}")
        if not isinstance(self.dates, (list, tuple)) or not self.dates:
            raise _bad("dates", f"must be a non-empty list, got {self.dates!r}")
        if not all(d is None or isinstance(d, str) for d in self.dates):
            raise _bad("dates", f"entries must be ISO date strings or null, got {self.dates!r}")
        self.dates = list(self.dates)
        _int_in("levels", self.levels, 1, 64)
        if self.keyframe_interval is not None:
            _int_in("keyframe_interval", self.keyframe_interval, 1, 65535)
        m = self.model
        if (not isinstance(m, dict) or not isinstance(m.get("name"), str)
                or not isinstance(m.get("sha256"), str)):
            raise _bad("model", f"must be an object with string 'name' and 'sha256', got {m!r}")
        sha = m["sha256"]
        if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise _bad("model", f"'sha256' must be empty or 64 lowercase hex digits, got {sha!r}")
        _int_in("quality", self.quality, 1, 8)
        if not isinstance(self.stats, dict):
            raise _bad("stats", f"must be an object, got {type(self.stats).__name__}")
        try:
            json.dumps(self.stats, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _bad("stats", f"is not JSON-serializable without NaN/inf ({exc})") from None
        if not isinstance(self.metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()):
            raise _bad("metadata", "must be an object mapping strings to strings")
        if not isinstance(self.created_by, str):
            raise _bad("created_by", "must be a string")
        if self.index_count > _MAX_U32:
            raise _bad("tile_size", f"gives {self.index_count} index entries (more than 2**32-1)")

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        self.validate()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes | bytearray | memoryview) -> "TecHeader":
        """Parse and validate a header; unknown keys are ignored, optional ones get their defaults."""
        if isinstance(text, memoryview):
            text = text.tobytes()
        try:
            if isinstance(text, (bytes, bytearray)):
                text = bytes(text).decode("utf-8")
            obj = json.loads(text, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise TecFormatError(f"invalid .tec header: not UTF-8 JSON ({exc})") from None
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Any) -> "TecHeader":
        if not isinstance(obj, dict):
            raise TecFormatError(f"invalid .tec header: must be a JSON object, got {type(obj).__name__}")
        missing = [k for k in _REQUIRED if k not in obj]
        if missing:
            raise TecFormatError(f"invalid .tec header: missing {', '.join(repr(k) for k in missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in obj.items() if k in known}
        kwargs.setdefault("created_by", "")     # not this library's name: we did not write it
        if kwargs.get("dates", [None]) is None:
            raise _bad("dates", "must be a non-empty list, got null")
        return cls(**kwargs)

    # -- geometry --------------------------------------------------------------------------------
    @property
    def tile_count(self) -> int:
        """Tiles per date and level (``tiles_x * tiles_y``)."""
        return self.tiles_x * self.tiles_y

    @property
    def index_count(self) -> int:
        return len(self.dates) * self.levels * self.tiles_x * self.tiles_y

    def entry_index(self, ty: int, tx: int, date: int = 0, level: int = 0) -> int:
        if not (0 <= ty < self.tiles_y and 0 <= tx < self.tiles_x and 0 <= date < len(self.dates)
                and 0 <= level < self.levels):
            raise IndexError(f"tile (row {ty}, col {tx}, date {date}, level {level}) is outside the "
                             f"{self.tiles_y}x{self.tiles_x} grid, {len(self.dates)} date(s), "
                             f"{self.levels} level(s)")
        return ((date * self.levels + level) * self.tiles_y + ty) * self.tiles_x + tx

    def tile_position(self, index: int) -> tuple[int, int, int, int]:
        """Entry index -> (date, level, tile row, tile column)."""
        if not _is_int(index) or not 0 <= index < self.index_count:
            raise IndexError(f"tile index {index!r} out of range 0..{self.index_count - 1}")
        rest, tx = divmod(index, self.tiles_x)
        rest, ty = divmod(rest, self.tiles_y)
        date, level = divmod(rest, self.levels)
        return date, level, ty, tx

    def tile_window(self, index: int) -> tuple[int, int, int, int]:
        """Entry index -> pixel window ``(row_off, col_off, height, width)`` (edge tiles are cropped).

        Only level 0 has a defined geometry (formats 1 and 2)."""
        _, level, ty, tx = self.tile_position(index)
        if level != 0:
            raise TecInputError(f"tile {index} is on level {level}; the format defines level 0 only")
        t = self.tile_size
        row, col = ty * t, tx * t
        return row, col, min(t, self.height - row), min(t, self.width - col)

    def coded_shape(self, index: int) -> tuple[int, int]:
        """Entry index -> (height, width) of the pixels its payload codes: the tile's window grown by
        ``tile_overlap`` on each side, clipped to the raster."""
        row, col, h, w = self.tile_window(index)
        o = self.tile_overlap
        return (min(self.height, row + h + o) - max(0, row - o),
                min(self.width, col + w + o) - max(0, col - o))

    def tiles_for_window(self, row_off: int, col_off: int, height: int, width: int,
                         date: int = 0, level: int = 0) -> list[int]:
        """Entry indexes (row-major) of the tiles a pixel window touches; the window must lie
        inside the raster and be at least 1x1."""
        if not all(_is_int(v) for v in (row_off, col_off, height, width, date, level)):
            raise TecInputError("window offsets and sizes must be integers")
        if height < 1 or width < 1 or row_off < 0 or col_off < 0 or \
                row_off + height > self.height or col_off + width > self.width:
            raise TecInputError(f"window rows {row_off}..{row_off + height}, cols {col_off}.."
                                f"{col_off + width} is empty or outside the {self.height}x{self.width} raster")
        if not 0 <= date < len(self.dates):
            raise TecInputError(f"date {date} out of range (the file has {len(self.dates)})")
        if level != 0:
            raise TecInputError(f"level {level}: the format defines level 0 only")
        t = self.tile_size
        rows = range(row_off // t, (row_off + height - 1) // t + 1)
        cols = range(col_off // t, (col_off + width - 1) // t + 1)
        return [self.entry_index(ty, tx, date, level) for ty in rows for tx in cols]


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


@dataclass(frozen=True)
class TileEntry:
    """One tile index entry: where the payload is, how long, its CRC32 and its kind."""

    offset: int
    length: int
    crc32: int
    kind: int
    bare: bool = False              # format 2: stored without its common header (expand_tile)

    def pack(self) -> bytes:
        """The format 1 entry."""
        return _ENTRY.pack(self.offset, self.length, self.crc32, self.kind)

    def pack2(self) -> bytes:
        """The format 2 entry: u8 kind (bit 7: bare), LEB128 length, u32 CRC32."""
        return bytes((self.kind | (BARE if self.bare else 0),)) + _leb128(self.length) + _CRC.pack(self.crc32)


# -- writer ---------------------------------------------------------------------------------------
class ContainerWriter:
    """Stream tile payloads into a container, then :meth:`finish` with the header.

    ``target`` is a path or a seekable binary file object. For a path, everything goes to a hidden
    temporary file next to it (``.<name>.tmp-<random>``) that is fsynced and renamed onto the path by
    :meth:`finish`; :meth:`abort` (called by ``__exit__`` on an exception) deletes it, so a failed
    write never leaves a partial file or touches an existing one. For a file object, offsets are
    relative to its position at construction and nothing is closed or deleted.
    """

    def __init__(self, target, format_version: int = VERSION[0]):
        if format_version not in READ_MAJORS:
            raise TecInputError(f"format_version must be one of {READ_MAJORS}, got {format_version!r}")
        self.format_version = format_version
        self._lock = threading.Lock()
        self._entries: list[TileEntry] = []
        self._bare_fields: list[tuple[int, tuple]] = []     # (entry, header fields a bare tile left out)
        self._done = False           # finished or aborted
        self._finished = False
        self.path = None
        self._tmp = None
        if isinstance(target, (str, os.PathLike)):
            self.path = os.fspath(target)
            if os.path.isdir(self.path):
                raise IsADirectoryError(f"{self.path} is a directory")
            folder, name = os.path.split(os.path.abspath(self.path))
            for _ in range(100):
                tmp = os.path.join(folder, f".{name}.tmp-{secrets.token_hex(6)}")
                try:
                    self._f = open(tmp, "xb")
                    break
                except FileExistsError:
                    continue
            else:               # pragma: no cover
                raise FileExistsError(f"cannot create a temporary file next to {self.path}")
            self._tmp = tmp
            self._base = 0
        else:
            if not (hasattr(target, "write") and hasattr(target, "seek") and hasattr(target, "tell")):
                raise TypeError(f"expected a path or a seekable binary file object, got {type(target).__name__}")
            if hasattr(target, "seekable") and not target.seekable():
                raise TecInputError("the file object must be seekable (the prefix is patched at the end)")
            self._f = target
            self._base = target.tell()
        try:
            if format_version == 1:
                self._write(bytes(PREFIX_SIZE))         # patched by finish()
                self._pos = PREFIX_SIZE
            else:
                self._write(_PREFIX2_HEAD.pack(MAGIC, format_version, 0, HEADER_FLAGS_V2))
                self._pos = PREFIX2_SIZE
        except BaseException:
            self.abort()
            raise

    def _write(self, data) -> None:
        mv = memoryview(data)
        while mv:                        # raw file objects may write less than asked
            n = self._f.write(mv)
            if n is None:
                n = len(mv)
            mv = mv[n:]

    def _check_open(self) -> None:
        if self._done:
            raise TecInputError("the container writer is already finished or aborted")

    @property
    def tile_count(self) -> int:
        return len(self._entries)

    def add_tile(self, payload, kind: int, index: int | None = None) -> int:
        """Append one payload; returns its entry index. Tiles come in index order (``index``, if
        given, must be the next one). A payload starting with the tile magic must carry ``kind``."""
        if kind not in KINDS:
            raise TecInputError(f"unknown tile kind {kind!r}; the format knows {KINDS}")
        data = memoryview(payload).cast("B")
        if len(data) > _MAX_U32:
            raise TecInputError(f"tile payload of {len(data)} bytes does not fit a u32 length")
        if len(data) >= 5 and data[:4] == TILE_MAGIC and data[4] != kind:
            raise TecInputError(f"payload says kind {data[4]} but add_tile was given kind {kind}")
        with self._lock:
            self._check_open()
            n = len(self._entries)
            if index is not None and index != n:
                raise TecInputError(f"tiles must be added in index order: expected tile {n}, got {index}")
            bare = bare_tile(data) if self.format_version >= 2 else None
            if bare is not None:
                data = memoryview(bare[0])
                self._bare_fields.append((n, bare[1]))
            try:
                self._write(data)
            except BaseException:
                self.abort()
                raise
            self._entries.append(TileEntry(self._pos, len(data), _crc(data), kind, bare is not None))
            self._pos += len(data)
            return n

    def finish(self, header: TecHeader) -> None:
        """Write header and index, patch the prefix; for a path, fsync and rename onto it."""
        with self._lock:
            self._check_open()
            try:
                if not isinstance(header, TecHeader):
                    raise TypeError(f"finish() needs a TecHeader, got {type(header).__name__}")
                if header.levels != 1:
                    raise TecInputError("writers store one level (levels = 1)")
                head = header.to_json().encode("utf-8")
                if len(head) > MAX_HEADER_SIZE:
                    raise TecInputError(f"header is {len(head)} bytes; at most {MAX_HEADER_SIZE} allowed")
                head = deflate_header(head, raw=self.format_version >= 2)
                if len(self._entries) != header.index_count:
                    raise TecInputError(f"{len(self._entries)} tiles were added but the header's grid "
                                        f"needs {header.index_count}")
                if self.format_version == 1:
                    self._finish_v1(head)
                else:
                    self._finish_v2(header, head)
                self._f.flush()
                if self._tmp is not None:
                    os.fsync(self._f.fileno())
                    self._f.close()
                    os.replace(self._tmp, self.path)
                    self._tmp = None
                    _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            except BaseException:
                self._abort_locked()
                raise
            self._done = self._finished = True

    def _finish_v1(self, head: bytes) -> None:
        index = b"".join(e.pack() for e in self._entries)
        header_offset = self._pos
        index_offset = header_offset + len(head)
        self._write(head)
        self._write(index)
        prefix = _PREFIX.pack(MAGIC, 1, 0, FLAG_HEADER_DEFLATE | FLAG_HEADER_DICTIONARY, header_offset,
                              len(head), _crc(head), index_offset, len(self._entries), _crc(index))
        prefix += _CRC.pack(_crc(prefix))
        self._f.seek(self._base)
        self._write(prefix)
        self._f.seek(self._base + index_offset + len(index))

    def _finish_v2(self, header: "TecHeader", head: bytes) -> None:
        # a bare tile's header fields come back from the file's header: they must agree with it
        want = (dtype_code(header.dtype), header.count)
        nodata = struct.pack("<d", nodata_field(header.nodata))
        for n, (kind, code, count, height, width, tile_nodata) in self._bare_fields:
            shape = header.coded_shape(n)
            if (code, count) != want or (height, width) != shape or tile_nodata != nodata:
                raise TecInputError(
                    f"tile {n}'s payload (dtype code {code}, {count} bands, {height}x{width}, nodata "
                    f"{struct.unpack('<d', tile_nodata)[0]}) does not match the header (dtype "
                    f"{header.dtype}, {header.count} bands, {shape[0]}x{shape[1]}, nodata {header.nodata})")
        index = b"".join(e.pack2() for e in self._entries)
        if len(index) > _MAX_U32:
            raise TecInputError(f"the tile index is {len(index)} bytes; at most {_MAX_U32} fit")
        prefix = _PREFIX2_HEAD.pack(MAGIC, self.format_version, 0, HEADER_FLAGS_V2)
        lengths = _TRAILER.pack(len(head), len(index), 0)[:8]
        self._write(head)
        self._write(index)
        self._write(lengths + _CRC.pack(_crc(prefix + head + index + lengths)))

    def abort(self) -> None:
        """Give up: delete the temporary file (path targets). Safe to call more than once."""
        with self._lock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        self._done = True
        if self._tmp is not None:
            try:
                self._f.close()
            finally:
                try:
                    os.unlink(self._tmp)
                except FileNotFoundError:
                    pass
                self._tmp = None

    def __enter__(self) -> "ContainerWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.abort()
            raise TecInputError("ContainerWriter left without finish(); nothing was written")

    def __del__(self):
        if getattr(self, "_tmp", None) is not None:
            try:
                self._abort_locked()
            except Exception:
                pass


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_container_bytes(header: TecHeader, tiles: Iterable[tuple[bytes, int]],
                          format_version: int = VERSION[0]) -> bytes:
    """Build a whole container in memory from ``(payload, kind)`` pairs in index order."""
    buf = io.BytesIO()
    w = ContainerWriter(buf, format_version)
    for payload, kind in tiles:
        w.add_tile(payload, kind)
    w.finish(header)
    return buf.getvalue()


# -- reader ---------------------------------------------------------------------------------------
class ContainerReader:
    """Open and validate a container: a path, the whole file as bytes/bytearray/memoryview, or a
    seekable binary file object (``open(p, "rb")``, an fsspec file, GDAL's VSI files through the
    GDAL bridge): only the bytes needed are read from it.

    Opening checks magic, version, the prefix/header/index CRCs and that the header, index and
    every tile payload lie inside the file. :meth:`read_tile` reads only that payload (``os.pread``
    on paths; file objects are read under a lock, so one reader may be shared by threads) and
    checks its CRC. A file object is not closed by :meth:`close`: its owner closes it.
    """

    def __init__(self, source):
        self.path = None
        self._fd = None
        self._buf = None
        self._file = None
        self._lock = threading.Lock()
        if hasattr(source, "read") and hasattr(source, "seek"):
            self._file = source
            self.size = source.seek(0, os.SEEK_END)
            name = str(getattr(source, "name", None) or f"<{type(source).__name__}>")
        elif isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)
            name = self.path
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                import stat as _stat

                st = os.fstat(fd)
                if _stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(f"{self.path} is a directory, not a .tec file")
                self.size = st.st_size
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        else:
            try:
                mv = memoryview(source)
            except TypeError:
                raise TypeError(f"expected a path, a bytes-like object or a binary file object, "
                            f"got {type(source).__name__}") from None
            self._buf = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
            self.size = len(self._buf)
            name = "<bytes>"
        self.name = name
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- raw access --------------------------------------------------------------------------------
    def _read(self, offset: int, length: int) -> bytes:
        if self._buf is not None:
            data = bytes(self._buf[offset:offset + length])
        elif self._file is not None:
            with self._lock:
                self._file.seek(offset)
                data = bytes(self._file.read(length))
        elif self._fd is None:
            raise TecInputError(f"{self.name}: reader is closed")
        elif hasattr(os, "pread"):
            parts, got = [], 0
            while got < length:
                chunk = os.pread(self._fd, length - got, offset + got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        else:                         # pragma: no cover - platforms without pread
            with self._lock:
                os.lseek(self._fd, offset, os.SEEK_SET)
                data = os.read(self._fd, length)
        if len(data) != length:
            raise TecFormatError(f"{self.name}: file truncated (wanted {length} bytes at {offset}, "
                                 f"got {len(data)})")
        return data

    def _open(self) -> None:
        name, size = self.name, self.size
        if size == 0:
            raise TecFormatError(f"{name}: empty file, not a .tec container")
        head = self._read(0, min(size, PREFIX_SIZE))
        if head[:len(MAGIC)] != MAGIC[:len(head)]:
            raise TecFormatError(f"{name}: not a .tec file (bad magic {head[:8].hex(' ')})")
        if len(head) >= 12:
            major, minor = struct.unpack_from("<HH", head, 8)
            if major == 2:
                return self._open_v2(head)
            if major > max(READ_MAJORS) and size < PREFIX_SIZE:
                raise TecVersionError(f"{name}: written by .tec format version {major}.{minor}; this "
                                      f"reader supports {', '.join(f'{m}.x' for m in READ_MAJORS)}")
        if size < PREFIX_SIZE:
            raise TecFormatError(f"{name}: file truncated ({size} bytes, shorter than the "
                                 f"{PREFIX_SIZE}-byte prefix)")
        (_, major, minor, self.flags, header_off, header_len, header_crc, index_off, index_count,
         index_crc) = _PREFIX.unpack_from(head)
        (prefix_crc,) = _CRC.unpack_from(head, PREFIX_SIZE - 4)
        crc_ok = prefix_crc == _crc(head[:PREFIX_SIZE - 4])
        self.version = (major, minor)
        if major > max(READ_MAJORS):
            raise TecVersionError(
                f"{name}: written by .tec format version {major}.{minor}; this reader supports "
                f"{', '.join(f'{m}.x' for m in READ_MAJORS)}"
                + ("" if crc_ok else " (or the prefix is corrupt: its CRC32 does not match)"))
        if not crc_ok:
            raise TecChecksumError(f"{name}: prefix CRC32 mismatch (corrupt file)")
        if major < 1:
            raise TecFormatError(f"{name}: invalid format version {major}.{minor}")

        def region(what, off, length):
            if off < PREFIX_SIZE:
                raise TecFormatError(f"{name}: corrupt prefix ({what} offset {off} overlaps the prefix)")
            if off + length > size:
                raise TecFormatError(f"{name}: file truncated ({what} at {off}, {length} bytes, "
                                     f"ends beyond the end of the file at {size} bytes)")

        if header_len == 0 or header_len > MAX_HEADER_SIZE:
            raise TecFormatError(f"{name}: corrupt prefix (header length {header_len})")
        region("header", header_off, header_len)
        index_len = index_count * INDEX_ENTRY_SIZE
        region("tile index", index_off, index_len)
        raw_header = self._read(header_off, header_len)
        if _crc(raw_header) != header_crc:
            raise TecChecksumError(f"{name}: header CRC32 mismatch (corrupt file)")
        raw_index = self._read(index_off, index_len)
        if _crc(raw_index) != index_crc:
            raise TecChecksumError(f"{name}: tile index CRC32 mismatch (corrupt file)")
        self._parse_header(raw_header)
        if index_count != self.header.index_count:
            raise TecFormatError(f"{name}: tile index has {index_count} entries, the header's grid "
                                 f"needs {self.header.index_count}")
        entries = []
        for i, (off, length, crc, kind) in enumerate(_ENTRY.iter_unpack(raw_index)):
            if off < PREFIX_SIZE or off + length > size:
                what = "truncated" if off + length > size else "corrupt"
                raise TecFormatError(f"{name}: file {what}: {self._describe(i)} at offset {off}, "
                                     f"{length} bytes, lies outside the file ({size} bytes)")
            entries.append(TileEntry(off, length, crc, kind))
        self.entries: list[TileEntry] = entries

    def _open_v2(self, head: bytes) -> None:
        """Format 2: [13-byte prefix][payloads][header][index][12-byte trailer]."""
        name, size = self.name, self.size
        if size < PREFIX2_SIZE + _TRAILER.size:
            raise TecFormatError(f"{name}: file truncated ({size} bytes)")
        _, major, minor, self.flags = _PREFIX2_HEAD.unpack_from(head)
        self.version = (major, minor)
        trailer = self._read(size - _TRAILER.size, _TRAILER.size)
        header_len, index_len, crc = _TRAILER.unpack(trailer)
        header_off = size - _TRAILER.size - index_len - header_len
        if header_len == 0 or header_len > MAX_HEADER_SIZE or header_off < PREFIX2_SIZE:
            raise TecFormatError(f"{name}: file truncated or corrupt (the trailer gives a {header_len}-byte "
                                 f"header and a {index_len}-byte tile index in a {size}-byte file)")
        region = self._read(header_off, header_len + index_len)
        if _crc(head[:PREFIX2_SIZE] + region + trailer[:8]) != crc:
            raise TecChecksumError(f"{name}: prefix, header or tile index CRC32 mismatch (corrupt or "
                                   f"truncated file)")
        self._parse_header(region[:header_len])
        raw_index = region[header_len:]
        entries, pos, off = [], 0, PREFIX2_SIZE
        for i in range(self.header.index_count):
            if pos >= len(raw_index):
                raise TecFormatError(f"{name}: tile index has {i} entries, the header's grid needs "
                                     f"{self.header.index_count}")
            kind = raw_index[pos]
            length, pos = _read_leb128(raw_index, pos + 1, f"{name}: tile index")
            if pos + 4 > len(raw_index):
                raise TecFormatError(f"{name}: tile index truncated")
            (crc,) = _CRC.unpack_from(raw_index, pos)
            pos += 4
            entries.append(TileEntry(off, length, crc, kind & ~BARE, bool(kind & BARE)))
            off += length
        if pos != len(raw_index) or off != header_off:
            raise TecFormatError(f"{name}: corrupt tile index (its entries cover {off - PREFIX2_SIZE} "
                                 f"bytes of payloads, the file has {header_off - PREFIX2_SIZE}"
                                 + ("" if pos == len(raw_index) else ", and bytes are left after them") + ")")
        self.entries = entries

    def _parse_header(self, raw_header: bytes) -> None:
        name = self.name
        known = HEADER_FLAGS_V2 if self.version[0] >= 2 else FLAG_HEADER_DEFLATE | FLAG_HEADER_DICTIONARY
        if self.flags & ~known or (self.flags & (FLAG_HEADER_DICTIONARY | FLAG_HEADER_RAW)
                                   and not self.flags & FLAG_HEADER_DEFLATE):
            raise TecFormatError(f"{name}: unknown prefix flags {self.flags:#x} (a newer format?)")
        if self.flags & FLAG_HEADER_DEFLATE:
            wbits = -15 if self.flags & FLAG_HEADER_RAW else 15
            inflater = (zlib.decompressobj(wbits, zdict=HEADER_DICTIONARY) if self.flags & FLAG_HEADER_DICTIONARY
                        else zlib.decompressobj(wbits))
            try:
                raw_header = inflater.decompress(raw_header, MAX_HEADER_SIZE + 1)
            except zlib.error as exc:
                raise TecFormatError(f"{name}: corrupt deflated header ({exc})") from None
            if len(raw_header) > MAX_HEADER_SIZE or inflater.unconsumed_tail or not inflater.eof:
                raise TecFormatError(f"{name}: corrupt deflated header (too long or incomplete)")
        try:
            self.header = TecHeader.from_json(raw_header)
        except TecFormatError as exc:
            raise TecFormatError(f"{name}: {exc}") from None

    def _describe(self, index: int) -> str:
        date, level, ty, tx = self.header.tile_position(index)
        extra = (f", date {date}" if len(self.header.dates) > 1 else "") + \
                (f", level {level}" if self.header.levels > 1 else "")
        return f"tile {index} (row {ty}, col {tx}{extra})"

    # -- public ----------------------------------------------------------------------------------
    def read_tile(self, index: int) -> bytes:
        """The payload of entry ``index``, CRC-checked (:class:`TecChecksumError` names the tile)."""
        if not _is_int(index) or not 0 <= index < len(self.entries):
            raise IndexError(f"tile index {index!r} out of range 0..{len(self.entries) - 1}")
        e = self.entries[index]
        data = self._read(e.offset, e.length)
        if _crc(data) != e.crc32:
            raise TecChecksumError(f"{self.name}: {self._describe(index)}: payload CRC32 mismatch "
                                   f"(corrupt tile)")
        if e.bare:
            h = self.header
            try:
                data = expand_tile(data, e.kind, h.dtype, h.count, *h.coded_shape(index), h.nodata)
            except TecFormatError as exc:
                raise TecFormatError(f"{self.name}: {self._describe(index)}: {exc}") from None
        if len(data) >= 5 and data[:4] == TILE_MAGIC and data[4] != e.kind:
            raise TecFormatError(f"{self.name}: {self._describe(index)}: index says kind {e.kind}, "
                                 f"payload says kind {data[4]}")
        return data

    def read_tiles(self, indexes: Iterable[int]) -> list[bytes]:
        return [self.read_tile(i) for i in indexes]

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self._buf = None
        self._file = None

    @property
    def closed(self) -> bool:
        return self._fd is None and self._buf is None and self._file is None

    def __enter__(self) -> "ContainerReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def peek(source) -> TecHeader:
    """Open, validate and close a container; return its header."""
    with ContainerReader(source) as r:
        return r.header
