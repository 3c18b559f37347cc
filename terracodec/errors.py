# SPDX-License-Identifier: Apache-2.0
"""Exceptions raised by terracodec. Standard library only, so every layer can import it."""


class TecError(Exception):
    """Root of every terracodec error."""


class TecFormatError(TecError, ValueError):
    """The bytes are not a valid .tec container or tile (bad magic, truncated, bad field)."""


class TecChecksumError(TecFormatError):
    """A CRC32 in the container does not match its data (bit rot, corruption)."""


class TecVersionError(TecFormatError):
    """The container was written by a newer, incompatible format version."""


class TecInputError(TecError, ValueError):
    """The array or arguments given to the encoder are unusable (dtype, NaN, shape, bands, quality)."""


class TecBandError(TecInputError):
    """Band names are unknown, duplicated or do not match the array."""


class TecModelError(TecError):
    """A model is unknown, or its weights are missing or do not match their sha256."""


class TecDecodeError(TecError, RuntimeError):
    """A tile could not be decoded although the container itself is well formed."""
