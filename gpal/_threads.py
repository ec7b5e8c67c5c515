"""BLAS threading for small, latency-bound linear algebra.

Measured here (2 cores, other processes running): a (108 x 300) @ (300 x 252) product
took 4.5 ms with OpenBLAS's default two threads and 0.25 ms with one; a triangular solve
3.3 ms against 0.5 ms. A model evaluation for one MD step is a chain of such small
products, so gpal runs it with one BLAS thread (its SOAP loops are parallel in numba).
Large blocks (training) keep the library's default.
"""

from __future__ import annotations

import contextlib
import functools

_CONTROLLER = None
#: below this many elements in the (n_atoms x n_sparse) kernel block, use one BLAS thread
SMALL_BLOCK = 4_000_000


def _controller():
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def single_blas_thread():
    """Context manager limiting BLAS to one thread (about 7 µs to enter and leave)."""
    try:
        return _controller().limit(limits=1, user_api="blas")
    except (ImportError, OSError, RuntimeError):  # no threadpoolctl or no introspectable BLAS
        return contextlib.nullcontext()


def small_blas(size_of):
    """Decorator: run the method with one BLAS thread when ``size_of(self, *args) < SMALL_BLOCK``."""

    def deco(func):
        @functools.wraps(func)
        def wrapper(self, *args, **kwargs):
            if size_of(self, *args) < SMALL_BLOCK:
                with single_blas_thread():
                    return func(self, *args, **kwargs)
            return func(self, *args, **kwargs)

        return wrapper

    return deco
