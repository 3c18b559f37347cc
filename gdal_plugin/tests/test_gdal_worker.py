# SPDX-License-Identifier: Apache-2.0
"""GDAL driver `TEC` in worker mode: the plugin sends its Python calls to a worker process
(`python -m terracodec.gdal_worker`) instead of an interpreter in the GDAL process.

That mode serves hosts running another Python version (QGIS under the distribution's python3);
here it is forced with TEC_PYTHON_WORKER=YES, or triggered by a config that names another Python
version. Real GDAL tools on the real crop of test_gdal_driver.py (whose fixtures and helpers this
file reuses); every GDAL call runs in a subprocess. The worker's framing is also tested directly.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_gdal_driver import (GEOM, PLUGIN_DIR, REPO, _assert_clean_failure, _env,  # noqa: F401
                              api_read, decoded, encoded, gtiff_read, run, source)

WORKER = {"TEC_PYTHON_WORKER": "YES"}

pytestmark = [
    pytest.mark.skipif(shutil.which("gdalinfo") is None or shutil.which("gdal_translate") is None,
                       reason="GDAL command line tools (gdal-bin) not installed"),
    pytest.mark.skipif(not (PLUGIN_DIR / "gdal_TEC.so").exists(),
                       reason=f"TEC plugin not built: run `make -C gdal_plugin install` ({PLUGIN_DIR})"),
]


def config_python() -> str:
    return json.loads((PLUGIN_DIR / "gdal_TEC.json").read_text())["python"]


def wrun(*args, timeout=300, **env) -> subprocess.CompletedProcess:
    """Like run(check=False), with a shorter timeout: a hang must fail, not stall the suite."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=_env(**env),
                          timeout=timeout)


def has_osgeo() -> bool:
    return subprocess.run([sys.executable, "-c", "from osgeo import gdal_array"],
                          capture_output=True).returncode == 0


# -- reading -------------------------------------------------------------------------------------------
def test_worker_translate_matches_python_api_and_logs_worker(encoded, decoded):
    back = encoded.with_name("worker_back.tif")
    proc = run("gdal_translate", "-q", encoded, back, CPL_DEBUG="TEC", **WORKER)
    assert f"Python: worker {config_python()} (pid " in proc.stderr, proc.stderr
    assert "Python 3." in proc.stderr and "embedded" not in proc.stderr
    assert np.array_equal(gtiff_read(back), decoded)          # same pixels as terracodec.open().read()


def test_worker_srcwin(encoded, decoded):
    out = encoded.with_name("worker_win.tif")
    _, h, w = decoded.shape
    x, y, xs, ys = w // 3, h // 5, w // 2, h // 2
    run("gdal_translate", "-q", "-srcwin", x, y, xs, ys, encoded, out, **WORKER)
    assert np.array_equal(gtiff_read(out), decoded[:, y:y + ys, x:x + xs])


def test_worker_multithreaded_reads(encoded):
    """gdalwarp -multi with 2 threads through the one worker == the same warp of a GeoTIFF."""
    ref_src = encoded.with_name("worker_ref_src.tif")
    run("gdal_translate", "-q", encoded, ref_src)              # in-process decode
    a, b = encoded.with_name("worker_warp.tif"), encoded.with_name("worker_warp_ref.tif")
    for src, dst, env in ((encoded, a, WORKER), (ref_src, b, {})):
        run("gdalwarp", "-q", "-multi", "-wo", "NUM_THREADS=2", "-t_srs", "EPSG:4326", "-r", "near",
            src, dst, GDAL_NUM_THREADS=2, **env)
    assert np.array_equal(gtiff_read(a), gtiff_read(b))


def test_worker_threads_with_own_handles(encoded, decoded, tmp_path):
    """Four osgeo threads, one dataset handle each, reading different windows at the same time."""
    if not has_osgeo():
        pytest.skip("osgeo (GDAL Python bindings with gdal_array) not installed in this environment")
    _, h, w = decoded.shape
    wins = [(0, 0, w // 2, h // 2), (w // 2, 0, w - w // 2, h // 2), (0, h // 2, w, h - h // 2),
            (w // 4, h // 4, w // 2, h // 2)]
    out = tmp_path / "threads.npz"
    proc = run(sys.executable, "-c", textwrap.dedent("""
        import sys, json, threading, numpy as np
        from osgeo import gdal
        gdal.UseExceptions()
        path, out, wins = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        res, errors = {}, []
        def work(i, win):
            try:
                ds = gdal.Open(path)
                res[f"w{i}"] = ds.ReadAsArray(*win)
                ds = None
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=work, args=(i, win)) for i, win in enumerate(wins)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        np.savez(out, **res)
        print(json.dumps({"errors": errors}))
    """), encoded, out, json.dumps(wins), **WORKER)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["errors"] == []
    got = np.load(out)
    for i, (x, y, xs, ys) in enumerate(wins):
        assert np.array_equal(got[f"w{i}"], decoded[:, y:y + ys, x:x + xs]), i


# -- writing -------------------------------------------------------------------------------------------
def test_worker_createcopy_and_errors(source, tmp_path):
    out = tmp_path / "worker.tec"
    run("gdal_translate", "-q", "-of", "TEC", "-co", "QUALITY=4", "-co", f"BLOCKSIZE={GEOM['tile']}",
        source, out, **WORKER)
    got = api_read(out)
    ref = gtiff_read(source)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    mse = float(np.mean((ref.astype(np.float64) - got) ** 2))
    assert 10 * np.log10(10000.0 ** 2 / mse) > 25               # a real encode, not garbage
    info = json.loads(run("gdalinfo", "-json", "-mdd", "TEC", out).stdout)
    assert info["metadata"]["TEC"]["QUALITY"] == "4"
    # An exception raised in the worker reads exactly as in-process, and leaves no file.
    errs = {}
    for mode, env in (("worker", WORKER), ("in-process", {})):
        bad = tmp_path / f"bad_{mode}.tec"
        proc = wrun("gdal_translate", "-q", "-of", "TEC", "-co", "BANDS=B02,XX", source, bad, **env)
        _assert_clean_failure(proc, "TecBandError", "XX")
        assert not list(tmp_path.glob(f"bad_{mode}.tec*"))
        errs[mode] = [ln.replace(bad.name, "bad.tec") for ln in proc.stderr.splitlines()
                      if ln.startswith("ERROR")]
    assert errs["worker"] == errs["in-process"]


# -- failures and fallback ---------------------------------------------------------------------------------
DYING_BRIDGE = """
import os, signal
from terracodec import gdal_bridge
from terracodec.gdal_bridge import *  # noqa: F401,F403


def _die_once(*args):
    marker = os.environ.get("TEC_TEST_DIE_ONCE")
    if marker and os.path.exists(marker):
        return None
    if marker:
        open(marker, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)


def read_window(*args):
    _die_once()
    return gdal_bridge.read_window(*args)


def decode_payload(*args):
    _die_once()
    return gdal_bridge.decode_payload(*args)
"""


def test_worker_death_is_a_clear_error(encoded, decoded, tmp_path):
    (tmp_path / "dying_bridge.py").write_text(DYING_BRIDGE)
    env = dict(WORKER, TEC_PYTHONPATH=tmp_path, TEC_PYTHON_MODULE="dying_bridge")
    proc = wrun("gdal_translate", "-q", encoded, tmp_path / "dead.tif", **env)
    _assert_clean_failure(proc, "Python worker process (pid ", "died during", "killed by signal 9")
    if not has_osgeo():
        return
    # the next call starts a new worker: the first read fails, the second is right
    proc = run(sys.executable, "-c", textwrap.dedent("""
        import sys, json, numpy as np
        from osgeo import gdal
        gdal.UseExceptions()
        ds = gdal.Open(sys.argv[1])
        try:
            ds.ReadAsArray()
            first = "no error"
        except RuntimeError as exc:
            first = str(exc)
        np.save(sys.argv[2], ds.ReadAsArray())
        print(json.dumps({"first": first}))
    """), encoded, tmp_path / "again.npy", TEC_TEST_DIE_ONCE=tmp_path / "died", **env)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "died during" in res["first"]
    assert np.array_equal(np.load(tmp_path / "again.npy"), decoded)


def test_other_python_version_falls_back_to_worker(encoded, decoded, tmp_path):
    """A config naming another Python version than the process runs: the worker takes over
    (TEC_PYTHON_WORKER unset), or a clear error with TEC_PYTHON_WORKER=NO."""
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    shutil.copy2(PLUGIN_DIR / "gdal_TEC.so", plugdir / "gdal_TEC.so")
    cfg = json.loads((PLUGIN_DIR / "gdal_TEC.json").read_text())
    cfg["python_version"] = "3.0"
    (plugdir / "gdal_TEC.json").write_text(json.dumps(cfg))
    out = tmp_path / "fallback.tif"
    proc = run("gdal_translate", "-q", "-srcwin", 0, 0, 40, 30, encoded, out, CPL_DEBUG="TEC",
               GDAL_DRIVER_PATH=plugdir)
    assert "environment is Python 3.0" in proc.stderr and "using a worker process" in proc.stderr
    assert "Python: worker " in proc.stderr
    assert np.array_equal(gtiff_read(out), decoded[:, :30, :40])
    proc = wrun("gdal_translate", "-q", encoded, tmp_path / "no.tif", GDAL_DRIVER_PATH=plugdir,
                TEC_PYTHON_WORKER="NO")
    _assert_clean_failure(proc, "the terracodec environment is Python 3.0")


# -- the worker's framing, without GDAL --------------------------------------------------------------------
ECHO_BRIDGE = """
import os


def echo(*args):
    print("stray print")                     # must not reach the protocol stream
    os.write(1, b"stray write to fd 1")
    return repr([bytes(a) if isinstance(a, memoryview) else a for a in args]).encode()


class Counter:
    def __init__(self, start):
        self.n = start

    def add(self, k):
        self.n += k
        return str(self.n).encode()
"""


def _value(v) -> bytes:
    if v is None:
        return b"n"
    if isinstance(v, int):
        return b"i" + struct.pack("<q", v)
    data, tag = (v.encode(), b"s") if isinstance(v, str) else (bytes(v), b"b")
    return tag + struct.pack("<Q", len(data)) + data


def _request(proc, *values) -> tuple[bytes, bytes]:
    body = b"".join(_value(v) for v in values)
    proc.stdin.write(struct.pack("<Q", len(body)) + body)
    proc.stdin.flush()
    return _response(proc)


def _response(proc) -> tuple[bytes, bytes]:
    (n,) = struct.unpack("<Q", proc.stdout.read(8))
    body = proc.stdout.read(n)
    return body[:1], body[1:]


def test_worker_protocol(tmp_path):
    (tmp_path / "echo_bridge.py").write_text(ECHO_BRIDGE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    proc = subprocess.Popen([sys.executable, "-m", "terracodec.gdal_worker", "echo_bridge"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    try:
        status, version = _response(proc)                   # hello: its Python version
        assert status == b"O" and version.decode().startswith(f"{sys.version_info[0]}.")
        big = bytes(range(256)) * 4096                       # 1 MiB through the pipe
        status, data = _request(proc, "echo", -5, "é", b"\x00\x01", None)
        assert (status, data) == (b"O", repr([-5, "é", b"\x00\x01", None]).encode())
        assert _request(proc, "echo", big)[1] == repr([big]).encode()
        assert _request(proc, "new Counter", 7, 10) == (b"O", b"")
        assert _request(proc, ".add", 7, 5) == (b"O", b"15")
        assert _request(proc, "del", 7) == (b"O", b"")
        status, err = _request(proc, ".add", 7, 1)
        assert status == b"E" and err.split(b"\0")[0].startswith(b"LookupError: no object 7")
        status, err = _request(proc, "nosuch")
        msg, tb = err.split(b"\0")
        assert status == b"E" and msg.startswith(b"AttributeError: ") and b"Traceback" in tb
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0                    # exits at end of input
        stderr = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "stray print" in stderr and "stray write to fd 1" in stderr
