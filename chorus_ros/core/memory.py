"""Process memory: resident size, and handing freed heap memory back to the OS.

glibc keeps memory freed by large temporaries (tensors of a 2M-Gaussian encode, PointCloud2
buffers) in its arenas: after the first freed ``mmap``'ed block its dynamic mmap threshold rises
to 32 MiB, so later tensors below that size come from the heap, and a heap only shrinks from its
top. RSS then stays at its high-water mark although Python and torch hold nothing (measured in
docs/reliability.md: a node back at 20K Gaussians after one 2M FULL update). ``malloc_trim(0)``
returns every free page of every arena; :func:`trim_heap` calls it where glibc is present (a
no-op elsewhere).

Example::

    before = rss_bytes(); del big; trim_heap(); after = rss_bytes()
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

from chorus_ros.core.errors import InvalidInputError

__all__ = ["rss_bytes", "trim_heap", "pin_mmap_threshold", "MMAP_THRESHOLD_MAX"]

MMAP_THRESHOLD_MAX = 32 << 20
"""Largest mmap threshold glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``), bytes."""
_M_MMAP_THRESHOLD = -3

_libc = None


def _lib():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc.malloc_trim.restype = ctypes.c_int
            _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _libc.mallopt.restype = ctypes.c_int
        except (OSError, AttributeError):
            _libc = False
    return _libc


def trim_heap() -> bool:
    """Return free heap memory of every malloc arena to the OS (glibc ``malloc_trim(0)``).
    Returns True when memory was released, False when nothing was or glibc is absent. Cost:
    a walk over the free lists, milliseconds for a heap of gigabytes."""
    lib = _lib()
    return bool(lib.malloc_trim(0)) if lib else False


def pin_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` (``mallopt(M_MMAP_THRESHOLD)``), process-wide.

    Every allocation of at least ``nbytes`` is then mapped on its own and unmapped when freed, and
    glibc's dynamic threshold (which rises to the size of the largest block freed, up to 32 MiB, so
    that later encode temporaries come from the heap and stay resident until trimmed) is off (the
    run-time form of glibc's ``MALLOC_MMAP_THRESHOLD_`` tunable). Returns True when set,
    False where glibc is absent (a no-op). Measured on the nodes in docs/reliability.md ("A fixed
    mmap threshold")."""
    if not 0 < int(nbytes) <= MMAP_THRESHOLD_MAX:
        raise InvalidInputError(f"mmap threshold must be in (0, {MMAP_THRESHOLD_MAX}] bytes, got {nbytes}")
    lib = _lib()
    return bool(lib.mallopt(_M_MMAP_THRESHOLD, int(nbytes))) if lib else False


def rss_bytes() -> int:
    """Resident set size of this process, bytes (``VmRSS``; 0 where /proc is absent)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
