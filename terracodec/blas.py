# SPDX-License-Identifier: Apache-2.0
"""One BLAS thread while a writer codes tiles in parallel threads.

The encoder's matrix work (KLT fits, grid refits, the separable upsampling of coarse grids) is
small matrices through numpy's BLAS, and OpenBLAS starts its own threads for each product: two
coding threads then run four busy BLAS threads on two cores, and a scene encodes about 20 % slower
than with one BLAS thread (examples/measure_speed.py). One tile alone gains nothing from BLAS
threads (measured the same), so :class:`terracodec.api.Writer` holds BLAS at one thread while its
thread pool exists and gives the caller's setting back when it closes.

The limit is process-wide (BLAS has one thread count) and reference-counted, so writers that
overlap share it and the last one restores it. It is set and restored by the thread that drives
the writer: numpy's OpenBLAS ignored a count set from a pool thread once another thread had set
one. The bytes do not depend on it (tests/test_api.py). Needs ``threadpoolctl`` (the ``codec``
extra); without it this does nothing.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

_lock = threading.Lock()
_users = 0
_limiter = None


def _controller():
    """A controller of the BLAS libraries loaded now (about 1 ms; torch or scipy may load more later)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextmanager
def single_threaded():
    """Hold BLAS at one thread inside the block (the first of overlapping blocks sets it, the last
    restores the previous limits)."""
    global _users, _limiter
    with _lock:
        if _users == 0:
            controller = _controller()
            _limiter = None if controller is None else controller.limit(limits=1, user_api="blas")
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
