"""Memory bounds (issue 12, finding 6): the cached encoder's activation tables shrink with the
map on a full pass (they held a 2M-Gaussian map's caches forever), and freed heap memory can be
handed back (malloc_trim)."""
import sys

import torch

from chorus_ros.core.encoder.incremental import IncrementalEncoder
from chorus_ros.core.map import GaussianMap, MapConfig
from chorus_ros.core.memory import MMAP_THRESHOLD_MAX, pin_mmap_threshold, rss_bytes, trim_heap
from test.core.test_update_cost import _floor, _model


def test_cached_tables_shrink_after_a_large_map_is_replaced_by_a_small_one():
    m = GaussianMap(MapConfig(sh_degree=0, block_size=0.25))
    inc = IncrementalEncoder(_model(), m)
    m.replace_all(_floor(600, 2.0))
    inc.update()
    small = inc.cache_bytes()
    m.replace_all(_floor(12000, 40.0, seed=1))       # a much larger map ...
    inc.update()
    large = inc.cache_bytes()
    m.replace_all(_floor(600, 2.0))                  # ... and back
    inc.update()
    assert large > 5 * small and inc.cache_bytes() <= 1.5 * small
    ref = GaussianMap(MapConfig(sh_degree=0, block_size=0.25))
    ref.replace_all(_floor(600, 2.0))
    IncrementalEncoder(inc.model, ref).encode_full()
    torch.testing.assert_close(m.attribute("feat.language"), ref.attribute("feat.language"), atol=1e-5, rtol=0)


def test_trim_heap_returns_freed_memory_on_glibc():
    """Blocks below glibc's mmap threshold come from the heap; freed, they stay resident until
    trimmed. The threshold is pinned at 32 MiB, the value glibc's dynamic threshold reaches after
    the first large free (as in any process that has freed a big tensor)."""
    assert rss_bytes() > 0
    if not sys.platform.startswith("linux"):
        assert trim_heap() in (True, False)
        return
    pin_mmap_threshold(MMAP_THRESHOLD_MAX)             # 32 MiB (M_MMAP_THRESHOLD)
    blocks = [bytearray(1 << 20) for _ in range(200)]   # 200 MiB of heap blocks
    for b in blocks:
        b[::4096] = b"\x01" * len(b[::4096])            # touch every page
    peak = rss_bytes()
    del blocks[:-1]                                     # the last one pins the heap top
    freed = rss_bytes()
    assert trim_heap()
    after = rss_bytes()
    assert freed > peak - 60 * 2**20                    # free() alone kept most of it resident
    assert after < freed - 100 * 2**20                  # trimming handed it back


_PIN_PROBE = """
import ctypes, ctypes.util, sys
from chorus_ros.core.memory import pin_mmap_threshold, rss_bytes
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
if sys.argv[1] == "pin":
    assert pin_mmap_threshold(256 << 10)
big = libc.malloc(16 << 20)          # one large block, mapped; freeing it raises glibc's dynamic threshold
libc.memset(big, 1, 16 << 20)
libc.free(big)
blocks = [libc.malloc(1 << 20) for _ in range(150)]
for b in blocks:
    libc.memset(b, 1, 1 << 20)
peak = rss_bytes()
for b in blocks[:-1]:                # the last one pins the heap top
    libc.free(b)
print(peak - rss_bytes())
"""


def test_a_pinned_mmap_threshold_hands_freed_blocks_back_at_once():
    """After one large free, glibc serves 1 MiB blocks from the heap, and freeing them keeps
    them resident; with the threshold pinned at 256 KiB (chorus_node's default) each is mapped on
    its own and unmapped when freed. Each case runs in a fresh process."""
    import subprocess

    import pytest

    from chorus_ros.core.errors import InvalidInputError
    from chorus_ros.core.memory import MMAP_THRESHOLD_MAX, pin_mmap_threshold
    with pytest.raises(InvalidInputError, match="mmap threshold"):
        pin_mmap_threshold(0)
    with pytest.raises(InvalidInputError, match="mmap threshold"):
        pin_mmap_threshold(MMAP_THRESHOLD_MAX + 1)
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    released = {mode: int(subprocess.run([sys.executable, "-c", _PIN_PROBE, mode], check=True, capture_output=True,
                                         text=True, timeout=120).stdout.split()[-1])
                for mode in ("dynamic", "pin")}
    assert released["dynamic"] < 40 * 2**20
    assert released["pin"] > 120 * 2**20
