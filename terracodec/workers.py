# SPDX-License-Identifier: Apache-2.0
"""The threads that code and decode tiles, and one BLAS thread while they run.

Writers (:class:`terracodec.api.Writer`, :class:`terracodec.stack.StackWriter`) and reads
(:meth:`terracodec.api.TecDataset.read`) code tiles in a :class:`CodingPool`: OpenJPEG, zlib, numpy
and torch release the GIL, and a tile's bytes depend on its pixels only.

The encoder's matrix work (KLT fits, grid refits, the separable upsampling of coarse grids) is small
matrices through numpy's BLAS, and OpenBLAS starts its own threads for each product: two coding
threads then ran four busy BLAS threads on two cores, and a scene took 12-25 % less time to encode
with one BLAS thread (examples/measure_speed.py, BENCHMARKS.md). One tile alone gains nothing from BLAS
threads, so a pool holds BLAS at one thread while it exists (:func:`single_threaded_blas`) and gives
the caller's setting back when it closes. The limit is process-wide (BLAS has one thread count) and
reference-counted, so pools that overlap share it and the last one restores it. It is set and
restored by the thread that drives the pool: numpy's OpenBLAS ignored a count set from a pool thread
once another thread had set one. The bytes do not depend on it (tests). Needs ``threadpoolctl``
(the ``codec`` extra); without it BLAS is left alone.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from numbers import Integral

from .errors import TecInputError

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None


def check_workers(workers) -> int:
    """``workers`` as a thread count (None: DEFAULT_WORKERS); TecInputError unless a positive integer."""
    if workers is None:
        return DEFAULT_WORKERS
    if isinstance(workers, bool) or not isinstance(workers, Integral) or workers < 1:
        raise TecInputError(f"workers must be a positive integer or None, got {workers!r}")
    return int(workers)


def _blas_controller():
    """A controller of the BLAS libraries loaded now (about 1 ms; torch or scipy may load more later)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextmanager
def single_threaded_blas():
    """Hold BLAS at one thread inside the block (the first of overlapping blocks sets it, the last
    restores the previous limits)."""
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            controller = _blas_controller()
            _blas_limiter = None if controller is None else controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


class CodingPool:
    """``workers`` threads, started at the first task, with BLAS held at one thread until
    :meth:`close` (call it from the thread that submits). :meth:`map` runs in the caller when there
    is one item or one worker."""

    def __init__(self, workers: int, name: str):
        self.workers, self._name = workers, name
        self._executor = None
        self._hold = ExitStack()

    def _started(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._hold.enter_context(single_threaded_blas())
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=self._name)
        return self._executor

    def submit(self, fn, *args) -> Future:
        return self._started().submit(fn, *args)

    def map(self, fn, items: list):
        """fn over ``items``, results in order (in the caller when there is one item or worker)."""
        if self.workers == 1 or len(items) < 2:
            return [fn(x) for x in items]
        return self._started().map(fn, items)

    def close(self) -> None:
        """Wait for running tasks, drop queued ones, and give BLAS its threads back."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._hold.close()

    def __enter__(self) -> "CodingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
