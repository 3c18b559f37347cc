# SPDX-License-Identifier: Apache-2.0
"""Worker process of the GDAL driver plugin (gdal_plugin/README.md, "Worker mode").

When the host process runs another Python version than the project's environment (QGIS under the
distribution's python3), or with ``TEC_PYTHON_WORKER=YES``, the plugin starts
``<venv python> -m terracodec.gdal_worker [bridge module]`` and calls :mod:`terracodec.gdal_bridge`
through it. Requests arrive on stdin, responses leave on stdout, one at a time.

Framing (all integers little-endian)::

    frame    = u64 length, then `length` bytes of body
    request  = values: the operation (str), then its arguments
    value    = b"i" i64  |  b"s" u64 n, n bytes UTF-8  |  b"b" u64 n, n bytes  |  b"n" (None)
    response = b"O" + the result's bytes (None: nothing)
             | b"E" + UTF-8 "ExceptionType: message" + b"\\0" + UTF-8 traceback

Operations (names are looked up in the bridge module, so new arguments need no protocol change):

* ``name, *args``: ``bridge.name(*args)`` (``decode_payload``, ``read_window``);
* ``"new Class", id, *args``: ``objects[id] = bridge.Class(*args)`` (``new Encoder``);
* ``".method", id, *args``: ``objects[id].method(*args)`` (``.write_rows``, ``.close``, ``.abort``);
* ``"del", id``: forget ``objects[id]``.

Bytes arguments are passed as memoryviews valid during the call (as in the in-process bridge).
The first frame is the worker's own answer to starting: ``O`` + its Python version, or ``E`` if the
bridge module cannot be imported. The worker exits at end of input. Nothing but frames is written
to stdout: file descriptor 1 is pointed at stderr, and so is ``sys.stdout``.
"""
from __future__ import annotations

import importlib
import os
import platform
import signal
import struct
import sys
import traceback

DEFAULT_MODULE = "terracodec.gdal_bridge"


class _Protocol:
    def __init__(self, rfd: int, wfd: int):
        self._r = open(rfd, "rb", buffering=0)
        self._w = open(wfd, "wb", buffering=0)

    def _read_exact(self, n: int) -> bytearray | None:
        buf = bytearray(n)
        view, pos = memoryview(buf), 0
        while pos < n:
            k = self._r.readinto(view[pos:])
            if not k:
                return None                                        # end of input
            pos += k
        return buf

    def read_request(self) -> list | None:
        head = self._read_exact(8)
        if head is None:
            return None
        (n,) = struct.unpack("<Q", head)
        body = self._read_exact(n)
        if body is None:
            return None
        return _decode_values(body)

    def _write_all(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[self._w.write(view):]

    def respond(self, status: bytes, data=b"") -> None:
        data = memoryview(data).cast("B")
        self._write_all(struct.pack("<QB", len(data) + 1, status[0]))
        self._write_all(data)

    def respond_error(self, exc: BaseException) -> None:
        msg = str(exc)
        text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.respond(b"E", text.encode("utf-8", "replace") + b"\0" + tb.encode("utf-8", "replace"))


def _decode_values(body: bytearray) -> list:
    view, pos, out = memoryview(body), 0, []
    while pos < len(body):
        tag = body[pos:pos + 1]
        pos += 1
        if tag == b"i":
            out.append(struct.unpack_from("<q", body, pos)[0])
            pos += 8
        elif tag in (b"s", b"b"):
            (n,) = struct.unpack_from("<Q", body, pos)
            pos += 8
            item = view[pos:pos + n]
            out.append(str(item, "utf-8") if tag == b"s" else item)
            pos += n
        elif tag == b"n":
            out.append(None)
        else:
            raise ValueError(f"bad value tag {tag!r} in request")
    return out


def _result_bytes(res):
    if res is None:
        return b""
    try:
        return memoryview(res).cast("B")
    except TypeError:
        raise TypeError(f"bridge call returned {type(res).__name__}, not bytes") from None


def serve(proto: _Protocol, bridge) -> None:
    objects: dict[int, object] = {}
    while True:
        req = proto.read_request()
        if req is None:
            return
        try:
            op, args = req[0], req[1:]
            if op.startswith("new "):
                objects[args[0]] = getattr(bridge, op[4:])(*args[1:])
                res = None
            elif op.startswith("."):
                obj = objects.get(args[0])
                if obj is None:
                    raise LookupError(f"no object {args[0]} in this worker "
                                      "(restarted since it was created?)")
                res = getattr(obj, op[1:])(*args[1:])
            elif op == "del":
                objects.pop(args[0], None)
                res = None
            else:
                res = getattr(bridge, op)(*args)
            data = _result_bytes(res)
        except Exception as exc:                          # reported to GDAL as CPLError text
            proto.respond_error(exc)
            continue
        proto.respond(b"O", data)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The protocol keeps the original stdin/stdout; fd 0 becomes /dev/null and fd 1 stderr, so a
    # stray print (Python or C) cannot corrupt the frames.
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        os.dup2(2, 1)
    except OSError:                                               # the host has no stderr
        os.dup2(null, 1)
    if null > 2:
        os.close(null)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)                  # Ctrl-C is the host's to handle
    proto = _Protocol(rfd, wfd)
    try:
        bridge = importlib.import_module(argv[0] if argv else DEFAULT_MODULE)
    except Exception as exc:
        proto.respond_error(exc)
        return 1
    proto.respond(b"O", platform.python_version().encode())
    try:
        serve(proto, bridge)
    except BrokenPipeError:                                       # the host went away
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
