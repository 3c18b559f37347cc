# SPDX-License-Identifier: Apache-2.0
"""Sentinel-2 band names and the defaults used when an array comes without names."""
from __future__ import annotations

from typing import Sequence

from .errors import TecBandError

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
MAX_BANDS = len(S2_BANDS)

# Band sets common enough that an unnamed array with that many bands is unambiguous.
DEFAULT_BANDS_BY_COUNT = {
    13: S2_BANDS,                                                                   # L1C
    12: tuple(b for b in S2_BANDS if b != "B10"),                                   # L2A
    10: ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),     # 10 + 20 m bands
    4: ("B02", "B03", "B04", "B08"),                                                # 10 m bands
}

_ALIASES = {"B1": "B01", "B2": "B02", "B3": "B03", "B4": "B04", "B5": "B05", "B6": "B06",
            "B7": "B07", "B8": "B08", "B9": "B09", "B08A": "B8A"}


def normalize_band_name(name: str) -> str:
    """Return the canonical S2 spelling of ``name`` ('b2' -> 'B02'), or raise TecBandError."""
    key = str(name).strip().upper()
    key = _ALIASES.get(key, key)
    if key not in S2_BANDS:
        raise TecBandError(f"unknown band name {name!r}; expected Sentinel-2 names such as {', '.join(S2_BANDS)}")
    return key


def resolve_bands(bands: Sequence[str] | str | None, count: int) -> tuple[str, ...]:
    """Validate band names for an array with ``count`` bands (None -> the default for that count)."""
    if bands is None:
        if count not in DEFAULT_BANDS_BY_COUNT:
            raise TecBandError(
                f"an array with {count} bands needs explicit band names (bands=[...]); "
                f"defaults exist only for {sorted(DEFAULT_BANDS_BY_COUNT)} bands")
        return DEFAULT_BANDS_BY_COUNT[count]
    if isinstance(bands, str):
        bands = [b for b in bands.split(",") if b.strip()]
    names = tuple(normalize_band_name(b) for b in bands)
    if len(names) != count:
        raise TecBandError(f"{len(names)} band names given for an array with {count} bands")
    if len(set(names)) != len(names):
        raise TecBandError(f"duplicate band names in {list(names)}")
    return names
