# SPDX-License-Identifier: Apache-2.0
"""JPEG 2000 decode at reduced resolution, through the system OpenJPEG library (ctypes).

imagecodecs decodes JPEG 2000 at full resolution only. A codestream with k wavelet levels also
holds the image at 1/2, 1/4, ... 1/2**k: OpenJPEG decodes it by skipping the finer subbands,
which is how overviews avoid decoding full resolution. Used only for overviews, so this is an
optional speed path: :func:`available` is False where ``libopenjp2`` (Debian ``libopenjp2-7``, a
dependency of GDAL) cannot be loaded, and callers then decode at full resolution and average.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

import numpy as np

_OPJ_CODEC_J2K = 0
_DPARAMS_BYTES = 1 << 16          # opj_dparameters_t is ~20 KB; only OpenJPEG reads or writes it


class _ImageComp(ctypes.Structure):       # opj_image_comp_t (stable since OpenJPEG 2.0)
    _fields_ = [("dx", ctypes.c_uint32), ("dy", ctypes.c_uint32), ("w", ctypes.c_uint32),
                ("h", ctypes.c_uint32), ("x0", ctypes.c_uint32), ("y0", ctypes.c_uint32),
                ("prec", ctypes.c_uint32), ("bpp", ctypes.c_uint32), ("sgnd", ctypes.c_uint32),
                ("resno_decoded", ctypes.c_uint32), ("factor", ctypes.c_uint32),
                ("data", ctypes.POINTER(ctypes.c_int32)), ("alpha", ctypes.c_uint16)]


class _Image(ctypes.Structure):           # opj_image_t
    _fields_ = [("x0", ctypes.c_uint32), ("y0", ctypes.c_uint32), ("x1", ctypes.c_uint32),
                ("y1", ctypes.c_uint32), ("numcomps", ctypes.c_uint32), ("color_space", ctypes.c_int),
                ("comps", ctypes.POINTER(_ImageComp)), ("icc_profile_buf", ctypes.c_void_p),
                ("icc_profile_len", ctypes.c_uint32)]


_READ_FN = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_SKIP_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_SEEK_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_void_p)
_MSG_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)

_lib = None
_lib_lock = threading.Lock()


def _load():
    global _lib
    with _lib_lock:
        if _lib is None:
            lib = False
            for name in ("libopenjp2.so.7", ctypes.util.find_library("openjp2")):
                if not name:
                    continue
                try:
                    cand = ctypes.CDLL(name)
                    cand.opj_set_decoded_resolution_factor         # OpenJPEG >= 2.0
                except (OSError, AttributeError):
                    continue
                lib = cand
                break
            if lib:
                vp, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
                for fname, res, args in [
                        ("opj_create_decompress", vp, [i]),
                        ("opj_set_default_decoder_parameters", None, [vp]),
                        ("opj_setup_decoder", i, [vp, vp]),
                        ("opj_set_error_handler", i, [vp, _MSG_FN, vp]),
                        ("opj_stream_create", vp, [ctypes.c_size_t, i]),
                        ("opj_stream_set_read_function", None, [vp, _READ_FN]),
                        ("opj_stream_set_skip_function", None, [vp, _SKIP_FN]),
                        ("opj_stream_set_seek_function", None, [vp, _SEEK_FN]),
                        ("opj_stream_set_user_data_length", None, [vp, ctypes.c_uint64]),
                        ("opj_read_header", i, [vp, vp, ctypes.POINTER(ctypes.POINTER(_Image))]),
                        ("opj_set_decoded_resolution_factor", i, [vp, u32]),
                        ("opj_decode", i, [vp, vp, ctypes.POINTER(_Image)]),
                        ("opj_end_decompress", i, [vp, vp]),
                        ("opj_image_destroy", None, [ctypes.POINTER(_Image)]),
                        ("opj_stream_destroy", None, [vp]),
                        ("opj_destroy_codec", None, [vp])]:
                    fn = getattr(lib, fname)
                    fn.restype, fn.argtypes = res, args
            _lib = lib
    return _lib


def available() -> bool:
    """True when the system OpenJPEG library can be used."""
    return bool(_load())


class OpenJpegError(RuntimeError):
    pass


def resolution_levels(stream: bytes) -> int:
    """Number of wavelet decomposition levels in the COD marker of a J2K codestream's main header
    (the most a decode can reduce by), or 0 when none is found."""
    pos = 2
    while pos + 4 <= len(stream) and stream[:2] == b"\xff\x4f":
        marker = stream[pos:pos + 2]
        length = int.from_bytes(stream[pos + 2:pos + 4], "big")
        if marker == b"\xff\x52" and pos + 9 < len(stream):          # COD: Scod, SGcod(4), SPcod...
            return stream[pos + 9]
        if marker == b"\xff\x90":
            break
        pos += 2 + length
    return 0


def decode_reduced(stream: bytes, reduce: int) -> np.ndarray:
    """Decode a raw J2K codestream at 1/2**reduce resolution -> int32 (components, h, w), where
    h, w = ceil(full size / 2**reduce). ``reduce`` must not exceed :func:`resolution_levels`."""
    lib = _load()
    if not lib:
        raise OpenJpegError("the OpenJPEG library (libopenjp2) is not available")
    data = bytes(stream)
    pos = [0]
    messages: list[str] = []

    # the stream callbacks serve `data` from memory
    def read(buf, n, _user):
        k = min(n, len(data) - pos[0])
        if k <= 0:
            return ctypes.c_size_t(-1).value          # (OPJ_SIZE_T)-1: end of stream
        ctypes.memmove(buf, data[pos[0]:pos[0] + k], k)
        pos[0] += k
        return k

    def skip(n, _user):
        k = max(-pos[0], min(n, len(data) - pos[0]))
        pos[0] += k
        return k

    def seek(off, _user):
        if not 0 <= off <= len(data):
            return 0
        pos[0] = off
        return 1

    def on_error(msg, _user):
        messages.append(msg.decode(errors="replace").strip())

    cb = (_READ_FN(read), _SKIP_FN(skip), _SEEK_FN(seek), _MSG_FN(on_error))   # alive until return
    codec = lib.opj_create_decompress(_OPJ_CODEC_J2K)
    stream_p = lib.opj_stream_create(1 << 16, 1)
    image = ctypes.POINTER(_Image)()
    try:
        if not codec or not stream_p:
            raise OpenJpegError("OpenJPEG could not create a decoder")
        params = ctypes.create_string_buffer(_DPARAMS_BYTES)
        lib.opj_set_default_decoder_parameters(params)
        lib.opj_set_error_handler(codec, cb[3], None)
        if not lib.opj_setup_decoder(codec, params):
            raise OpenJpegError("OpenJPEG decoder set-up failed")
        lib.opj_stream_set_read_function(stream_p, cb[0])
        lib.opj_stream_set_skip_function(stream_p, cb[1])
        lib.opj_stream_set_seek_function(stream_p, cb[2])
        lib.opj_stream_set_user_data_length(stream_p, len(data))
        if not lib.opj_read_header(stream_p, codec, ctypes.byref(image)):
            raise OpenJpegError("; ".join(messages) or "cannot read the J2K header")
        if reduce and not lib.opj_set_decoded_resolution_factor(codec, int(reduce)):
            raise OpenJpegError("; ".join(messages) or f"cannot reduce by {reduce} levels")
        if not (lib.opj_decode(codec, stream_p, image) and lib.opj_end_decompress(codec, stream_p)):
            raise OpenJpegError("; ".join(messages) or "J2K decode failed")
        img = image.contents
        planes = []
        for c in range(img.numcomps):
            comp = img.comps[c]
            if not comp.data:
                raise OpenJpegError(f"component {c} was not decoded")
            planes.append(np.ctypeslib.as_array(comp.data, shape=(comp.h, comp.w)).copy())
        if len({p.shape for p in planes}) != 1:
            raise OpenJpegError("components differ in size")
        return np.stack(planes)
    finally:
        if image:
            lib.opj_image_destroy(image)
        if stream_p:
            lib.opj_stream_destroy(stream_p)
        if codec:
            lib.opj_destroy_codec(codec)
